//! A real OCI image registry (Debian's `docker-registry`, the CNCF distribution registry) of a
//! test's own: filesystem storage in a temporary directory, plain HTTP on a free loopback port
//! (Docker engines use a loopback registry without TLS by default).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry; stopped when dropped.
pub struct Registry {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Registry {
    /// Starts an empty registry.
    pub fn start() -> Self {
        let binary = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(binary).exists(),
            "the image registry is not installed; install it: apt-get install docker-registry"
        );
        let addr = crate::free_loopback_addr();
        let dir = tempfile::Builder::new().prefix("amphi-registry-").tempdir().expect("tempdir");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let path = dir.path().join("config.yml");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(config.as_bytes())).expect("config.yml");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Self { child: Some(child), _dir: dir, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !registry.answers() {
            assert!(Instant::now() < deadline, "the image registry did not answer on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }

    /// `HOST:PORT`, as `serve --image-registry` takes it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Whether `GET /v2/` answers 200 (the registry API's version check).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.addr) else { return false };
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.split_whitespace().nth(1) == Some("200")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
