//! The layout search on real directory trees with real bind mounts (root only: skipped, with a
//! printed reason, otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const UID: &str = "0b7c4a2e-5d1f-4c3a-9e8b-2f6d1a0c9e47";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A bind mount, undone when dropped.
struct Bind(PathBuf);

impl Bind {
    fn new(source: &Path, target: &Path) -> Bind {
        let status = Command::new("mount").arg("--bind").arg(source).arg(target).status().expect("mount");
        assert!(status.success(), "mount --bind {} {}", source.display(), target.display());
        Bind(target.to_owned())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A pods directory and a store of volume contents beside it (outside it).
struct Node {
    _tmp: tempfile::TempDir,
    pods: PathBuf,
    store: PathBuf,
    binds: Vec<Bind>,
}

impl Node {
    fn new() -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let (pods, store) = (tmp.path().join("pods"), tmp.path().join("store"));
        std::fs::create_dir(&pods).unwrap();
        std::fs::create_dir(&store).unwrap();
        Node { _tmp: tmp, pods, store, binds: Vec::new() }
    }

    /// Makes `dir` (a path beneath anywhere) and binds a new store directory onto it.
    fn mount(&mut self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let content = self.store.join(format!("pv{}", self.binds.len()));
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("file"), b"bytes").unwrap();
        self.binds.push(Bind::new(&content, dir));
    }

    fn volumes(&self, uid: &str) -> PathBuf {
        self.pods.join(uid).join("volumes")
    }

    fn find(&self, uid: &str, volume: &str) -> Result<PathBuf, FindError> {
        let pods = confine::open_root(&self.pods).unwrap();
        find(pods.as_fd(), &self.pods, uid, volume)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unmounted before the temporary directory is removed.
        while self.binds.pop().is_some() {}
    }
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
    };
}

#[test]
fn csi_and_in_tree_volumes_are_found() {
    root_only!();
    let mut node = Node::new();
    node.mount(&node.volumes(UID).join("kubernetes.io~csi/pvc-a/mount"));
    node.mount(&node.volumes(UID).join("kubernetes.io~local-volume/pvc-b"));
    // Another pod's volumes and a plugin without the volume are no candidates.
    node.mount(&node.volumes("1234").join("kubernetes.io~csi/pvc-a/mount"));
    std::fs::create_dir_all(node.volumes(UID).join("kubernetes.io~empty-dir/scratch")).unwrap();

    let found = node.find(UID, "pvc-a").unwrap();
    assert_eq!(found, Path::new(UID).join("volumes/kubernetes.io~csi/pvc-a/mount"));
    let found = node.find(UID, "pvc-b").unwrap();
    assert_eq!(found, Path::new(UID).join("volumes/kubernetes.io~local-volume/pvc-b"));
    assert_eq!(std::fs::read(node.pods.join(found).join("file")).unwrap(), b"bytes");
}

#[test]
fn a_missing_pod_or_volume_asks_whether_the_pod_runs_here() {
    root_only!();
    let mut node = Node::new();
    node.mount(&node.volumes(UID).join("kubernetes.io~csi/pvc-a/mount"));
    // A CSI volume's directory without its `mount` is no candidate either.
    std::fs::create_dir_all(node.volumes(UID).join("kubernetes.io~csi/pvc-c")).unwrap();
    for (uid, volume) in [("ffff", "pvc-a"), (UID, "pvc-b"), (UID, "pvc-c")] {
        let error = node.find(uid, volume).unwrap_err();
        assert!(matches!(error, FindError::NotFound { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!("pod {uid} has no volume {volume} on this node: is the pod running on this node?")
        );
        assert_eq!(error.to_remote().kind, RemoteErrorKind::UnknownVolume);
    }
}

#[test]
fn a_directory_that_is_not_a_mount_point_is_refused() {
    root_only!();
    let node = Node::new();
    std::fs::create_dir_all(node.volumes(UID).join("kubernetes.io~csi/pvc-a/mount")).unwrap();
    std::fs::create_dir_all(node.volumes(UID).join("kubernetes.io~nfs/pvc-b")).unwrap();
    for volume in ["pvc-a", "pvc-b"] {
        let error = node.find(UID, volume).unwrap_err();
        assert!(matches!(error, FindError::NotMounted { .. }), "{error}");
        assert!(error.to_string().contains("is not a mount point"), "{error}");
    }
}

#[test]
fn two_candidates_are_refused_and_named() {
    root_only!();
    let mut node = Node::new();
    node.mount(&node.volumes(UID).join("kubernetes.io~csi/pvc-a/mount"));
    node.mount(&node.volumes(UID).join("kubernetes.io~nfs/pvc-a"));
    let error = node.find(UID, "pvc-a").unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "volume pvc-a of pod {UID} is ambiguous: it is found at kubernetes.io~csi/pvc-a/mount and \
             kubernetes.io~nfs/pvc-a; grant one by another name"
        )
    );
}

