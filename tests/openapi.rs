//! `GET /openapi.json`: the document lists exactly the routes `http::configure` registers,
//! the daemon's real answers carry no field the document leaves out, and schemathesis (from
//! the venv `scripts/test-deps.sh` builds) generates requests from it against a running
//! daemon and finds no server error, no schema or status violation and no crash.

mod common;

use common::{Daemon, agent};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schemathesis() -> PathBuf {
    common::venv(&["schemathesis"]).join("bin/schemathesis")
}

/// A daemon with the admin API that trains a small model at start (on the bundled 2,000-row
/// reporting split, in a second or two) and checks drift every second, so `/drift` has a
/// report; retraining (from `/admin/retrain` or drift) trains the same small model.
fn daemon() -> Daemon {
    let val = repo().join("data/datasets/tweeteval/val.csv");
    let mut d = Daemon::configure(
        "",
        "",
        "on_start = \"if-missing\"\nepochs = 2",
        &format!(
            r#"[data]
train = ["{val}"]
val = "{val}"

[model]
embedding_dim = 16
vocab_size = 2000
buckets = 4096

[drift]
window = 500
min_samples = 20
check_every_samples = 50
check_every_secs = 1
min_check_interval_secs = 0

[retrain]
threads = 1
"#,
            val = val.display(),
        ),
    );
    let token = d.root().join("token");
    common::write_secret(&token, &format!("{TOKEN}\n"));
    let mut config = std::fs::read_to_string(&d.config).expect("config");
    config.push_str(&format!(
        "\n[admin]\ntoken_file = \"{}\"\n",
        token.display()
    ));
    std::fs::write(&d.config, config).expect("config");
    d.spawn(&[]);
    d
}

fn wait_trained_and_checked(d: &Daemon) {
    d.wait_for("the small model to serve", Duration::from_secs(120), || {
        let m = d.get("/model");
        m.status == 200 && m.json()["fallback"] == false
    });
    for i in 0..30 {
        let r = d.predict(&format!(r#"{{"text": "text number {i} is lovely"}}"#));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    d.wait_for("a drift report", Duration::from_secs(60), || {
        d.get("/drift").status == 200
    });
}

fn document(d: &Daemon) -> Value {
    let mut r = agent()
        .get(d.url("/openapi.json"))
        .call()
        .expect("GET /openapi.json");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(common::content_type(&r), "application/json");
    let body = r.body_mut().read_to_string().expect("body");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// (method, path) of every route `configure` in actors/src/http/mod.rs registers, read from its
/// source: each `.service(web::resource(...)...route(web::METHOD()...))` (or `route(get()...)`).
fn registered_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(repo().join("actors/src/http/mod.rs"))
        .expect("actors/src/http/mod.rs");
    let start = source
        .find("pub fn configure(")
        .expect("actors/src/http/mod.rs has configure");
    let body = &source[start..];
    let end = body
        .find(".default_service(web::to(not_found))")
        .expect("configure ends with the not_found default service");
    let mut routes = BTreeSet::new();
    for service in body[..end].split(".service(").skip(1) {
        let resource = service
            .split_once("web::resource(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(args, _)| args)
            .unwrap_or_else(|| panic!("a service without web::resource: {service}"));
        let paths: Vec<&str> = resource.split('"').skip(1).step_by(2).collect();
        // `web::post()`, or `get()` (GET with HEAD beside it, which the document leaves implied).
        let methods: Vec<&str> = service
            .split(".route(")
            .skip(1)
            .map(|r| {
                let r = r.strip_prefix("web::").unwrap_or(r);
                r.split_once('(').expect("METHOD()").0
            })
            .collect();
        assert!(
            !paths.is_empty() && !methods.is_empty(),
            "cannot read the paths and methods of {service}"
        );
        for p in &paths {
            for m in &methods {
                routes.insert((m.to_string(), p.to_string()));
            }
        }
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.insert((method.clone(), path.clone()));
        }
    }
    routes
}

/// Resolves a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            resolve(doc, doc.pointer(pointer).expect("$ref resolves"))
        }
        None => schema,
    }
}

