//! A network namespace of a test's own, joined to the host by a veth pair on a /30 of
//! 10.213.0.0/16, so a gateway can run behind a link the test can cut and restore (as a node's
//! network failing). Needs root and `ip` (iproute2). Removed when dropped.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A namespace and its link to the host.
pub struct NetNamespace {
    name: String,
    inside_link: String,
    /// The host's address on the link (reachable from inside).
    pub host_ip: Ipv4Addr,
    /// The namespace's address on the link (reachable from the host).
    pub inside_ip: Ipv4Addr,
}

/// Runs `ip ARGS`, panicking with its error.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("cannot run `ip` ({e}); network namespaces need iproute2: apt-get install iproute2")
    });
    assert!(
        output.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetNamespace {
    /// Makes a namespace with its link up.
    pub fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Unique among this machine's test processes: the process id and a counter pick the /30.
        let slot = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 16_000;
        let (third, fourth) = ((slot / 64) as u8, ((slot % 64) * 4) as u8);
        let host_ip = Ipv4Addr::new(10, 213, third, fourth + 1);
        let inside_ip = Ipv4Addr::new(10, 213, third, fourth + 2);
        let name = format!("amphi-ns{slot}");
        let (host_link, inside_link) = (format!("amphi-h{slot}"), format!("amphi-i{slot}"));
        // Left over from a killed run of the same slot.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", &host_link]).stderr(Stdio::null()).status();
        ip(&["netns", "add", &name]);
        let namespace = Self { name, inside_link, host_ip, inside_ip };
        ip(&["link", "add", &host_link, "type", "veth", "peer", "name", &namespace.inside_link]);
        ip(&["link", "set", &namespace.inside_link, "netns", &namespace.name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        namespace.inside(&["addr", "add", &format!("{inside_ip}/30"), "dev", &namespace.inside_link]);
        namespace.inside(&["link", "set", "lo", "up"]);
        namespace.restore();
        namespace
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Cuts the link (inside, so the host's route to it stays and packets to it are dropped,
    /// not sent elsewhere).
    pub fn cut(&self) {
        self.inside(&["link", "set", &self.inside_link, "down"]);
    }

    /// Brings the link back.
    pub fn restore(&self) {
        self.inside(&["link", "set", &self.inside_link, "up"]);
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the host's end.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}
