//! A first Amphi function written with `amphi-sdk`. Build and deploy it for either backend:
//!
//! ```text
//! amphi build guest-examples/sdk-hello --target wasm        # target/…/amphi/sdk-hello.wasm
//! amphi deploy hello target/wasm-guests/amphi/sdk-hello.wasm
//! amphi build guest-examples/sdk-hello --target container   # a build context directory
//! amphi deploy hello-native target/…/amphi/sdk-hello-container --dockerfile
//! ```
//!
//! | route | answer |
//! |---|---|
//! | `/` | a greeting naming the function and the invocation |
//! | `/greet?name=N` | `Hello, N!` (logged against the invocation) |
//! | `/count?to=N` | the numbers 1 to N, streamed one line at a time |

use amphi_sdk::{Request, Response, StatusCode};

fn handle(req: Request) -> Response {
    match req.path() {
        "/" => {
            let invocation = req.invocation();
            Response::text(format!(
                "Hello from {} (version {}), invocation {}\n",
                invocation.function, invocation.version, invocation.id
            ))
        }
        "/greet" => {
            let name = req.query_param("name").unwrap_or_else(|| "world".into());
            req.logger().log(format_args!("greeting {name}"));
            Response::text(format!("Hello, {name}!\n"))
        }
        "/count" => {
            let to = req.query_param("to").and_then(|n| n.parse::<u32>().ok()).unwrap_or(3).min(10_000);
            Response::stream((1..=to).map(|n| format!("{n}\n").into_bytes()))
        }
        _ => Response::text("not found\n").with_status(StatusCode::NOT_FOUND),
    }
}

amphi_sdk::main!(handle);

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_sdk::Method;

    #[test]
    fn greets_by_name() {
        let response = handle(Request::new(Method::GET, "/greet?name=Ada"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.into_body().into_bytes(), b"Hello, Ada!\n");
    }
}
