//! Tests of the OCI layout builder: digests and sizes of everything written, the gzip framing of
//! random layers, `index.json` tags, and that skopeo (an independent reader) accepts the layouts.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::*;
use crate::random_bytes;

/// Checks that every descriptor's blob exists in `dir` with that size and digest.
fn verify_blobs(dir: &Path, descriptors: &[&Descriptor]) {
    for d in descriptors {
        let path = LayoutBuilder::blob_path_in(dir, &d.digest);
        assert_eq!(fs::metadata(&path).unwrap().len(), d.size, "{}", path.display());
        assert_eq!(sha256_file(&path).unwrap(), d.digest, "{}", path.display());
    }
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob_json(dir: &Path, d: &Descriptor) -> Value {
    json_file(&LayoutBuilder::blob_path_in(dir, &d.digest))
}

/// The `index.json` entries as (tag, descriptor).
fn tags(dir: &Path) -> Vec<(String, Descriptor)> {
    let index = json_file(&dir.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let d = Descriptor {
                media_type: m["mediaType"].as_str().unwrap().to_owned(),
                digest: m["digest"].as_str().unwrap().to_owned(),
                size: m["size"].as_u64().unwrap(),
            };
            (m["annotations"][REF_NAME].as_str().unwrap().to_owned(), d)
        })
        .collect()
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        println!("note: `{tool}` is not installed: skipping the checks that need it");
    }
    found
}

#[test]
fn hashes_match_known_vectors() {
    assert_eq!(sha256_bytes(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(sha256_bytes(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    // More than one read piece.
    let content = random_bytes(7, (1 << 20) * 2 + 5);
    fs::write(&path, &content).unwrap();
    assert_eq!(sha256_file(&path).unwrap(), sha256_bytes(&content));
    let mut crc = Crc32::new();
    crc.update(b"123456789");
    assert_eq!(crc.finish(), 0xCBF4_3926);
}

#[test]
fn sample_layout_has_every_blob_and_both_tags() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_multiarch(dir.path(), 300_000).unwrap();
    assert_eq!(fs::read(dir.path().join("oci-layout")).unwrap(), br#"{"imageLayoutVersion":"1.0.0"}"#);

    // 1 index + 2 manifests + 2 configs + 3 shared + 2 own layers, all distinct and all present.
    let all = sample.descriptors();
    assert_eq!(all.len(), 10);
    verify_blobs(dir.path(), &all);
    let files = fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count();
    assert_eq!(files, 10, "no stray (temporary) files in blobs/sha256");
    for d in &all {
        assert!(d.digest.starts_with("sha256:") && d.hex().len() == 64, "{d:?}");
    }

    assert_eq!(
        tags(dir.path()),
        vec![("multi".to_owned(), sample.index.clone()), ("single".into(), sample.single().manifest.clone())]
    );

    let index = blob_json(dir.path(), &sample.index);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(sample.index.media_type, OCI_INDEX);
    let children = index["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    for (child, image) in children.iter().zip(&sample.images) {
        assert_eq!(child["digest"], image.manifest.digest.as_str());
        assert_eq!(child["size"], image.manifest.size);
        assert_eq!(child["mediaType"], OCI_MANIFEST);
        assert_eq!(child["platform"]["os"], "linux");
        assert_eq!(child["platform"]["architecture"], image.arch.as_str());

        let manifest = blob_json(dir.path(), &image.manifest);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"], image.config.to_json());
        assert_eq!(image.config.media_type, OCI_CONFIG);
        let layers: Vec<Value> = image.layers.iter().map(Descriptor::to_json).collect();
        assert_eq!(manifest["layers"], Value::Array(layers));
        assert_eq!(image.layers.len(), 4);
        assert_eq!(image.layers[..3], sample.shared_layers[..]);
        assert!(image.layers.iter().all(|l| l.media_type == OCI_LAYER_GZIP && l.size == 300_000));

        let config = blob_json(dir.path(), &image.config);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], image.arch.as_str());
        assert_eq!(config["rootfs"]["type"], "layers");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(diff_ids.len(), 4);
        for (diff_id, layer) in diff_ids.iter().zip(&image.layers) {
            assert_ne!(diff_id.as_str().unwrap(), layer.digest, "a diff ID is the digest of the uncompressed layer");
        }
    }
    assert_ne!(sample.images[0].layers[3], sample.images[1].layers[3]);
    assert_eq!(sample.total_bytes(), all.iter().map(|d| d.size).sum::<u64>());
}

#[test]
fn docker_sample_uses_docker_media_types() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample_multiarch_with(dir.path(), 1000, true).unwrap();
    verify_blobs(dir.path(), &sample.descriptors());
    assert_eq!(sample.index.media_type, DOCKER_LIST);
    let list = blob_json(dir.path(), &sample.index);
    assert_eq!(list["mediaType"], DOCKER_LIST);
    assert_eq!(list["manifests"][1]["platform"]["architecture"], "arm64");
    for image in &sample.images {
        assert_eq!(image.manifest.media_type, DOCKER_MANIFEST);
        let manifest = blob_json(dir.path(), &image.manifest);
        assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
        assert!(manifest["layers"].as_array().unwrap().iter().all(|l| l["mediaType"] == DOCKER_LAYER_GZIP));
    }
}

#[test]
fn docker_manifest_lists_oci_layers_as_docker_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(dir.path()).unwrap();
    let layer = layout.random_blob(5000, 1, OCI_LAYER_GZIP).unwrap();
    let other = layout.bytes_blob(b"not a layer type we know", "application/x-custom").unwrap();
    let manifest = layout.image("linux", "arm64/v8", &[layer.clone(), other.clone()], true).unwrap();
    let value = blob_json(dir.path(), &manifest);
    assert_eq!(value["layers"][0], layer.with_media_type(DOCKER_LAYER_GZIP).to_json());
    assert_eq!(value["layers"][1], other.to_json());
    let config = blob_json(dir.path(), &layout.image_with_config("linux", "arm64/v8", &[layer], true).unwrap().1);
    assert_eq!((config["architecture"].as_str(), config["variant"].as_str()), (Some("arm64"), Some("v8")));
    // The raw-bytes layer's diff ID is its own digest.
    assert_eq!(layout.diff_id(&other), other.digest);
}

