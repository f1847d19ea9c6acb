//! What a deployed function is: an immutable version of an artifact plus its config.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How an artifact reaches the contract. Detected at upload, never declared by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler`.
    WasiHttpComponent,
    /// A WASI preview1 command module speaking CGI 1.1 over stdio.
    CgiModule,
}

impl ArtifactKind {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WasiHttpComponent => "wasi-http-component",
            Self::CgiModule => "cgi-module",
        }
    }
}

/// Limits and grants of a function. Every field has a default, so `{}` is a valid config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionConfig {
    /// Total time one call may take, from admission to the end of the response body.
    pub timeout_ms: u64,
    /// Most linear memory the function may hold, in bytes.
    pub memory_bytes: u64,
    /// Environment variables granted to the function (none by default).
    pub env: BTreeMap<String, String>,
    /// Most calls of this function in flight at once; more get 429.
    pub concurrency: u32,
    /// Hosts (`host` or `host:port`) the function may send HTTP requests to; none by default.
    pub allowed_outbound_hosts: Vec<String>,
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            memory_bytes: 128 << 20,
            env: BTreeMap::new(),
            concurrency: 100,
            allowed_outbound_hosts: Vec::new(),
        }
    }
}

impl FunctionConfig {
    /// Largest timeout a function may ask for.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

    /// The timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks the config on its own; backends check what depends on them (such as memory ceilings).
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.timeout() > Self::MAX_TIMEOUT {
            return Err(format!(
                "timeout must be between 1ms and {}s, got {}ms",
                Self::MAX_TIMEOUT.as_secs(),
                self.timeout_ms
            ));
        }
        if self.memory_bytes < 64 << 10 {
            return Err("memory must be at least 64KiB (one wasm page)".into());
        }
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("`{key}` is not a valid environment variable name"));
            }
        }
        if let Some(value) = self.env.values().find(|v| v.contains('\0')) {
            return Err(format!("environment value `{value}` contains a NUL byte"));
        }
        Ok(())
    }
}

/// One immutable version of a function: what the gateway routes to and a backend runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionVersion {
    /// The function's name, as in `/fn/{name}`.
    pub name: String,
    /// 1 for the first deploy, one more for every deploy or config change after it.
    pub version: u64,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    /// How the artifact speaks the contract.
    pub kind: ArtifactKind,
    /// Limits and grants.
    pub config: FunctionConfig,
    /// When this version was made, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// Checks a function name: it is a URL path segment and a file-system-safe key.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid function name: use 1-63 lowercase letters, digits, `-` or `_`, \
             starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("hello").is_ok());
        assert!(validate_name("img-2_x").is_ok());
        for bad in ["", "Hello", "../x", "a/b", "-x", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn config_defaults_and_checks() {
        let config: FunctionConfig = serde_json::from_str("{}").expect("empty config parses");
        assert_eq!(config, FunctionConfig::default());
        assert!(config.validate().is_ok());
        assert!(serde_json::from_str::<FunctionConfig>(r#"{"timout_ms":5}"#).is_err());
        let zero = FunctionConfig { timeout_ms: 0, ..Default::default() };
        assert!(zero.validate().is_err());
        let bad_env =
            FunctionConfig { env: [("A=B".to_string(), "x".to_string())].into(), ..Default::default() };
        assert!(bad_env.validate().is_err());
    }
}
