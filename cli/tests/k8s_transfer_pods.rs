//! The transfer pods' command lines work with the real `mover-agent`: each rendered pod's
//! `--volume` grant, with the claim's mount (`/mover/volume`) mapped to a tmpfs as the kubelet
//! would mount it, starts an agent; a copy from the source pod's agent to the target pod's agent
//! moves the bytes, and the source grant is read-only (a copy into it is refused).

mod common;

use std::path::Path;

use common::{Agent, Tmpfs, certs, is_root, mover, text};
use mover_kube::objects::labels::Migration;
use mover_kube::objects::{
    DEFAULT_IMAGE, End, IDENTITY_PATH, TransferPod, VOLUME_PATH, identity_secret_name, transfer_pod,
};

/// The rendered pod's container arguments for `end`.
fn pod_args(migration: &Migration, end: End) -> Vec<String> {
    let secret = identity_secret_name(migration);
    let pod = transfer_pod(&TransferPod {
        migration,
        namespace: "app",
        claim: "data",
        end,
        node: None,
        image: DEFAULT_IMAGE,
        identity_secret: &secret,
        port: 7443,
        owner: None,
    });
    pod.spec.unwrap().containers[0].args.clone().unwrap()
}

/// Starts the agent a transfer pod would run, its claim mounted (a tmpfs) at `volume`: the
/// pod's own `--volume` grant with the container path mapped; `--listen` and `--certs` are the
/// test harness's (loopback, the test's certificates), after checking the pod's.
fn start_pod_agent(args: &[String], certs: &Path, volume: &Path, logs: &Path) -> Agent {
    assert_eq!(args[0], "serve");
    let value = |flag: &str| {
        let at = args.iter().position(|arg| arg == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
        args[at + 1].clone()
    };
    assert_eq!(value("--listen"), ":7443");
    assert_eq!(value("--certs"), IDENTITY_PATH);
    let grant = value("--volume");
    assert!(grant.contains(VOLUME_PATH), "{grant}");
    Agent::start(certs, &[grant.replace(VOLUME_PATH, volume.to_str().unwrap())], logs)
}

#[test]
fn transfer_pod_agents_copy_a_claim_and_the_source_is_read_only() {
    if !is_root() {
        eprintln!("skipped: mounting the claims' tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(&dir.path().join("certs"));
    let migration = Migration::new("m1", "plan").unwrap();
    let (source_claim, target_claim) = (dir.path().join("source-claim"), dir.path().join("target-claim"));
    let _source_mount = Tmpfs::mount(&source_claim, "size=4m");
    let _target_mount = Tmpfs::mount(&target_claim, "size=4m");
    std::fs::create_dir(source_claim.join("db")).unwrap();
    std::fs::write(source_claim.join("db/table"), b"rows of the application").unwrap();

    let source = start_pod_agent(&pod_args(&migration, End::Source), &certs, &source_claim, dir.path());
    let target = start_pod_agent(&pod_args(&migration, End::Target), &certs, &target_claim, dir.path());
    let certs = certs.to_str().unwrap();
    let output = mover(&["copy", &source.url("data"), &target.url("data"), "--certs", certs]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(std::fs::read(target_claim.join("db/table")).unwrap(), b"rows of the application");

    let output = mover(&["copy", &target.url("data"), &source.url("data"), "--certs", certs]);
    assert!(!output.status.success(), "a copy into the source claim: {}", text(&output));
    assert!(text(&output).contains("read-only"), "{}", text(&output));
    assert_eq!(std::fs::read_dir(&source_claim).unwrap().count(), 1);
}
