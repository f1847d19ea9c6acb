//! A guest's stdout and stderr, fed line by line into its invocation's log capture.

use std::pin::Pin;
use std::task::{Context, Poll};

use amphi_contract::LogCapture;
use amphi_contract::record::LogStream;
use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// One of a guest's output streams. Never blocks and never fails: output past the invocation's
/// log budget is dropped by the capture, which records the truncation.
#[derive(Clone)]
pub struct LogOutput {
    capture: LogCapture,
    stream: LogStream,
}

impl LogOutput {
    /// Output to `stream` of the invocation whose capture this is.
    pub fn new(capture: LogCapture, stream: LogStream) -> Self {
        Self { capture, stream }
    }
}

/// Bytes the guest may write in one go: large enough for any log line, small enough for stack use.
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.stream, &bytes);
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
        self.capture.write(self.stream, buf);
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
