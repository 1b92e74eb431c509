//! Where GGUF bytes come from. The reader only asks for byte ranges, so a model is never
//! held whole in memory just to be parsed: a file reads with `pread`, memory is sliced, and
//! the browser package supplies ranges it fetched over HTTP.

use std::sync::Arc;

/// A random-access source of bytes.
pub trait ByteSource: Send + Sync {
    /// Total length in bytes.
    fn len(&self) -> u64;
    /// Fills `buf` with the bytes starting at `offset`. Reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes already in memory (tests, small models, a model the browser has cached whole).
#[derive(Clone)]
pub struct MemorySource(Arc<[u8]>);

impl MemorySource {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }
}

impl ByteSource for MemorySource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.len() => {
                buf.copy_from_slice(&self.0[offset as usize..end as usize]);
                Ok(())
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the buffer",
            )),
        }
    }
}

/// A file on disk, read with positioned reads (no shared cursor, so it is `Sync`).
#[cfg(unix)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

#[cfg(unix)]
impl FileSource {
    pub fn open(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

#[cfg(unix)]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
}