/// Fields of `value` (a JSON answer) that `schema` does not list, as JSON pointers. Types are
/// schemathesis' business; this catches a field added to a response without its schema.
fn undocumented(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    if let Some(branches) = schema.get("oneOf").or_else(|| schema.get("anyOf")) {
        return branches
            .as_array()
            .expect("oneOf is an array")
            .iter()
            .map(|b| undocumented(doc, b, value, at))
            .min_by_key(Vec::len)
            .unwrap_or_default();
    }
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                // A free-form object (`metrics`).
                return Vec::new();
            };
            fields
                .iter()
                .flat_map(|(k, v)| {
                    let here = format!("{at}/{k}");
                    match properties.get(k) {
                        Some(s) => undocumented(doc, s, v, &here),
                        None => vec![here],
                    }
                })
                .collect()
        }
        Value::Array(items) => match schema.get("items") {
            Some(s) if s.is_object() => items
                .iter()
                .enumerate()
                .flat_map(|(i, v)| undocumented(doc, s, v, &format!("{at}/{i}")))
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[test]
fn the_document_lists_every_route_and_every_field_the_daemon_answers_with() {
    let d = daemon();
    wait_trained_and_checked(&d);
    let doc = document(&d);
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "OpenAPI {version}");

    let registered = registered_routes();
    assert!(
        registered.contains(&("post".into(), "/predict".into()))
            && registered.contains(&("get".into(), "/openapi.json".into())),
        "reading configure went wrong: {registered:?}"
    );
    assert_eq!(
        registered,
        documented_routes(&doc),
        "the routes http::configure registers (left) and the ones /openapi.json documents \
         (right) differ: give a new handler #[utoipa::path] and list it in actors/src/http/openapi.rs"
    );

    // Every operation documents its success, JSON bodies their errors, and every answer
    // says its content type.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success"
            );
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
            }
            for (status, r) in responses {
                assert!(
                    r["content"].as_object().is_some_and(|c| !c.is_empty()),
                    "{method} {path} {status}: no content type"
                );
            }
        }
    }

    // Real answers of every JSON endpoint, success and errors, against their schemas.
    let token = format!("Bearer {TOKEN}");
    const JSON: Option<&str> = Some("application/json");
    // (with the admin token, method, path, content type, body, status)
    #[rustfmt::skip]
    let calls = [
        (false, "get", "/health", None, "", 200),
        (false, "get", "/ready", None, "", 200),
        (false, "get", "/model", None, "", 200),
        (false, "get", "/drift", None, "", 200),
        (false, "post", "/predict", JSON, r#"{"text": "so good"}"#, 200),
        (false, "post", "/predict", JSON, r#"{"texts": ["a", "b"]}"#, 200),
        (false, "post", "/predict", JSON, r#"{"text": " "}"#, 422),
        (false, "post", "/predict", Some("text/plain"), r#"{"text": "x"}"#, 415),
        (false, "post", "/predict", JSON, "{", 400),
        (true, "post", "/feedback", JSON, r#"{"text": "meh", "label": 1}"#, 200),
        (false, "post", "/feedback", JSON, r#"{"text": "meh", "label": 1}"#, 401),
        // JSON (and JSON Schema) do not tell 1.0 from 1.
        (true, "post", "/feedback", JSON, r#"{"text": "meh", "label": 1.0}"#, 200),
        (true, "post", "/feedback", JSON, r#"{"text": "meh", "label": 1.5}"#, 422),
        (true, "post", "/feedback", JSON, r#"{"items": []}"#, 422),
        (false, "post", "/admin/retrain", None, "", 401),
        (true, "post", "/admin/retrain", None, "", 409),
        (true, "post", "/admin/rollback", None, "", 409),
        (true, "post", "/admin/promote", JSON, r#"{"version": "nope"}"#, 409),
    ];
    for (authorised, method, path, content_type, body, want) in calls {
        let reply = if method == "get" {
            agent().get(d.url(path)).call()
        } else {
            let mut req = agent().post(d.url(path));
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            if authorised {
                req = req.header("authorization", &token);
            }
            req.send(body)
        };
        let mut r = reply.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16().to_string();
        let text = r.body_mut().read_to_string().expect("body");
        assert_eq!(status, want.to_string(), "{method} {path} {body}: {text}");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
        let documented = &doc["paths"][path][method]["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which is not documented: {text}"
        );
        let schema = &documented["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status}: no JSON schema"
        );
        let extra = undocumented(&doc, schema, &value, "");
        assert!(
            extra.is_empty(),
            "{method} {path} {status}: fields missing from the schema: {extra:?} in {text}"
        );
    }

    // A method a path does not take: 405 naming the ones it does (RFC 9110).
    let r = agent().get(d.url("/predict")).call().expect("GET /predict");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    // HEAD wherever GET is (RFC 9110): uptime checks probe with it. Headers, no body: read
    // off the socket, since an HTTP client knows not to read one.
    for path in ["/health", "/ready", "/metrics", "/model", "/"] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        write!(
            s,
            "HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(body.is_empty(), "HEAD {path} sent a body: {body}");
    }
    let r = agent()
        .post(d.url("/health"))
        .send("")
        .expect("POST /health");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, HEAD")
    );
}

/// What schemathesis checks on every answer (`schemathesis run --help` lists them).
const CHECKS: &[&str] = &[
    // 5xx.
    "not_a_server_error",
    // Body, status, content type and headers as documented for the operation.
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    // The request schemas are exact: what they allow is accepted, what they forbid refused.
    // (The limits that are configuration, `data.max_text_chars` and `server.max_batch_texts`,
    // are described, not encoded; the generated data stays far below the defaults.)
    "positive_data_acceptance",
    "negative_data_rejection",
    // The admin API refuses a request without the token.
    "ignored_auth",
    // A method a path does not take gets 405 with an `Allow` header naming the ones it does.
    "unsupported_method",
    "allow_header_conformance",
];

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let bin = schemathesis();
    let d = daemon();
    wait_trained_and_checked(&d);
    let started = Instant::now();
    let out = Command::new(bin)
        .arg("run")
        .arg(d.url("/openapi.json"))
        .args(["--checks", &CHECKS.join(",")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "100"])
        // A fixed derivation of the data instead of a random seed: the same requests every run.
        .arg("--generation-deterministic")
        .args(["--workers", "2", "--request-timeout", "20"])
        .arg("--no-color")
        // Reports and hypothesis' files stay in the temp dir.
        .current_dir(d.root())
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis failed ({}, after {:?}):\n{output}\n--- daemon log ---\n{}",
        out.status,
        started.elapsed(),
        d.logs()
    );
    eprintln!("schemathesis took {:?}:\n{output}", started.elapsed());

    let health = d.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    let logs = d.logs();
    assert!(!logs.contains("panicked"), "the daemon panicked:\n{logs}");
}
