//! The fuzz targets' seed corpora and crash seeds, replayed as regression tests.
//!
//! Every file under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` goes through the same
//! check the fuzz target runs (`engine/src/fuzz/mod.rs`), so a decoder that
//! panics or breaks an invariant on any of them fails `cargo test` on stable, without cargo-fuzz.
//! The seeds themselves are written by `write_seed_corpus` below (ignored; run it by hand after a
//! wire or format change: `cargo test -p mover-engine fuzz::corpus -- --ignored`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::compress::Compressor;
use crate::progress::{BlobState, Event, Summary};
use crate::sync::blocks;
use crate::tunnel::Proxy;
use crate::wire::{
    CHUNK_SIZE, Compression, DataChunk, DeltaChunk, Entry, EntryKind, FileFailure, FrameWriter, Hello, HelloReply,
    MAX_FRAME, Message, ReceiverReport, RemoteError, RemoteErrorKind, Request, SyncOptions, Timestamp, Welcome, Xattr,
    encode_hello, encode_message,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The inputs in a corpus or artifact folder (not its README or `.gitkeep`), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a corpus folder entry").path())
        .filter(|path| path.is_file())
        .filter(|path| !matches!(path.file_name().and_then(|n| n.to_str()), Some("README.md" | ".gitkeep")))
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_crash_input_passes_its_fuzz_check() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for &(target, check) in super::TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz target {target} has no seeds in fuzz/corpus/{target}/");
        let crashes = inputs(&fuzz_dir().join("artifacts").join(target));
        for path in corpus.iter().chain(&crashes) {
            let data = fs::read(path).expect("a corpus file");
            replayed += 1;
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{target}: {}: {reason}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {replayed} fuzz inputs failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_fuzz_target_has_a_check_and_a_crash_folder() {
    let mut on_disk: Vec<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|entry| entry.expect("an entry").path())
        .filter_map(|path| path.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = super::TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets/*.rs and super::TARGETS differ");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &listed {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(fuzz_dir().join("artifacts").join(name).is_dir(), "fuzz/artifacts/{name}/ is missing");
    }
}

/// Writes the generated seeds into `fuzz/corpus/<target>/seed-*` (files of other names, such as
/// inputs the fuzzer found, are left alone).
#[test]
#[ignore = "writes fuzz/corpus; run by hand after a wire or format change"]
fn write_seed_corpus() {
    for (target, seeds) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus folder");
        for old in inputs(&dir) {
            if old.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
                fs::remove_file(old).expect("remove an old seed");
            }
        }
        for (name, bytes) in seeds {
            fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        }
    }
}

type Seeds = Vec<(String, Vec<u8>)>;

fn seeds() -> Vec<(&'static str, Seeds)> {
    let messages = messages();
    let bodies: Seeds = messages.iter().map(|(name, m)| (name.clone(), encode_message(m)[4..].to_vec())).collect();
    let mut handshakes = Seeds::new();
    for (name, hello) in hellos() {
        handshakes.push((format!("hello-{name}"), encode_hello(crate::PROTOCOL_VERSION, &hello)[4..].to_vec()));
    }
    handshakes.push(("hello-version-2".into(), encode_hello(2, &hellos()[0].1)[4..].to_vec()));
    for (name, reply) in replies() {
        handshakes.push((format!("reply-{name}"), reply_frame(&reply)[4..].to_vec()));
    }
    let wire = bodies.iter().cloned().chain(handshakes.iter().cloned()).collect();
    vec![
        ("wire_decode", wire),
        ("message_roundtrip", bodies),
        ("frame_reader", streams(&messages)),
        ("decompress", chunks()),
        ("manifest", manifests()),
        ("image_ref", texts(&references())),
        ("rel_path", texts(&paths())),
    ]
}

fn texts(texts: &[(&str, String)]) -> Seeds {
    texts.iter().map(|(name, text)| ((*name).to_owned(), text.clone().into_bytes())).collect()
}

/// A real delta: 3 blocks of a basis, shifted by an insert, compressed.
fn sample_delta() -> DeltaChunk {
    let basis: Vec<u8> = (0..8 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let mut new = b"insert".to_vec();
    new.extend_from_slice(&basis[4096..4 * 4096]);
    let mut delta = Vec::new();
    fast_rsync::diff(&blocks::sign(&basis, 4096).index(), &new, &mut delta).expect("diff");
    let packed = Compressor::new(3).expect("zstd").pack(&delta).expect("pack");
    DeltaChunk {
        id: 4,
        offset: 8192,
        len: new.len() as u32,
        window_start: 0,
        window_len: basis.len() as u32,
        delta_len: delta.len() as u32,
        compressed: packed.compressed,
        bytes: packed.bytes.to_vec(),
    }
}

fn entry(id: u64, path: &[u8], kind: EntryKind) -> Entry {
    Entry {
        id,
        path: path.to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime: Timestamp { sec: 1_700_000_000, nsec: 123_456_789 },
        atime: Timestamp { sec: -1, nsec: 999_999_999 },
        xattrs: Vec::new(),
    }
}

fn messages() -> Vec<(String, Message)> {
    let text = b"the quick brown fox jumps over the lazy dog\n".repeat(200);
    let packed = Compressor::new(3).expect("compressor").pack(&text).expect("pack").bytes.into_owned();
    let mut with_xattrs = entry(2, b"dir/file.txt", EntryKind::File { size: 8800, leader: true });
    with_xattrs.xattrs = vec![
        Xattr { name: b"user.comment".to_vec(), value: b"hello".to_vec() },
        Xattr { name: b"security.selinux".to_vec(), value: b"system_u:object_r:container_file_t:s0\0".to_vec() },
    ];
    let event = |name: &str, event: Event| (format!("progress-{name}"), Message::Progress(event));
    vec![
        ("entry-dir".into(), Message::Entry(entry(1, b"dir", EntryKind::Dir))),
        ("entry-file-xattrs".into(), Message::Entry(with_xattrs)),
        ("entry-hardlink".into(), Message::Entry(entry(3, b"dir/link", EntryKind::Hardlink { leader: 2 }))),
        (
            "entry-symlink".into(),
            Message::Entry(entry(4, b"dir/sym", EntryKind::Symlink { target: b"../../etc/passwd".to_vec() })),
        ),
        ("entry-fifo".into(), Message::Entry(entry(5, b"fifo", EntryKind::Fifo))),
        ("entry-socket".into(), Message::Entry(entry(6, b"sock", EntryKind::Socket))),
        ("entry-chardev".into(), Message::Entry(entry(7, b"null", EntryKind::CharDevice { rdev: 0x103 }))),
        ("entry-blockdev".into(), Message::Entry(entry(8, b"sda", EntryKind::BlockDevice { rdev: 0x800 }))),
        ("entry-escaping-path".into(), Message::Entry(entry(9, b"../outside", EntryKind::Dir))),
        ("entry-reserved-name".into(), Message::Entry(entry(10, b"a/.mover-tmp-1", EntryKind::Dir))),
        ("end-of-entries".into(), Message::EndOfEntries),
        ("need".into(), Message::Need { id: u64::MAX }),
        (
            "need-blocks".into(),
            Message::NeedBlocks {
                id: 2,
                signature: blocks::sign(&[0xab; 3 * 4096 + 10], 4096).into_serialized(),
                shifts: true,
            },
        ),
        (
            "need-blocks-bad".into(),
            Message::NeedBlocks {
                id: 2,
                signature: vec![0x72, 0x73, 1, 0x36, 0, 0, 3, 232, 0, 0, 0, 8, 1],
                shifts: false,
            },
        ),
        ("delta".into(), Message::Delta(sample_delta())),
        ("skip".into(), Message::Skip { id: 3 }),
        (
            "data-raw".into(),
            Message::Data(DataChunk { id: 2, offset: 0, raw_len: 5, compressed: false, bytes: b"hello".to_vec() }),
        ),
        (
            "data-zstd".into(),
            Message::Data(DataChunk {
                id: 2,
                offset: 4096,
                raw_len: text.len() as u32,
                compressed: true,
                bytes: packed,
            }),
        ),
        ("file-end".into(), Message::FileEnd { id: 2, blake3: *blake3::hash(&text).as_bytes() }),
        ("file-failed".into(), Message::FileFailed { id: 2, reason: FileFailure::Vanished }),
        (
            "done".into(),
            Message::Done(ReceiverReport {
                files_written: 3,
                bytes_written: 8805,
                entries_deleted: 1,
                not_preserved: vec!["ownership".into()],
                warnings: vec!["skipped a device".into()],
            }),
        ),
        event("totals", Event::Totals { files: 10, bytes: 1 << 30 }),
        event("counters", Event::Progress { files_done: 1, bytes_done: 2, bytes_transferred: 3, bytes_on_wire: 4 }),
        event("warning", Event::Warning { message: "`a` vanished".into() }),
        event(
            "image-planned",
            Event::ImagePlanned {
                image: "docker://r.example/a:1".into(),
                digest: format!("sha256:{}", "0".repeat(64)),
                manifests: 2,
                blobs: 5,
                bytes: 1 << 20,
            },
        ),
        event(
            "blob",
            Event::Blob { image: "i".into(), digest: "d".into(), size: 10, done: 5, state: BlobState::Copying },
        ),
        event("image-copied", Event::ImageCopied { image: "i".into(), digest: "d".into() }),
        (
            "summary".into(),
            Message::Summary(Summary {
                files_total: 3,
                elapsed_s: 1.5,
                errors: vec!["`x`: permission denied".into()],
                ..Summary::default()
            }),
        ),
        ("error".into(), Message::Error(RemoteError::new(RemoteErrorKind::Protocol, "bad path `../x`"))),
        ("keep".into(), Message::Keep { path: b"unreadable/dir".to_vec() }),
    ]
}

fn hellos() -> Vec<(&'static str, Hello)> {
    let options =
        SyncOptions { compression: Compression::Level(3), bwlimit: 1 << 20, streams: 3, ..SyncOptions::default() };
    let hello = |request| Hello { migration_id: "a".repeat(64), request };
    vec![
        ("ping", hello(Request::Ping)),
        ("receive", hello(Request::Receive { volume: "data".into(), options: options.clone(), lanes: vec![9; 32] })),
        ("open-session", hello(Request::OpenSession { volume: "data".into(), options: SyncOptions::default() })),
        ("join-session", hello(Request::JoinSession { token: vec![7; 32], lanes: vec![9; 32] })),
        ("join-lane", hello(Request::JoinLane { token: vec![7; 32], lane: 2 })),
        (
            "grant-pod-volume",
            hello(Request::GrantPodVolume {
                name: "data".into(),
                pod_uid: "0b7c4a2e-5d1f-4c3a-9e8b-2f6d1a0c9e47".into(),
                volume: "pvc-0b7c4a2e".into(),
                read_only: true,
            }),
        ),
        ("revoke-volume", hello(Request::RevokeVolume { name: "data".into() })),
        (
            "push",
            hello(Request::Push {
                volume: "data".into(),
                target: "10.0.0.2:7070".into(),
                token: vec![7; 32],
                proxy: Some(Proxy {
                    host: "proxy".into(),
                    port: 3128,
                    user: Some("u".into()),
                    password: Some("p".into()),
                }),
                options,
            }),
        ),
    ]
}

fn replies() -> Vec<(&'static str, HelloReply)> {
    vec![
        (
            "welcome",
            HelloReply::Welcome(Welcome {
                token: vec![1; 16],
                volumes: vec!["data".into(), "logs".into()],
                ..Welcome::default()
            }),
        ),
        ("refused", HelloReply::Refused(RemoteError::new(RemoteErrorKind::Forbidden, "the source role may not"))),
    ]
}

/// A reply as the agent sends it (the encoder is private to the wire module).
fn reply_frame(reply: &HelloReply) -> Vec<u8> {
    let mut frame = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(FrameWriter::new(&mut frame).send_reply(reply)).expect("writing to a Vec");
    frame
}

fn streams(messages: &[(String, Message)]) -> Seeds {
    let mut session = encode_hello(crate::PROTOCOL_VERSION, &hellos()[1].1);
    for (_, message) in messages {
        session.extend(encode_message(message));
    }
    let one = encode_message(&messages[0].1);
    let header = |length: usize| u32::try_from(length).expect("small").to_be_bytes().to_vec();
    vec![
        ("empty".into(), Vec::new()),
        ("session".into(), session),
        ("reply-welcome".into(), reply_frame(&replies()[0].1)),
        ("stray-bytes-after-frame".into(), [one.clone(), vec![0, 0]].concat()),
        ("truncated-frame".into(), one[..one.len() - 3].to_vec()),
        ("empty-frames".into(), [header(0), header(0), header(0)].concat()),
        ("oversize-header".into(), [header(MAX_FRAME + 1), vec![0; 16]].concat()),
        ("max-frame-header-short-body".into(), [header(MAX_FRAME), vec![0; 16]].concat()),
        ("max-u32-header".into(), vec![0xff; 4]),
    ]
}

/// `flags:u8 raw_len:u24le bytes`, as `super::decompress` reads them.
fn chunk(compressed: bool, raw_len: usize, bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(raw_len).expect("small").to_le_bytes();
    [&[u8::from(compressed), len[0], len[1], len[2]], bytes].concat()
}

fn chunks() -> Seeds {
    let text = b"the quick brown fox jumps over the lazy dog\n".repeat(300);
    let text_frame = zstd::bulk::compress(&text, 3).expect("compress");
    let zeros_1m = zstd::bulk::compress(&vec![0; CHUNK_SIZE], 1).expect("compress");
    let zeros_2m = zstd::bulk::compress(&vec![0; 2 * CHUNK_SIZE], 1).expect("compress");
    // A frame without a content size that asks for a 128 MiB window.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
    encoder.include_contentsize(false).expect("no content size");
    encoder.window_log(27).expect("window");
    encoder.long_distance_matching(true).expect("ldm");
    std::io::Write::write_all(&mut encoder, &text).expect("encode");
    let big_window = encoder.finish().expect("finish");
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("encoder");
    encoder.include_checksum(true).expect("checksum");
    std::io::Write::write_all(&mut encoder, &text).expect("encode");
    let with_checksum = encoder.finish().expect("finish");
    let skippable = [&0x184d_2a50u32.to_le_bytes()[..], &4u32.to_le_bytes(), b"skip", &text_frame].concat();
    vec![
        ("raw".into(), chunk(false, 5, b"hello")),
        ("raw-wrong-length".into(), chunk(false, 6, b"hello")),
        ("zstd-text".into(), chunk(true, text.len(), &text_frame)),
        ("zstd-text-declared-short".into(), chunk(true, 100, &text_frame)),
        ("zstd-text-truncated".into(), chunk(true, text.len(), &text_frame[..text_frame.len() / 2])),
        ("zstd-zeros-1mib".into(), chunk(true, CHUNK_SIZE, &zeros_1m)),
        ("zstd-zeros-2mib-declared-1mib".into(), chunk(true, CHUNK_SIZE, &zeros_2m)),
        ("zstd-window-128mib".into(), chunk(true, text.len(), &big_window)),
        ("zstd-checksum-level-19".into(), chunk(true, text.len(), &with_checksum)),
        ("zstd-two-frames".into(), chunk(true, 2 * text.len(), &[&text_frame[..], &text_frame].concat())),
        ("zstd-skippable-then-frame".into(), chunk(true, text.len(), &skippable)),
        ("zstd-empty".into(), chunk(true, 0, &zstd::bulk::compress(&[], 1).expect("compress"))),
        ("text-to-pack".into(), [&[3u8 << 1, 0, 0, 0][..], &text[..2000]].concat()),
    ]
}

fn manifests() -> Seeds {
    use crate::image::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let descriptor = |media: &str, digest: &str, size: u64| {
        format!(r#"{{"mediaType":"{media}","digest":"{digest}","size":{size}}}"#)
    };
    let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let config = descriptor("application/vnd.oci.image.config.v1+json", &d('a'), 1469);
    let image = |media: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","config":{config},"layers":[{},{}],"annotations":{{"k":"v"}}}}"#,
            descriptor(layer, &d('b'), 3_000_000),
            descriptor(layer, &d('c'), 42),
        )
    };
    let child = |arch: &str, variant: &str, c: char| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":500,"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}"#,
            d(c)
        )
    };
    let children = [child("amd64", "", '1'), child("arm64", r#","variant":"v8""#, '2')].join(",");
    let sha512 = format!("sha512:{}", "e".repeat(128));
    vec![
        ("oci-manifest".into(), image(OCI_MANIFEST)),
        ("docker-manifest".into(), image(DOCKER_MANIFEST)),
        ("oci-index".into(), format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{children}]}}"#)),
        ("docker-list".into(), format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{children}]}}"#)),
        ("index-without-media-type".into(), format!(r#"{{"schemaVersion":2,"manifests":[{children}]}}"#)),
        ("manifest-without-media-type".into(), format!(r#"{{"schemaVersion":2,"config":{config}}}"#)),
        (
            "foreign-layer".into(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{config},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{sha512}","size":1,"urls":["https://example.com/l"]}}]}}"#
            ),
        ),
        (
            "subject".into(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"subject":{},"artifactType":"x"}}"#,
                descriptor(OCI_MANIFEST, &d('f'), 7)
            ),
        ),
        ("schema-1".into(), r#"{"schemaVersion":1,"name":"x","tag":"latest","fsLayers":[]}"#.into()),
        (
            "escaping-digest".into(),
            format!(r#"{{"schemaVersion":2,"config":{}}}"#, descriptor("c", "sha256:../../etc/passwd", 1)),
        ),
        ("unknown-media-type".into(), format!(r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{config}}}"#)),
    ]
    .into_iter()
    .map(|(name, text): (String, String)| (name, text.into_bytes()))
    .collect()
}

fn references() -> Vec<(&'static str, String)> {
    let sha256 = format!("sha256:{}", "0123456789abcdef".repeat(4));
    vec![
        ("docker-hub-short", "docker://busybox".into()),
        ("docker-hub-tag", "docker://library/busybox:1.36".into()),
        ("registry-port-repo-tag", "docker://localhost:5000/team/app:v1.2.3-rc_1".into()),
        ("registry-digest", format!("docker://registry.example.com/a/b@{sha256}")),
        ("registry-tag-and-digest", format!("docker://registry.example.com/a/b:t@{sha256}")),
        ("ipv6-registry", "docker://[::1]:5000/x/y:latest".into()),
        ("bad-port", "docker://r.example:0/x".into()),
        ("uppercase-repo", "docker://r.example/Upper".into()),
        ("oci-layout-tag", "oci:/var/lib/images/layout:v1".into()),
        ("oci-layout-colons", "oci:./dir:with:colons:".into()),
        ("oci-empty", "oci:".into()),
        ("digest-sha256", sha256.clone()),
        ("digest-sha512", format!("sha512:{}", "f".repeat(128))),
        ("digest-uppercase", sha256.to_uppercase()),
        ("digest-md5", "md5:d41d8cd98f00b204e9800998ecf8427e".into()),
        ("platform", "linux/arm64/v8".into()),
        ("platform-two", "windows/amd64".into()),
        ("long-tag", format!("docker://r.example/x:{}", "t".repeat(129))),
    ]
}

fn paths() -> Vec<(&'static str, String)> {
    vec![
        ("name", "file".into()),
        ("nested", "a/b/c.txt".into()),
        ("dot-dot", "a/../b".into()),
        ("dot", "./a".into()),
        ("absolute", "/etc/passwd".into()),
        ("double-slash", "a//b".into()),
        ("trailing-slash", "a/b/".into()),
        ("reserved", "dir/.mover-tmp-123".into()),
        ("name-255", "n".repeat(255)),
        ("name-256", "n".repeat(256)),
        ("path-4096", ["d".repeat(200), "/".into()].concat().repeat(20) + &"f".repeat(76)),
        ("path-4097", ["d".repeat(200), "/".into()].concat().repeat(20) + &"f".repeat(77)),
        ("nul", "a\0b".into()),
        ("dotfile", ".hidden/..x/...".into()),
    ]
}
