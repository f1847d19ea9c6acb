//! Calling each guest example through the HTTP trigger: methods, paths, queries, headers,
//! bodies, and the contract's headers in and out.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, header};

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[tokio::test]
async fn wasi_http_component_end_to_end() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let deployed = server
        .deploy("hello", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({ "env": { "GREETING": "hi" } }))
        .await;
    assert_eq!(deployed["kind"], "wasi-http-component");
    assert_eq!(deployed["version"], 1);

    let hello = server.http.get(server.fn_url("hello", "")).send().await.expect("call");
    assert_eq!(hello.status(), 200);
    assert_eq!(header(&hello, "amphi-backend"), "wasm");
    assert_eq!(header(&hello, "amphi-cold-start"), "false", "code was compiled at deploy");
    assert!(header(&hello, "server-timing").contains("exec;dur="));
    let id = header(&hello, "amphi-invocation-id").to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(hello.text().await.expect("body"), "Hello from Amphi!\n");

    for method in METHODS {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let response = server
            .http
            .request(method.clone(), server.fn_url("hello", "/echo/a%20b/c?x=1&y=%2F&x=2"))
            .body("payload")
            .send()
            .await
            .expect("call");
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(header(&response, "x-echo-method"), method.as_str());
        assert_eq!(header(&response, "x-echo-path-with-query"), "/echo/a%20b/c?x=1&y=%2F&x=2");
        assert_eq!(response.text().await.expect("body"), "payload");
    }
    let head = server.http.head(server.fn_url("hello", "/")).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);

    // Binary, empty and 1 MiB bodies come back byte for byte.
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let megabyte: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    for body in [binary, Vec::new(), megabyte] {
        let response =
            server.http.post(server.fn_url("hello", "/echo")).body(body.clone()).send().await.expect("call");
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.expect("body").as_ref(), body.as_slice());
    }

    // The function sees the caller's headers (repeated ones too), the metadata, and traceparent;
    // the caller cannot forge the platform's headers.
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = server
        .http
        .get(server.fn_url("hello", "/inspect?q"))
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("traceparent", traceparent)
        .header("amphi-function", "forged")
        .send()
        .await
        .expect("call");
    let id = header(&response, "amphi-invocation-id").to_string();
    let seen: Value = response.json().await.expect("json");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).expect("pairs");
    let values =
        |name: &str| headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(seen["path_with_query"], "/inspect?q");
    assert_eq!(values("x-custom"), ["one", "two"]);
    assert_eq!(values("traceparent"), [traceparent]);
    assert_eq!(values("amphi-function"), ["hello"]);
    assert_eq!(values("amphi-function-version"), ["1"]);
    assert_eq!(values("amphi-invocation-id"), [id.as_str()]);
    let deadline: u64 = values("amphi-deadline-ms")[0].parse().expect("a number");
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    assert!(deadline > now_ms && deadline <= now_ms + 30_000 + 1000, "30s default timeout");

    // Env is granted by config only.
    let env: Value = server.get_json("hello", "/env").await;
    assert_eq!(env, json!({ "GREETING": "hi" }));

    // Streamed responses arrive whole; statuses chosen by the function pass through.
    let streamed = server.http.get(server.fn_url("hello", "/stream?chunks=5")).send().await.expect("call");
    assert_eq!(
        streamed.text().await.expect("body"),
        (0..5).map(|i| format!("chunk {i}\n")).collect::<String>()
    );
    for code in [201, 204, 301, 404, 418, 500, 503] {
        let response =
            server.http.get(server.fn_url("hello", &format!("/status/{code}"))).send().await.expect("call");
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(
            header(&response, "amphi-backend"),
            "wasm",
            "a function's own {code} is not a platform error"
        );
    }
}

