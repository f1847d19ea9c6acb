//! Container artifacts over the admin API: building an uploaded context into an image, and
//! registering an image already on the engine. The image id is the artifact digest, deployed with
//! `PUT /v1/functions/{name}` like a `.wasm` digest.
//!
//! A build answers in one piece (201 with the artifact, or a problem naming the failing step and
//! its last output), or, when the client accepts `application/x-ndjson`, as a stream of events:
//! `{"type":"step","text":…}`, `{"type":"output","text":…}`, then `{"type":"artifact",
//! "artifact":{…},"created":bool}` or `{"type":"error","problem":{…}}`. With `function=NAME` the
//! build output also goes to that function's log (stream `build`).

use std::sync::Arc;

use amphi_container::{BuildError, BuildEvent, ContextError, EngineError};
use amphi_contract::function::validate_name;
use amphi_contract::invocation::now_unix_us;
use amphi_contract::record::{LogLine, LogStream};
use amphi_contract::{Problem, ProblemKind, ResponseBody, TelemetrySink};
use amphi_store::registry::ArtifactInfo;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::platform::{Platform, blocking, internal};
use crate::respond::json;

/// A build context upload.
pub struct BuildRequest {
    /// The tar or tar.gz bytes.
    pub context: Bytes,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    /// The function whose log gets the build output.
    pub function: Option<String>,
}

/// `{"image": "name:tag"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageReference {
    image: String,
}

/// How many times the upload limit a context may unpack to.
const UNPACK_FACTOR: u64 = 4;

enum Message {
    Progress(BuildEvent),
    Done(Result<(ArtifactInfo, bool), Problem>),
}

/// Registers an image already on the engine.
pub async fn import_image(
    platform: &Arc<Platform>,
    reference: ImageReference,
) -> Result<Response<ResponseBody>, Problem> {
    let image = reference.image.trim();
    if image.is_empty() {
        return Err(Problem::new(ProblemKind::BadRequest, "`image` is empty"));
    }
    let found = platform.container.find_image(image).await.map_err(|e| match e {
        e if e.is_not_found() => Problem::new(
            ProblemKind::UnprocessableEntity,
            format!("no image `{image}` on the Docker engine (build, pull or load it there first)"),
        ),
        e => engine_problem(e),
    })?;
    let (artifact, created) = platform.register_image(found).await?;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &artifact))
}

/// Checks and builds a context.
pub async fn build(
    platform: &Arc<Platform>,
    request: BuildRequest,
    streaming: bool,
) -> Result<Response<ResponseBody>, Problem> {
    if let Some(function) = &request.function {
        validate_name(function).map_err(|e| Problem::new(ProblemKind::BadRequest, e))?;
    }
    let limit = platform.config.max_upload_bytes.saturating_mul(UNPACK_FACTOR);
    let (bytes, dockerfile) = (request.context.clone(), request.dockerfile.clone());
    let checked = blocking(move || {
        amphi_container::context::check(&bytes, &dockerfile, limit).map_err(|e| match e {
            ContextError::TooLarge { .. } => Problem::new(ProblemKind::PayloadTooLarge, e.to_string()),
            ContextError::Invalid(why) => {
                Problem::new(ProblemKind::UnprocessableEntity, format!("the build context is refused: {why}"))
            }
        })
    })
    .await?;

    let (sender, mut receiver) = mpsc::unbounded_channel();
    // The build goes on when the client hangs up: its image is registered either way.
    tokio::spawn(run_build(platform.clone(), request, checked, sender));
    if streaming {
        let events = UnboundedReceiverStream::new(receiver).map(|message| {
            let mut line = serde_json::to_vec(&event_json(&message)).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, amphi_contract::BoxError>(Frame::data(Bytes::from(line)))
        });
        let mut response = Response::new(StreamBody::new(events).boxed_unsync());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        return Ok(response);
    }
    while let Some(message) = receiver.recv().await {
        if let Message::Done(done) = message {
            let (artifact, created) = done?;
            return Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &artifact));
        }
    }
    Err(internal("the build ended without a result"))
}

async fn run_build(
    platform: Arc<Platform>,
    request: BuildRequest,
    checked: amphi_container::CheckedContext,
    sender: mpsc::UnboundedSender<Message>,
) {
    let logs = platform.logs.clone();
    let function = request.function.clone();
    let log = move |text: &str| {
        if let Some(function) = &function {
            logs.log_line(LogLine {
                seq: 0,
                ts_us: now_unix_us(),
                function: function.clone(),
                invocation_id: String::new(),
                stream: LogStream::Build,
                line: text.to_string(),
            });
        }
    };
    let progress = |event: BuildEvent| {
        match &event {
            BuildEvent::Step(text) | BuildEvent::Output(text) => log(text),
        }
        let _ = sender.send(Message::Progress(event));
    };
    let built = platform.container.build(request.context, &checked, progress).await;
    let done = match built {
        Ok(image) => platform.register_image(image).await,
        Err(BuildError::Engine(e)) => Err(engine_problem(e)),
        Err(failed) => {
            let mut detail = failed.to_string();
            log(&detail);
            let output_tail = match failed {
                BuildError::Failed { output_tail, .. } => output_tail,
                BuildError::Engine(_) => Vec::new(),
            };
            if !output_tail.is_empty() {
                detail.push_str("\nlast output:\n");
                detail.push_str(&output_tail.join("\n"));
            }
            Err(Problem::new(ProblemKind::UnprocessableEntity, detail))
        }
    };
    let _ = sender.send(Message::Done(done));
}

fn event_json(message: &Message) -> serde_json::Value {
    match message {
        Message::Progress(BuildEvent::Step(text)) => json!({"type": "step", "text": text}),
        Message::Progress(BuildEvent::Output(text)) => json!({"type": "output", "text": text}),
        Message::Done(Ok((artifact, created))) => {
            json!({"type": "artifact", "artifact": artifact, "created": created})
        }
        Message::Done(Err(problem)) => json!({"type": "error", "problem": problem}),
    }
}

fn engine_problem(error: EngineError) -> Problem {
    match error {
        EngineError::Unavailable(_) => Problem::new(ProblemKind::BackendUnavailable, error.to_string()),
        other => Problem::new(ProblemKind::UnprocessableEntity, other.to_string()),
    }
}
