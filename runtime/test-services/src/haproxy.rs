//! A real HAProxy (Debian's `haproxy`) of a test's or a benchmark's own, in front of gateways
//! on loopback: round robin, health checks on `/healthz` every 100 ms, and a request whose
//! connection to a server fails is sent to another (`retries` with `option redispatch`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running load balancer; stopped when dropped.
pub struct Haproxy {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Starts one in front of `servers` (`host:port` each).
    pub fn start(servers: &[SocketAddr]) -> Self {
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or_else(|| panic!("HAProxy is not installed; install it: apt-get install haproxy"));
        let addr = crate::free_loopback_addr();
        let dir = tempfile::Builder::new().prefix("amphi-haproxy-").tempdir().expect("tempdir");
        let mut config = format!(
            "global\n  maxconn 4000\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  \
             retries 3\n  option redispatch 1\n\
             frontend gateways\n  bind {addr}\n  default_backend gateways\n\
             backend gateways\n  balance roundrobin\n  option httpchk GET /healthz\n  \
             default-server inter 100ms fall 2 rise 2\n"
        );
        for (index, server) in servers.iter().enumerate() {
            config.push_str(&format!("  server g{index} {server} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(config.as_bytes())).expect("haproxy.cfg");
        let child = Command::new(binary)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "HAProxy did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child), _dir: dir, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