#[tokio::test]
async fn cgi_modules_end_to_end() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    let deployed = server
        .deploy("cgi", amphi_guest_artifacts::RUST_CGI_MODULE, json!({ "env": { "MODE": "test" } }))
        .await;
    assert_eq!(deployed["kind"], "cgi-module");

    let hello = server.http.get(server.fn_url("cgi", "")).send().await.expect("call");
    assert_eq!(hello.status(), 200);
    assert_eq!(header(&hello, "content-type"), "text/plain");
    assert_eq!(hello.text().await.expect("body"), "Hello from a CGI function!\n");

    for method in METHODS {
        let response = server
            .http
            .request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                server.fn_url("cgi", "/echo?a=1&b=%20"),
            )
            .body(vec![0u8, 1, 2, 255])
            .send()
            .await
            .expect("call");
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-echo-method"), method);
        assert_eq!(header(&response, "x-echo-query"), "a=1&b=%20");
        assert_eq!(response.bytes().await.expect("body").as_ref(), [0u8, 1, 2, 255]);
    }
    let megabyte = vec![7u8; 1 << 20];
    let response =
        server.http.put(server.fn_url("cgi", "/echo")).body(megabyte.clone()).send().await.expect("call");
    assert_eq!(response.bytes().await.expect("body").len(), megabyte.len());
    let empty = server.http.post(server.fn_url("cgi", "/echo")).send().await.expect("call");
    assert_eq!(empty.bytes().await.expect("body").len(), 0);

    // The RFC 3875 meta-variables, the metadata as HTTP_* and the granted env.
    let response = server
        .http
        .post(server.fn_url("cgi", "/inspect/x%2Fy?k=v"))
        .header("content-type", "text/csv")
        .header("x-custom", "a")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body("12345")
        .send()
        .await
        .expect("call");
    let id = header(&response, "amphi-invocation-id").to_string();
    let seen: Value = response.json().await.expect("json");
    let env = &seen["env"];
    assert_eq!(env["GATEWAY_INTERFACE"], "CGI/1.1");
    assert_eq!(env["REQUEST_METHOD"], "POST");
    assert_eq!(env["SCRIPT_NAME"], "/fn/cgi");
    assert_eq!(env["PATH_INFO"], "/inspect/x/y");
    assert_eq!(env["X_RAW_PATH_INFO"], "/inspect/x%2Fy");
    assert_eq!(env["QUERY_STRING"], "k=v");
    assert_eq!(env["CONTENT_TYPE"], "text/csv");
    assert_eq!(env["CONTENT_LENGTH"], "5");
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(env["HTTP_X_CUSTOM"], "a");
    assert_eq!(env["HTTP_TRACEPARENT"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_eq!(env["HTTP_AMPHI_INVOCATION_ID"], id.as_str());
    assert_eq!(env["HTTP_AMPHI_FUNCTION"], "cgi");
    assert_eq!(env["MODE"], "test");
    assert_eq!(seen["body_len"], 5);

    let status = server.http.get(server.fn_url("cgi", "/status/418")).send().await.expect("call");
    assert_eq!(status.status(), 418);
}

#[tokio::test]
async fn c_cgi_module_end_to_end() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("c", amphi_guest_artifacts::C_CGI_MODULE, json!({})).await;
    let response = server.http.post(server.fn_url("c", "/a/b?q=1")).body("tail").send().await.expect("call");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-powered-by"), "wasi-libc");
    assert_eq!(response.text().await.expect("body"), "Hello from C! method=POST path=/a/b query=q=1\ntail");
    let id = server.http.get(server.fn_url("c", "/")).send().await.expect("call");
    let id = header(&id, "amphi-invocation-id").to_string();
    let record = server.record(&id).await;
    assert_eq!(record["logs"][0]["line"], "c-cgi: GET /");
    assert_eq!(record["logs"][0]["stream"], "stderr");
}

#[tokio::test]
async fn concurrent_calls_are_isolated() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(temp.path());
    server.deploy("iso", amphi_guest_artifacts::RUST_HTTP_COMPONENT, json!({})).await;
    let calls = (0..64).map(|i| {
        let http = server.http.clone();
        let state = server.fn_url("iso", "/state");
        let echo = server.fn_url("iso", "/echo");
        async move {
            let state = http.get(state).send().await.expect("call").text().await.expect("body");
            let body = format!("caller {i}");
            let echoed =
                http.post(echo).body(body.clone()).send().await.expect("call").text().await.expect("body");
            (state, body, echoed)
        }
    });
    let results = futures_join_all(calls).await;
    for (state, sent, echoed) in results {
        assert_eq!(state, "1", "every call sees a fresh instance");
        assert_eq!(sent, echoed, "no call sees another's body");
    }
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}
