//! A second Docker engine of a test's own (Debian's `docker.io`), for one more node of a cluster
//! on the same machine: its own data root, exec root and socket in a temporary directory, its own
//! bridge and no iptables rules (its containers are meant for functions without network).
//! Stopped, its containers with it, when dropped.
//!
//! Not `--bridge=none`: an engine started so deletes the default bridge, `docker0`, which is the
//! machine engine's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running engine; stopped when dropped.
pub struct DockerEngine {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    bridge: String,
    /// Its API socket.
    pub socket: PathBuf,
}

impl DockerEngine {
    /// Starts an empty engine with the storage driver of the machine's own engine.
    pub fn start() -> Self {
        let binary = "/usr/sbin/dockerd";
        assert!(
            std::path::Path::new(binary).exists(),
            "dockerd is not installed; install it: apt-get install docker.io"
        );
        // Short: containerd's sockets live under the exec root.
        let dir = tempfile::Builder::new().prefix("amphi-dk-").tempdir_in("/tmp").expect("tempdir");
        let socket = dir.path().join("docker.sock");
        // A bridge of its own, on a /24 of 10.214.0.0/16 no other engine of this machine uses.
        let slot = std::process::id() % 250 + 1;
        let bridge = format!("amphi-br{slot}");
        let ip = |args: &[&str]| {
            let done = Command::new("ip").args(args).stderr(Stdio::null()).status();
            done.is_ok_and(|s| s.success())
        };
        ip(&["link", "del", &bridge]);
        assert!(
            ip(&["link", "add", &bridge, "type", "bridge"])
                && ip(&["addr", "add", &format!("10.214.{slot}.1/24"), "dev", &bridge])
                && ip(&["link", "set", &bridge, "up"]),
            "cannot make the bridge {bridge} for a second Docker engine (needs root and iproute2)"
        );
        // Its own (empty) settings file: the machine's may name the machine engine's data root.
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{}").expect("daemon.json");
        let mut command = Command::new(binary);
        command
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg(format!("--bridge={bridge}"))
            .args(["--iptables=false", "--ip6tables=false"]);
        if let Some(driver) = machine_storage_driver() {
            command.arg("--storage-driver").arg(driver);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dockerd.log")).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("dockerd starts");
        let engine = Self { child: Some(child), dir: Some(dir), bridge, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.answers() {
            assert!(Instant::now() < deadline, "the second Docker engine did not start: {}", engine.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    /// `DOCKER_HOST` for a process that should use this engine.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn answers(&self) -> bool {
        Command::new("docker")
            .args(["--host", &self.docker_host(), "version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.path().join("dockerd.log")).ok())
            .unwrap_or_default()
    }
}

/// The storage driver of the machine's engine (`/etc/docker/daemon.json`), which is the one known
/// to work on this machine's file systems.
fn machine_storage_driver() -> Option<String> {
    let text = std::fs::read_to_string("/etc/docker/daemon.json").ok()?;
    let start = text.find("\"storage-driver\"")?;
    let value = text[start + "\"storage-driver\"".len()..].split('"').nth(1)?;
    Some(value.to_string())
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            // Layers it unpacked may still be mounted for a moment; what cannot go stays in /tmp.
            let _ =
                Command::new("umount").arg("-R").arg(dir.path().join("data")).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(dir.path());
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
    }
}
