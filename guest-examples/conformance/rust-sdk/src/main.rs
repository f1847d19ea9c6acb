//! The conformance function, written with `amphi-sdk`. The conformance suite runs it twice: built
//! for `wasm32-wasip1` as a component, and natively as a container image, from this one source.
//! Every conformance function answers the same routes (`conformance/README.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amphi_sdk::{Request, Response, StatusCode};

static CALLS_SEEN: AtomicU64 = AtomicU64::new(0);

fn handle(req: Request) -> Response {
    let number = |name: &str| req.query_param(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let route = req.path().split('/').nth(1).unwrap_or("").to_string();
    match route.as_str() {
        "echo" => {
            let mut response = Response::default().with_header("content-type", "application/octet-stream");
            if let Some(content_type) = req.header("content-type") {
                response = response.with_header("x-echo-content-type", content_type);
            }
            response.with_body(req.into_body())
        }
        "request" => Response::text(format!(
            "method={}\npath={}\nquery={}\nbody_len={}\n",
            req.method(),
            req.path(),
            req.query(),
            req.body().len()
        )),
        "header" => {
            let values = req.header_all(&req.query_param("name").unwrap_or_default()).join(", ");
            if values.is_empty() {
                Response::text("absent").with_status(StatusCode::NOT_FOUND)
            } else {
                Response::text(values)
            }
        }
        "meta" => {
            let invocation = req.invocation();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            Response::text(format!(
                "id={}\nfunction={}\nversion={}\ndeadline_ok={}\n",
                invocation.id,
                invocation.function,
                invocation.version,
                invocation.deadline_unix_ms > now && invocation.deadline_unix_ms - now <= 900_000
            ))
        }
        "status" => {
            let status = StatusCode::from_u16(number("code") as u16).unwrap_or(StatusCode::BAD_REQUEST);
            let response = Response::new(status).with_header("content-type", "text/plain");
            match status.as_u16() {
                204 | 304 => response,
                code => response.with_body(format!("status {code}")),
            }
        }
        "headers-out" => Response::text("headers")
            .with_header("x-repeat", "a")
            .with_header("x-repeat", "b")
            .with_header("x-unusual", "a \"quoted\" value; with=odd, chars"),
        "headers-forged" => Response::text("forged")
            .with_header("amphi-shim-error", "forged")
            .with_header("amphi-function", "forged")
            .with_header("amphi-backend", "forged")
            .with_header("amphi-anything", "forged"),
        "stream" => {
            let (chunks, delay) = (number("chunks"), Duration::from_millis(number("delay_ms")));
            Response::stream((0..chunks).map(move |i| {
                std::thread::sleep(delay);
                format!("chunk {i}\n").into_bytes()
            }))
        }
        "env" => match std::env::var(req.query_param("name").unwrap_or_default()) {
            Ok(value) => Response::text(value),
            Err(_) => Response::text("unset").with_status(StatusCode::NOT_FOUND),
        },
        "log" => {
            let text = req.query_param("text").unwrap_or_default();
            println!("{text}");
            req.logger().log(format_args!("logger: {text}"));
            Response::text("logged")
        }
        "big" => Response::text("x".repeat(number("mb") as usize * 1024 * 1024)),
        "flood" => {
            // `mb` MiB to stderr, in lines of 1 KiB: far past any log budget.
            let line = format!("{}\n", "x".repeat(1023));
            let mut stderr = std::io::stderr().lock();
            for _ in 0..number("mb") * 1024 {
                if std::io::Write::write_all(&mut stderr, line.as_bytes()).is_err() {
                    break;
                }
            }
            Response::text("flooded")
        }
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number("ms")));
            Response::text("slept")
        }
        "crash" => panic!("the conformance function was asked to crash"),
        "alloc" => {
            let block = vec![1u8; number("mib") as usize * 1024 * 1024];
            let touched = std::hint::black_box(&block).iter().step_by(4096).count();
            Response::text(format!("allocated {} MiB", touched * 4096 / (1024 * 1024)))
        }
        "state" => Response::text(format!("{}", CALLS_SEEN.fetch_add(1, Ordering::SeqCst) + 1)),
        _ => Response::text("no such route").with_status(StatusCode::NOT_FOUND),
    }
}

amphi_sdk::main!(handle);
