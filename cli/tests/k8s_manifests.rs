//! `mover k8s manifests`: what it prints is installable (`kubectl apply -f -` takes every
//! object), valid against the Kubernetes 1.33 and 1.37 schemas with `kubernetes-validate
//! --strict` (as is every hand-written Kubernetes manifest in the repository), and bad options
//! are refused with what to write instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{mover, text};

/// Hand-written manifests that are invalid on purpose (bad-input fixtures), relative to the
/// repository root.
const INVALID_ON_PURPOSE: &[&str] = &[];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every YAML file under `dir` that declares an `apiVersion` (build output and VCS excluded).
fn hand_written_manifests(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["target", ".git", "node_modules"].contains(&name.as_str()) {
                hand_written_manifests(&path, found);
            }
        } else if path.extension().is_some_and(|extension| extension == "yaml" || extension == "yml")
            && std::fs::read_to_string(&path).is_ok_and(|body| body.lines().any(|line| line.starts_with("apiVersion:")))
            && !INVALID_ON_PURPOSE.iter().any(|invalid| path == repo_root().join(invalid))
        {
            found.push(path);
        }
    }
}

/// Runs `mover k8s manifests ARGS`, expecting success, and writes its output to `dir/file`.
fn render(dir: &Path, file: &str, args: &[&str]) -> PathBuf {
    let mut all = vec!["k8s", "manifests"];
    all.extend_from_slice(args);
    let output = mover(&all);
    assert!(output.status.success(), "{}", text(&output));
    let path = dir.join(file);
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

/// `kubernetes-validate --strict -k 1.33.0 -k 1.37.0 FILES`, or None (with the reason printed)
/// when the tool is missing outside CI; under `CI=true` a missing tool fails the test.
fn kubernetes_validate(files: &[PathBuf]) -> Option<std::process::Output> {
    let mut command = Command::new("kubernetes-validate");
    command.args(["--strict", "--quiet", "-k", "1.33.0", "-k", "1.37.0"]).args(files);
    match command.output() {
        Ok(output) => Some(output),
        Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("kubernetes-validate cannot run ({error}): `pip install kubernetes-validate` (scripts/test.sh does)")
        }
        Err(error) => {
            eprintln!("skipped: kubernetes-validate cannot run ({error}); `pip install kubernetes-validate`");
            None
        }
    }
}

#[test]
fn every_manifest_is_valid_for_kubernetes_1_33_and_1_37() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![
        render(dir.path(), "pod.yaml", &[]),
        render(dir.path(), "node.yaml", &["--strategy", "node"]),
        render(
            dir.path(),
            "node-custom.yaml",
            &[
                "--strategy",
                "node",
                "--namespace",
                "migrations",
                "--image",
                "registry.local:5000/mover/agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "--kubelet-root",
                "/var/vcap/data/kubelet",
            ],
        ),
        render(dir.path(), "templates.yaml", &["--show-templates"]),
        render(dir.path(), "templates-node.yaml", &["--show-templates", "--strategy", "node"]),
        render(dir.path(), "port-forward.yaml", &["--port-forward"]),
    ];
    hand_written_manifests(&repo_root(), &mut files);
    let Some(output) = kubernetes_validate(&files) else { return };
    assert!(output.status.success(), "kubernetes-validate failed on {files:?}:\n{}", text(&output));
    // A Route (`--expose route`, in the templates) is not in the Kubernetes schema: the tool
    // says so and skips it, as it skips mover's own plans; no other kind is skipped. (The
    // simulated OpenShift cluster decodes a Route strictly in `k8s_routes.rs`.)
    let shown = text(&output);
    let unknown: Vec<&str> = shown.lines().filter(|line| line.contains("Couldn't find schema")).collect();
    let route = "kind Route with api version route.openshift.io/v1";
    assert!(unknown.iter().any(|line| line.contains(route)), "the templates' Route was validated?\n{shown}");
    let plan = "kind MigrationPlan with api version mover/v1alpha1";
    assert!(unknown.iter().all(|line| line.contains(route) || line.contains(plan)), "{shown}");

    // The same run catches a mistake: an unknown field in a transfer pod's container.
    let templates = std::fs::read_to_string(&files[3]).unwrap();
    let broken = templates.replacen(
        "    imagePullPolicy: IfNotPresent\n",
        "    imagePullPolicy: IfNotPresent\n    bogusField: 1\n",
        1,
    );
    assert_ne!(broken, templates);
    let broken_path = dir.path().join("broken.yaml");
    std::fs::write(&broken_path, broken).unwrap();
    let output = kubernetes_validate(&[broken_path]).unwrap();
    assert!(!output.status.success() && text(&output).contains("bogusField"), "{}", text(&output));
}

/// The kinds of the YAML documents in `yaml`, in order.
fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines().filter_map(|line| line.strip_prefix("kind: ")).map(str::to_owned).collect()
}

#[test]
fn the_install_is_what_kubectl_apply_takes_and_templates_are_apart() {
    let pod = mover(&["k8s", "manifests"]);
    assert!(pod.status.success(), "{}", text(&pod));
    let pod = String::from_utf8(pod.stdout).unwrap();
    assert_eq!(kinds(&pod), ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"]);
    assert!(pod.contains("pod-security.kubernetes.io/enforce: baseline\n"), "{pod}");
    assert!(!pod.contains("pods/portforward"), "{pod}");
    let forward = mover(&["k8s", "manifests", "--port-forward"]);
    assert!(forward.status.success(), "{}", text(&forward));
    let forward = String::from_utf8(forward.stdout).unwrap();
    assert!(forward.contains("- pods/portforward\n"), "{forward}");

    let node = mover(&["k8s", "manifests", "--strategy", "node", "--kubelet-root", "/opt/rke/var/lib/kubelet"]);
    assert!(node.status.success(), "{}", text(&node));
    let node = String::from_utf8(node.stdout).unwrap();
    assert_eq!(
        kinds(&node),
        [
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet"
        ]
    );
    assert!(node.contains("pod-security.kubernetes.io/enforce: privileged\n"), "{node}");
    assert!(node.contains("path: /opt/rke/var/lib/kubelet/pods\n"), "{node}");
    assert!(node.contains(&format!("image: ghcr.io/mover-dev/mover-agent:{}\n", env!("CARGO_PKG_VERSION"))), "{node}");

    let templates = mover(&["k8s", "manifests", "--show-templates"]);
    assert!(templates.status.success(), "{}", text(&templates));
    let templates = String::from_utf8(templates.stdout).unwrap();
    assert!(templates.starts_with("# Examples of what mover creates per migration"), "{templates}");
    assert_eq!(kinds(&templates), ["Secret", "Pod", "Pod", "Service", "Route", "Job", "ConfigMap"]);
}

#[test]
fn bad_options_are_refused_with_what_to_write() {
    for (args, expected) in [
        (&["--namespace", "Mover_System"][..], "`Mover_System` is not a namespace name"),
        (&["--kubelet-root", "var/lib/kubelet"][..], "is not an absolute path"),
        (&["--kubelet-root", "/var/lib/../kubelet"][..], "without `..`"),
        (&["--strategy", "daemonset"][..], "possible values: pod, node"),
    ] {
        let mut all = vec!["k8s", "manifests"];
        all.extend_from_slice(args);
        let output = mover(&all);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(expected), "{args:?}: {}", text(&output));
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}
