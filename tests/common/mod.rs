//! Starts the real `sentimentd serve` binary on a free port with a temp state directory.
#![allow(dead_code)]

pub mod mlflow;
pub mod nats;
pub mod reviews;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `sentimentd` binary, with the environment that would override a test's config
/// (`SENTIMENTD_CONFIG`, `SENTIMENTD_LOG`) removed.
pub fn sentimentd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentimentd"));
    // The log filter comes from the config unless a test says otherwise.
    c.env_remove("SENTIMENTD_CONFIG")
        .env_remove("SENTIMENTD_LOG")
        .env_remove("RUST_LOG");
    c
}

/// [`sentimentd`] with `--config <config>` given.
pub fn with_config(config: &Path) -> Command {
    let mut c = sentimentd();
    c.arg("--config").arg(config);
    c
}

/// A temp directory holding a config file, to run CLI commands in.
pub struct CliEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl CliEnv {
    /// Writes the config `text` makes for the new temp directory into it.
    pub fn write(text: impl FnOnce(&Path) -> String) -> CliEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("sentimentd.toml");
        std::fs::write(&config, text(dir.path())).expect("write config");
        CliEnv { dir, config }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sentimentd --config <config> <args>` in the directory, to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        with_config(&self.config)
            .args(args)
            .current_dir(self.root())
            .output()
            .expect("run sentimentd")
    }

    /// Like [`CliEnv::run`], for a command that must succeed.
    pub fn success(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_success(args, &out);
        out
    }
}

/// Fails the test, showing both streams, unless the command `args` ended well.
pub fn assert_success(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where `scripts/fetch-pretrained.sh` put the encoders for the tests:
/// `$SENTIMENTD_PRETRAINED`, else `~/.cache/sentimentd-pretrained` (what `scripts/test.sh` uses).
pub fn pretrained_root() -> PathBuf {
    let root = std::env::var_os("SENTIMENTD_PRETRAINED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sentimentd-pretrained")
        });
    assert!(
        root.join("all-minilm-l6-v2/model.safetensors").is_file(),
        "no encoder in {}: run scripts/fetch-pretrained.sh {} (scripts/test.sh does)",
        root.display(),
        root.display()
    );
    root
}

/// Writes a file only its owner may read, as the admin token file must be.
pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub config: PathBuf,
    starts: usize,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Tests that compare hourly buckets with the clock start at least two minutes before the
/// next full hour, so the hour cannot turn while they run.
pub fn away_from_hour_boundary() {
    let left = (3600 - unix_now() % 3600) as u64;
    if left < 120 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The `Content-Type` of an answer ("" without one).
pub fn content_type<B>(r: &ureq::http::Response<B>) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The Python virtualenv `scripts/test-deps.sh` builds (`SENTIMENTD_VENV`, default
/// `~/.cache/sentimentd-venv`); a missing one, or one without `tools` under `bin/`, fails
/// the test with how to fix it, never skips it.
pub fn venv(tools: &[&str]) -> PathBuf {
    let dir = std::env::var_os("SENTIMENTD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sentimentd-venv")
        });
    for tool in tools {
        assert!(
            dir.join("bin").join(tool).is_file(),
            "no {tool} in the venv at {} (SENTIMENTD_VENV or ~/.cache/sentimentd-venv): run \
             scripts/test-deps.sh first",
            dir.display()
        );
    }
    dir
}

/// Response status and body of one request.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Daemon {
    /// `extra` is appended to a config whose paths all live in the temp dir; sections given
    /// in `extra` must not repeat the ones written here ([paths], [server], [ingest], [train]),
    /// so those take keys through `server`, `ingest` and `train` instead.
    pub fn start_with(server: &str, ingest: &str, train: &str, extra: &str) -> Daemon {
        let mut d = Daemon::configure(server, ingest, train, extra);
        d.spawn(&[]);
        d
    }

    /// Like [`Daemon::start_with`] without starting the binary.
    pub fn configure(server: &str, ingest: &str, train: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let config = root.join("sentimentd.toml");
        let text = format!(
            r#"[paths]
model_store = "{root}/models"
state_dir = "{root}/state"

[train]
{on_start}{train}

[server]
# The --port flag must override this.
port = 1
workers = 2
inference_threads = 2
{server}

[ingest]
inbox = "{root}/inbox"
outbox = "{root}/outbox"
archive = "{root}/archive"
rejected = "{root}/rejected"
processing = "{root}/processing"
journal = "{root}/journal"
labelled_dir = "{root}/labelled"
settle_ms = 100
{ingest}

{extra}
"#,
            root = root.display(),
            on_start = if train.contains("on_start") {
                ""
            } else {
                "on_start = \"never\"\n"
            },
        );
        std::fs::write(&config, text).expect("write config");
        std::fs::create_dir_all(root.join("inbox")).expect("inbox");
        Daemon {
            dir,
            port: free_port(),
            child: None,
            config,
            starts: 0,
        }
    }

    pub fn start() -> Daemon {
        Daemon::start_with("", "", "", "")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Starts the binary (again) on the same state; waits until /health answers.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        self.spawn_no_wait(env);
        self.wait_healthy();
    }

    pub fn spawn_no_wait(&mut self, env: &[(&str, &str)]) {
        self.starts += 1;
        let log = std::fs::File::create(self.root().join(format!("daemon-{}.log", self.starts)))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentimentd"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--port")
            .arg(self.port.to_string())
            .current_dir(self.root())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_BACKTRACE")
            .env_remove("SENTIMENTD_TEST_CRASH_AT")
            .env_remove("SENTIMENTD_LOG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start sentimentd"));
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(self.root().join(format!("daemon-{i}.log"))) {
                let _ = f.read_to_string(&mut s);
            }
            out.push_str(&format!("--- start {i} ---\n{s}"));
        }
        out
    }

    /// The log lines that contain any of `needles`, before the whole log: a CI report keeps
    /// only the head of a long failure message, and these are what explains the failure.
    pub fn logs_about(&self, needles: &[&str]) -> String {
        let all = self.logs();
        let picked: Vec<&str> = all
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .collect();
        format!(
            "--- lines about {needles:?} ---\n{}\n{all}",
            picked.join("\n")
        )
    }

    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let agent = agent();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sentimentd exited early ({status}):\n{}", self.logs());
            }
            if let Ok(r) = agent.get(self.url("/ready")).call()
                && r.status().as_u16() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sentimentd did not become ready:\n{}", self.logs());
    }

    pub fn get(&self, path: &str) -> Reply {
        let mut r = agent()
            .get(self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Reply {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    pub fn post(&self, path: &str, content_type: Option<&str>, body: &str) -> Reply {
        let mut req = agent().post(self.url(path));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let mut r = req
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Reply {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// A JSON `POST` with `Authorization: Bearer <token>`.
    pub fn post_auth(&self, path: &str, token: &str, body: &str) -> Reply {
        let mut r = agent()
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {token}"))
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Reply {
            status: r.status().as_u16(),
            body: r.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    pub fn predict(&self, body: &str) -> Reply {
        self.post("/predict", Some("application/json"), body)
    }

    /// Value of one exposition line such as `sentiment_requests_total{outcome="ok"}`; 0 when
    /// the series is absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").body;
        metric_in(&text, series)
    }

    /// Asserts the value of each `(series, value)`, as [`Daemon::metric`] reads it.
    pub fn assert_metrics(&self, want: &[(&str, f64)]) {
        for (series, value) in want {
            assert_eq!(self.metric(series), *value, "{series}\n{}", self.logs());
        }
    }

    /// Waits until the gate has decided on a retrained candidate, either way.
    pub fn wait_gate_decision(&self, within: Duration) {
        self.wait_for("the gate's decision", within, || {
            self.metric(r#"sentiment_retrains_total{outcome="promoted"}"#)
                + self.metric(r#"sentiment_retrains_total{outcome="rejected"}"#)
                >= 1.0
        });
    }

    /// [`metric_sum`] over the daemon's current `/metrics`.
    pub fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.get("/metrics").body, name, labels)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} {pid} failed");
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10));
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "sentimentd did not exit within {within:?}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    /// Drops a file into the inbox the way well-behaved producers do: write, then rename.
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        let tmp = self.inbox().join(format!("{name}.part"));
        std::fs::write(&tmp, content).expect("write inbox file");
        std::fs::rename(&tmp, self.inbox().join(name)).expect("rename into inbox");
    }

    pub fn wait_for(&self, what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("timed out waiting for {what}:\n{}", self.logs());
    }

    /// Waits until the daemon has claimed the inbox file `name` (moved it to processing).
    pub fn wait_claimed(&self, name: &str) {
        let claimed = self.root().join("processing").join(name);
        self.wait_for("the claim", Duration::from_secs(30), || claimed.exists());
    }

    /// Waits until `name` has left the inbox, and the processing folder and the journal
    /// are empty.
    pub fn wait_processed(&self, name: &str, within: Duration) {
        let inbox = self.inbox().join(name);
        let empty = |dir: PathBuf| {
            std::fs::read_dir(dir)
                .map(|d| d.count() == 0)
                .unwrap_or(false)
        };
        self.wait_for(&format!("{name} to be processed"), within, || {
            !inbox.exists()
                && empty(self.root().join("journal"))
                && empty(self.root().join("processing"))
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of every series of `name` whose labels include all of `labels` (`key="value"` each).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            let parts: Vec<&str> = set.split(',').collect();
            labels
                .iter()
                .all(|want| parts.contains(want))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// A CSV file's text: the `header` line, then one line a row.
pub fn csv_text(header: &str, rows: impl IntoIterator<Item = String>) -> String {
    let mut text = format!("{header}\n");
    for row in rows {
        text.push_str(&row);
        text.push('\n');
    }
    text
}

pub fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    r.records()
        .map(|rec| {
            rec.expect("csv record")
                .iter()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
