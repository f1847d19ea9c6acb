//! A guest's stdout and stderr, fed line by line into its invocation's log capture.
//!
//! An instance made before its request arrived ([`crate::ready`]) has no invocation yet: what it
//! writes while instantiating is held back and handed to the invocation that takes it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use amphi_contract::LogCapture;
use amphi_contract::record::LogStream;
use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Where an instance's output goes; shared by its stdout and stderr.
#[derive(Clone)]
pub struct OutputTarget(Arc<Mutex<Target>>);

enum Target {
    /// No invocation yet: output waits here, up to [`HELD_BACK_BYTES`].
    Pending(Vec<(LogStream, Vec<u8>)>, usize),
    Bound(LogCapture),
}

/// Output an instance may write before its invocation exists; the rest is dropped.
const HELD_BACK_BYTES: usize = 64 * 1024;

impl OutputTarget {
    /// Output of an invocation that exists.
    pub fn bound(capture: LogCapture) -> Self {
        Self(Arc::new(Mutex::new(Target::Bound(capture))))
    }

    /// Output of an instance made before its invocation.
    pub fn pending() -> Self {
        Self(Arc::new(Mutex::new(Target::Pending(Vec::new(), 0))))
    }

    /// From now on output goes to `capture`, after what was held back.
    pub fn bind(&self, capture: LogCapture) {
        let mut target = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Target::Pending(held, _) = &*target {
            for (stream, bytes) in held {
                capture.write(*stream, bytes);
            }
        }
        *target = Target::Bound(capture);
    }

    /// What was written while no invocation was bound, in order; emptied.
    pub fn take_held(&self) -> Vec<(LogStream, Vec<u8>)> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Pending(held, size) => {
                *size = 0;
                std::mem::take(held)
            }
            Target::Bound(_) => Vec::new(),
        }
    }

    /// The stdout and stderr streams writing here.
    pub fn streams(&self) -> (LogOutput, LogOutput) {
        (
            LogOutput { target: self.clone(), stream: LogStream::Stdout },
            LogOutput { target: self.clone(), stream: LogStream::Stderr },
        )
    }

    fn write(&self, stream: LogStream, bytes: &[u8]) {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Target::Bound(capture) => capture.write(stream, bytes),
            Target::Pending(held, size) => {
                let take = bytes.len().min(HELD_BACK_BYTES - *size);
                if take > 0 {
                    held.push((stream, bytes[..take].to_vec()));
                    *size += take;
                }
            }
        }
    }
}

/// One of a guest's output streams. Never blocks and never fails: output past the invocation's
/// log budget is dropped by the capture, which records the truncation.
#[derive(Clone)]
pub struct LogOutput {
    target: OutputTarget,
    stream: LogStream,
}

/// Bytes the guest may write in one go: large enough for any log line, small enough for stack use.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.target.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.target.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// A CGI module's stdout: its response, kept in memory up to a limit. A write past the limit is
/// refused and remembered, so a response that did not fit is a failed call, never a cut one
/// passed off as complete.
#[derive(Clone)]
pub struct ResponseOutput(Arc<Mutex<ResponseBuffer>>);

struct ResponseBuffer {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl ResponseOutput {
    /// Up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(ResponseBuffer { bytes: Vec::new(), limit, overflowed: false })))
    }

    /// What was written, or `None` if the module tried to write more than the limit.
    pub fn take(&self) -> Option<Bytes> {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!buffer.overflowed).then(|| Bytes::from(std::mem::take(&mut buffer.bytes)))
    }

    fn write(&self, bytes: &[u8]) -> bool {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if buffer.overflowed || buffer.bytes.len() + bytes.len() > buffer.limit {
            buffer.overflowed = true;
            return false;
        }
        buffer.bytes.extend_from_slice(bytes);
        true
    }
}

impl OutputStream for ResponseOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if ResponseOutput::write(self, &bytes) { Ok(()) } else { Err(wasmtime_wasi::p2::StreamError::Closed) }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ResponseOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for ResponseOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if ResponseOutput::write(&self, buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for ResponseOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ResponseOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
