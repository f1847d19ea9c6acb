//! What a deployed function is: an immutable version of an artifact plus its config.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A function config, config patch or function name that cannot be accepted; the message names
/// the field and says why (it becomes the `detail` of the API's problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl InvalidConfig {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// How an artifact reaches the contract. Detected at upload, never declared by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler`.
    WasiHttpComponent,
    /// A WASI 0.3 component exporting `wasi:http/handler@0.3.x` (async, bodies as streams).
    #[serde(rename = "wasi-http-0.3-component")]
    WasiHttp3Component,
    /// A WASI preview1 command module speaking CGI 1.1 over stdio.
    CgiModule,
    /// A container image on the Docker engine, serving HTTP on `$PORT` or CGI over stdio.
    ContainerImage,
}

impl ArtifactKind {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WasiHttpComponent => "wasi-http-component",
            Self::WasiHttp3Component => "wasi-http-0.3-component",
            Self::CgiModule => "cgi-module",
            Self::ContainerImage => "container-image",
        }
    }

    /// Parses [`ArtifactKind::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::WasiHttpComponent, Self::WasiHttp3Component, Self::CgiModule, Self::ContainerImage]
            .into_iter()
            .find(|k| k.as_str() == text)
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
    /// Most calls of this function in flight at once, over all its instances; more wait for a
    /// slot. One container instance's share is [`ContainerConfig::instance_concurrency`].
    pub concurrency: u32,
    /// Longest a call waits for one of the `concurrency` slots before it gets 429 (0: refuse at
    /// once). Container calls may then wait again for an instance (`container.queue_timeout_ms`).
    pub queue_timeout_ms: u64,
    /// Hosts (`host` or `host:port`) the function may send HTTP requests to; none by default.
    /// Wasm only: a container function is granted the network as a whole with `container.network`.
    pub allowed_outbound_hosts: Vec<String>,
    /// How a container function's instances are run and pooled (ignored by wasm functions).
    pub container: ContainerConfig,
    /// Most async calls (jobs) of this function running at once; they count against
    /// `concurrency` too. Unset: half of `concurrency` (at least 1), so a backlog never takes
    /// every slot from synchronous callers.
    pub async_concurrency: Option<u32>,
    /// How a job whose attempt failed is tried again.
    pub retry: RetryConfig,
    /// The export run once at deploy to pre-initialize a wasm function (`wizer-initialize` by
    /// convention); every instance then starts from the memory it left. Unset: no initializer.
    pub init: Option<String>,
    /// Longest the initializer may run at deploy, in milliseconds.
    pub init_timeout_ms: u64,
    /// Instance reuse, for WASI 0.3 components only (CONTRACT.md §6). Unset: a fresh instance
    /// for every request, as for every other wasm function.
    pub reuse: Option<ReuseConfig>,
}

/// How a WASI 0.3 function's instances serve more than one request (the knobs `wasmtime serve`
/// and Spin expose). State a call leaves in the instance is then seen by the calls after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReuseConfig {
    /// Requests one instance serves in all before it is retired.
    pub max_requests: u32,
    /// Requests one instance serves at once (the guest's own async tasks interleave them); never
    /// more than `max_requests`, whatever this says.
    pub max_concurrent: u32,
    /// An instance with no request for this long is dropped, in milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        Self { max_requests: 128, max_concurrent: 16, idle_timeout_ms: 10_000 }
    }
}

impl ReuseConfig {
    /// Most requests an instance may be asked to serve in all.
    pub const MAX_REQUESTS: u32 = 1_000_000;

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_requests == 0 || self.max_requests > Self::MAX_REQUESTS {
            return Err(InvalidConfig(format!(
                "reuse.max_requests must be 1 to {}, got {}",
                Self::MAX_REQUESTS,
                self.max_requests
            )));
        }
        // Above `max_requests` it changes nothing, so the default may stand beside a small one.
        if self.max_concurrent == 0 || self.max_concurrent > Self::MAX_REQUESTS {
            return Err(InvalidConfig(format!(
                "reuse.max_concurrent must be 1 to {}, got {}",
                Self::MAX_REQUESTS,
                self.max_concurrent
            )));
        }
        if self.idle_timeout_ms == 0
            || Duration::from_millis(self.idle_timeout_ms) > FunctionConfig::MAX_TIMEOUT
        {
            return Err(InvalidConfig(format!(
                "reuse.idle_timeout_ms must be between 1ms and {}s, got {}ms",
                FunctionConfig::MAX_TIMEOUT.as_secs(),
                self.idle_timeout_ms
            )));
        }
        Ok(())
    }

    /// The idle timeout as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// A kind of failed attempt a job may be retried on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RetryOn {
    /// The function answered with a 5xx status, or failed (trap, crash, bad response).
    #[serde(rename = "5xx")]
    ServerError,
    /// The call ran past the function's timeout.
    #[serde(rename = "timeout")]
    Timeout,
    /// The platform could not run the call (backend unavailable, instance failed to start).
    #[serde(rename = "platform")]
    Platform,
    /// The function answered 429 Too Many Requests.
    #[serde(rename = "429")]
    TooManyRequests,
}

