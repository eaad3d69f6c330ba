//! Shared ingestion through NATS JetStream: a real nats-server (Debian's, installed by
//! scripts/test-deps.sh) with JetStream on loopback, and the daemon's JetStream source.

mod common;

use async_nats::jetstream;
use common::Daemon;
use common::nats::Nats;
use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until the daemon has created the input stream.
async fn wait_for_streams(js: &jetstream::Context, d: &Daemon) {
    let started = Instant::now();
    while js.get_stream("SENTIMENTD_IN").await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes each `(id, body)` with `Nats-Msg-Id` = id, without waiting for each store: the
/// acks are awaited every 500 messages (the client bounds how many may be outstanding).
async fn publish(js: &jetstream::Context, messages: impl IntoIterator<Item = (String, String)>) {
    let mut acks = Vec::new();
    for (id, body) in messages {
        if acks.len() == 500 {
            for a in acks.drain(..) {
                let a: jetstream::context::PublishAckFuture = a;
                a.await.expect("stored");
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        acks.push(
            js.publish_with_headers("sentimentd.in", headers, body.into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("stored");
    }
}

/// Messages in the output stream and in the input stream (not yet acknowledged).
async fn counts(js: &jetstream::Context) -> (u64, u64) {
    let mut o = js.get_stream("SENTIMENTD_OUT").await.expect("output");
    let mut i = js.get_stream("SENTIMENTD_IN").await.expect("input");
    (
        o.info().await.expect("info").state.messages,
        i.info().await.expect("info").state.messages,
    )
}

/// Waits until `outputs` results are stored and the input stream is empty.
async fn wait_settled(js: &jetstream::Context, outputs: u64, within: Duration, d: &Daemon) {
    let started = Instant::now();
    loop {
        let (out, waiting) = counts(js).await;
        if out >= outputs && waiting == 0 {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{out} of {outputs} scored, {waiting} waiting\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every result in the output stream.
async fn outputs(js: &jetstream::Context) -> Vec<serde_json::Value> {
    let mut o = js.get_stream("SENTIMENTD_OUT").await.expect("output");
    let info = o.info().await.expect("info").clone();
    let mut all = Vec::new();
    if info.state.messages == 0 {
        return all;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = o.get_raw_message(seq).await.expect("output message");
        all.push(serde_json::from_slice(&m.payload).expect("JSON"));
    }
    all
}

/// Takes `held` messages from the shared consumer and never acknowledges them: a node that
/// crashed holding them.
async fn take_without_acking(consumer: &jetstream::consumer::PullConsumer, held: usize) {
    let mut taken = consumer
        .fetch()
        .max_messages(held)
        .messages()
        .await
        .expect("fetch");
    let mut got = 0;
    while let Some(m) = futures_util::StreamExt::next(&mut taken).await {
        m.expect("message");
        got += 1;
    }
    assert_eq!(got, held);
}

/// Waits for `held` rejections of messages the server gave up on, each with its reason and
/// payload, and for the other `n - held` messages to be scored once each (within `secs`);
/// returns the ids scored.
async fn given_up_refused_and_the_rest_scored_once(
    js: &jetstream::Context,
    rejections: &mut async_nats::Subscriber,
    (held, n): (usize, usize),
    secs: u64,
    d: &Daemon,
) -> BTreeMap<String, usize> {
    let reasons = receive(rejections, held).await;
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("without being settled") && r.contains("\"payload\"")),
        "{reasons:?}"
    );
    wait_settled(js, (n - held) as u64, Duration::from_secs(secs), d).await;
    let ids = id_counts(&outputs(js).await);
    assert_eq!(ids.len(), n - held);
    assert!(ids.values().all(|&c| c == 1), "no duplicate");
    ids
}

/// The ids of `outputs`, with how often each appears.
fn id_counts(outputs: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for v in outputs {
        *ids.entry(v["id"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    ids
}

/// Waits for `n` messages on a core subscription, as text.
async fn receive(sub: &mut async_nats::Subscriber, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(sub))
            .await
            .expect("a message on the subscription")
            .expect("subscription open");
        got.push(String::from_utf8_lossy(&m.payload).to_string());
    }
    got
}

/// Connects, waits for the daemon's streams and publishes `n` messages with ids `{prefix}{i}`.
fn load(
    rt: &tokio::runtime::Runtime,
    nats: &Nats,
    d: &Daemon,
    prefix: &str,
    n: u64,
) -> jetstream::Context {
    rt.block_on(async {
        let js = nats.jetstream().await;
        wait_for_streams(&js, d).await;
        publish(
            &js,
            (0..n).map(|i| {
                let id = format!("{prefix}{i}");
                let body = serde_json::json!({"id": id, "text": format!("text number {i}, not bad at all")});
                (id, body.to_string())
            }),
        )
        .await;
        js
    })
}

/// Waits until `n` results are stored and nothing waits; each id appears exactly once.
fn assert_exactly_once(
    rt: &tokio::runtime::Runtime,
    nats: &Nats,
    d: &Daemon,
    n: u64,
) -> BTreeMap<String, usize> {
    rt.block_on(async {
        let js = nats.jetstream().await;
        wait_settled(&js, n, Duration::from_secs(120), d).await;
        let ids = id_counts(&outputs(&js).await);
        assert_eq!(ids.len() as u64, n, "nothing lost");
        assert!(ids.values().all(|&c| c == 1), "no duplicate");
        ids
    })
}

/// The input stream and the shared consumer as a node asks for them, but with `ack_wait`
/// and `max_deliver` of the test's choosing (what another node, or an operator, made).
async fn input_consumer(
    js: &jetstream::Context,
    ack_wait: Duration,
    max_deliver: i64,
) -> jetstream::consumer::PullConsumer {
    let input = js
        .create_stream(jetstream::stream::Config {
            name: "SENTIMENTD_IN".into(),
            subjects: vec!["sentimentd.in".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(300),
            ..Default::default()
        })
        .await
        .expect("stream");
    input
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("sentimentd".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await
        .expect("consumer")
}

#[test]
fn messages_through_jetstream_are_scored_once_each_and_nothing_stays_pending() {
    let nats = Nats::start();
    let d = Daemon::start_with("", "", "", &nats.section("batch = 64\nmax_in_flight = 256"));
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut rejected = client
            .subscribe("sentimentd.rejected")
            .await
            .expect("subscribe");
        let js = jetstream::new(client.clone());
        wait_for_streams(&js, &d).await;
        let n = 300;
        let message = |i: u64, text: &str| {
            let body = serde_json::json!({"id": format!("m{i}"), "text": text, "source": "acme"});
            (format!("m{i}"), body.to_string())
        };
        publish(
            &js,
            (0..n).map(|i| message(i, &format!("message {i}: this is great, I love it"))),
        )
        .await;
        // Published again within the duplicate window: dropped by the input stream.
        publish(&js, (0..50).map(|i| message(i, "again"))).await;
        publish(
            &js,
            [
                ("bad-1".to_string(), "not json".to_string()),
                ("bad-2".into(), r#"{"id": "x", "text": "  "}"#.into()),
                (
                    "bad-3".into(),
                    r#"{"id": "two\nlines", "text": "fine"}"#.into(),
                ),
            ],
        )
        .await;
        wait_settled(&js, n, Duration::from_secs(60), &d).await;
        let all = outputs(&js).await;
        assert_eq!(all.len() as u64, n, "each input scored exactly once");
        for v in &all {
            assert_eq!(v["label"], "positive", "{v}");
            assert_eq!(v["source"], "acme", "{v}");
            assert!(v["model_version"].is_string(), "{v}");
        }
        let ids: Vec<String> = id_counts(&all).into_keys().collect();
        let expected: BTreeSet<String> = (0..n).map(|i| format!("m{i}")).collect();
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);

        // The malformed messages were refused with a reason and their payload, and acked.
        let reasons = receive(&mut rejected, 3).await;
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("control character") && r.contains("lines")),
            "{reasons:?}"
        );
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
    // A batch is counted once all of it is settled, just after its rejections went out.
    d.wait_for("the batch counts", Duration::from_secs(10), || {
        d.metric("sentiment_cluster_messages_total{outcome=\"rejected\"}") == 3.0
    });
    d.assert_metrics(&[
        (
            "sentiment_cluster_messages_total{outcome=\"scored\"}",
            300.0,
        ),
        (
            "sentiment_cluster_messages_total{outcome=\"rejected\"}",
            3.0,
        ),
        ("sentiment_cluster_messages_total{outcome=\"retried\"}", 0.0),
        ("sentiment_cluster_connected", 1.0),
        ("sentiment_cluster_pending", 0.0),
    ]);
    assert!(d.metric("sentiment_cluster_settle_seconds_count") >= 5.0);
}

#[test]
fn cluster_settings_that_cannot_hold_their_guarantee_are_refused_by_config_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("s.toml");
    for (section, key, says) in [
        (
            "ack_wait_secs = 60\nmax_deliver = 5\nduplicate_window_secs = 120",
            "cluster.duplicate_window_secs",
            "360",
        ),
        (
            "batch = 512\nmax_in_flight = 100",
            "cluster.max_in_flight",
            "cluster.batch = 512",
        ),
    ] {
        std::fs::write(
            &config,
            format!("[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n{section}\n"),
        )
        .expect("config");
        let out = common::with_config(&config)
            .args(["config", "check"])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(key) && err.contains(says), "{err}");
    }
}

#[test]
fn a_server_running_other_settings_than_the_config_refuses_the_start_naming_the_setting() {
    let nats = Nats::start();
    let rt = runtime();
    rt.block_on(async {
        // What another node (or an operator) created earlier with max_deliver = 3.
        let js = nats.jetstream().await;
        input_consumer(&js, Duration::from_secs(30), 3).await;
    });
    let mut d = Daemon::configure("", "", "", &nats.section(""));
    d.spawn_no_wait(&[]);
    let status = d.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let logs = d.logs();
    assert!(
        logs.contains("max_deliver") && logs.contains("cluster.max_deliver asks for 5"),
        "{logs}"
    );
}

#[test]
fn results_the_output_stream_cannot_store_are_retried_then_refused_on_the_last_delivery() {
    let nats = Nats::start();
    let rt = runtime();
    rt.block_on(async {
        // An output stream that takes five results and refuses the rest.
        let js = nats.jetstream().await;
        js.create_stream(jetstream::stream::Config {
            name: "SENTIMENTD_OUT".into(),
            subjects: vec!["sentimentd.out".into()],
            duplicate_window: Duration::from_secs(300),
            max_messages: 5,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("stream");
    });
    let d = Daemon::start_with(
        "",
        "",
        "",
        // ack_wait leaves the last delivery time to publish its rejection on a loaded CI
        // machine: at 1 s the server's max-deliveries advisory sometimes won the race and
        // refused the message for another reason.
        &nats.section("ack_wait_secs = 3\nmax_deliver = 2\nbatch = 10\nmax_in_flight = 20"),
    );
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut rejected = client
            .subscribe("sentimentd.rejected")
            .await
            .expect("subscribe");
        let js = jetstream::new(client);
        wait_for_streams(&js, &d).await;
        publish(
            &js,
            (0..8).map(|i| {
                let body = serde_json::json!({"id": format!("r{i}"), "text": "fine, thanks"});
                (format!("r{i}"), body.to_string())
            }),
        )
        .await;
        wait_settled(&js, 5, Duration::from_secs(30), &d).await;
        let reasons = receive(&mut rejected, 3).await;
        for r in &reasons {
            assert!(
                r.contains("not stored") && r.contains("delivery 2 of cluster.max_deliver = 2"),
                "{r}"
            );
        }
        assert_eq!(id_counts(&outputs(&js).await).len(), 5);
    });
    d.assert_metrics(&[
        ("sentiment_cluster_messages_total{outcome=\"scored\"}", 5.0),
        (
            "sentiment_cluster_messages_total{outcome=\"rejected\"}",
            3.0,
        ),
        ("sentiment_cluster_messages_total{outcome=\"retried\"}", 3.0),
    ]);
}

#[test]
fn a_node_started_before_its_server_consumes_once_it_is_up_and_a_server_restart_loses_nothing() {
    let mut nats = Nats::stopped();
    let d = Daemon::start_with(
        "",
        "",
        "",
        &nats.section(
            "batch = 100\nack_wait_secs = 2\nmax_deliver = 20\nduplicate_window_secs = 120",
        ),
    );
    // Serving without its server: HTTP answers, and the metric says the source is down.
    assert_eq!(d.predict(r#"{"text": "still here"}"#).status, 200);
    assert_eq!(d.metric("sentiment_cluster_connected"), 0.0);
    nats.spawn();
    let rt = runtime();
    let n: u64 = 10_000;
    let js = load(&rt, &nats, &d, "s", n);
    assert_eq!(d.metric("sentiment_cluster_connected"), 1.0);
    d.wait_for("some messages scored", Duration::from_secs(60), || {
        rt.block_on(counts(&js)).0 > 200
    });
    let before = rt.block_on(counts(&js)).0;
    drop(js);
    // A server restart on the same store, mid-stream.
    nats.stop();
    assert!(before < n, "restarted mid-stream ({before} of {n} scored)");
    nats.spawn();
    assert_exactly_once(&rt, &nats, &d, n);
}

#[test]
fn a_node_killed_mid_stream_and_restarted_scores_every_message_exactly_once() {
    let nats = Nats::start();
    // Short ack_wait: what the killed node held is delivered again quickly.
    let mut d = Daemon::start_with(
        "",
        "",
        "",
        &nats.section(
            "batch = 200\nack_wait_secs = 2\nmax_deliver = 20\nduplicate_window_secs = 120",
        ),
    );
    let rt = runtime();
    let n: u64 = 10_000;
    let js = load(&rt, &nats, &d, "k", n);
    d.wait_for("some messages scored", Duration::from_secs(60), || {
        rt.block_on(counts(&js)).0 > 500
    });
    let before = rt.block_on(counts(&js)).0;
    d.kill9();
    assert!(before < n, "killed mid-stream ({before} of {n} scored)");
    d.spawn(&[]);
    let ids = assert_exactly_once(&rt, &nats, &d, n);
    assert!((0..n).all(|i| ids.contains_key(&format!("k{i}"))));
}

/// The admin API's bearer token in the cluster tests.
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// Writes [`ADMIN_TOKEN`] as a token file (mode 0600) in `dir`.
fn admin_token_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("admin.token");
    common::write_secret(&path, &format!("{ADMIN_TOKEN}\n"));
    path
}

/// `n` nodes of one cluster on `nats`, with the admin API on a token file in `dir`.
fn nodes(nats: &Nats, n: usize, dir: &std::path::Path, cluster: &str) -> Vec<Daemon> {
    let token_file = admin_token_file(dir);
    (0..n)
        .map(|i| {
            Daemon::start_with(
                "",
                "",
                "",
                &format!(
                    "{}[admin]\ntoken_file = \"{}\"\n",
                    nats.section(&format!("node_name = \"node-{i}\"\n{cluster}")),
                    token_file.display()
                ),
            )
        })
        .collect()
}

/// The nodes that say they hold the training lease.
fn holders(nodes: &[&Daemon]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].metric("sentiment_cluster_lease_holder") == 1.0)
        .collect()
}

#[test]
fn one_node_holds_the_training_lease_a_paused_holder_is_replaced_and_then_switches_nothing() {
    let nats = Nats::start();
    let secrets = tempfile::tempdir().expect("temp dir");
    let token = ADMIN_TOKEN;
    let ttl = 3;
    let all = nodes(&nats, 3, secrets.path(), &format!("lease_ttl_secs = {ttl}"));
    let refs: Vec<&Daemon> = all.iter().collect();
    all[0].wait_for("one lease holder", Duration::from_secs(30), || {
        holders(&refs).len() == 1
    });
    let leader = holders(&refs)[0];
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let role = all[leader].get("/model").json();
    assert_eq!(role["cluster"]["role"], "leader", "{role}");
    assert_eq!(role["cluster"]["node"], format!("node-{leader}"));
    let first_token = role["cluster"]["token"].as_u64().expect("token");
    assert_eq!(role["cluster"]["lag"], 0, "{role}");
    let page = all[leader].get("/").body;
    assert!(
        page.contains(&format!("node-{leader}: leader (lease token {first_token}")),
        "{page}"
    );
    for &f in &followers {
        let m = all[f].get("/model").json();
        assert_eq!(m["cluster"]["role"], "follower", "{m}");
        assert_eq!(m["cluster"]["leader"], format!("node-{leader}"), "{m}");
        // A follower trains and switches nothing; it names the node that does.
        for path in ["/admin/retrain", "/admin/rollback"] {
            let r = all[f].post_auth(path, token, "{}");
            assert_eq!(r.status, 409, "{path}: {}", r.body);
            assert!(
                r.body.contains(&format!("node-{leader} does")),
                "{}",
                r.body
            );
        }
    }

    // The holder stops answering (SIGSTOP): another node holds the lease within the TTL
    // plus one renewal period.
    all[leader].signal("STOP");
    let paused = Instant::now();
    let others: Vec<&Daemon> = followers.iter().map(|&f| &all[f]).collect();
    all[followers[0]].wait_for("another lease holder", Duration::from_secs(ttl * 3), || {
        holders(&others).len() == 1
    });
    let takeover = paused.elapsed();
    eprintln!(
        "lease taken over {:.1} s after the holder paused (ttl {ttl} s)",
        takeover.as_secs_f64()
    );
    assert!(takeover < Duration::from_secs(ttl * 2), "{takeover:?}");
    let new_leader = followers[holders(&others)[0]];
    let m = all[new_leader].get("/model").json();
    assert!(
        m["cluster"]["token"].as_u64().expect("token") > first_token,
        "{m}"
    );

    // Resumed, the old holder promotes nothing: its renewal fails and it steps down.
    all[leader].signal("CONT");
    let r = all[leader].post_auth("/admin/rollback", token, "{}");
    assert_eq!(r.status, 409, "{}", r.body);
    // It says follower at once (its last renewal is older than the TTL); its keeper then
    // learns the lease is gone.
    assert_eq!(
        all[leader].get("/model").json()["cluster"]["role"],
        "follower"
    );
    all[leader].wait_for(
        "the old holder steps down",
        Duration::from_secs(ttl * 2),
        || all[leader].metric("sentiment_cluster_lease_holder") == 0.0,
    );
    assert!(
        all[leader].logs().contains("renewal failed"),
        "{}",
        all[leader].logs()
    );
    assert_eq!(holders(&refs), vec![new_leader]);
}

#[test]
fn publish_loads_a_csv_once_and_three_nodes_score_it_exactly_once_through_a_kill() {
    let nats = Nats::start();
    let secrets = tempfile::tempdir().expect("temp dir");
    let mut all = nodes(
        &nats,
        3,
        secrets.path(),
        "batch = 200\nack_wait_secs = 2\nmax_deliver = 20\nduplicate_window_secs = 600",
    );
    let n: u64 = 100_000;
    let csv = secrets.path().join("load.csv");
    let mut text = String::from("text,source\n");
    for i in 0..n {
        text.push_str(&format!("\"message {i}, rather good\",acme\n"));
    }
    std::fs::write(&csv, &text).expect("csv");
    // The publisher reads the same [cluster] section as the nodes.
    let config = secrets.path().join("publisher.toml");
    std::fs::write(
        &config,
        nats.section("ack_wait_secs = 2\nmax_deliver = 20\nduplicate_window_secs = 600"),
    )
    .expect("config");
    let publish = || {
        common::with_config(&config)
            .args(["publish", "--csv"])
            .arg(&csv)
            .output()
            .expect("run publish")
    };
    let out = publish();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("published {n} new rows")),
        "{stdout}"
    );
    // Node 1 is killed mid-stream and started again.
    let rt = runtime();
    let js = rt.block_on(nats.jetstream());
    all[1].wait_for("some messages scored", Duration::from_secs(60), || {
        rt.block_on(counts(&js)).0 > 5_000
    });
    all[1].kill9();
    let before = rt.block_on(counts(&js)).0;
    assert!(before < n, "killed mid-stream ({before} of {n} scored)");
    all[1].spawn(&[]);
    // The same file again: nothing new.
    let again = publish();
    let stdout = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{stdout}");
    assert!(
        stdout.contains("published 0 new rows") && stdout.contains(&format!("skipped   {n} rows")),
        "{stdout}"
    );
    let ids = assert_exactly_once(&rt, &nats, &all[0], n);
    // Ids are the file's fingerprint and the line (the header is line 1).
    assert!(
        ids.keys()
            .all(|id| id.ends_with(|c: char| c.is_ascii_digit()) && id.contains(':'))
    );
    let scored: f64 = all
        .iter()
        .map(|d| d.metric("sentiment_cluster_messages_total{outcome=\"scored\"}"))
        .sum();
    // The restarted node's counters started again; the others' each did a share.
    assert!(scored > 0.0 && scored <= n as f64, "{scored}");
    for d in [&all[0], &all[2]] {
        assert!(
            d.metric("sentiment_cluster_messages_total{outcome=\"scored\"}") > 0.0,
            "every node takes part"
        );
    }
}

#[test]
fn publish_names_the_line_of_a_row_it_cannot_send_and_needs_a_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "text\nfine\n\"\"\n").expect("csv");
    let out = common::sentimentd()
        .args(["publish", "--csv"])
        .arg(&csv)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("[cluster] nats_url") && err.contains("--nats"),
        "{err}"
    );
    let nats = Nats::start();
    let out = common::sentimentd()
        .args(["publish", "--csv"])
        .arg(&csv)
        .args(["--nats", &nats.url()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}:3:", csv.display())), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 1 new rows"));
}

