//! Images: building one from a checked context, and looking one up by reference.
//!
//! A built image is tagged `amphi/build:<hex of the context digest>`, so uploading the same
//! context again finds it without a build. Every image Amphi builds carries the labels
//! `amphi.managed=true` and `amphi.context-digest`.

use std::collections::HashMap;

use bollard::query_parameters::BuildImageOptions;
use bytes::Bytes;
use futures::StreamExt as _;

use crate::context::CheckedContext;
use crate::engine::{Engine, EngineError};

/// An image on the engine that a function can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image id, `sha256:<hex>`: the function's artifact digest.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// What it runs: its entrypoint followed by its command.
    pub command: Vec<String>,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its `USER`, empty when it sets none (root).
    pub user: String,
}

/// Something the build printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// The build began a Dockerfile step (`Step 2/5 : RUN make`).
    Step(String),
    /// A line of output.
    Output(String),
}

/// Why a build produced no image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The engine is unavailable or refused the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The Dockerfile failed.
    #[error("{}", describe_failure(.step.as_deref(), .message))]
    Failed {
        /// The step that failed, as the build printed it.
        step: Option<String>,
        /// The engine's error message.
        message: String,
        /// The last lines of output before the failure.
        output_tail: Vec<String>,
    },
}

fn describe_failure(step: Option<&str>, message: &str) -> String {
    match step {
        Some(step) => format!("the build failed at {step}: {message}"),
        None => format!("the build failed: {message}"),
    }
}

/// How many output lines a failure keeps.
const TAIL_LINES: usize = 20;

/// The tag of the image built from `context`.
fn tag_for(context: &CheckedContext) -> String {
    format!("amphi/build:{}", context.digest.trim_start_matches("sha256:"))
}

/// Looks up `reference` (a name, a `name:tag` or an id) on the engine.
pub async fn inspect(engine: &Engine, reference: &str) -> Result<ImageInfo, EngineError> {
    let reference = reference.to_string();
    let image = engine.run(|docker| async move { docker.inspect_image(&reference).await }).await?;
    let config = image.config.unwrap_or_default();
    let command =
        config.entrypoint.unwrap_or_default().into_iter().chain(config.cmd.unwrap_or_default()).collect();
    Ok(ImageInfo {
        id: image.id.unwrap_or_default(),
        size: image.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        command,
        labels: config.labels.unwrap_or_default(),
        user: config.user.unwrap_or_default(),
    })
}

/// Builds `bytes` (checked as `context`), reporting progress to `progress`; reuses the image
/// already built from the same context.
pub async fn build(
    engine: &Engine,
    bytes: Bytes,
    context: &CheckedContext,
    mut progress: impl FnMut(BuildEvent),
) -> Result<ImageInfo, BuildError> {
    let tag = tag_for(context);
    match inspect(engine, &tag).await {
        Ok(image) => {
            progress(BuildEvent::Output(format!("reusing {tag}, built earlier from the same context")));
            return Ok(image);
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let options = BuildImageOptions {
        dockerfile: context.dockerfile.clone(),
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        labels: Some(HashMap::from([
            ("amphi.managed".to_string(), "true".to_string()),
            ("amphi.context-digest".to_string(), context.digest.clone()),
        ])),
        ..Default::default()
    };
    let docker = engine.client().await?;
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(bytes)));
    let mut step = None;
    let mut tail: Vec<String> = Vec::new();
    let mut partial = String::new();
    let mut take_line = |line: &str, step: &mut Option<String>, tail: &mut Vec<String>| {
        let line = line.trim_end_matches('\r');
        if line.starts_with("Step ") {
            *step = Some(line.to_string());
            progress(BuildEvent::Step(line.to_string()));
        } else {
            if tail.len() == TAIL_LINES {
                tail.remove(0);
            }
            tail.push(line.to_string());
            progress(BuildEvent::Output(line.to_string()));
        }
    };
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(BuildError::Failed { step, message: error, output_tail: tail });
            }
            Err(e) => {
                let error = EngineError::from(e);
                if matches!(error, EngineError::Unavailable(_)) {
                    engine.forget();
                }
                return Err(error.into());
            }
        };
        if let Some(text) = info.stream {
            partial.push_str(&text);
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                take_line(&line[..line.len() - 1], &mut step, &mut tail);
            }
        }
        if let Some(detail) = info.error_detail {
            if !partial.is_empty() {
                let rest = std::mem::take(&mut partial);
                take_line(&rest, &mut step, &mut tail);
            }
            let message = detail.message.unwrap_or_else(|| "unknown error".into());
            return Err(BuildError::Failed { step, message, output_tail: tail });
        }
    }
    if !partial.is_empty() {
        take_line(&partial, &mut step, &mut tail);
    }
    match inspect(engine, &tag).await {
        Ok(image) => Ok(image),
        Err(e) if e.is_not_found() => Err(BuildError::Failed {
            step,
            message: "the engine reported no error but made no image".into(),
            output_tail: tail,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The registry a cluster's nodes share the images Amphi builds through (`serve --image-registry
/// HOST:PORT`): an image built on one node is pushed there before its deploy is acknowledged,
/// and a node that needs it pulls it on its first cold start. Images are kept under
/// `HOST:PORT/amphi/function:<hex of the image id>`; an image id is the digest of its config,
/// which pushing and pulling keep, so the function's artifact names the same image everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRegistry {
    host: String,
}

impl std::fmt::Display for ImageRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)
    }
}

