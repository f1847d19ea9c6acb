//! A PostgreSQL server (Debian's `postgresql-15`): `initdb` in a temporary
//! directory, `postgres` on a free loopback port, stopped when dropped. As root it runs as the
//! `postgres` user (through `setpriv`, which execs: the child is the server itself), since
//! PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; stopped when dropped.
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    /// Addresses it listens on besides loopback (the host side of network namespaces).
    also_on: Vec<std::net::Ipv4Addr>,
}

/// The directory of the server's programs, or a panic naming what to install.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server found under /usr/lib/postgresql; install it: apt-get install postgresql-15"
        )
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Starts a fresh server; its superuser `amphi` needs no password on loopback.
    pub fn start() -> Self {
        Self::start_also_on(&[])
    }

    /// Starts a fresh server that also listens on `addresses` (each the host side of a network
    /// namespace of the test's own) and lets `amphi` in from their /30 without a password.
    pub fn start_also_on(addresses: &[std::net::Ipv4Addr]) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("amphi-pg-").tempdir().expect("tempdir");
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown of the PostgreSQL directory");
        }
        let data = dir.path().join("data");
        let initdb = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "amphi", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
        let port = crate::free_loopback_addr().port();
        if !addresses.is_empty() {
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            for address in addresses {
                rules.push_str(&format!("host all all {address}/30 trust\n"));
            }
            std::fs::write(&hba, rules).expect("pg_hba.conf");
        }
        let mut server = Self { child: None, dir, port, also_on: addresses.to_vec() };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = as_server_user(&bin_dir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                &format!("listen_addresses={}", self.listen_addresses()),
                "-k",
            ])
            .arg(self.dir.path())
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        // Listening is not enough: a server still starting up refuses connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            Command::new(bin_dir().join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success())
        };
        while !ready() {
            assert!(Instant::now() < deadline, "PostgreSQL did not accept connections on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://amphi@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://amphi@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL through `address`, one of those given to [`Postgres::start_also_on`].
    pub fn url_via(&self, address: std::net::Ipv4Addr) -> String {
        format!("postgres://amphi@{address}:{}/postgres", self.port)
    }

    fn listen_addresses(&self) -> String {
        std::iter::once("127.0.0.1".to_string())
            .chain(self.also_on.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops the server (a fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