#[test]
fn followers_serve_the_leaders_champion_from_mlflow_and_say_so_when_they_cannot() {
    let nats = Nats::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = common::mlflow::MlflowServer::start(tmp.path(), common::free_port());
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let train_text = std::fs::read_to_string(repo.join("data/datasets/tweeteval/train.csv"))
        .expect("bundled train.csv");
    let train: Vec<&str> = train_text.lines().take(3001).collect();
    std::fs::write(tmp.path().join("train.csv"), train.join("\n") + "\n").expect("train");
    let token_file = admin_token_file(tmp.path());
    // Every node is configured alike; whoever holds the lease trains on its first start.
    let node = |i: usize| {
        Daemon::start_with(
            "",
            "",
            "on_start = \"if-missing\"\nepochs = 2",
            &format!(
                "[data]\ntrain = [\"{train}\"]\nval = \"{val}\"\n\n[model]\nembedding_dim = 16\n\
                 vocab_size = 3000\nbuckets = 8192\n\n[tracking]\nmlflow_uri = \"{uri}\"\n\
                 registered_model = \"cluster\"\n\n[admin]\ntoken_file = \"{token}\"\n\n{cluster}",
                token = token_file.display(),
                train = tmp.path().join("train.csv").display(),
                val = repo.join("data/datasets/tweeteval/val.csv").display(),
                uri = server.uri,
                cluster =
                    nats.section(&format!("node_name = \"node-{i}\"\nchampion_poll_secs = 1")),
            ),
        )
    };
    let leader = node(0);
    leader.wait_for("the leader's first model", Duration::from_secs(180), || {
        leader.get("/model").json()["fallback"] == false
    });
    let model = leader.get("/model").json();
    assert_eq!(model["cluster"]["role"], "leader", "{model}");
    let version = model["version"].as_str().expect("version").to_string();
    let client = sentimentd_tracking::MlflowClient::new(&server.uri);
    let champion = || {
        client
            .get_model_version_by_alias("cluster", "champion")
            .ok()
            .flatten()
    };
    leader.wait_for("the champion alias", Duration::from_secs(120), || {
        champion().is_some_and(|c| c.tags.get("sentimentd.version") == Some(&version))
    });
    let registered = champion().expect("champion");
    assert!(
        registered.tags.contains_key("sentimentd.fencing_token"),
        "{:?}",
        registered.tags
    );

    // A follower started now does not train: it downloads the champion, checks it and
    // serves it.
    let started = Instant::now();
    let follower = node(1);
    // Waits until the follower serves `v`, and says how long it took since `since`.
    let serves = |what: &str, v: &str, since: Instant| {
        follower.wait_for(what, Duration::from_secs(60), || {
            follower.get("/model").json()["version"] == v
        });
        eprintln!("{what}: {:.1} s", since.elapsed().as_secs_f64());
    };
    serves(
        "the follower serves the champion after its start",
        &version,
        started,
    );
    let m = follower.get("/model").json();
    assert_eq!(m["cluster"]["role"], "follower", "{m}");
    assert!(m["cluster"]["champion_error"].is_null(), "{m}");
    assert_eq!(follower.metric("sentiment_cluster_champion_synced"), 1.0);
    let logs = follower.logs();
    assert!(logs.contains("serving the leader's champion"), "{logs}");
    assert!(!logs.contains("background training finished"), "{logs}");

    // A version promoted on the leader reaches the follower within its poll interval plus
    // the download.
    let trained = common::with_config(&leader.root().join("sentimentd.toml"))
        .args(["train", "--no-promote"])
        .output()
        .expect("train");
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    let v2 = std::fs::read_dir(leader.root().join("models/versions"))
        .expect("versions")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .find(|v| *v != version)
        .expect("a second version");
    let promoted = Instant::now();
    let r = leader.post_auth(
        "/admin/promote",
        ADMIN_TOKEN,
        &format!(r#"{{"version": "{v2}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    serves(
        "the follower serves the leader's promotion (champion_poll_secs = 1)",
        &v2,
        promoted,
    );

    // A champion whose files no longer match their checksums is not served; the node says why.
    let registered = champion().expect("champion");
    assert_eq!(registered.tags.get("sentimentd.version"), Some(&v2));
    let run = client.get_run(&registered.run_id).expect("run");
    let files = client.list_artifacts(&run, "model").expect("files");
    let garbage = tmp.path().join("garbage");
    std::fs::write(&garbage, b"not the weights").expect("garbage");
    for f in files.iter().filter(|f| !f.ends_with("manifest.json")) {
        client
            .upload_artifact(&run, f, &garbage)
            .expect("overwrite");
    }
    let broken = node(2);
    broken.wait_for("the refusal", Duration::from_secs(60), || {
        broken.metric("sentiment_cluster_champion_synced") == 0.0
    });
    let m = broken.get("/model").json();
    assert_eq!(m["fallback"], true, "keeps serving what it served: {m}");
    let error = m["cluster"]["champion_error"].as_str().unwrap_or_default();
    assert!(error.contains("checksum"), "{m}");
    assert!(
        broken.logs().contains("is not served here"),
        "{}",
        broken.logs()
    );

    // An alias moved under an older fencing token (a node that lost the lease, replaying a
    // queued registration) is not followed.
    let exp = client
        .get_or_create_experiment("stale")
        .expect("experiment");
    let stale_run = client
        .create_run(&exp, "stale", 0, &Default::default())
        .expect("run");
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sentimentd.fencing_token".to_string(), "0".to_string());
    tags.insert("sentimentd.version".to_string(), version.clone());
    // By hand: `register_champion` itself leaves a newer token's alias alone.
    let stale = client
        .create_model_version("cluster", &stale_run.artifact_uri, &stale_run.run_id, &tags)
        .expect("stale version");
    client
        .set_alias("cluster", "champion", &stale.version)
        .expect("stale champion");
    follower.wait_for(
        "the stale champion refused",
        Duration::from_secs(30),
        || {
            follower.get("/model").json()["cluster"]["champion_error"]
                .as_str()
                .is_some_and(|e| e.contains("older than token"))
        },
    );
    assert_eq!(follower.get("/model").json()["version"], v2.as_str());
}

#[test]
fn a_followers_drift_observations_reach_the_lease_holder() {
    let nats = Nats::start();
    let secrets = tempfile::tempdir().expect("temp dir");
    let all = nodes(&nats, 2, secrets.path(), "observation_share = 1.0");
    let refs: Vec<&Daemon> = all.iter().collect();
    all[0].wait_for("one lease holder", Duration::from_secs(30), || {
        holders(&refs).len() == 1
    });
    let leader = holders(&refs)[0];
    let follower = 1 - leader;
    let texts: Vec<String> = (0..40)
        .map(|i| format!("\"text {i}: the service was awful\""))
        .collect();
    let r = all[follower].predict(&format!("{{\"texts\": [{}]}}", texts.join(",")));
    assert_eq!(r.status, 200, "{}", r.body);
    all[leader].wait_for(
        "observations at the leader",
        Duration::from_secs(30),
        || all[leader].metric("sentiment_cluster_observations_received_total") >= 40.0,
    );
    assert!(all[follower].metric("sentiment_cluster_observations_sent_total") >= 40.0);
    // The leader's own traffic stays in its own window; it sends nothing.
    assert_eq!(
        all[leader].metric("sentiment_cluster_observations_sent_total"),
        0.0
    );
    assert_eq!(
        all[follower].metric("sentiment_cluster_observations_received_total"),
        0.0
    );
}

#[test]
fn labelled_messages_reach_the_labelled_store_before_they_are_acknowledged() {
    let nats = Nats::start();
    let d = Daemon::start_with("", "", "", &nats.section(""));
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut rejected = client.subscribe("sentimentd.rejected").await.expect("subscribe");
        let js = jetstream::new(client);
        wait_for_streams(&js, &d).await;
        publish(
            &js,
            [
                ("l1", r#"{"id": "l1", "text": "the refund never came", "label": "negative", "source": "acme"}"#),
                ("l2", r#"{"id": "l2", "text": "works as promised", "label": 2}"#),
                ("l3", r#"{"id": "l3", "text": "no label here"}"#),
                ("l4", r#"{"id": "l4", "text": "what is this", "label": "angry"}"#),
            ]
            .map(|(id, body)| (id.to_string(), body.to_string())),
        )
        .await;
        wait_settled(&js, 3, Duration::from_secs(30), &d).await;
        let reasons = receive(&mut rejected, 1).await;
        assert!(reasons[0].contains("label must be") && reasons[0].contains("got \\\"angry\\\""), "{reasons:?}");
    });
    let dir = d.root().join("labelled");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("labelled store")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains("-jetstream-"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let rows = common::read_csv(&files[0]);
    let col = |name: &str| rows[0].iter().position(|h| h == name).expect("column");
    let (text, label, source, origin) = (col("text"), col("label"), col("source"), col("origin"));
    let body = &rows[1..];
    assert_eq!(body.len(), 2, "{rows:?}");
    assert!(body.iter().any(|r| r[text] == "the refund never came"
        && r[label] == "negative"
        && r[source] == "acme"
        && r[origin] == "jetstream"));
    assert!(
        body.iter()
            .any(|r| r[text] == "works as promised" && r[label] == "positive")
    );
}

#[test]
fn messages_a_crashed_node_held_past_max_deliver_are_refused_not_left_in_the_queue() {
    let nats = Nats::start();
    let rt = runtime();
    let n = 100;
    let held = 10;
    // The streams and consumer as the node will ask for them, 100 messages, and a "node"
    // (this test) that takes 10 of them and crashes without acknowledging: with one delivery
    // each, only the server's max-deliveries advisory can settle them.
    let (js, mut rejections) = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let rejected = client
            .subscribe("sentimentd.rejected")
            .await
            .expect("subscribe");
        let js = jetstream::new(client);
        // Long enough for the node to start and follow the advisories on a busy machine.
        let consumer = input_consumer(&js, Duration::from_secs(10), 1).await;
        publish(
            &js,
            (0..n).map(|i| {
                let body = serde_json::json!({"id": format!("h{i}"), "text": format!("text {i}")});
                (format!("h{i}"), body.to_string())
            }),
        )
        .await;
        take_without_acking(&consumer, held).await;
        (js, rejected)
    });
    let d = Daemon::start_with(
        "",
        "",
        "",
        &nats.section("ack_wait_secs = 10\nmax_deliver = 1\nbatch = 50"),
    );
    rt.block_on(async {
        given_up_refused_and_the_rest_scored_once(&js, &mut rejections, (held, n), 30, &d).await;
    });
    d.wait_for("the refusals counted", Duration::from_secs(10), || {
        d.metric("sentiment_cluster_messages_total{outcome=\"rejected\"}") == held as f64
    });
}

/// The server sends its max-deliveries advisory once, as a plain NATS message, when a pull
/// finds a message past `max_deliver`. Sent while no node followed the advisories (the pull
/// came from another client, or from a node still starting), it used to be lost, and the
/// message stayed in the work queue, refused by nobody. The advisories are kept in a stream
/// now, and the next node to connect refuses the messages.
#[test]
fn a_max_deliveries_advisory_sent_while_no_node_was_connected_is_acted_on_by_the_next_node() {
    let nats = Nats::start();
    let rt = runtime();
    let section = nats.section("ack_wait_secs = 2\nmax_deliver = 1\nbatch = 50");
    let mut d = Daemon::start_with("", "", "", &section);
    let (n, held) = (30, 5);
    let (js, mut rejections, mut advisories) = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client.clone());
        // Set up and pulling.
        wait_for_streams(&js, &d).await;
        let started = Instant::now();
        loop {
            let consumer = js.get_stream("SENTIMENTD_IN").await.expect("input");
            if let Ok(mut c) = consumer
                .get_consumer::<jetstream::consumer::pull::Config>("sentimentd")
                .await
                && c.info().await.is_ok_and(|i| i.num_waiting > 0)
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{}", d.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rejected = client
            .subscribe("sentimentd.rejected")
            .await
            .expect("subscribe");
        let advisories = client
            .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SENTIMENTD_IN.sentimentd")
            .await
            .expect("subscribe");
        (js, rejected, advisories)
    });
    d.kill9();
    let message = |i: usize| {
        let body = serde_json::json!({"id": format!("a{i}"), "text": format!("text {i}")});
        (format!("a{i}"), body.to_string())
    };
    rt.block_on(async {
        // The killed node's last pull request lives until it expires; a message sent to it
        // would be a delivery too.
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream("SENTIMENTD_IN")
            .await
            .expect("input")
            .get_consumer("sentimentd")
            .await
            .expect("consumer");
        let started = Instant::now();
        while consumer.info().await.expect("consumer info").num_waiting > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "pull requests left"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A "node" (this test) takes some and crashes without acknowledging them...
        publish(&js, (0..held).map(message)).await;
        take_without_acking(&consumer, held).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // ... and another client's pull, past ack_wait, makes the server give up on them
        // while no node is connected.
        let mut empty = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = futures_util::StreamExt::next(&mut empty).await {
            assert!(m.is_err(), "no message was left to deliver");
        }
        for _ in 0..held {
            tokio::time::timeout(
                Duration::from_secs(30),
                futures_util::StreamExt::next(&mut advisories),
            )
            .await
            .expect("an advisory within 30 s")
            .expect("advisory");
        }
        publish(&js, (held..n).map(message)).await;
        assert_eq!(counts(&js).await, (0, n as u64), "nothing settled yet");
    });
    d.spawn(&[]);
    rt.block_on(async {
        let ids =
            given_up_refused_and_the_rest_scored_once(&js, &mut rejections, (held, n), 60, &d)
                .await;
        assert!((0..held).all(|i| !ids.contains_key(&format!("a{i}"))));
        let mut kept = js.get_stream("SENTIMENTD_IN_GIVEN_UP").await.expect("kept");
        let started = Instant::now();
        while kept.info().await.expect("info").state.messages > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "advisories left unacknowledged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// `[cluster] publish_inbox`: a file dropped in a node's watched folder goes to the input
/// stream row by row, ids `<fingerprint>:<line>`, and is scored through the stream exactly
/// once; its unreadable row goes to `rejected/`, the file to the archive, and nothing to the
/// outbox. The same content dropped again publishes nothing new.
#[test]
fn a_file_dropped_in_a_publishing_nodes_folder_is_scored_once_through_the_stream() {
    let nats = Nats::start();
    let rt = runtime();
    let d = Daemon::start_with(
        "",
        "",
        "",
        &nats.section("batch = 100\nack_wait_secs = 5\npublish_inbox = true"),
    );
    let n = 300;
    let mut csv = String::from("text,source\n");
    for i in 0..n {
        csv.push_str(&format!("row {i} I love this,feed\n"));
        if i == 10 {
            // Line 13: longer than [data] max_text_chars.
            csv.push_str(&format!("{},feed\n", "x".repeat(1200)));
        }
    }
    d.drop_file("tweets.csv", csv.as_bytes());
    let js = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        wait_settled(&js, n, Duration::from_secs(60), &d).await;
        js
    });
    d.wait_for("the file archived", Duration::from_secs(30), || {
        d.root()
            .join("archive")
            .read_dir()
            .is_ok_and(|mut r| r.next().is_some())
    });
    let outputs = rt.block_on(outputs(&js));
    let ids = id_counts(&outputs);
    assert_eq!(ids.len() as u64, n, "{ids:?}");
    assert!(ids.values().all(|&c| c == 1), "no duplicate");
    let fingerprint = ids
        .keys()
        .next()
        .and_then(|id| id.split(':').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(fingerprint.len(), 16, "{ids:?}");
    assert!(
        ids.contains_key(&format!("{fingerprint}:2")),
        "line 2 is the first row"
    );
    assert!(
        !ids.contains_key(&format!("{fingerprint}:13")),
        "line 13 was refused"
    );
    assert!(
        outputs.iter().all(|o| o["source"] == "feed"),
        "{:?}",
        outputs[0]
    );
    let outbox: Vec<_> = std::fs::read_dir(d.root().join("outbox"))
        .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        outbox.is_empty(),
        "scored through the stream, not here: {outbox:?}"
    );
    let rejected = std::fs::read_dir(d.root().join("rejected"))
        .expect("rejected folder")
        .filter_map(Result::ok)
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(rejected.contains("13,\"text too long"), "{rejected}");
    d.assert_metrics(&[
        (r#"sentiment_batches_total{outcome="published"}"#, 1.0),
        (
            r#"sentiment_batch_rows_total{outcome="published"}"#,
            n as f64,
        ),
        (r#"sentiment_batch_rows_total{outcome="rejected"}"#, 1.0),
    ]);
    assert!(
        d.logs().contains("batch published to the cluster"),
        "{}",
        d.logs()
    );

    // The same content again: every row is a duplicate the stream drops.
    d.drop_file("tweets-again.csv", csv.as_bytes());
    d.wait_for("the second file done", Duration::from_secs(30), || {
        d.metric(r#"sentiment_batches_total{outcome="published"}"#) == 2.0
    });
    assert_eq!(
        d.metric(r#"sentiment_batch_rows_total{outcome="published"}"#),
        n as f64
    );
    rt.block_on(async {
        assert_eq!(counts(&js).await, (n, 0));
    });
}
