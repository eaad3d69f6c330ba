//! Connecting to NATS, creating the streams and the shared consumer if they are missing, and
//! checking that what the server runs is what `[cluster]` asks for.

use async_nats::jetstream::{self, consumer, stream};
use sentimentd_config::ClusterConfig;
use std::time::Duration;

/// Why the source is not consuming.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server cannot be reached or does not answer (yet): worth trying again.
    #[error("{0}")]
    Unreachable(String),
    /// The server runs settings other than the configured ones, or the credentials cannot be
    /// read: trying again changes nothing, an operator must act.
    #[error("{0}")]
    Refused(String),
}

/// A connection with the streams and the consumer checked.
pub struct Link {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub consumer: consumer::PullConsumer,
    /// The shared consumer of the kept max-deliveries advisories ([`given_up`]); none when
    /// the server would not make it (logged: scoring goes on without it).
    pub given_up: Option<consumer::PullConsumer>,
}

/// The subject of the server's advisories that a message of the input consumer reached
/// `max_deliver` without being settled.
pub fn advisory_subject(c: &ClusterConfig) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        c.input_stream, c.consumer
    )
}

/// The stream that keeps those advisories, and the consumer all nodes share on it. The server
/// sends an advisory once, as a plain NATS message: sent while no node was connected, it was
/// lost, and its input message stayed in the work queue for ever, refused by nobody. Kept in
/// a stream, it waits for the next node that connects.
pub async fn given_up(
    js: &jetstream::Context,
    c: &ClusterConfig,
) -> Result<consumer::PullConsumer, SetupError> {
    let name = format!("{}_GIVEN_UP", c.input_stream);
    let unreachable = |e: &dyn std::fmt::Display| {
        SetupError::Unreachable(format!("the advisories' stream {name}: {e}"))
    };
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![advisory_subject(c)],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable(&e))?;
    let runs = &stream.cached_info().config;
    if !runs.subjects.contains(&advisory_subject(c))
        || runs.retention != stream::RetentionPolicy::WorkQueue
    {
        return Err(SetupError::Refused(format!(
            "the stream {name} keeps the max-deliveries advisories of cluster.consumer, but runs \
             with subjects {:?} and retention {:?}; delete it (`nats stream rm {name}`) and the \
             node makes it again",
            runs.subjects, runs.retention
        )));
    }
    stream
        .get_or_create_consumer(
            &c.consumer,
            consumer::pull::Config {
                durable_name: Some(c.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unreachable(&e))
}

/// A client of the server at `url`, with the configured credentials.
pub async fn client(url: &str, c: &ClusterConfig) -> Result<async_nats::Client, SetupError> {
    let options = match &c.credentials_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                SetupError::Refused(format!("cluster.credentials_file {}: {e}", path.display()))
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    options
        .name(format!("sentimentd {}", c.node()))
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| SetupError::Unreachable(format!("cannot connect to {url}: {e}")))
}

