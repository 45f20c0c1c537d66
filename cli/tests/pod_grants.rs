//! The node strategy's agent side, end to end with real `mover-agent` processes: volumes of
//! pods granted at run time by pod UID and volume name (found beneath a kubelet pods directory
//! laid out as a kubelet lays it out), and an identity taken from a certificate directory that
//! changes as a mounted Kubernetes Secret does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, bin, certs, is_root, mover, text};
use mover_engine::RemoteErrorKind;
use mover_engine::certs::{Identity, Role};
use mover_engine::client::{CopyError, PodVolume, SessionError, grant_pod_volume, revoke_volume};
use mover_testdata::podrunner::{KubeletRoot, VolumePlugin};

const SOURCE_POD: &str = "3f6e2a1c-7b9d-4e08-a5c1-0d2f4b6e8a10";
const TARGET_POD: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn pod_volume(name: &str, pod_uid: &str, volume: &str, read_only: bool) -> PodVolume {
    PodVolume { name: name.into(), pod_uid: pod_uid.into(), volume: volume.into(), read_only }
}

/// The agent's refusal, or a panic naming what came instead.
fn refusal(result: Result<(), CopyError>) -> mover_engine::RemoteError {
    match result {
        Err(CopyError::Session(SessionError::Refused { error, .. })) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Starts a node agent serving pod volumes beneath `pods`, with `extra` arguments.
fn node_agent(certs: &Path, pods: &Path, log_dir: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--kubelet-pods", pods.to_str().unwrap(), "--certs-poll", "200ms"];
    args.extend_from_slice(extra);
    Agent::start_with(certs, &[], log_dir, &args)
}

#[test]
fn pod_volumes_granted_at_run_time_copy_between_two_node_agents_and_are_revoked() {
    if !is_root() {
        eprintln!("skipped: a kubelet's volume mounts need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let (source_pv, target_pv) = (tmp.path().join("pv-source"), tmp.path().join("pv-target"));
    std::fs::create_dir(&source_pv).unwrap();
    std::fs::create_dir(&target_pv).unwrap();
    mover_testdata::generate(
        &source_pv,
        &mover_testdata::TreeSpec { files: 60, dirs: 8, ..mover_testdata::TreeSpec::small() },
    )
    .unwrap();
    // Two nodes: the source pod's claim is a CSI volume, the target pod's an in-tree one.
    let node_a = KubeletRoot::new(&tmp.path().join("node-a")).unwrap();
    let node_b = KubeletRoot::new(&tmp.path().join("node-b")).unwrap();
    let mut source_pod = node_a.pod(SOURCE_POD).unwrap();
    source_pod.mount_volume(&VolumePlugin::Csi, "pvc-source", &source_pv).unwrap();
    let mut target_pod = node_b.pod(TARGET_POD).unwrap();
    target_pod.mount_volume(&VolumePlugin::InTree("local-volume".into()), "pvc-target", &target_pv).unwrap();
    let agent_a = node_agent(&certs, &node_a.pods(), tmp.path(), &[]);
    let agent_b = node_agent(&certs, &node_b.pods(), tmp.path(), &[]);

    let runtime = runtime();
    let coordinator = Identity::load(&certs, Role::Coordinator).unwrap();
    let grant = |addr: &str, volume: &PodVolume| runtime.block_on(grant_pod_volume(&coordinator, addr, None, volume));
    let source = pod_volume("data", SOURCE_POD, "pvc-source", true);
    grant(&agent_a.addr, &source).unwrap();
    // A rerun of the same grant succeeds; another under the name is refused.
    grant(&agent_a.addr, &source).unwrap();
    let error = refusal(grant(&agent_a.addr, &pod_volume("data", SOURCE_POD, "pvc-source", false)));
    assert!(error.message.contains("volume `data` is already granted to this agent"), "{error}");
    grant(&agent_b.addr, &pod_volume("data", TARGET_POD, "pvc-target", false)).unwrap();

    let copy = mover(&["copy", &agent_a.url("data"), &agent_b.url("data"), "--certs", certs.to_str().unwrap()]);
    assert!(copy.status.success(), "{}", text(&copy));
    mover_testdata::assert_identical(&source_pv, &target_pv);
    // Granted read-only: nothing is received into it.
    let into_source = mover(&["copy", &agent_b.url("data"), &agent_a.url("data"), "--certs", certs.to_str().unwrap()]);
    assert!(!into_source.status.success(), "{}", text(&into_source));
    assert!(text(&into_source).contains("read-only"), "{}", text(&into_source));

    // An agent's certificate may not grant.
    let agent_identity = Identity::load(&certs, Role::Agent).unwrap();
    let asked = pod_volume("other", TARGET_POD, "pvc-target", false);
    let error = refusal(runtime.block_on(grant_pod_volume(&agent_identity, &agent_b.addr, None, &asked)));
    assert_eq!(error.kind, RemoteErrorKind::Forbidden, "{error}");
    assert!(error.message.contains("the agent role may not grant volumes"), "{error}");
    // Nothing outside the kubelet's pods directory is ever named.
    for (uid, volume) in [("../..", "pvc-target"), (TARGET_POD, "../../pv-target"), ("/", "etc"), (TARGET_POD, "..")] {
        let error = refusal(grant(&agent_b.addr, &pod_volume("outside", uid, volume, false)));
        assert_eq!(error.kind, RemoteErrorKind::Protocol, "{error}");
        assert!(error.message.contains("is not valid"), "{error}");
    }
    // A pod that does not run on this node.
    let error = refusal(grant(&agent_b.addr, &pod_volume("elsewhere", SOURCE_POD, "pvc-source", false)));
    assert_eq!(error.kind, RemoteErrorKind::UnknownVolume, "{error}");
    assert!(error.message.contains("is the pod running on this node?"), "{error}");

    // Revoked, the volume is unknown.
    runtime.block_on(revoke_volume(&coordinator, &agent_b.addr, None, "data")).unwrap();
    let copy = mover(&["copy", &agent_a.url("data"), &agent_b.url("data"), "--certs", certs.to_str().unwrap()]);
    assert!(!copy.status.success(), "{}", text(&copy));
    assert!(text(&copy).contains("serves no volume `data`"), "{}", text(&copy));
    let error = refusal(runtime.block_on(revoke_volume(&coordinator, &agent_b.addr, None, "data")));
    assert_eq!(error.kind, RemoteErrorKind::UnknownVolume, "{error}");
    drop((agent_a, agent_b, source_pod, target_pod));
}

#[test]
fn an_agent_without_a_pods_directory_refuses_pod_grants_and_keeps_its_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let agent = Agent::start(&certs, &[format!("data={}", volume.display())], tmp.path());
    let runtime = runtime();
    let coordinator = Identity::load(&certs, Role::Coordinator).unwrap();
    let asked = pod_volume("pod", SOURCE_POD, "pvc-source", true);
    let error = refusal(runtime.block_on(grant_pod_volume(&coordinator, &agent.addr, None, &asked)));
    assert_eq!(error.kind, RemoteErrorKind::Forbidden, "{error}");
    assert!(error.message.contains("this agent does not serve pod volumes"), "{error}");
    assert!(!error.message.contains("--"), "an engine message names no flag: {error}");
    let error = refusal(runtime.block_on(revoke_volume(&coordinator, &agent.addr, None, "data")));
    assert_eq!(error.kind, RemoteErrorKind::Forbidden, "{error}");
}

/// A certificate directory laid out as the kubelet lays out a Secret volume: the files are
/// symlinks through `..data`, a symlink to a timestamped directory that an update replaces
/// atomically.
struct SecretDir {
    dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    fn new(dir: &Path) -> SecretDir {
        std::fs::create_dir(dir).unwrap();
        SecretDir { dir: dir.to_owned(), generation: 0 }
    }

    /// Publishes the agent files of the certificate directory `from`, as an update does.
    fn publish(&mut self, from: &Path) {
        self.generation += 1;
        let data = format!("..2026_12_05_22_00_0{}.{}", self.generation, std::process::id());
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        for name in ["ca.crt", "agent.crt", "agent.key"] {
            std::fs::copy(from.join(name), self.dir.join(&data).join(name)).unwrap();
        }
        let previous = std::fs::read_link(self.dir.join("..data")).ok();
        std::os::unix::fs::symlink(&data, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        for name in ["ca.crt", "agent.crt", "agent.key"] {
            if std::fs::symlink_metadata(self.dir.join(name)).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), self.dir.join(name)).unwrap();
            }
        }
        if let Some(previous) = previous {
            std::fs::remove_dir_all(self.dir.join(previous)).unwrap();
        }
    }

    /// Empties it, as the kubelet does when the Secret of an optional volume is removed.
    fn empty(&self) {
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
}

/// Copies `source` into `target` with the coordinator certificates of `certs`.
fn copy_with(certs: &Path, source: &Path, target: &str) -> std::process::Output {
    mover(&["copy", source.to_str().unwrap(), target, "--certs", certs.to_str().unwrap()])
}

/// Waits until a copy with `certs` succeeds (`works`) or fails; returns its last output.
fn wait_until(certs: &Path, source: &Path, target: &str, works: bool) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let output = copy_with(certs, source, target);
        if output.status.success() == works || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_agent_takes_the_next_migrations_certificates_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (certs_a, certs_b) = (certs(&tmp.path().join("a")), certs(&tmp.path().join("b")));
    let (volume, pods, small, big) =
        (tmp.path().join("volume"), tmp.path().join("pods"), tmp.path().join("small"), tmp.path().join("big"));
    for dir in [&volume, &pods, &small, &big] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(small.join("file"), b"small").unwrap();
    mover_testdata::write_random(&big.join("big.bin"), 8 << 20, 7).unwrap();
    let mut secret = SecretDir::new(&tmp.path().join("secret"));

    // Started before its Secret exists: it waits, refusing connections.
    let agent = node_agent(&secret.dir, &pods, tmp.path(), &["--volume", &format!("data={}", volume.display())]);
    let url = agent.url("data");
    assert!(agent.log_text().contains("waiting for the agent's identity"), "{}", agent.log_text());
    let refused = copy_with(&certs_a, &small, &url);
    assert!(!refused.status.success(), "{}", text(&refused));

    secret.publish(&certs_a);
    let works = wait_until(&certs_a, &small, &url, true);
    assert!(works.status.success(), "{}\n{}", text(&works), agent.log_text());

    // A slow session of migration A is running when B's certificates replace A's.
    std::fs::remove_file(volume.join("file")).unwrap();
    let mut slow = Command::new(bin("mover"))
        .args(["copy", big.to_str().unwrap(), &url, "--certs", certs_a.to_str().unwrap(), "--bwlimit", "256K"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(slow.try_wait().unwrap().is_none(), "the slow copy ended before the swap");
    secret.publish(&certs_b);
    let started = Instant::now();
    let ended = loop {
        if let Some(status) = slow.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "A's session still runs after the swap");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!ended.success(), "A's session ended well: {ended:?}");
    // The file it was writing never completed; at most its partial file stays, for a rerun
    // to resume (as after any interrupted run).
    let left: Vec<String> =
        std::fs::read_dir(&volume).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(left.iter().all(|name| name.starts_with(".mover-tmp-part-")), "left in the volume: {left:?}");
    let log = agent.log_text();
    assert!(log.contains("cancelled") || log.contains("session failed"), "{log}");

    let works = wait_until(&certs_b, &small, &url, true);
    assert!(works.status.success(), "{}\n{}", text(&works), agent.log_text());
    let refused = copy_with(&certs_a, &small, &url);
    assert!(!refused.status.success(), "A's coordinator is still welcome: {}", text(&refused));
    let log = agent.log_text();
    assert!(log.contains("identity changed"), "{log}");

    // The Secret removed: everyone is refused.
    secret.empty();
    let refused = wait_until(&certs_b, &small, &url, false);
    assert!(!refused.status.success(), "B's coordinator is still welcome: {}", text(&refused));
    assert!(agent.log_text().contains("certificates removed"), "{}", agent.log_text());
    // And it comes back with the next one, still without a restart.
    secret.publish(&certs_a);
    let works = wait_until(&certs_a, &small, &url, true);
    assert!(works.status.success(), "{}\n{}", text(&works), agent.log_text());
}
