//! Throughput of one node through NATS JetStream: a local nats-server (Debian's, as
//! scripts/test-deps.sh installs it), the release daemon with `[cluster]`, N messages
//! published with acks batched, and the time until N results are stored in the output stream.
//!
//! `cargo bench --bench jetstream`. Env: `MESSAGES` (default 100000), `MODEL_STORE` (a trained
//! store; default: none, so the lexicon fallback scores), `BATCH` (`[cluster] batch`, 256),
//! `VIA=folder` (the rows go in as one CSV file dropped in the node's watched folder with
//! `[cluster] publish_inbox`, instead of being published by the bench).
//! Compare with `benches/load.sh`'s inbox phase (rows per second through the watched folder).

use async_nats::jetstream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it without, to check it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = env_or("MESSAGES", 100_000);
    let batch: usize = env_or("BATCH", 256);
    let via_folder = std::env::var("VIA").is_ok_and(|v| v == "folder");
    let dir = tempfile::tempdir().expect("temp dir");
    let nats_port = free_port();
    let mut nats = Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
        ])
        .arg(dir.path().join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (scripts/test-deps.sh installs it)");
    while std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let store = std::env::var("MODEL_STORE")
        .unwrap_or_else(|_| dir.path().join("models").display().to_string());
    let root = dir.path().display();
    let config = dir.path().join("sentimentd.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nmodel_store = \"{store}\"\nstate_dir = \"{root}/state\"\n\
             [train]\non_start = \"never\"\n\
             [ingest]\ninbox = \"{root}/inbox\"\noutbox = \"{root}/outbox\"\narchive = \"{root}/archive\"\n\
             rejected = \"{root}/rejected\"\nprocessing = \"{root}/processing\"\njournal = \"{root}/journal\"\n\
             labelled_dir = \"{root}/labelled\"\n\
             [logging]\nlevel = \"warn\"\n\
             [cluster]\nnats_url = \"nats://127.0.0.1:{nats_port}\"\nbatch = {batch}\n\
             publish_inbox = {via_folder}\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_sentimentd"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("sentimentd");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}"))
            .await
            .expect("connect");
        let js = jetstream::new(client);
        while js.get_stream("SENTIMENTD_IN").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if via_folder {
            let mut csv = String::from("text,source\n");
            for i in 0..n {
                csv.push_str(&format!("\"benchmark message {i}, pretty good overall\",bench\n"));
            }
            let part = dir.path().join("inbox/bench.csv.part");
            std::fs::create_dir_all(dir.path().join("inbox")).expect("inbox");
            std::fs::write(&part, csv).expect("write the batch file");
        }
        let started = Instant::now();
        if via_folder {
            std::fs::rename(
                dir.path().join("inbox/bench.csv.part"),
                dir.path().join("inbox/bench.csv"),
            )
            .expect("drop the batch file");
        }
        let mut acks = Vec::new();
        for i in (0..n).filter(|_| !via_folder) {
            if acks.len() == 1000 {
                for a in acks.drain(..) {
                    let a: jetstream::context::PublishAckFuture = a;
                    a.await.expect("stored");
                }
            }
            let body = format!(r#"{{"id":"b{i}","text":"benchmark message {i}, pretty good overall","source":"bench"}}"#);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("b{i}").as_str());
            acks.push(
                js.publish_with_headers("sentimentd.in", headers, body.into())
                    .await
                    .expect("publish"),
            );
        }
        for a in acks {
            a.await.expect("stored");
        }
        let published = started.elapsed();
        let mut output = js.get_stream("SENTIMENTD_OUT").await.expect("output");
        loop {
            let stored = output.info().await.expect("info").state.messages;
            if stored >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = started.elapsed();
        println!(
            "RESULT via={} messages={n} batch={batch} published_s={:.2} scored_s={:.2} messages_per_s={:.0}",
            if via_folder { "folder" } else { "bench" },
            published.as_secs_f64(),
            total.as_secs_f64(),
            n as f64 / total.as_secs_f64()
        );
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = nats.kill();
    let _ = nats.wait();
}
