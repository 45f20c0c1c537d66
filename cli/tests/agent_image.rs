//! The agent image is real: `scripts/image.sh` assembles an OCI layout from the built binaries
//! without a container runtime, `mover image copy` pushes it into a real `docker-registry`, and
//! `skopeo inspect` reads back its labels (version, protocol), entrypoint and non-root user. As
//! root, the layer is unpacked and its mover-agent runs in a chroot holding only the layer, so
//! the shared libraries it needs are all there.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, is_root, mover, text};
use mover_testdata::registry::{Auth, Registry, RegistryOptions};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `scripts/image.sh --bin-dir <the tests' binaries> OUT`, expecting success.
fn build_image(out: &Path) {
    let bin_dir = bin("mover-agent").parent().unwrap().to_path_buf();
    let output = Command::new(repo_root().join("scripts/image.sh"))
        .args(["--gzip-level", "1", "--bin-dir"])
        .arg(&bin_dir)
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "scripts/image.sh: {}", text(&output));
}

fn skopeo_inspect(registry: &Registry, reference: &str, config: bool) -> serde_json::Value {
    let mut command = Command::new("skopeo");
    command.args(["inspect", "--tls-verify=false"]);
    if config {
        command.arg("--config");
    }
    let output = command.arg(format!("docker://{}/{reference}", registry.addr)).output().unwrap();
    assert!(output.status.success(), "skopeo inspect: {}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_agent_image_is_pushed_with_mover_and_read_by_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    build_image(&layout);
    let registry = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, dir.path())
        .expect("start docker-registry (apt-get install docker-registry)");
    let reference = format!("mover/mover-agent:{VERSION}");
    let output = mover(&[
        "image",
        "copy",
        "--dest-plain-http",
        &format!("oci:{}:{VERSION}", layout.display()),
        &format!("docker://{}/{reference}", registry.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));

    let inspected = skopeo_inspect(&registry, &reference, false);
    let labels = &inspected["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION, "{inspected}");
    assert_eq!(labels["io.mover.protocol"], mover_engine::PROTOCOL_VERSION.to_string(), "{inspected}");
    assert_eq!(inspected["Os"], "linux", "{inspected}");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1), "{inspected}");
    let config = skopeo_inspect(&registry, &reference, true);
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/mover-agent"]), "{config}");

    if !is_root() {
        eprintln!("skipped the chroot run of the layer: not root");
        return;
    }
    let layer = inspected["Layers"][0].as_str().unwrap().strip_prefix("sha256:").unwrap().to_owned();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(layout.join("blobs/sha256").join(layer))
        .arg("-C")
        .arg(&root)
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "{}", text(&unpacked));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|line| line.starts_with("mover:x:65532:65532:")), "{passwd}");
    for (user, binary, expected) in [
        ("0:0", "mover-agent", format!("mover-agent {VERSION} (protocol {})", mover_engine::PROTOCOL_VERSION)),
        ("65532:65532", "mover", format!("mover {VERSION}")),
    ] {
        let output = Command::new("chroot")
            .arg(format!("--userspec={user}"))
            .arg(&root)
            .arg(format!("/usr/local/bin/{binary}"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(output.status.success(), "{binary} in the image: {}", text(&output));
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected);
    }
}

#[test]
fn image_sh_refuses_what_it_cannot_build() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo_root().join("scripts/image.sh");
    let output =
        Command::new(&script).args(["--bin-dir"]).arg(dir.path()).arg(dir.path().join("out")).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("build it first"), "{}", text(&output));
    std::fs::write(dir.path().join("taken"), "").unwrap();
    let bin_dir = bin("mover-agent").parent().unwrap().to_path_buf();
    let output = Command::new(&script).arg("--bin-dir").arg(bin_dir).arg(dir.path()).output().unwrap();
    assert!(!output.status.success() && text(&output).contains("is not empty"), "{}", text(&output));
    let output = Command::new(&script).output().unwrap();
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
}

/// The simulated kubelet runs the agent image only when the registry a transfer pod names holds
/// it: the image `scripts/image.sh` built and `mover image copy` pushed moves a claim between the
/// simulated clusters; a tag that was never pushed leaves the pod in `ErrImagePull`, which mover
/// reports with the registry's answer.
#[test]
fn the_simulated_kubelet_runs_the_pushed_agent_image_and_refuses_a_tag_the_registry_lacks() {
    use common::k8s;
    use mover_testdata::cluster::{ClusterPair, Flavor, app};
    use mover_testdata::podrunner::Image;

    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    build_image(&layout);
    let registry = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, dir.path())
        .expect("start docker-registry (apt-get install docker-registry)");
    let pushed = mover(&[
        "image",
        "copy",
        "--dest-plain-http",
        &format!("oci:{}:{VERSION}", layout.display()),
        &format!("docker://{}/mover/mover-agent:{VERSION}", registry.addr),
    ]);
    assert!(pushed.status.success(), "{}", text(&pushed));

    let repository = format!("{}/mover/mover-agent", registry.addr);
    let images = std::collections::BTreeMap::from([(repository.clone(), Image::program(bin("mover-agent")).pulled())]);
    let pair = ClusterPair::start_with_images(
        &dir.path().join("clusters"),
        &bin("mover-agent"),
        (61, 62),
        Flavor::Kubernetes,
        images,
    )
    .unwrap();
    let runtime = k8s::runtime();
    let deployed = runtime.block_on(app::deploy(&pair, 50)).unwrap();

    let image = format!("{repository}:{VERSION}");
    let moved = k8s::mover(&pair, &["copy", "k8s://source/shop/data", "k8s://target/shop", "--agent-image", &image]);
    assert!(moved.status.success(), "{}", text(&moved));
    let target = runtime.block_on(async {
        let client = app::client(&pair, "target").await.unwrap();
        app::volume_dir(&client, pair.target.dir(), "shop", "data").await.unwrap()
    });
    k8s::assert_same(&deployed.claims[0].1, &target);

    let never_pushed = format!("{repository}:0.0.0-never-pushed");
    let refused = k8s::mover(
        &pair,
        &[
            "copy",
            "k8s://source/shop/data",
            "k8s://target/shop",
            "--agent-image",
            &never_pushed,
            "--agent-ready-timeout",
            "5",
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let message = text(&refused);
    assert!(message.contains("ErrImagePull") && message.contains("manifest unknown"), "{message}");
    assert_eq!(runtime.block_on(k8s::leftovers(&pair)), Vec::<String>::new());
}
