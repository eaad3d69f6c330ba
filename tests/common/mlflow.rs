//! An MLflow tracking server from the test virtualenv (scripts/test-deps.sh makes it).

use sentimentd_tracking::MlflowClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn venv() -> PathBuf {
    super::venv(&["mlflow", "python"])
}

/// `mlflow server` in its own process group, stopped with the whole group on drop.
pub struct MlflowServer {
    child: Child,
    pub uri: String,
    log: PathBuf,
}

impl MlflowServer {
    pub fn start(dir: &Path, port: u16) -> MlflowServer {
        let log = dir.join(format!("mlflow-server-{port}.log"));
        let out = std::fs::File::create(&log).expect("server log file");
        let err = out.try_clone().expect("server log file");
        let mut cmd = Command::new(venv().join("bin/mlflow"));
        cmd.arg("server")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("mlartifacts"))
            .args(["--workers", "1"])
            // The job runner (huey consumers for GenAI jobs) is several idle processes here.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start mlflow server");
        let mut server = MlflowServer {
            child,
            uri: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&mut self) {
        let client = MlflowClient::new(&self.uri);
        // Cold start (imports, database migrations) takes 10-20 s on a busy 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if client.health().is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mlflow server exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server not healthy after 180 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let kill = |signal: &str| {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever ignored SIGTERM (uvicorn's worker, say) goes now.
        kill("-KILL");
        let _ = self.child.wait();
    }
}
