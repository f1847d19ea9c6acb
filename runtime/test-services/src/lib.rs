//! Real services of a test's or a benchmark's own, each on a loopback port and stopped when
//! dropped: [`Postgres`] (Debian's `postgresql-15`) and [`Haproxy`] (Debian's `haproxy`). A
//! missing one fails loudly, naming the package to install.

mod haproxy;
mod postgres;

pub use haproxy::Haproxy;
pub use postgres::Postgres;
