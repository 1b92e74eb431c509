//! Copies from the GPU to the host. Mapping a buffer finishes asynchronously: natively we can
//! block on the device, but in a browser the map completes only after control returns to the
//! event loop, so the same readback is also a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::context::Gpu;
use crate::error::{Error, Result};

/// A submitted copy into a mappable buffer, with its map requested.
pub struct GpuReadback {
    gpu: Arc<Gpu>,
    staging: wgpu::Buffer,
    len: usize,
    state: Arc<Mutex<MapState>>,
    /// The submission holding the copy: natively the wait is for it alone, so work queued after
    /// it (the next decode step, started on the device-chosen token) keeps the GPU busy meanwhile.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    submission: Option<wgpu::SubmissionIndex>,
}

#[derive(Default)]
struct MapState {
    /// Set by wgpu's callback.
    done: Option<std::result::Result<(), String>>,
    waker: Option<Waker>,
}

impl GpuReadback {
    /// Requests the map of `staging` (its copy already submitted); `len` bytes will be read.
    pub(super) fn start(
        gpu: Arc<Gpu>,
        staging: wgpu::Buffer,
        len: usize,
        submission: Option<wgpu::SubmissionIndex>,
    ) -> Self {
        let state = Arc::new(Mutex::new(MapState::default()));
        let sink = state.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |result| {
            let mut state = sink.lock().expect("readback state");
            state.done = Some(result.map_err(|e| e.to_string()));
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        });
        GpuReadback {
            gpu,
            staging,
            len,
            state,
            submission,
        }
    }

    /// Blocks until the copy is on the host (native only).
    pub fn wait(self) -> Result<Vec<u8>> {
        self.poll_device()?;
        let done = self.state.lock().expect("readback state").done.take();
        match done {
            Some(result) => self.finish(result),
            None => Err(Error::Backend(
                "a GPU readback cannot block here (in a browser, use the async API)".into(),
            )),
        }
    }

    pub async fn wait_async(self) -> Result<Vec<u8>> {
        self.poll_device()?;
        let result = MapDone { state: &self.state }.await;
        self.finish(result)
    }

    /// Natively nothing else drives the device: wait for the work here. In a browser the map
    /// callback fires from the event loop.
    fn poll_device(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: self.submission.clone(),
                timeout: None,
            })
            .map_err(|e| Error::Backend(format!("waiting for the GPU: {e}")))?;
        Ok(())
    }

    fn finish(self, result: std::result::Result<(), String>) -> Result<Vec<u8>> {
        // A lost device fails the map: report the loss itself.
        self.gpu.check()?;
        result.map_err(|e| Error::Backend(format!("reading GPU memory: {e}")))?;
        let data = self
            .staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Backend(format!("reading GPU memory: {e}")))?[..self.len]
            .to_vec();
        self.staging.unmap();
        Ok(data)
    }
}

struct MapDone<'a> {
    state: &'a Mutex<MapState>,
}

impl Future for MapDone<'_> {
    type Output = std::result::Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.state.lock().expect("readback state");
        match state.done.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