#[test]
fn tags_are_replaced_and_index_json_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(dir.path()).unwrap();
    assert!(tags(dir.path()).is_empty());
    let a = layout.bytes_blob(b"{}", OCI_MANIFEST).unwrap();
    let b = layout.bytes_blob(b"{ }", OCI_MANIFEST).unwrap();
    layout.tag("one", &a).unwrap();
    layout.tag("two", &a).unwrap();
    assert_eq!(tags(dir.path()), vec![("one".to_owned(), a.clone()), ("two".to_owned(), a.clone())]);
    layout.tag("one", &b).unwrap();
    assert_eq!(tags(dir.path()), vec![("one".to_owned(), b), ("two".to_owned(), a)]);
    assert_eq!(json_file(&dir.path().join("index.json"))["mediaType"], OCI_INDEX);
}

#[test]
fn random_blobs_have_exact_sizes_and_depend_only_on_the_seed() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first = LayoutBuilder::new(dir_a.path()).unwrap();
    let mut second = LayoutBuilder::new(dir_b.path()).unwrap();
    let block = STORED_MAX + BLOCK_HEADER;
    // Around the smallest gzip blob and around block boundaries.
    let mut sizes = vec![0, 1, 22, 23, 24, 1000];
    for k in 1..=3 {
        for delta in -6i64..=6 {
            sizes.push((GZIP_FRAMING + k * block).checked_add_signed(delta).unwrap());
        }
    }
    for size in sizes {
        let one = first.random_blob(size, 42, OCI_LAYER_GZIP).unwrap();
        let two = second.random_blob(size, 42, OCI_LAYER_GZIP).unwrap();
        assert_eq!(one, two, "size {size}");
        assert_eq!(one.size, size);
        assert_eq!(fs::metadata(first.blob_path(&one.digest)).unwrap().len(), size);
        assert_eq!(sha256_file(&first.blob_path(&one.digest)).unwrap(), one.digest);
        // (23 bytes are an empty gzip stream, the same for every seed.)
        if size > 0 && size != GZIP_FRAMING + BLOCK_HEADER {
            let other = second.random_blob(size, 43, OCI_LAYER_GZIP).unwrap();
            assert_ne!(one.digest, other.digest, "size {size}: another seed, other content");
        }
    }
}

#[test]
fn random_blobs_are_gzip_of_the_seeds_random_bytes_and_incompressible() {
    if !have("gzip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut layout = LayoutBuilder::new(dir.path()).unwrap();
    for size in [23, 24, 65_558, 65_559, 200_000, 3 << 20] {
        let d = layout.random_blob(size, 9, OCI_LAYER_GZIP).unwrap();
        let out = Command::new("gzip").arg("-dc").arg(layout.blob_path(&d.digest)).output().unwrap();
        assert!(out.status.success(), "size {size}: {}", String::from_utf8_lossy(&out.stderr));
        let plain = out.stdout;
        assert!(plain.len() as u64 + 100 > size * 9999 / 10000 && (plain.len() as u64) < size, "{size}");
        assert_eq!(plain, random_bytes(9, plain.len()), "size {size}");
        assert_eq!(layout.diff_id(&d), sha256_bytes(&plain), "size {size}");
    }
    let d = layout.random_blob(1 << 20, 5, OCI_LAYER_GZIP).unwrap();
    let out = Command::new("gzip").arg("-9c").arg(layout.blob_path(&d.digest)).output().unwrap();
    assert!(out.stdout.len() as u64 > d.size, "gzip shrank a random blob to {} bytes", out.stdout.len());
}

#[test]
fn skopeo_reads_the_layout_and_copies_it_unchanged() {
    if !have("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let sample = sample_multiarch(&src, 200_000).unwrap();
    let single = sample.single().manifest.clone();
    let inspect = |reference: &str| {
        let out = Command::new("skopeo").args(["inspect", "--raw"]).arg(reference).output().unwrap();
        assert!(out.status.success(), "{reference}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let raw = inspect(&format!("oci:{}:single", src.display()));
    assert_eq!(sha256_bytes(&raw), single.digest);
    assert_eq!(raw, fs::read(LayoutBuilder::blob_path_in(&src, &single.digest)).unwrap());
    let raw = inspect(&format!("oci:{}:multi", src.display()));
    assert_eq!(sha256_bytes(&raw), sample.index.digest);

    // Without --preserve-digests: skopeo would recompress layers it found uncompressed, so equal
    // digests at the destination also show that the layers pass for gzip.
    let dst = dir.path().join("dst");
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--all", "-q"])
        .arg(format!("oci:{}:multi", src.display()))
        .arg(format!("oci:{}:multi", dst.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tags(&dst), vec![("multi".to_owned(), sample.index.clone())]);
    verify_blobs(&dst, &sample.descriptors());
}