/// The retry policy of a function's jobs: exponential backoff with full jitter (a delay drawn
/// between 0 and `min(backoff_max, backoff_initial × 2^(n-1))` after the n-th failed attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first one included; when they are used up the job is `dead`.
    pub attempts: u32,
    /// The backoff's first ceiling, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The backoff's largest ceiling, in milliseconds.
    pub backoff_max_ms: u64,
    /// Which failures are retried; any other failure ends the job `failed` at once.
    pub on: Vec<RetryOn>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            on: vec![RetryOn::ServerError, RetryOn::Timeout, RetryOn::Platform, RetryOn::TooManyRequests],
        }
    }
}

impl RetryConfig {
    /// Most attempts a policy may ask for.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Longest backoff ceiling a policy may ask for.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

    /// Checks the policy.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.attempts == 0 || self.attempts > Self::MAX_ATTEMPTS {
            return Err(InvalidConfig(format!(
                "retry.attempts must be 1 to {}, got {}",
                Self::MAX_ATTEMPTS,
                self.attempts
            )));
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(InvalidConfig(format!(
                "retry.backoff_initial_ms ({}) is more than retry.backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            )));
        }
        if Duration::from_millis(self.backoff_max_ms) > Self::MAX_BACKOFF {
            return Err(InvalidConfig(format!(
                "retry.backoff_max_ms must be at most {} (a day)",
                Self::MAX_BACKOFF.as_millis()
            )));
        }
        Ok(())
    }

    /// The ceiling of the delay after failed attempt `attempt` (1-based): the delay is drawn
    /// uniformly between 0 and this (full jitter).
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(62);
        let ceiling = self.backoff_initial_ms.saturating_mul(1u64 << doublings);
        Duration::from_millis(ceiling.min(self.backoff_max_ms))
    }
}

/// How a container function speaks the contract inside its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerProtocol {
    /// The image's command is a long-running server answering HTTP on `$PORT`.
    Http,
    /// The image's command is run once per request, CGI 1.1 over stdin and stdout.
    Cgi,
}

/// The instance pool and sandbox of a container function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerConfig {
    /// Instances started at deploy and kept running (reserved, warm); 0 scales to zero.
    pub min_instances: u32,
    /// Most instances at once; calls beyond their capacity wait in the queue.
    pub max_instances: u32,
    /// Calls one instance serves at once (`concurrency` in configs, `--instance-concurrency` in
    /// the CLI); the function-wide limit is [`FunctionConfig::concurrency`].
    #[serde(rename = "concurrency")]
    pub instance_concurrency: u32,
    /// Longest a call waits in the queue for a free instance before it gets 429.
    pub queue_timeout_ms: u64,
    /// An idle instance above `min_instances` is paused after this long.
    pub pause_after_ms: u64,
    /// An idle instance above `min_instances` is removed after this long.
    pub idle_timeout_ms: u64,
    /// CPU share, in thousandths of a core.
    pub cpu_millis: u32,
    /// Most processes and threads in one instance.
    pub pids_limit: u32,
    /// Whether the instance has a network (Docker's default bridge); none by default.
    pub network: bool,
    /// Whether the image's root file system is writable; read-only by default (`/tmp` is a tmpfs).
    pub writable_root: bool,
    /// HTTP on `$PORT`, or CGI over stdio; unset, the image's `amphi.protocol` label decides,
    /// and without one it is HTTP.
    pub protocol: Option<ContainerProtocol>,
    /// The port the function's server listens on inside the container (its `$PORT`).
    pub port: u16,
    /// The command to run instead of the image's entrypoint and command.
    pub command: Option<Vec<String>>,
    /// The user the command runs as (`uid[:gid]`, or a name the image knows). Unset, the image's
    /// `USER` if it names one; an image that would run as root runs as `65534:65534` (nobody)
    /// instead. `"root"` or `"0"` must be asked for by name.
    pub user: Option<String>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            min_instances: 0,
            max_instances: 10,
            instance_concurrency: 1,
            queue_timeout_ms: 10_000,
            pause_after_ms: 10_000,
            idle_timeout_ms: 300_000,
            cpu_millis: 1000,
            pids_limit: 256,
            network: false,
            writable_root: false,
            protocol: None,
            port: 8080,
            command: None,
            user: None,
        }
    }
}

