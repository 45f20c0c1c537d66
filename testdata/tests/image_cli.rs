//! `mover-testdata image`: the layouts it writes, and that a big layer is streamed (the process
//! stays small however large the layer).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use mover_testdata::oci::{LayoutBuilder, OCI_INDEX, OCI_MANIFEST, REF_NAME, sha256_file};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mover-testdata");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Every file in `blobs/sha256` hashes to its name.
fn verify_all_blobs(dir: &Path) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(sha256_file(&entry.path()).unwrap(), format!("sha256:{name}"));
        count += 1;
    }
    count
}

fn read_tags(dir: &Path) -> Vec<(String, String, String)> {
    json(&dir.join("index.json"))["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"][REF_NAME].as_str().unwrap().to_owned(),
                m["mediaType"].as_str().unwrap().to_owned(),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn two_platforms_share_layers_under_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let build = |dir: &Path| {
        let dir = dir.to_str().unwrap();
        run(&[
            "image",
            dir,
            "--layers",
            "3",
            "--layer-size",
            "100K",
            "--platforms",
            "2",
            "--tag",
            "v1",
            "--platform-layer-size",
            "2K",
        ])
    };
    let out = build(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 3 shared + 2 own layers, 2 configs, 2 manifests, 1 index.
    assert_eq!(verify_all_blobs(&dir), 10);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("10 blobs, ") || stdout.contains("10 blobs, "), "{stdout}");
    let tags = read_tags(&dir);
    let names: Vec<&str> = tags.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["v1-amd64", "v1-arm64", "v1"]);
    assert_eq!(tags[2].1, OCI_INDEX);
    let index = json(&LayoutBuilder::blob_path_in(&dir, &tags[2].2));
    let mut layer_sets = Vec::new();
    for (child, arch) in index["manifests"].as_array().unwrap().iter().zip(["amd64", "arm64"]) {
        assert_eq!(child["platform"]["architecture"], arch);
        let manifest = json(&LayoutBuilder::blob_path_in(&dir, child["digest"].as_str().unwrap()));
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        let layers: Vec<(String, u64)> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap()))
            .collect();
        assert_eq!(layers.iter().map(|l| l.1).collect::<Vec<_>>(), [102_400, 102_400, 102_400, 2048]);
        layer_sets.push(layers);
    }
    assert_eq!(layer_sets[0][..3], layer_sets[1][..3], "shared layers");
    assert_ne!(layer_sets[0][3], layer_sets[1][3], "own layers");

    // Same arguments, same digests; another seed, others.
    let again = tmp.path().join("again");
    let out = build(&again);
    assert!(out.status.success());
    assert_eq!(read_tags(&again), tags);
    let seeded = tmp.path().join("seeded");
    let out = run(&["image", seeded.to_str().unwrap(), "--layers", "3", "--layer-size", "100K", "--seed", "2"]);
    assert!(out.status.success());
    let single = read_tags(&seeded);
    assert_eq!(single.len(), 1);
    assert_eq!((single[0].0.as_str(), single[0].1.as_str()), ("latest", OCI_MANIFEST));
    assert!(!fs::read_dir(seeded.join("blobs/sha256")).unwrap().any(|e| {
        let name = format!("sha256:{}", e.unwrap().file_name().into_string().unwrap());
        layer_sets[0].iter().any(|l| l.0 == name)
    }));
}

#[test]
fn docker_flag_and_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("docker");
    let out =
        run(&["image", dir.to_str().unwrap(), "--layers", "1", "--layer-size", "1K", "--platforms", "2", "--docker"]);
    assert!(out.status.success());
    let tags = read_tags(&dir);
    assert_eq!(tags[2].1, mover_testdata::oci::DOCKER_LIST);
    assert_eq!(tags[0].1, mover_testdata::oci::DOCKER_MANIFEST);

    // Not into a non-empty directory; bad values are usage errors.
    for args in [
        vec!["image", dir.to_str().unwrap()],
        vec!["image", tmp.path().join("x").to_str().unwrap(), "--platforms", "3"],
        vec!["image", tmp.path().join("y").to_str().unwrap(), "--layer-size", "12Q"],
        vec!["image", tmp.path().join("z").to_str().unwrap(), "--bogus"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "), "{args:?}");
    }
}

/// Peak resident set of a child in KiB: exact from `/usr/bin/time` when installed, otherwise
/// sampled from `/proc/PID/status` (`VmHWM`) until it exits.
fn peak_rss_kib(args: &[&str]) -> u64 {
    if Path::new("/usr/bin/time").exists() {
        let out = Command::new("/usr/bin/time").args(["-f", "peak %M"]).arg(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rev().find(|l| l.starts_with("peak ")).unwrap();
        return line[5..].trim().parse().unwrap();
    }
    let mut child = Command::new(BIN).args(args).stdout(std::process::Stdio::null()).spawn().unwrap();
    let mut peak = 0;
    loop {
        if let Ok(status) = fs::read_to_string(format!("/proc/{}/status", child.id())) {
            for line in status.lines().filter(|l| l.starts_with("VmHWM:")) {
                let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            return peak;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_big_layer_is_streamed() {
    // 64 MiB: big enough that holding it would show, small enough for a debug build (~4 s).
    // Measured against the same command writing a 1 MiB layer, so that what the program itself
    // takes (a debug binary of the whole test toolkit, about 16 MiB resident) is not counted.
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let baseline = peak_rss_kib(&["image", small.to_str().unwrap(), "--layers", "1", "--layer-size", "1M"]);
    let dir = tmp.path().join("big");
    let peak = peak_rss_kib(&["image", dir.to_str().unwrap(), "--layers", "1", "--layer-size", "64M"]);
    assert!(
        baseline > 0 && peak < baseline + (8 << 10),
        "peak RSS {peak} KiB while writing a 64 MiB layer, {baseline} KiB for a 1 MiB one"
    );
    assert_eq!(verify_all_blobs(&dir), 3);
    let biggest = fs::read_dir(dir.join("blobs/sha256")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).max();
    assert_eq!(biggest, Some(64 << 20));
}
