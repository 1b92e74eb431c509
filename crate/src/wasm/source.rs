//! GGUF bytes the page supplies: a JavaScript function fills a view of wasm memory with the bytes
//! at an offset. In the package's worker that is a synchronous read of the Origin Private File
//! System (`FileSystemSyncAccessHandle.read`) or of a `File` (`FileReaderSync`), so weights go from
//! storage to the GPU in bounded pieces and the model is never whole in the wasm heap.

use wasm_bindgen::prelude::*;

use crate::gguf::ByteSource;

/// `read(offset: number, into: Uint8Array) => void`, for a source of `len` bytes. `into` is a view
/// of wasm memory, valid only during the call.
pub struct JsSource {
    len: u64,
    read: js_sys::Function,
}

impl JsSource {
    pub fn new(len: u64, read: js_sys::Function) -> Self {
        Self { len, read }
    }
}

// SAFETY: this build has no threads (wasm32 without the atomics feature): the function is only
// ever called on the thread that made it. `ByteSource` asks for Send + Sync for native threads.
#[cfg(not(target_feature = "atomics"))]
unsafe impl Send for JsSource {}
#[cfg(not(target_feature = "atomics"))]
unsafe impl Sync for JsSource {}

impl ByteSource for JsSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the model",
            ));
        }
        // SAFETY: the view is used only during this synchronous call, in which nothing allocates
        // in wasm memory (so it cannot grow and detach the view) and `buf` is not otherwise used.
        let view = unsafe { js_sys::Uint8Array::view_mut_raw(buf.as_mut_ptr(), buf.len()) };
        self.read
            .call2(&JsValue::NULL, &JsValue::from_f64(offset as f64), &view)
            .map(|_| ())
            .map_err(|e| {
                let message = js_sys::Error::from(e).message();
                std::io::Error::other(format!("reading the model at byte {offset}: {message}"))
            })
    }
}
