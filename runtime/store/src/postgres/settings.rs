//! Settings every gateway of a cluster shares: the first gateway to need one sets it, the others
//! read what it set.

use std::sync::Arc;

use super::PgStore;
use crate::StoreError;

/// The admin token's key.
pub const ADMIN_TOKEN: &str = "admin_token";

/// The cluster's shared settings.
pub struct PgSettings {
    store: Arc<PgStore>,
}

impl PgSettings {
    /// The settings in `store`.
    pub fn new(store: Arc<PgStore>) -> Self {
        Self { store }
    }

    /// The value of `key`, set to `proposed` if it had none; with whether this call set it.
    /// Blocking.
    pub fn get_or_set(&self, key: &str, proposed: &str) -> Result<(String, bool), StoreError> {
        let (key, proposed) = (key.to_string(), proposed.to_string());
        self.store.with_client(move |client| async move {
            let set = client
                .execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &proposed],
                )
                .await?;
            let value: String =
                client.query_one("SELECT value FROM settings WHERE key = $1", &[&key]).await?.get(0);
            Ok((value, set > 0))
        })
    }
}
