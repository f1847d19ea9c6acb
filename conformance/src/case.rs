//! A case: one TOML file in `conformance/cases/`, the calls to make and what each must get back.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::SuiteError;

/// One case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The file's stem: the case's name in the matrix.
    #[serde(skip)]
    pub name: String,
    /// What the case checks, in a sentence.
    pub description: String,
    /// The function config (`PUT /v1/functions/{name}`'s `config`) the case's function gets.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Start every call at once (each when its `after_in_flight` holds), instead of one after
    /// another.
    #[serde(default)]
    pub concurrent: bool,
    /// Where CONTRACT.md allows the backends or bindings to differ: required when an expectation
    /// has `when` overrides.
    pub allowed_difference: Option<String>,
    /// The calls.
    #[serde(rename = "call")]
    pub calls: Vec<Call>,
}

/// One HTTP call to the function.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The method; any token, extension methods included.
    #[serde(default = "get")]
    pub method: String,
    /// The path after `/fn/{function}`, sent as written (escapes included). `{i}` is the repeat.
    pub path: String,
    /// Call a function that does not exist instead of the case's.
    #[serde(default)]
    pub unknown_function: bool,
    /// Request headers, in order, repeats allowed: `[["x-a", "1"], ["x-a", "2"]]`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: Option<String>,
    /// The body as hex.
    pub body_hex: Option<String>,
    /// A generated binary body of this many bytes.
    pub body_len: Option<usize>,
    /// Send only once the function has at least this many calls in flight (`in_flight` of
    /// `GET /v1/functions/{name}`): a call that must find the function busy waits for that event
    /// rather than for a guessed delay. Concurrent cases.
    #[serde(default)]
    pub after_in_flight: u64,
    /// Send this call this many times.
    #[serde(default = "one")]
    pub repeat: usize,
    /// `sync` (`/fn`, the default) or `async` (`/async/fn`: the job is awaited, and `expect`
    /// checks its result, the last attempt's record and the job).
    #[serde(default)]
    pub trigger: Trigger,
    /// What it must get back.
    pub expect: Expect,
}

/// How a call reaches the function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `/fn/{function}…`: the response is the function's.
    #[default]
    Sync,
    /// `/async/fn/{function}…`: 202 and a job; the job's result is the function's response.
    Async,
}

/// What a call must get back. Text fields are templates: `{function}`, `{version}`, `{backend}`,
/// `{invocation_id}` (the response's), `{i}` (the repeat, from 0) and `{n}` (from 1) are filled in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status.
    pub status: Option<u16>,
    /// The body, exactly.
    pub body: Option<String>,
    /// The body is the request's body, byte for byte.
    pub body_is_request: Option<bool>,
    /// The body's length.
    pub body_len: Option<usize>,
    /// Response headers with all their values, in order.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// Response headers that must be present, whatever their value.
    #[serde(default)]
    pub headers_present: Vec<String>,
    /// Response headers that must be absent.
    #[serde(default)]
    pub headers_absent: Vec<String>,
    /// A problem+json body of this `type` (the part after `urn:amphi:problem:`).
    pub problem: Option<String>,
    /// The body arrives in pieces spread over at least this many milliseconds (a streamed
    /// response), or, with 0, all at once.
    pub streamed_over_ms: Option<u64>,
    /// The invocation record's `outcome`.
    pub outcome: Option<String>,
    /// The invocation record's `status`.
    pub record_status: Option<u16>,
    /// Async calls: the job's final state (`succeeded`, `failed`, `dead`).
    pub job_state: Option<String>,
    /// Async calls: how many attempts the job made.
    pub attempts: Option<usize>,
    /// Lines the invocation's log must hold (attributed to this invocation, in any order).
    #[serde(default)]
    pub logs: Vec<String>,
    /// Overrides for one kind of binding (`wasm`, `container`, `cgi`, `http`), applied in that
    /// order; the case must name the clause of CONTRACT.md that allows it. An override that
    /// checks the body (`body`, `body_is_request`, `body_len`) replaces the base's body checks.
    #[serde(default)]
    pub when: BTreeMap<String, Expect>,
}

/// A header's expected value or values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Every value, in order.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values.
    pub fn values(&self) -> Vec<String> {
        match self {
            Self::One(value) => vec![value.clone()],
            Self::Many(values) => values.clone(),
        }
    }
}

impl Expect {
    /// This expectation with the overrides for `tags` applied.
    pub fn for_tags(&self, tags: &[&str]) -> Expect {
        let mut merged = self.clone();
        merged.when.clear();
        for tag in tags {
            if let Some(o) = self.when.get(*tag) {
                macro_rules! take {
                    ($($field:ident),*) => { $( if o.$field.is_some() { merged.$field = o.$field.clone(); } )* };
                }
                // An override that checks the body replaces the base's body checks as a whole.
                if o.body.is_some() || o.body_is_request.is_some() || o.body_len.is_some() {
                    (merged.body, merged.body_is_request, merged.body_len) = (None, None, None);
                }
                take!(
                    status,
                    body,
                    body_is_request,
                    body_len,
                    problem,
                    streamed_over_ms,
                    outcome,
                    record_status,
                    job_state,
                    attempts
                );
                merged.headers.extend(o.headers.clone());
                if !o.headers_present.is_empty() {
                    merged.headers_present = o.headers_present.clone();
                }
                if !o.headers_absent.is_empty() {
                    merged.headers_absent = o.headers_absent.clone();
                }
                if !o.logs.is_empty() {
                    merged.logs = o.logs.clone();
                }
            }
        }
        merged
    }
}

impl Call {
    /// The request body.
    pub fn body_bytes(&self) -> Result<Vec<u8>, String> {
        if let Some(text) = &self.body {
            return Ok(text.as_bytes().to_vec());
        }
        if let Some(hex) = &self.body_hex {
            return (0..hex.len())
                .step_by(2)
                .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| format!("body_hex `{hex}` is not hex"));
        }
        if let Some(len) = self.body_len {
            // Every byte value, in an order that no off-by-one can keep.
            return Ok((0..len).map(|i| (i * 31 + i / 251) as u8).collect());
        }
        Ok(Vec::new())
    }
}

/// Reads every `*.toml` in `dir`, sorted by name.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, SuiteError> {
    let read_error = |e: std::io::Error| SuiteError::Cases(format!("{}: {e}", dir.display()));
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    paths.sort();
    let mut cases = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(read_error)?;
        let mut case: Case =
            toml::from_str(&text).map_err(|e| SuiteError::Cases(format!("{}: {e}", path.display())))?;
        case.name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let has_overrides = case.calls.iter().any(|c| !c.expect.when.is_empty());
        if has_overrides && !case.allowed_difference.as_deref().is_some_and(|a| a.contains("CONTRACT.md")) {
            return Err(SuiteError::Cases(format!(
                "{}: expectations differ per binding, so `allowed_difference` must cite CONTRACT.md",
                path.display()
            )));
        }
        for call in &case.calls {
            call.body_bytes().map_err(|e| SuiteError::Cases(format!("{}: {e}", path.display())))?;
        }
        cases.push(case);
    }
    Ok(cases)
}

fn get() -> String {
    "GET".into()
}

fn one() -> usize {
    1
}
