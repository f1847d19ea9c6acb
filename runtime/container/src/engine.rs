//! The connection to the Docker engine: made on first use, version-negotiated, remade after the
//! engine went away.
//!
//! bollard speaks a newer API than older engines (Debian's 20.10 speaks 1.41), so every client is
//! negotiated down first. While no engine answers, every operation fails fast with
//! [`EngineError::Unavailable`]; the next operation after the engine is back connects again.

use std::sync::Mutex;

use bollard::Docker;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers (not running, socket missing, connection refused or reset).
    #[error("the Docker engine is unavailable: {0}")]
    Unavailable(String),
    /// The engine answered with an error.
    #[error("the Docker engine refused: {0}")]
    Refused(String),
    /// The engine answered with an error and this HTTP status (404: no such object).
    #[error("the Docker engine answered {status}: {message}")]
    Status {
        /// The engine's HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
}

impl From<bollard::errors::Error> for EngineError {
    fn from(error: bollard::errors::Error) -> Self {
        use bollard::errors::Error;
        match error {
            Error::DockerResponseServerError { status_code, message } => {
                Self::Status { status: status_code, message }
            }
            Error::SocketNotFoundError(path) => Self::Unavailable(format!("no socket at {path}")),
            Error::IOError { .. }
            | Error::HyperResponseError { .. }
            | Error::RequestTimeoutError
            | Error::HyperLegacyError { .. } => Self::Unavailable(error.to_string()),
            other => Self::Refused(other.to_string()),
        }
    }
}

impl EngineError {
    /// Whether the engine said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Status { status: 404, .. })
    }
}

/// A lazily connected engine client.
#[derive(Default)]
pub struct Engine {
    client: Mutex<Option<Docker>>,
}

impl Engine {
    /// A client that is connected and negotiated, connecting now if needed.
    ///
    /// Uses `DOCKER_HOST` when it names a Unix socket, else `/var/run/docker.sock`.
    pub async fn client(&self) -> Result<Docker, EngineError> {
        if let Some(client) = self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Ok(client);
        }
        let docker = Docker::connect_with_local_defaults()?;
        let docker = docker.negotiate_version().await?;
        *self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(docker.clone());
        Ok(docker)
    }

    /// Runs `operation` with a client; when the engine turns out to be gone, forgets the client so
    /// the next operation connects (and negotiates) again.
    pub async fn run<T, F>(&self, operation: impl FnOnce(Docker) -> F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, bollard::errors::Error>>,
    {
        let client = self.client().await?;
        let result = operation(client).await.map_err(EngineError::from);
        if matches!(result, Err(EngineError::Unavailable(_))) {
            self.forget();
        }
        result
    }

    /// Drops the client; the next operation connects again.
    pub fn forget(&self) {
        *self.client.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}