pub async fn connect(url: &str, c: &ClusterConfig) -> Result<Link, SetupError> {
    let client = client(url, c).await?;
    let js = jetstream::new(client.clone());
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        SetupError::Unreachable(format!("{what}: {e} (is JetStream enabled on {url}?)"))
    };
    let window = Duration::from_secs(c.duplicate_window_secs);
    let input = js
        .get_or_create_stream(stream::Config {
            name: c.input_stream.clone(),
            subjects: vec![c.input_subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable(&format!("stream {}", c.input_stream), &e))?;
    let output = js
        .get_or_create_stream(stream::Config {
            name: c.output_stream.clone(),
            subjects: vec![c.output_subject.clone()],
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable(&format!("stream {}", c.output_stream), &e))?;
    check_streams(c, &input.cached_info().config, &output.cached_info().config)?;
    let ack_wait = Duration::from_secs(c.ack_wait_secs);
    let mut consumer: consumer::PullConsumer = input
        .get_or_create_consumer(
            &c.consumer,
            consumer::pull::Config {
                durable_name: Some(c.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: c.max_deliver,
                max_ack_pending: i64::try_from(c.max_in_flight).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unreachable(&format!("consumer {}", c.consumer), &e))?;
    // What the server runs with, which may differ from what was asked: an existing consumer
    // keeps its settings, and an older server ignores settings it does not know.
    let echoed = consumer
        .info()
        .await
        .map_err(|e| unreachable(&format!("consumer {}", c.consumer), &e))?
        .config
        .clone();
    check_consumer(c, &echoed)?;
    lease_bucket(&js, c).await?;
    let given_up = match given_up(&js, c).await {
        Ok(consumer) => Some(consumer),
        Err(e) => {
            tracing::error!(error = %e, "cannot keep the max-deliveries advisories; messages the server gives up on stay in the input stream until a node can");
            None
        }
    };
    Ok(Link {
        client,
        js,
        consumer,
        given_up,
    })
}

/// The training lease's KV bucket, made if missing, with its TTL checked.
pub async fn lease_bucket(
    js: &jetstream::Context,
    c: &ClusterConfig,
) -> Result<async_nats::jetstream::kv::Store, SetupError> {
    // The bucket's stream is made here rather than by `create_key_value`, which first asks
    // for account information in a form nats-server 2.9 does not answer; the settings are
    // those of a KV bucket (one value per key), with `max_age` = the lease's TTL.
    let bucket = &c.lease_bucket;
    let ttl = Duration::from_secs(c.lease_ttl_secs);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| SetupError::Unreachable(format!("lease bucket {bucket}: {e}")))?;
    let runs = stream.cached_info().config.max_age;
    if runs != ttl {
        return Err(mismatch(
            format!("the lease bucket {bucket} (max_age)"),
            runs,
            "cluster.lease_ttl_secs",
            ttl,
        ));
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| SetupError::Unreachable(format!("lease bucket {bucket}: {e}")))
}

fn mismatch(
    what: String,
    runs: impl std::fmt::Debug,
    key: &str,
    asked: impl std::fmt::Debug,
) -> SetupError {
    SetupError::Refused(format!(
        "{what} runs with {runs:?}, but {key} asks for {asked:?}; an existing stream or \
         consumer keeps its settings, so change the setting back, or edit or delete it on the \
         server (`nats stream edit`, `nats consumer edit`)"
    ))
}

fn check_streams(
    c: &ClusterConfig,
    input: &stream::Config,
    output: &stream::Config,
) -> Result<(), SetupError> {
    let window = Duration::from_secs(c.duplicate_window_secs);
    for (config, subject, subject_key) in [
        (input, &c.input_subject, "cluster.input_subject"),
        (output, &c.output_subject, "cluster.output_subject"),
    ] {
        if config.duplicate_window != window {
            return Err(mismatch(
                format!("the stream {} (duplicate_window)", config.name),
                config.duplicate_window,
                "cluster.duplicate_window_secs",
                window,
            ));
        }
        if !config.subjects.contains(subject) {
            return Err(mismatch(
                format!("the stream {} (subjects)", config.name),
                &config.subjects,
                subject_key,
                subject,
            ));
        }
    }
    if input.retention != stream::RetentionPolicy::WorkQueue {
        return Err(SetupError::Refused(format!(
            "the stream {} (cluster.input_stream) is not a work queue (retention {:?}), so every \
             node would score every message; delete it or name another stream",
            input.name, input.retention
        )));
    }
    Ok(())
}

fn check_consumer(c: &ClusterConfig, echoed: &consumer::Config) -> Result<(), SetupError> {
    let what = |setting: &str| format!("the consumer {} ({setting})", c.consumer);
    let ack_wait = Duration::from_secs(c.ack_wait_secs);
    if echoed.ack_wait != ack_wait {
        return Err(mismatch(
            what("ack_wait"),
            echoed.ack_wait,
            "cluster.ack_wait_secs",
            ack_wait,
        ));
    }
    if echoed.max_deliver != c.max_deliver {
        return Err(mismatch(
            what("max_deliver"),
            echoed.max_deliver,
            "cluster.max_deliver",
            c.max_deliver,
        ));
    }
    let in_flight = i64::try_from(c.max_in_flight).unwrap_or(i64::MAX);
    if echoed.max_ack_pending != in_flight {
        return Err(mismatch(
            what("max_ack_pending"),
            echoed.max_ack_pending,
            "cluster.max_in_flight",
            in_flight,
        ));
    }
    if echoed.ack_policy != consumer::AckPolicy::Explicit {
        return Err(mismatch(
            what("ack_policy"),
            echoed.ack_policy,
            "the JetStream source (explicit acks)",
            consumer::AckPolicy::Explicit,
        ));
    }
    Ok(())
}
