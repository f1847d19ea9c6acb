//! Reaching an instance's shim without trusting anything the container can write.
//!
//! The shim's socket lives in the instance's run directory, which is bind-mounted into the
//! container: the function can delete the socket and put a symbolic link (to the engine's socket,
//! say) or another file in its place. The gateway runs with the host's privileges, so a plain
//! `connect(path)` would follow such a link and send callers' requests to a host socket.
//!
//! So a connection is made in three checked steps:
//! 1. the socket file is opened `O_PATH | O_NOFOLLOW` relative to the run directory, which was
//!    itself opened once, `O_NOFOLLOW`, by the gateway (the container cannot replace the directory,
//!    only its contents); a link or anything that is not a socket is refused;
//! 2. the connection goes to exactly that inode, through `/proc/self/fd/N`, so a swap between the
//!    check and the connect changes nothing;
//! 3. the peer's credentials (`SO_PEERCRED`) must name a process in the container's PID namespace:
//!    a socket bound by anything outside the container is refused.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use tokio::net::UnixStream;

/// Why the shim's socket was not connected to.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Nothing is there yet (the shim has not bound it): worth waiting for.
    #[error("the shim's socket is not there yet")]
    Missing,
    /// Something other than the shim's socket is there: the instance is not to be trusted.
    #[error("refusing the instance's socket: {0}")]
    Refused(String),
    /// The socket is there but does not answer.
    #[error("cannot reach the instance's shim: {0}")]
    Unreachable(std::io::Error),
}

/// The run directory of one instance, opened once, and the container's PID namespace.
pub struct ShimSocket {
    dir: OwnedFd,
    name: &'static str,
    /// `pid:[inode]` of the container's PID namespace, once the container runs.
    namespace: std::sync::OnceLock<String>,
}

impl ShimSocket {
    /// Opens `dir` (made by the gateway, never followed if it is a link) to reach `name` in it.
    pub fn open(dir: &Path, name: &'static str) -> std::io::Result<Self> {
        let dir = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        Ok(Self { dir, name, namespace: std::sync::OnceLock::new() })
    }

    /// Records the container's PID namespace from its first process (`pid` as the host sees it);
    /// only peers in that namespace are accepted afterwards.
    pub fn pin_namespace(&self, pid: i64) -> Result<(), SocketError> {
        let namespace = pid_namespace(pid).map_err(|e| {
            SocketError::Refused(format!(
                "cannot read the PID namespace of the container's process {pid}: {e}"
            ))
        })?;
        let _ = self.namespace.set(namespace);
        Ok(())
    }

    /// Connects to the shim, checked as the module docs say.
    pub async fn connect(&self) -> Result<UnixStream, SocketError> {
        let Some(expected) = self.namespace.get() else {
            return Err(SocketError::Refused("the container's PID namespace is not known".into()));
        };
        let file = match rustix::fs::openat(
            self.dir.as_fd(),
            self.name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(file) => file,
            Err(rustix::io::Errno::NOENT) => return Err(SocketError::Missing),
            Err(e) => return Err(SocketError::Refused(format!("cannot open it: {e}"))),
        };
        let kind = rustix::fs::fstat(&file)
            .map(|stat| FileType::from_raw_mode(stat.st_mode))
            .map_err(|e| SocketError::Refused(format!("cannot inspect it: {e}")))?;
        if kind != FileType::Socket {
            return Err(SocketError::Refused(format!("it is a {} instead of a socket", describe(kind))));
        }
        let through = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let stream = UnixStream::connect(&through).await.map_err(SocketError::Unreachable)?;
        drop(file);
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .map_err(|e| SocketError::Refused(format!("cannot read its peer's credentials: {e}")))?;
        let peer_pid = i64::from(peer.pid.as_raw_nonzero().get());
        match pid_namespace(peer_pid) {
            Ok(namespace) if namespace == *expected => Ok(stream),
            Ok(namespace) => Err(SocketError::Refused(format!(
                "it is served by process {peer_pid} in {namespace}, outside the container ({expected})"
            ))),
            Err(e) => Err(SocketError::Refused(format!(
                "cannot read the PID namespace of its peer {peer_pid}: {e}"
            ))),
        }
    }
}

/// `pid:[inode]` of the PID namespace of process `pid`.
fn pid_namespace(pid: i64) -> std::io::Result<String> {
    // A read of procfs: no disk, no waiting.
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid"))?;
    Ok(link.to_string_lossy().into_owned())
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "symbolic link",
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice | FileType::BlockDevice => "device",
        _ => "file of another kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_namespace() -> i64 {
        i64::from(std::process::id())
    }

    #[tokio::test]
    async fn connects_to_a_socket_served_in_the_pinned_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _listener = tokio::net::UnixListener::bind(dir.path().join("shim.sock")).expect("bind");
        let socket = ShimSocket::open(dir.path(), "shim.sock").expect("open");
        assert!(matches!(socket.connect().await, Err(SocketError::Refused(_))), "no namespace pinned yet");
        socket.pin_namespace(own_namespace()).expect("pin");
        socket.connect().await.expect("connects");
    }

    #[tokio::test]
    async fn refuses_a_link_to_another_socket_and_waits_for_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let canary = elsewhere.path().join("canary.sock");
        let listener = std::os::unix::net::UnixListener::bind(&canary).expect("bind canary");
        listener.set_nonblocking(true).expect("nonblocking");
        let socket = ShimSocket::open(dir.path(), "shim.sock").expect("open");
        socket.pin_namespace(own_namespace()).expect("pin");
        assert!(matches!(socket.connect().await, Err(SocketError::Missing)));

        std::os::unix::fs::symlink(&canary, dir.path().join("shim.sock")).expect("symlink");
        match socket.connect().await {
            Err(SocketError::Refused(why)) => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("a link was followed: {other:?}"),
        }
        assert!(listener.accept().is_err(), "the canary was reached");

        std::fs::remove_file(dir.path().join("shim.sock")).expect("rm");
        std::fs::write(dir.path().join("shim.sock"), b"x").expect("file");
        assert!(matches!(socket.connect().await, Err(SocketError::Refused(_))));
    }

    #[tokio::test]
    async fn refuses_a_peer_outside_the_pinned_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _listener = tokio::net::UnixListener::bind(dir.path().join("shim.sock")).expect("bind");
        let socket = ShimSocket::open(dir.path(), "shim.sock").expect("open");
        // A namespace no process of ours is in.
        let _ = socket.namespace.set("pid:[1]".to_string());
        match socket.connect().await {
            Err(SocketError::Refused(why)) => assert!(why.contains("outside the container"), "{why}"),
            other => panic!("a foreign peer was accepted: {other:?}"),
        }
    }

    #[test]
    fn a_linked_directory_is_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("symlink");
        assert!(ShimSocket::open(&link, "shim.sock").is_err());
    }
}
