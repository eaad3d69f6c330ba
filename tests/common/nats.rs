//! Debian's nats-server (scripts/test-deps.sh installs it) with JetStream on loopback.

use async_nats::jetstream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let mut nats = Nats::stopped();
        nats.spawn();
        nats
    }

    /// A server's port and store, not started yet.
    pub fn stopped() -> Nats {
        Nats {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Starts the server (again) on the same port and store.
    pub fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test-deps.sh installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A clean stop (SIGTERM): the server writes its store out, as on a reboot.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.url()).await.expect("connect"))
    }

    /// The `[cluster]` section for this server, with `extra` keys.
    pub fn section(&self, extra: &str) -> String {
        format!("[cluster]\nnats_url = \"{}\"\n{extra}\n", self.url())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
