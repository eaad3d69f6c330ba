//! Shared ingestion through NATS JetStream: a real nats-server (Debian's, installed by
//! scripts/test-deps.sh) with JetStream on loopback, and the daemon's JetStream source.

mod common;

use async_nats::jetstream;
use common::{Daemon, free_port};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test-deps.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nats {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn messages_through_jetstream_are_scored_once_each_and_nothing_stays_pending() {
    let nats = Nats::start();
    let d = Daemon::start_with(
        "",
        "",
        "",
        &format!("[cluster]\nnats_url = \"{}\"\nbatch = 64\n", nats.url()),
    );
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut rejected = client
            .subscribe("sentimentd.rejected")
            .await
            .expect("subscribe");
        let js = jetstream::new(client.clone());
        // The daemon creates the streams; wait for the input one.
        let started = Instant::now();
        let mut input = loop {
            if let Ok(s) = js.get_stream("SENTIMENTD_IN").await {
                break s;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{}", d.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let publish = |id: String, body: Vec<u8>| {
            let js = js.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                js.publish_with_headers("sentimentd.in", headers, body.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        };
        let n = 300;
        for i in 0..n {
            let body = serde_json::json!({
                "id": format!("m{i}"),
                "text": format!("message {i}: this is great, I love it"),
                "source": "acme",
            });
            publish(format!("m{i}"), body.to_string().into_bytes()).await;
        }
        // Published again within the duplicate window: dropped by the input stream.
        for i in 0..50 {
            let body = serde_json::json!({"id": format!("m{i}"), "text": "again"});
            publish(format!("m{i}"), body.to_string().into_bytes()).await;
        }
        publish("bad-1".into(), b"not json".to_vec()).await;
        publish("bad-2".into(), br#"{"id": "x", "text": "  "}"#.to_vec()).await;

        let mut output = js
            .get_stream("SENTIMENTD_OUT")
            .await
            .expect("output stream");
        let started = Instant::now();
        loop {
            let stored = output.info().await.expect("info").state.messages;
            let waiting = input.info().await.expect("info").state.messages;
            if stored >= n && waiting == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{stored} of {n} scored, {waiting} waiting\n{}",
                d.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info = output.info().await.expect("info").clone();
        assert_eq!(info.state.messages, n, "each input scored exactly once");
        let mut ids = BTreeSet::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = output.get_raw_message(seq).await.expect("output message");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
            assert_eq!(v["label"], "positive", "{v}");
            assert_eq!(v["source"], "acme", "{v}");
            assert!(v["model_version"].is_string(), "{v}");
            ids.insert(v["id"].as_str().unwrap_or_default().to_string());
        }
        let expected: BTreeSet<String> = (0..n).map(|i| format!("m{i}")).collect();
        assert_eq!(ids, expected);

        // The two malformed messages were refused with a reason, and acknowledged.
        let mut reasons = Vec::new();
        while reasons.len() < 2 {
            let m = tokio::time::timeout(
                Duration::from_secs(10),
                futures_util::StreamExt::next(&mut rejected),
            )
            .await
            .expect("a rejection")
            .expect("subscription open");
            reasons.push(String::from_utf8_lossy(&m.payload).to_string());
        }
        assert!(
            reasons.iter().any(|r| r.contains("not a JSON object")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("empty id or text")),
            "{reasons:?}"
        );
    });
    let predictions = d.metric_sum(
        "sentiment_predictions_total",
        &["channel=\"batch\"", "source=\"acme\""],
    );
    assert_eq!(predictions, 300.0, "counted in the reputation view");
}

#[test]
fn a_duplicate_window_shorter_than_the_redelivery_span_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("s.toml");
    std::fs::write(
        &config,
        "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nack_wait_secs = 60\nmax_deliver = 5\nduplicate_window_secs = 120\n",
    )
    .expect("config");
    let out = common::sentimentd()
        .args(["--config"])
        .arg(&config)
        .args(["config", "check"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cluster.duplicate_window_secs") && err.contains("360"),
        "{err}"
    );
}

#[test]
fn a_node_killed_mid_stream_and_restarted_scores_every_message_exactly_once() {
    let nats = Nats::start();
    // Short ack_wait: what the killed node held is delivered again quickly.
    let mut d = Daemon::start_with(
        "",
        "",
        "",
        &format!(
            "[cluster]\nnats_url = \"{}\"\nbatch = 200\nack_wait_secs = 2\nmax_deliver = 20\nduplicate_window_secs = 120\n",
            nats.url()
        ),
    );
    let rt = runtime();
    let n: u64 = 10_000;
    let js = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        let started = Instant::now();
        while js.get_stream("SENTIMENTD_IN").await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "{}", d.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Published without waiting for each ack; the acks are awaited every 500 messages
        // (the client bounds how many may be outstanding).
        let mut acks = Vec::new();
        for i in 0..n {
            if acks.len() == 500 {
                for a in acks.drain(..) {
                    let a: async_nats::jetstream::context::PublishAckFuture = a;
                    a.await.expect("stored");
                }
            }
            let body = serde_json::json!({"id": format!("k{i}"), "text": format!("text number {i}, not bad at all")});
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("k{i}").as_str());
            acks.push(
                js.publish_with_headers("sentimentd.in", headers, body.to_string().into())
                    .await
                    .expect("publish"),
            );
        }
        for a in acks {
            a.await.expect("stored");
        }
        js
    });
    let stored = || {
        rt.block_on(async {
            let mut s = js
                .get_stream("SENTIMENTD_OUT")
                .await
                .expect("output stream");
            s.info().await.expect("info").state.messages
        })
    };
    d.wait_for("some messages scored", Duration::from_secs(60), || {
        stored() > 500
    });
    let before = stored();
    d.kill9();
    assert!(before < n, "killed mid-stream ({before} of {n} scored)");
    d.spawn(&[]);
    let started = Instant::now();
    loop {
        let (out, waiting) = rt.block_on(async {
            let mut o = js.get_stream("SENTIMENTD_OUT").await.expect("output");
            let mut i = js.get_stream("SENTIMENTD_IN").await.expect("input");
            (
                o.info().await.expect("info").state.messages,
                i.info().await.expect("info").state.messages,
            )
        });
        if out >= n && waiting == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{out} of {n} scored, {waiting} waiting\n{}",
            d.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Exactly once: as many results as inputs, every id among them.
    let ids = rt.block_on(async {
        let mut o = js.get_stream("SENTIMENTD_OUT").await.expect("output");
        let info = o.info().await.expect("info").clone();
        assert_eq!(info.state.messages, n, "no duplicate and nothing lost");
        let mut ids = BTreeSet::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let m = o.get_raw_message(seq).await.expect("message");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
            ids.insert(v["id"].as_str().unwrap_or_default().to_string());
        }
        ids
    });
    assert_eq!(ids.len() as u64, n);
    assert!((0..n).all(|i| ids.contains(&format!("k{i}"))));
}
