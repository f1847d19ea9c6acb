//! A WASI preview1 command module that speaks CGI 1.1 (RFC 3875) over stdio.
//!
//! Amphi puts the request's meta-variables in the environment and its body on stdin; whatever this
//! program prints is the response: header lines, a blank line, then the body. Anything written to
//! stderr is the function's log. Routes, by `PATH_INFO`:
//!
//! | route | what it does |
//! |---|---|
//! | `/` | `Hello from a CGI function!` |
//! | `/echo` | the request body back, with the method and query in `X-Echo-*` headers |
//! | `/inspect` | every CGI meta-variable and the body length, as JSON |
//! | `/log?lines=N` | N lines on stderr |
//! | `/status/CODE` | an empty response with that status |
//! | `/trap` | panics (a wasm trap) |
//! | `/loop` | never returns |
//! | `/init` | what the `wizer-initialize` export left (`not initialized` unless deployed with `--init`) |

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set by the initializer: 42 once it ran.
static INITIALIZED_TO: AtomicU32 = AtomicU32::new(0);

/// The initializer `amphi deploy --init` runs once at deploy. It reads no environment (a CGI
/// call's environment is its request, read fresh by `main`).
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn initialize() {
    INITIALIZED_TO.store(42, Ordering::Relaxed);
}

fn main() {
    let path = std::env::var("PATH_INFO").unwrap_or_else(|_| "/".into());
    let query = std::env::var("QUERY_STRING").unwrap_or_default();
    let mut body = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut body);
    let mut out = std::io::stdout().lock();

    // Routes are chosen by the first path segment, so `/echo/any/thing` is still `/echo`.
    let route = path.splitn(3, '/').take(2).collect::<Vec<_>>().join("/");
    match route.as_str() {
        "/" | "" => {
            let _ = write!(out, "Content-Type: text/plain\r\n\r\nHello from a CGI function!\n");
        }
        "/echo" => {
            let method = std::env::var("REQUEST_METHOD").unwrap_or_default();
            let _ = write!(
                out,
                "Content-Type: application/octet-stream\r\nX-Echo-Method: {method}\r\nX-Echo-Query: {query}\r\n\r\n"
            );
            let _ = out.write_all(&body);
        }
        "/inspect" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            let fields = vars
                .iter()
                .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = write!(
                out,
                "Content-Type: application/json\r\n\r\n{{\"env\":{{{fields}}},\"body_len\":{}}}",
                body.len()
            );
        }
        "/log" => {
            let lines: u32 = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("lines="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            for i in 0..lines {
                eprintln!("cgi line {i} to stderr");
            }
            let _ = write!(out, "Content-Type: text/plain\r\n\r\nlogged {lines}\n");
        }
        "/init" => {
            let value = INITIALIZED_TO.load(Ordering::Relaxed);
            let text = if value == 0 { "not initialized".to_string() } else { format!("initialized to {value}") };
            let _ = write!(out, "Content-Type: text/plain\r\n\r\n{text}\n");
        }
        "/trap" => panic!("the guest was asked to trap"),
        "/loop" => {
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        _ => match path.strip_prefix("/status/") {
            Some(code) => {
                let _ = write!(out, "Status: {code} Custom\r\nContent-Type: text/plain\r\n\r\n");
            }
            None => {
                let _ =
                    write!(out, "Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such route\n");
            }
        },
    }
    let _ = out.flush();
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