/// A symlink at any step leads to a real, mounted layout outside the pods directory: followed,
/// the search would succeed there. It is refused instead, so nothing outside is opened.
#[test]
fn a_symlink_anywhere_on_the_way_is_refused_and_nothing_outside_is_opened() {
    root_only!();
    // (the step that is a link, relative to the pods directory)
    let steps = [
        UID.to_owned(),
        format!("{UID}/volumes"),
        format!("{UID}/volumes/kubernetes.io~csi"),
        format!("{UID}/volumes/kubernetes.io~csi/pvc-a"),
        format!("{UID}/volumes/kubernetes.io~csi/pvc-a/mount"),
    ];
    for step in steps {
        let mut node = Node::new();
        let outside = node.store.join("outside");
        // The same layout outside, with the volume really mounted.
        let layout = outside.join(format!("{UID}/volumes/kubernetes.io~csi/pvc-a/mount"));
        node.mount(&layout);
        let link = node.pods.join(&step);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(outside.join(&step), &link).unwrap();

        let error = node.find(UID, "pvc-a").unwrap_err();
        assert!(matches!(error, FindError::NotADirectory { what: "a symlink", .. }), "{step}: {error}");
        assert!(error.to_string().contains(&format!("`{}` is a symlink: refused", link.display())), "{error}");
    }
}

#[test]
fn an_in_tree_volume_that_is_a_symlink_is_refused() {
    root_only!();
    let mut node = Node::new();
    let outside = node.store.join("elsewhere");
    node.mount(&outside);
    let plugin = node.volumes(UID).join("kubernetes.io~local-volume");
    std::fs::create_dir_all(&plugin).unwrap();
    std::os::unix::fs::symlink(&outside, plugin.join("pvc-b")).unwrap();
    let error = node.find(UID, "pvc-b").unwrap_err();
    assert!(matches!(error, FindError::NotADirectory { what: "a symlink", .. }), "{error}");
}

#[test]
fn a_step_out_of_the_pods_directory_is_refused_by_the_kernel() {
    // Below the name checks: the confined open itself refuses `..` and an absolute path.
    let node = Node::new();
    let pods = confine::open_root(&node.pods).unwrap();
    for name in ["..", "/"] {
        let error = open_step(pods.as_fd(), name, &node.pods.join(name)).err().unwrap();
        assert!(matches!(error, FindError::NotADirectory { what: "outside the pods directory", .. }), "{error}");
    }
}