impl ImageRegistry {
    /// The repository's name in the registry.
    const REPOSITORY: &str = "amphi/function";

    /// The registry at `host` (`HOST:PORT`, no scheme).
    pub fn new(host: impl Into<String>) -> Self {
        Self { host: host.into() }
    }

    /// Where image `id` is kept: the repository and the tag.
    fn reference(&self, id: &str) -> (String, String) {
        (format!("{}/{}", self.host, Self::REPOSITORY), id.trim_start_matches("sha256:").to_string())
    }
}

/// Why an image could not be shared through the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The engine is unavailable or refused the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The registry refused, or the engine could not reach it.
    #[error("the image registry {registry}: {message}")]
    Registry {
        /// The registry.
        registry: String,
        /// What went wrong.
        message: String,
    },
}

/// Pushes image `id` to `registry`.
pub async fn publish(engine: &Engine, registry: &ImageRegistry, id: &str) -> Result<(), RegistryError> {
    let (repository, tag) = registry.reference(id);
    let tagged = (id.to_string(), repository.clone(), tag.clone());
    engine
        .run(|docker| async move {
            let (id, repository, tag) = tagged;
            let options =
                bollard::query_parameters::TagImageOptionsBuilder::new().repo(&repository).tag(&tag).build();
            docker.tag_image(&id, Some(options)).await
        })
        .await?;
    let pushed = push(engine, registry, &repository, &tag).await;
    // Pushed or not, the registry's name goes again here, so the image keeps the one tag garbage
    // collection removes it by (an image in several repositories is not removed by id).
    let name = format!("{repository}:{tag}");
    let _ = engine
        .run(|docker| async move {
            let options =
                bollard::query_parameters::RemoveImageOptions { noprune: true, ..Default::default() };
            docker.remove_image(&name, Some(options), None).await
        })
        .await;
    pushed
}

/// Pushes `repository:tag`, failing with the registry's message.
async fn push(
    engine: &Engine,
    registry: &ImageRegistry,
    repository: &str,
    tag: &str,
) -> Result<(), RegistryError> {
    let docker = engine.client().await?;
    let options = bollard::query_parameters::PushImageOptionsBuilder::new().tag(tag).build();
    let pushing = docker.push_image(repository, Some(options), None);
    follow_progress(registry, pushing, |info| info.error_detail.and_then(|detail| detail.message)).await
}

/// Reads a push's or a pull's progress to its end; the first error the engine reports in it (or
/// a broken stream) is the registry's.
async fn follow_progress<T>(
    registry: &ImageRegistry,
    mut progress: impl futures::Stream<Item = Result<T, bollard::errors::Error>> + Unpin,
    error_of: impl Fn(T) -> Option<String>,
) -> Result<(), RegistryError> {
    while let Some(item) = progress.next().await {
        let failed = match item {
            Ok(info) => error_of(info),
            Err(error) => Some(error.to_string()),
        };
        if let Some(message) = failed {
            return Err(RegistryError::Registry { registry: registry.host.clone(), message });
        }
    }
    Ok(())
}

/// Pulls image `id` from `registry` onto `engine`, unless it is there already; returns whether it
/// pulled.
pub async fn fetch(engine: &Engine, registry: &ImageRegistry, id: &str) -> Result<bool, RegistryError> {
    match inspect(engine, id).await {
        Ok(_) => return Ok(false),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let (repository, tag) = registry.reference(id);
    let docker = engine.client().await?;
    let options =
        bollard::query_parameters::CreateImageOptionsBuilder::new().from_image(&repository).tag(&tag).build();
    let pulling = docker.create_image(Some(options), None, None);
    follow_progress(registry, pulling, |info| info.error_detail.and_then(|detail| detail.message)).await?;
    // The pulled image must be the one the function names.
    inspect(engine, id).await.map_err(|e| RegistryError::Registry {
        registry: registry.host.clone(),
        message: format!("pulled {repository}:{tag}, but image {id} is not on the engine: {e}"),
    })?;
    Ok(true)
}
