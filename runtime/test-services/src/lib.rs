//! Real services of a test's or a benchmark's own, each on a loopback port (or socket) and
//! stopped when dropped: [`Postgres`] (Debian's `postgresql-15`), [`Haproxy`] (Debian's
//! `haproxy`), [`Registry`] (Debian's `docker-registry`), a second [`DockerEngine`] (Debian's
//! `docker.io`), and a [`NetNamespace`] to run a gateway behind a link a test can cut. A missing
//! one fails loudly, naming the package to install.

mod docker;
mod haproxy;
mod netns;
mod postgres;
mod registry;

pub use docker::DockerEngine;
pub use haproxy::Haproxy;
pub use netns::NetNamespace;
pub use postgres::Postgres;
pub use registry::Registry;

/// A free port on 127.0.0.1 (free when asked; a service binds it right after).
fn free_loopback_addr() -> std::net::SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}
