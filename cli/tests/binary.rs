//! The `topiq` binary as an operator runs it.

// Test helpers panic on purpose: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn topiq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_topiq"))
}

fn workspace_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
}

/// A config file in a folder of its own, removed when the test ends.
struct TempConfig {
    folder: PathBuf,
    path: PathBuf,
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

fn temp_config(name: &str, text: &str) -> TempConfig {
    let folder = std::env::temp_dir().join(format!("topiq-bin-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    TempConfig { folder, path }
}

/// The stdout of `command`, which must succeed.
fn succeeds(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn check_accepts_the_shipped_config_and_prints_a_summary() {
    let stdout = succeeds(
        topiq()
            .args(["check", "--function", "emails.send", "--config"])
            .arg(workspace_file("config.yaml")),
    );
    assert!(
        stdout.contains("adapter: modules::queue::BuiltinQueueAdapter"),
        "{stdout}"
    );
    assert!(
        stdout.contains("send-email: emails.send -> emails.send"),
        "{stdout}"
    );
    assert!(
        stdout.contains("functions: builtin.log, emails.send"),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_http_worker_example() {
    let stdout = succeeds(
        topiq()
            .args(["check", "--config"])
            .arg(workspace_file("examples/http-worker/config.yaml")),
    );
    assert!(
        stdout.contains("emails.send: POST http://127.0.0.1:9000 "),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_kubernetes_configmap_config() {
    // The config.yaml inside deploy/container/k8s/configmap.yaml, as the pods get it.
    let manifest =
        std::fs::read_to_string(workspace_file("deploy/container/k8s/configmap.yaml")).unwrap();
    let configmap: serde_json::Value = serde_saphyr::from_str(&manifest).unwrap();
    let text = configmap["data"]["config.yaml"].as_str().unwrap();
    let config = temp_config("configmap", text);
    let stdout = succeeds(
        topiq()
            .args(["check", "--config"])
            .arg(&config.path)
            .env("TOPIQ_API_TOKEN", "a-token-for-the-check")
            .env(
                "TOPIQ_RUNS_STORE",
                "postgres://topiq:s3cret@postgres:5432/topiq",
            ),
    );
    assert!(
        stdout.contains("api: 0.0.0.0:7720 (token required)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("runs: postgres://topiq@postgres:5432/topiq") && !stdout.contains("s3cret"),
        "{stdout}"
    );
    assert!(stdout.contains("  recorded: audit"), "{stdout}");
}

#[test]
fn check_exits_1_with_file_line_and_key() {
    let text = std::fs::read_to_string(workspace_file("config.yaml"))
        .unwrap()
        .replace("concurrency: 4", "concurrency: 0");
    let config = temp_config("bad", &text);
    let path = &config.path;
    let output = topiq()
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = text
        .lines()
        .position(|line| line.contains("concurrency: 0"))
        .unwrap()
        + 1;
    let expected = format!("{}:{line}:", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(
        stderr.contains("triggers.send-email.config.concurrency"),
        "{stderr}"
    );
}

#[test]
fn check_names_a_function_the_binary_does_not_have() {
    let output = topiq()
        .arg("check")
        .arg("--config")
        .arg(workspace_file("config.yaml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("triggers.send-email.function"), "{stderr}");
    assert!(stderr.contains("--function emails.send"), "{stderr}");
}

#[test]
fn run_starts_and_stops_cleanly_on_sigterm() {
    let config = temp_config(
        "run",
        "modules:
  - class: modules::queue::QueueModule
    config:
      adapter:
        class: modules::queue::BuiltinQueueAdapter
      shutdown_grace: 2s
api:
  listen: 127.0.0.1:0
triggers:
  log:
    type: queue
    function: builtin.log
    config:
      topic: events
",
    );
    let mut child = topiq()
        .arg("run")
        .arg("--config")
        .arg(&config.path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is running, then ask it to stop the way systemd and Kubernetes do.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "topiq run exited early"
    );
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "topiq run did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(status.success(), "exit status {status}: {logs}");
    assert!(logs.contains("topiq queue module running"), "{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
}