impl ContainerProtocol {
    /// The name in configs and image labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Cgi => "cgi",
        }
    }

    /// Parses [`ContainerProtocol::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Http, Self::Cgi].into_iter().find(|p| p.as_str() == text)
    }
}

impl ContainerConfig {
    /// Checks the pool and sandbox settings.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_instances == 0 || self.max_instances > 1000 {
            return Err(InvalidConfig(format!(
                "container.max_instances must be 1 to 1000, got {}",
                self.max_instances
            )));
        }
        if self.min_instances > self.max_instances {
            return Err(InvalidConfig(format!(
                "container.min_instances ({}) is more than container.max_instances ({})",
                self.min_instances, self.max_instances
            )));
        }
        if self.instance_concurrency == 0 {
            return Err(InvalidConfig::new("container.concurrency must be at least 1"));
        }
        if self.cpu_millis < 10 {
            return Err(InvalidConfig::new(
                "container.cpu_millis must be at least 10 (a hundredth of a core)",
            ));
        }
        if self.pids_limit < 4 {
            return Err(InvalidConfig::new("container.pids_limit must be at least 4"));
        }
        if self.port == 0 {
            return Err(InvalidConfig::new("container.port must not be 0"));
        }
        if self.idle_timeout_ms < self.pause_after_ms {
            return Err(InvalidConfig::new(
                "container.idle_timeout_ms must not be less than container.pause_after_ms",
            ));
        }
        if self.user.as_ref().is_some_and(|u| {
            u.is_empty() || u.len() > 64 || u.chars().any(|c| c.is_control() || c.is_whitespace())
        }) {
            return Err(InvalidConfig::new(
                "container.user must be a user name or uid[:gid] of at most 64 characters",
            ));
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty() || c.iter().any(|a| a.contains('\0'))) {
            return Err(InvalidConfig::new(
                "container.command must be a non-empty list of arguments without NUL bytes",
            ));
        }
        Ok(())
    }

    /// How long an idle instance runs before it is paused.
    pub fn pause_after(&self) -> Duration {
        Duration::from_millis(self.pause_after_ms)
    }

    /// How long an idle instance lives before it is removed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// How long a call may wait for a free instance.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            memory_bytes: 128 << 20,
            env: BTreeMap::new(),
            concurrency: 100,
            queue_timeout_ms: 10_000,
            allowed_outbound_hosts: Vec::new(),
            container: ContainerConfig::default(),
            async_concurrency: None,
            retry: RetryConfig::default(),
            init: None,
            init_timeout_ms: 60_000,
            reuse: None,
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

    /// How long a call may wait for a concurrency slot.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }

    /// Most jobs of this function running at once (see [`FunctionConfig::async_concurrency`]).
    pub fn async_concurrency(&self) -> u32 {
        self.async_concurrency.unwrap_or(self.concurrency / 2).clamp(1, self.concurrency.max(1))
    }

    /// This config with `patch` (a JSON merge patch, RFC 7396) applied: fields the patch does not
    /// name keep their values, and `null` resets a field to its default. Not validated; callers
    /// validate the result as they would any config.
    pub fn with_patch(&self, patch: &serde_json::Value) -> Result<FunctionConfig, InvalidConfig> {
        if !patch.is_object() {
            return Err(InvalidConfig::new("a config patch must be a JSON object"));
        }
        let mut config = serde_json::to_value(self)
            .map_err(|e| InvalidConfig(format!("cannot represent the config: {e}")))?;
        json_patch::merge(&mut config, patch);
        serde_json::from_value(config).map_err(|e| InvalidConfig(format!("invalid config: {e}")))
    }

    /// Checks what of the config depends on the kind of artifact it runs.
    pub fn check_kind(&self, kind: ArtifactKind) -> Result<(), InvalidConfig> {
        if self.reuse.is_some() && kind != ArtifactKind::WasiHttp3Component {
            return Err(InvalidConfig(format!(
                "reuse is for WASI 0.3 components only; this artifact is a {}, which gets a fresh instance per request",
                kind.as_str()
            )));
        }
        Ok(())
    }

    /// Checks the config on its own; backends check what depends on them (such as memory ceilings).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.timeout_ms == 0 || self.timeout() > Self::MAX_TIMEOUT {
            return Err(InvalidConfig(format!(
                "timeout must be between 1ms and {}s, got {}ms",
                Self::MAX_TIMEOUT.as_secs(),
                self.timeout_ms
            )));
        }
        if self.memory_bytes < 64 << 10 {
            return Err(InvalidConfig::new("memory must be at least 64KiB (one wasm page)"));
        }
        if self.concurrency == 0 {
            return Err(InvalidConfig::new("concurrency must be at least 1"));
        }
        if self.queue_timeout() > Self::MAX_TIMEOUT {
            return Err(InvalidConfig(format!(
                "queue_timeout_ms must be at most {}s",
                Self::MAX_TIMEOUT.as_secs()
            )));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(InvalidConfig(format!("`{key}` is not a valid environment variable name")));
            }
        }
        if let Some(value) = self.env.values().find(|v| v.contains('\0')) {
            return Err(InvalidConfig(format!("environment value `{value}` contains a NUL byte")));
        }
        if let Some(cap) = self.async_concurrency
            && (cap == 0 || cap > self.concurrency)
        {
            return Err(InvalidConfig(format!(
                "async_concurrency must be 1 to concurrency ({}), got {cap}",
                self.concurrency
            )));
        }
        if let Some(export) = &self.init
            && (export.is_empty() || export.len() > 256 || export.chars().any(char::is_control))
        {
            return Err(InvalidConfig::new(
                "init must name an export: 1 to 256 characters, no control characters",
            ));
        }
        if self.init_timeout_ms == 0 || Duration::from_millis(self.init_timeout_ms) > Self::MAX_TIMEOUT {
            return Err(InvalidConfig(format!(
                "init_timeout_ms must be between 1ms and {}s, got {}ms",
                Self::MAX_TIMEOUT.as_secs(),
                self.init_timeout_ms
            )));
        }
        if let Some(reuse) = &self.reuse {
            reuse.validate()?;
        }
        self.retry.validate()?;
        self.container.validate()
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
    /// The snapshot its instances start from, when its config names an initializer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSnapshot>,
}

