//! Reading the function's stdout and stderr line by line.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// Longest line kept whole; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// Where lines go: `(stream, line)`.
pub type LineSink = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// Reads `reader` until it ends, handing each line (without its line break) to `sink`.
pub fn read_lines(
    reader: impl AsyncRead + Unpin + Send + 'static,
    stream: &'static str,
    sink: LineSink,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        let emit = |line: &mut Vec<u8>| {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            sink(stream, &String::from_utf8_lossy(line));
            line.clear();
        };
        loop {
            let buffer = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(buffer) => buffer,
            };
            let (taken, complete) = match buffer.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (buffer.len(), false),
            };
            line.extend_from_slice(&buffer[..taken - usize::from(complete)]);
            reader.consume(taken);
            if complete || line.len() >= MAX_LINE {
                emit(&mut line);
            }
        }
        if !line.is_empty() {
            emit(&mut line);
        }
    })
}

/// Duplicates of the pipes' read ends, to ask the kernel how much output is still unread.
pub struct PipeProbes(Vec<OwnedFd>);

impl PipeProbes {
    /// Probes for `pipes`; a pipe that cannot be duplicated is left out.
    pub fn new(pipes: &[&dyn AsFd]) -> Self {
        Self(pipes.iter().filter_map(|p| p.as_fd().try_clone_to_owned().ok()).collect())
    }

    /// Waits until the readers have taken what the function wrote so far (at most ~20 ms), so a
    /// line written just before a response is attributed to that response's call.
    pub async fn drain(&self) {
        for _ in 0..40 {
            let pending = self.0.iter().any(|fd| rustix::io::ioctl_fionread(fd).is_ok_and(|n| n > 0));
            if !pending {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        // Let the readers handle what their last read returned.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    }
}
