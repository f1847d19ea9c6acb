//! Artifacts a backend makes over the admin API: building uploaded source (a Dockerfile and its
//! context) into an artifact (an image), and registering one its engine already has. The
//! artifact's digest (an image id) is deployed with `PUT /v1/functions/{name}` like a `.wasm`
//! digest. Which backend builds is the backend's to say ([`Backend::builds_from`]).
//!
//! A build answers in one piece (201 with the artifact, or a problem naming the failing step and
//! its last output), or, when the client accepts `application/x-ndjson`, as a stream of events:
//! `{"type":"step","text":…}`, `{"type":"output","text":…}`, then `{"type":"artifact",
//! "artifact":{…},"created":bool}` or `{"type":"error","problem":{…}}`. With `function=NAME` the
//! build output also goes to that function's log (stream `build`).

use std::sync::Arc;

use amphi_contract::function::validate_name;
use amphi_contract::now_unix_us;
use amphi_contract::record::{LogLine, LogStream};
use amphi_contract::{
    Backend, BuildFailure, BuildProgress, CheckedSource, Problem, ProblemKind, ResponseBody, SourceUpload,
    TelemetrySink,
};
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

/// A source upload.
pub struct BuildRequest {
    /// The backend that builds it.
    pub builder: Arc<dyn Backend>,
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
    Progress(BuildProgress),
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
    let importing = platform.import(image).ok_or_else(|| {
        Problem::new(ProblemKind::UnprocessableEntity, "no backend of this server imports images")
    })?;
    let found = importing.await.map_err(|e| Problem::new(e.kind, e.detail))?;
    let (artifact, created) = platform.register_built(found).await?;
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &artifact))
}

/// Checks and builds a context.
pub async fn build(
    platform: &Arc<Platform>,
    request: BuildRequest,
    streaming: bool,
) -> Result<Response<ResponseBody>, Problem> {
    if let Some(function) = &request.function {
        validate_name(function).map_err(|e| Problem::new(ProblemKind::BadRequest, e.to_string()))?;
    }
    let source = SourceUpload {
        bytes: request.context.clone(),
        entry: request.dockerfile.clone(),
        max_unpacked: platform.config.max_upload_bytes.saturating_mul(UNPACK_FACTOR),
    };
    let (builder, to_check) = (request.builder.clone(), source.clone());
    let checked =
        blocking(move || builder.check_source(&to_check).map_err(|e| Problem::new(e.kind, e.detail))).await?;

    let (sender, mut receiver) = mpsc::unbounded_channel();
    // The build goes on when the client hangs up: its image is registered either way.
    tokio::spawn(run_build(platform.clone(), request, source, checked, sender));
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
    source: SourceUpload,
    checked: CheckedSource,
    sender: mpsc::UnboundedSender<Message>,
) {
    let logs = platform.logs.clone();
    let function = request.function.clone();
    let log = move |text: &str| {
        if let Some(function) = &function {
            // A build line the store cannot take is counted in its stats; there is no call to
            // note it on.
            let _ = logs.log_line(
                LogLine {
                    seq: 0,
                    ts_us: now_unix_us(),
                    function: function.clone(),
                    invocation_id: String::new(),
                    stream: LogStream::Build,
                    line: text.to_string(),
                },
                0,
            );
        }
    };
    let progress = Box::new(|event: BuildProgress| {
        match &event {
            BuildProgress::Step(text) | BuildProgress::Output(text) => log(text),
        }
        let _ = sender.send(Message::Progress(event));
    });
    let built = request.builder.build(source, checked, progress).await;
    let done = match built {
        Ok(artifact) => platform.register_built(artifact).await,
        // No engine to build on: nothing happened that the function's log should keep.
        Err(BuildFailure { kind: ProblemKind::BackendUnavailable, detail, .. }) => {
            Err(Problem::new(ProblemKind::BackendUnavailable, detail))
        }
        Err(BuildFailure { kind, mut detail, output_tail }) => {
            log(&detail);
            if !output_tail.is_empty() {
                detail.push_str("\nlast output:\n");
                detail.push_str(&output_tail.join("\n"));
            }
            Err(Problem::new(kind, detail))
        }
    };
    let _ = sender.send(Message::Done(done));
}

fn event_json(message: &Message) -> serde_json::Value {
    match message {
        Message::Progress(BuildProgress::Step(text)) => json!({"type": "step", "text": text}),
        Message::Progress(BuildProgress::Output(text)) => json!({"type": "output", "text": text}),
        Message::Done(Ok((artifact, created))) => {
            json!({"type": "artifact", "artifact": artifact, "created": created})
        }
        Message::Done(Err(problem)) => json!({"type": "error", "problem": problem}),
    }
}