#[test]
fn names_that_are_not_a_pod_uid_or_a_volume_are_refused() {
    check_names("data", UID, "pvc-0b7c4a2e").unwrap();
    check_names("data", "6d4b0a3b2d1c4e5f8a9b0c1d2e3f4a5b", "pv.local-1").unwrap();
    for uid in ["", "..", ".", "../..", "/", "a/b", "ABCD", "xyz", &"a".repeat(65), "0b7c\0"] {
        let error = check_names("data", uid, "pvc").unwrap_err();
        assert!(error.to_string().starts_with("pod UID `"), "{uid}: {error}");
        assert_eq!(error.to_remote().kind, RemoteErrorKind::Protocol);
    }
    for volume in ["", ".", "..", "../..", "/", "a/b", "-a", ".a", "PVC", "pv_1", &"a".repeat(254)] {
        let error = check_names("data", UID, volume).unwrap_err();
        assert!(error.to_string().starts_with("volume `"), "{volume}: {error}");
        assert!(error.to_string().contains("DNS-1123"), "{error}");
    }
    for name in ["", "a/b", "/"] {
        let error = check_names(name, UID, "pvc").unwrap_err();
        assert!(error.to_string().contains("give a non-empty name without `/`"), "{name}: {error}");
    }
    // The search checks them too, whoever calls it.
    let node = Node::new();
    let pods = confine::open_root(&node.pods).unwrap();
    assert!(matches!(find(pods.as_fd(), &node.pods, "..", "pvc"), Err(FindError::Invalid(_))));
    assert!(matches!(find(pods.as_fd(), &node.pods, UID, "../../x"), Err(FindError::Invalid(_))));
}

#[test]
fn a_rerun_grant_succeeds_another_under_a_taken_name_is_refused_and_revokes_are_pod_grants_only() {
    root_only!();
    let mut node = Node::new();
    node.mount(&node.volumes(UID).join("kubernetes.io~csi/pvc-a/mount"));
    node.mount(&node.volumes(UID).join("kubernetes.io~csi/pvc-b/mount"));
    let given = node.store.join("given");
    std::fs::create_dir(&given).unwrap();
    let volumes = Volumes::default();
    let start = VolumeGrant { name: "given".into(), path: given, read_only: false, mount: false };
    volumes.grant(start).unwrap();
    let pods = PodVolumes::new(node.pods.clone());
    let ended = CancellationToken::new();
    let asked = |name: &str, volume: &str, read_only| Asked {
        name: name.into(),
        pod_uid: UID.into(),
        volume: volume.into(),
        read_only,
    };

    pods.grant(&volumes, &asked("a", "pvc-a", true), ("m1", &ended)).unwrap();
    assert_eq!(volumes.read_only("a"), Some(true));
    // A rerun.
    pods.grant(&volumes, &asked("a", "pvc-a", true), ("m1", &ended)).unwrap();
    // Another directory, or other access, under the name.
    for other in [asked("a", "pvc-b", true), asked("a", "pvc-a", false)] {
        let error = pods.grant(&volumes, &other, ("m1", &ended)).unwrap_err();
        assert!(error.message.starts_with("volume `a` is already granted to this agent as `"), "{error}");
    }
    // A name given at start.
    let error = pods.grant(&volumes, &asked("given", "pvc-b", false), ("m1", &ended)).unwrap_err();
    assert!(error.message.contains("was given to this agent when it started"), "{error}");
    // The same directory under a second name overlaps.
    let error = pods.grant(&volumes, &asked("again", "pvc-a", true), ("m1", &ended)).unwrap_err();
    assert!(error.message.contains("overlap"), "{error}");

    let error = pods.revoke(&volumes, "given").unwrap_err();
    assert_eq!(error.kind, RemoteErrorKind::Forbidden);
    assert!(error.message.contains("only run-time grants are revoked"), "{error}");
    let error = pods.revoke(&volumes, "nothing").unwrap_err();
    assert_eq!(error.kind, RemoteErrorKind::UnknownVolume);
    pods.revoke(&volumes, "a").unwrap();
    assert_eq!(volumes.read_only("a"), None);
    assert_eq!(pods.revoke(&volumes, "a").unwrap_err().kind, RemoteErrorKind::UnknownVolume);

    // A migration's grants go with it; a grant for a migration that has ended is refused.
    pods.grant(&volumes, &asked("b", "pvc-b", false), ("m1", &ended)).unwrap();
    assert_eq!(pods.withdraw_migration(&volumes, "m2"), Vec::<String>::new());
    assert_eq!(pods.withdraw_migration(&volumes, "m1"), ["b"]);
    assert_eq!(volumes.names(), ["given"]);
    ended.cancel();
    let error = pods.grant(&volumes, &asked("b", "pvc-b", false), ("m1", &ended)).unwrap_err();
    assert_eq!(error.kind, RemoteErrorKind::Forbidden);
}
