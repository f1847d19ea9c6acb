//! What Amphi's fuzz targets check, as plain functions over bytes.
//!
//! Each target in `fuzz/fuzz_targets/` (cargo-fuzz, libFuzzer) is one call into this crate, and
//! `tests/replay.rs` runs the same functions over every input committed under `fuzz/corpus/`. So
//! the checks build and run on stable Rust in the ordinary test suite, and an input that once
//! found a bug keeps being tried on every CI run without fuzzing anew.
//!
//! A target checks more than "does not panic": each states what must hold of what the code under
//! test accepted (the body a CGI parser returns is the output's tail, a context is judged the same
//! whether gzip-compressed or not, a merge patch applied twice changes nothing the second time).
//! A broken property panics, which libFuzzer reports as a crash.

use std::time::Instant;

use amphi_container::context::{self, MAX_ENTRIES};
use amphi_contract::FunctionConfig;
use amphi_contract::cgi;
use amphi_gateway::trigger::{self, RECORD_PATH_BYTES};
use bytes::Bytes;

/// A fuzz target's checks over one input.
pub type Target = fn(&[u8]);

/// The targets, by the name of their corpus directory under `fuzz/corpus/`.
pub const TARGETS: [(&str, Target); 5] = [
    ("cgi_response", cgi_response),
    ("build_context_tar", build_context_tar),
    ("build_context_gzip", build_context_gzip),
    ("function_config", function_config),
    ("trigger_path", trigger_path),
];

/// A CGI program's output, as both backends parse it.
pub fn cgi_response(data: &[u8]) {
    let Ok(response) = cgi::parse_response(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert!(data.ends_with(response.body()), "the body is not the tail of the program's output");
    for framing in [http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING, http::header::CONNECTION] {
        assert!(!response.headers().contains_key(&framing), "the program set the framing header {framing}");
    }
}

/// The unpacked-size limit the context targets check against: small, so the fuzzer reaches it.
const CONTEXT_LIMIT: u64 = 64 << 10;

/// An uploaded build context as a plain tar: judged, then judged again gzip-compressed, and the
/// two verdicts must agree (the checker must not see a different archive through the decoder).
pub fn build_context_tar(data: &[u8]) {
    let plain = check_context(data);
    if data.starts_with(&[0x1f, 0x8b]) {
        return; // Already gzip data: the plain check took the compressed path.
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, data).expect("writing to a Vec");
    let compressed = encoder.finish().expect("writing to a Vec");
    match (plain, check_context(&compressed)) {
        (Ok(plain), Ok(compressed)) => assert_eq!(
            (plain.entries, plain.unpacked_bytes, plain.dockerfile),
            (compressed.entries, compressed.unpacked_bytes, compressed.dockerfile),
            "the same archive was judged differently once compressed"
        ),
        (Err(_), Err(_)) => {}
        (plain, compressed) => {
            panic!("the same archive was judged differently once compressed: {plain:?} vs {compressed:?}")
        }
    }
}

/// An uploaded build context taken as it comes (gzip data when it starts with gzip's magic bytes):
/// truncated and corrupt streams, and bombs, meet the checker's limits.
pub fn build_context_gzip(data: &[u8]) {
    let _ = check_context(data);
}

fn check_context(data: &[u8]) -> Result<context::CheckedContext, context::ContextError> {
    let checked = context::check(&Bytes::copy_from_slice(data), "Dockerfile", CONTEXT_LIMIT);
    if let Ok(checked) = &checked {
        assert!(
            checked.unpacked_bytes <= CONTEXT_LIMIT,
            "accepted {} bytes unpacked",
            checked.unpacked_bytes
        );
        assert!(checked.entries <= MAX_ENTRIES, "accepted {} entries", checked.entries);
        assert_eq!(checked.dockerfile, "Dockerfile");
    }
    checked
}

/// A function config as a deploy body carries it, and a PATCH body applied to a config.
///
/// The input is JSON: a config, or `[base, patch]` (the base a config, the patch a merge patch).
pub fn function_config(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let (base, patch) = match &value {
        serde_json::Value::Array(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        _ => (value.clone(), value),
    };
    let base = match serde_json::from_value::<FunctionConfig>(base) {
        Ok(config) => {
            check_accepted(&config);
            let round_trip = serde_json::to_value(&config).and_then(serde_json::from_value::<FunctionConfig>);
            assert_eq!(round_trip.ok().as_ref(), Some(&config), "an accepted config does not round-trip");
            config
        }
        Err(_) => FunctionConfig::default(),
    };
    let Ok(patched) = base.with_patch(&patch) else {
        return;
    };
    check_accepted(&patched);
    let again = patched.with_patch(&patch);
    assert_eq!(
        again.as_ref(),
        Ok(&patched),
        "a merge patch applied twice changed the config the second time"
    );
    let empty = serde_json::Value::Object(Default::default());
    assert_eq!(base.with_patch(&empty).as_ref(), Ok(&base), "an empty patch changed the config");
}

/// What must hold of a config that passes validation: every duration it names can be used as a
/// deadline from now (a timer set from it cannot overflow the clock).
fn check_accepted(config: &FunctionConfig) {
    if config.validate().is_err() {
        return;
    }
    let container = &config.container;
    let now = Instant::now();
    for (name, duration) in [
        ("timeout_ms", config.timeout()),
        ("queue_timeout_ms", config.queue_timeout()),
        ("container.queue_timeout_ms", container.queue_timeout()),
        ("container.pause_after_ms", container.pause_after()),
        ("container.idle_timeout_ms", container.idle_timeout()),
    ] {
        assert!(now.checked_add(duration).is_some(), "a valid config's {name} overflows a deadline");
    }
}

/// A request path as the `/fn` trigger takes it apart, records it and hands it to a function.
pub fn trigger_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((name, rest)) = trigger::split_trigger_path(path) {
        assert!(!name.is_empty() && !name.contains('/'), "bad function name {name:?}");
        assert!(rest.starts_with('/'), "the function's path {rest:?} does not start with /");
        let whole = format!("/fn/{name}{rest}");
        assert!(
            whole == path || (rest == "/" && path == format!("/fn/{name}")),
            "{path:?} was split into {name:?} and {rest:?}"
        );
    }

    let kept = trigger::record_path(path);
    if path.len() <= RECORD_PATH_BYTES {
        assert_eq!(kept, path, "a short path was changed in the record");
    } else {
        let marker = format!("…[cut: {} bytes in all]", path.len());
        let head = kept.strip_suffix(&marker).expect("a cut path ends with its marker");
        assert!(head.len() <= RECORD_PATH_BYTES && path.starts_with(head), "the record kept {head:?}");
    }

    // A path the trigger lets through reaches CGI programs percent-decoded, as PATH_INFO: it must
    // not carry a line break or any other control character there.
    if trigger::control_character(path).is_some() {
        return;
    }
    let Ok(request) = http::Request::builder().uri(path).body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    for (name, value) in cgi::meta_variables(&parts, None, 0, "f") {
        if name == "PATH_INFO" || name == "PATH_TRANSLATED" {
            assert!(!value.chars().any(char::is_control), "{name} {value:?} holds a control character");
        }
    }
}