/// What pre-initializing a wasm function at deploy made: the snapshot every instance starts from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitSnapshot {
    /// The export that ran.
    pub export: String,
    /// `sha256:<hex>` of what made the snapshot (artifact, export, env, memory limit, engine),
    /// under which it is stored: the same inputs give the same snapshot, so it is made once.
    pub digest: String,
    /// How long the initializer ran, in milliseconds.
    pub init_ms: u64,
    /// The snapshot's size in bytes.
    pub size: u64,
    /// Whether this deploy found the snapshot made already (the initializer did not run).
    pub reused: bool,
}

/// Checks a function name: it is a URL path segment and a file-system-safe key.
pub fn validate_name(name: &str) -> Result<(), InvalidConfig> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if valid {
        Ok(())
    } else {
        Err(InvalidConfig(format!(
            "`{name}` is not a valid function name: use 1-63 lowercase letters, digits, `-` or `_`, \
             starting with a letter or digit"
        )))
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

    #[test]
    fn retry_policy_and_async_share() {
        let config: FunctionConfig =
            serde_json::from_str(r#"{"retry":{"attempts":5,"on":["5xx","429"]},"concurrency":9}"#)
                .expect("parses");
        assert_eq!(config.retry.attempts, 5);
        assert_eq!(config.retry.on, vec![RetryOn::ServerError, RetryOn::TooManyRequests]);
        assert_eq!(config.async_concurrency(), 4, "half of concurrency");
        assert_eq!(FunctionConfig { concurrency: 1, ..Default::default() }.async_concurrency(), 1);
        let retry = RetryConfig::default();
        assert_eq!(retry.backoff_ceiling(1), Duration::from_secs(1));
        assert_eq!(retry.backoff_ceiling(3), Duration::from_secs(4));
        assert_eq!(retry.backoff_ceiling(40), Duration::from_secs(60));
        assert!(serde_json::from_str::<FunctionConfig>(r#"{"retry":{"on":["4xx"]}}"#).is_err());
        let inverted = RetryConfig { backoff_initial_ms: 10, backoff_max_ms: 5, ..Default::default() };
        assert!(inverted.validate().is_err());
        assert!(FunctionConfig { async_concurrency: Some(0), ..Default::default() }.validate().is_err());
    }
}
