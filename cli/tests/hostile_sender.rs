//! A hand-made hostile sender drives a real agent: every attack ends the session with a clear
//! error, nothing is written outside the volume root, and no file appears under its final name
//! with wrong content.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Agent, certs};
use mover_engine::certs::{Identity, Role};
use mover_engine::client;
use mover_engine::sync::blocks;
use mover_engine::tunnel::ClientStream;
use mover_engine::wire::{
    DataChunk, DeltaChunk, Entry, EntryKind, FrameReader, FrameWriter, MAX_FRAME, Message, RemoteError,
    RemoteErrorKind, Request, SyncOptions, Timestamp,
};
use tokio::io::{ReadHalf, WriteHalf};

struct Fixture {
    _tmp: tempfile::TempDir,
    agent: Agent,
    identity: Identity,
    target: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), b"canary").unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("vol={}", target.display())], tmp.path());
    let identity = Identity::load(&certs, Role::Coordinator).unwrap();
    Fixture { _tmp: tmp, agent, identity, target, outside }
}

fn entry(id: u64, path: &[u8], kind: EntryKind) -> Message {
    Message::Entry(Entry {
        id,
        path: path.to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: Timestamp { sec: 1_000_000, nsec: 5 },
        atime: Timestamp::default(),
        xattrs: Vec::new(),
    })
}

/// Sends `script` (raw frames) after the hello and returns the error the agent reported.
fn attack(fixture: &Fixture, script: Vec<Vec<u8>>) -> RemoteError {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stream = open_when_free(fixture).await;
        let (reader, writer) = tokio::io::split(stream);
        let mut writer = FrameWriter::new(writer);
        let mut reader = FrameReader::new(reader);
        for frame in script {
            // The agent may hang up in the middle of the script: that is fine.
            if writer.write_frame(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.flush().await;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), reader.read_message())
                .await
                .expect("the agent neither answered nor hung up");
            match message {
                Ok(Some(Message::Error(error))) => return error,
                Ok(Some(Message::Need { .. } | Message::NeedBlocks { .. } | Message::Skip { .. })) => {}
                other => panic!("expected an error from the agent, got {other:?}"),
            }
        }
    })
}

/// Opens a receive session, waiting while the previous attack's session is still winding down
/// on the agent ("target busy").
async fn open_when_free(fixture: &Fixture) -> mover_engine::tunnel::ClientStream {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = Request::Receive { volume: "vol".into(), options: SyncOptions::default(), lanes: vec![1; 32] };
        match client::open(&fixture.identity, &fixture.agent.addr, request, None).await {
            Ok((stream, _)) => return stream,
            Err(client::CopyError::Session(client::SessionError::Refused { error, .. }))
                if error.kind == RemoteErrorKind::Busy && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot open a session: {error}"),
        }
    }
}

fn frame(message: &Message) -> Vec<u8> {
    mover_engine::wire::encode_message(message)
}

fn assert_untouched(fixture: &Fixture) {
    assert_eq!(fs::read(fixture.outside.join("canary")).unwrap(), b"canary");
    assert_eq!(fs::read_dir(&fixture.outside).unwrap().count(), 1, "something appeared outside the root");
    assert!(!fixture.target.parent().unwrap().join("x").exists(), "`../x` was written");
    assert_no_temporaries(&fixture.target);
}

fn assert_no_temporaries(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        assert!(
            !entry.file_name().to_string_lossy().starts_with(".mover-tmp-"),
            "left behind: {}",
            entry.path().display()
        );
        if entry.file_type().unwrap().is_dir() {
            assert_no_temporaries(&entry.path());
        }
    }
}

#[test]
fn escaping_paths_are_refused() {
    let fixture = fixture();
    // The last two have the exact forms of mover's temporary names (a partial file, a session's
    // temporary file): the receiver would take them for its own.
    for path in [
        &b"../x"[..],
        b"/abs",
        b"a/../../x",
        b"./a",
        b"a\0b",
        b".mover-tmp-part-0123456789abcdef01234567",
        b"d/.mover-tmp-0123456789abcdef-1",
    ] {
        let script = vec![
            frame(&entry(1, path, EntryKind::Dir)),
            frame(&entry(2, path, EntryKind::File { size: 1, leader: false })),
        ];
        let error = attack(&fixture, script);
        assert_eq!(error.kind, RemoteErrorKind::Protocol, "{path:?}: {error:?}");
        assert!(error.message.contains("protocol violation"), "{}", error.message);
        assert_untouched(&fixture);
    }
    assert!(!Path::new("/abs").exists());
    assert_eq!(fs::read_dir(&fixture.target).unwrap().count(), 0);
    // The agent still serves others afterwards.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(runtime.block_on(client::ping(&fixture.identity, &fixture.agent.addr)).is_ok());
}

#[test]
fn an_over_long_frame_ends_the_session() {
    let fixture = fixture();
    let mut huge = u32::try_from(MAX_FRAME + 1).unwrap().to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    let error = attack(&fixture, vec![huge]);
    assert!(error.message.contains("frame of") && error.message.contains("limit"), "{}", error.message);
    assert_untouched(&fixture);
}

#[test]
fn a_file_beneath_a_symlink_entry_is_refused() {
    let fixture = fixture();
    let target = fixture.outside.as_os_str().as_encoded_bytes().to_vec();
    let content = b"escaped!";
    let script = vec![
        frame(&entry(1, b"a", EntryKind::Symlink { target })),
        frame(&entry(2, b"a/canary", EntryKind::File { size: content.len() as u64, leader: false })),
        frame(&Message::Data(DataChunk {
            id: 2,
            offset: 0,
            raw_len: content.len() as u32,
            compressed: false,
            bytes: content.to_vec(),
        })),
        frame(&Message::FileEnd { id: 2, blake3: mover_engine::sync::digest::digest(content) }),
    ];
    let error = attack(&fixture, script);
    // Refused as out of order (a symlink is no directory to be inside of); were it not, the
    // `RESOLVE_NO_SYMLINKS` open of the parent would refuse it as a symlink in the way.
    assert!(
        error.message.contains("arrives outside its directory") || error.message.contains("symlink is in the way"),
        "{}",
        error.message
    );
    assert_untouched(&fixture);
}

#[test]
fn a_symlink_planted_by_the_workload_between_entries_is_not_followed() {
    // The workload (not the peer) swaps a directory the sender just created for a symlink to
    // outside: the receiver's confined open refuses to traverse it.
    let fixture = fixture();
    fs::create_dir(fixture.target.join("a")).unwrap();
    let planted = fixture.target.join("a");
    let outside = fixture.outside.clone();
    let content = b"escaped!";
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(async {
        let request = Request::Receive { volume: "vol".into(), options: SyncOptions::default(), lanes: vec![1; 32] };
        let (stream, _) = client::open(&fixture.identity, &fixture.agent.addr, request, None).await.unwrap();
        let (reader, writer) = tokio::io::split(stream);
        let mut writer = FrameWriter::new(writer);
        let mut reader = FrameReader::new(reader);
        writer.send(&entry(1, b"a", EntryKind::Dir)).await.unwrap();
        writer.send(&entry(2, b"a/first", EntryKind::File { size: 0, leader: false })).await.unwrap();
        // Wait for the verdict on `a/first`: the receiver is now inside `a`.
        let verdict = reader.read_message().await.unwrap();
        assert!(matches!(verdict, Some(Message::Need { id: 2 })), "{verdict:?}");
        fs::remove_dir(&planted).unwrap();
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        writer
            .send(&entry(3, b"a/canary", EntryKind::File { size: content.len() as u64, leader: false }))
            .await
            .unwrap();
        writer
            .send(&Message::Data(DataChunk {
                id: 3,
                offset: 0,
                raw_len: content.len() as u32,
                compressed: false,
                bytes: content.to_vec(),
            }))
            .await
            .unwrap();
        writer.send(&Message::FileEnd { id: 3, blake3: mover_engine::sync::digest::digest(content) }).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), reader.read_message()).await.unwrap() {
                Ok(Some(Message::Error(error))) => break error,
                Ok(Some(_)) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
    assert!(error.message.contains("symlink is in the way") || error.message.contains("`a"), "{}", error.message);
    assert_untouched(&fixture);
}

#[test]
fn a_wrong_blake3_leaves_the_old_file_in_place() {
    let fixture = fixture();
    fs::write(fixture.target.join("f"), b"old content").unwrap();
    let content = b"new content, wrong hash";
    let script = vec![
        frame(&entry(1, b"f", EntryKind::File { size: content.len() as u64, leader: false })),
        frame(&Message::Data(DataChunk {
            id: 1,
            offset: 0,
            raw_len: content.len() as u32,
            compressed: false,
            bytes: content.to_vec(),
        })),
        frame(&Message::FileEnd { id: 1, blake3: *blake3::hash(b"something else").as_bytes() }),
    ];
    let error = attack(&fixture, script);
    assert_eq!(error.kind, RemoteErrorKind::Verification, "{error:?}");
    assert!(error.message.contains("`f`") && error.message.contains("blake3"), "{}", error.message);
    assert_eq!(fs::read(fixture.target.join("f")).unwrap(), b"old content");
    assert_untouched(&fixture);
}

/// Beneath a directory the session made, the names of new files are not looked up (nothing
/// was there): a wrong digest still leaves no file at all, and a name taken between the
/// verdict and the content (here a symlink to outside, planted by the workload) is replaced,
/// never followed.
#[test]
fn a_new_file_in_a_made_directory_appears_only_verified_and_never_through_a_name_taken_meanwhile() {
    let fixture = fixture();
    let content = b"small and new";
    let data = |id| {
        Message::Data(DataChunk {
            id,
            offset: 0,
            raw_len: content.len() as u32,
            compressed: false,
            bytes: content.to_vec(),
        })
    };
    let file = EntryKind::File { size: content.len() as u64, leader: false };
    let script = vec![
        frame(&entry(1, b"made", EntryKind::Dir)),
        frame(&entry(2, b"made/f", file.clone())),
        frame(&data(2)),
        frame(&Message::FileEnd { id: 2, blake3: *blake3::hash(b"something else").as_bytes() }),
    ];
    let error = attack(&fixture, script);
    assert_eq!(error.kind, RemoteErrorKind::Verification, "{error:?}");
    assert!(!fixture.target.join("made/f").exists(), "an unverified file got its final name");
    assert_no_temporaries(&fixture.target.join("made"));
    assert_untouched(&fixture);

    let fixture = self::fixture();
    let planted = fixture.target.join("made/new");
    let canary = fixture.outside.join("canary");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let stream = open_when_free(&fixture).await;
        let (reader, writer) = tokio::io::split(stream);
        let mut writer = FrameWriter::new(writer);
        let mut reader = FrameReader::new(reader);
        writer.send(&entry(1, b"made", EntryKind::Dir)).await.unwrap();
        writer.send(&entry(2, b"made/new", file.clone())).await.unwrap();
        let verdict = next_message(&mut reader).await;
        assert!(matches!(verdict, Some(Message::Need { id: 2 })), "{verdict:?}");
        std::os::unix::fs::symlink(&canary, &planted).unwrap();
        writer.send(&data(2)).await.unwrap();
        writer.send(&Message::FileEnd { id: 2, blake3: mover_engine::sync::digest::digest(content) }).await.unwrap();
        writer.send(&Message::EndOfEntries).await.unwrap();
        loop {
            match next_message(&mut reader).await {
                Some(Message::Done(report)) => break report,
                Some(Message::Error(error)) => panic!("the session failed: {error:?}"),
                _ => {}
            }
        }
    });
    assert_eq!(report.files_written, 1);
    assert!(fs::symlink_metadata(&planted).unwrap().is_file(), "the planted symlink was followed or kept");
    assert_eq!(fs::read(&planted).unwrap(), content);
    assert_no_temporaries(&fixture.target.join("made"));
    assert_untouched(&fixture);
}

#[test]
fn data_past_the_declared_size_and_unrequested_data_are_refused() {
    let fixture = fixture();
    let script = vec![
        frame(&entry(1, b"f", EntryKind::File { size: 4, leader: false })),
        frame(&Message::Data(DataChunk {
            id: 1,
            offset: 0,
            raw_len: 8,
            compressed: false,
            bytes: b"12345678".to_vec(),
        })),
    ];
    let error = attack(&fixture, script);
    assert!(error.message.contains("beyond its size"), "{}", error.message);
    let script = vec![frame(&Message::Data(DataChunk {
        id: 9,
        offset: 0,
        raw_len: 1,
        compressed: false,
        bytes: b"x".to_vec(),
    }))];
    let error = attack(&fixture, script);
    assert!(error.message.contains("not requested"), "{}", error.message);
    assert!(!fixture.target.join("f").exists());
    assert_untouched(&fixture);
}

#[test]
fn a_zstd_chunk_that_expands_past_its_declared_length_is_refused() {
    let fixture = fixture();
    let bomb = zstd_frame(&vec![b'z'; 1 << 20]);
    let script = vec![
        frame(&entry(1, b"f", EntryKind::File { size: 1 << 20, leader: false })),
        frame(&Message::Data(DataChunk { id: 1, offset: 0, raw_len: 100, compressed: true, bytes: bomb })),
    ];
    let error = attack(&fixture, script);
    assert_eq!(error.kind, RemoteErrorKind::Protocol, "{error:?}");
    assert!(!fixture.target.join("f").exists());
    assert_untouched(&fixture);
}

fn zstd_frame(data: &[u8]) -> Vec<u8> {
    // The engine's own compressor makes a real zstd frame.
    let packed = mover_engine::compress::Compressor::new(3).unwrap().pack(data).unwrap();
    assert!(packed.compressed);
    packed.bytes.into_owned()
}

#[test]
fn device_nodes_and_privileged_xattrs_are_refused_by_policy() {
    let fixture = fixture();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Without `--devices` a device node is skipped with a warning; the session goes on.
    let report = runtime.block_on(async {
        let stream = open_when_free(&fixture).await;
        let (reader, writer) = tokio::io::split(stream);
        let (mut writer, mut reader) = (FrameWriter::new(writer), FrameReader::new(reader));
        writer.send(&entry(1, b"mem", EntryKind::CharDevice { rdev: 0x0101 })).await.unwrap();
        writer.send(&entry(2, b"sda", EntryKind::BlockDevice { rdev: 0x0800 })).await.unwrap();
        writer.send(&Message::EndOfEntries).await.unwrap();
        match reader.read_message().await.unwrap() {
            Some(Message::Done(report)) => report,
            other => panic!("expected the end of the session, got {other:?}"),
        }
    });
    assert!(report.warnings.iter().filter(|w| w.contains("device node")).count() == 2, "{report:?}");
    // The engine states why, and leaves the remedy (a flag) to the front end.
    assert!(
        report
            .warnings
            .iter()
            .filter(|w| w.contains("device node"))
            .all(|w| w.contains("copying device nodes is off for this session") && !w.contains("--")),
        "{report:?}"
    );
    assert!(!fixture.target.join("sda").exists() && !fixture.target.join("mem").exists());
    // `security.capability` (file capabilities) never crosses.
    let mut file = entry(3, b"ping", EntryKind::File { size: 0, leader: false });
    if let Message::Entry(entry) = &mut file {
        entry.xattrs.push(mover_engine::wire::Xattr { name: b"security.capability".to_vec(), value: vec![1, 0, 0, 2] });
    }
    let error = attack(&fixture, vec![frame(&file)]);
    assert!(
        error.message.contains("security.capability") && error.message.contains("not allowed"),
        "{}",
        error.message
    );
    assert!(!fixture.target.join("ping").exists());
    assert_untouched(&fixture);
}

#[test]
fn the_same_name_twice_is_refused() {
    for (first, second) in [
        (EntryKind::Dir, EntryKind::File { size: 3, leader: false }),
        (EntryKind::File { size: 3, leader: false }, EntryKind::Dir),
        (EntryKind::Symlink { target: b"elsewhere".to_vec() }, EntryKind::Dir),
        (EntryKind::Dir, EntryKind::Dir),
    ] {
        let fixture = fixture();
        let script = vec![
            frame(&entry(1, b"twice", first.clone())),
            frame(&entry(2, b"twice", second.clone())),
            frame(&Message::EndOfEntries),
        ];
        let error = attack(&fixture, script);
        assert!(
            error.message.contains("sent twice") || error.message.contains("undelivered"),
            "{first:?} then {second:?}: {}",
            error.message
        );
        assert_untouched(&fixture);
        assert_no_temporaries(&fixture.target);
    }
}

/// The receiver finds what to delete by walking each directory's sorted listing alongside the
/// sender's sorted names, so a name that goes back must end the session, not turn names the
/// cursor passed into deletions.
#[test]
fn names_out_of_order_are_refused_and_nothing_is_deleted() {
    let fixture = fixture();
    for name in ["a", "b", "c"] {
        fs::write(fixture.target.join(name), name).unwrap();
    }
    let file = || EntryKind::Symlink { target: b"t".to_vec() };
    let script = vec![frame(&entry(1, b"c", file())), frame(&entry(2, b"a", file())), frame(&Message::EndOfEntries)];
    let error = attack(&fixture, script);
    assert!(error.message.contains("`a` was sent twice or out of order"), "{}", error.message);
    assert_eq!(fs::read(fixture.target.join("a")).unwrap(), b"a");
    assert_eq!(fs::read(fixture.target.join("b")).unwrap(), b"b");
    assert_untouched(&fixture);
}

#[test]
fn hostile_deltas_are_refused_and_the_old_file_stays() {
    let fixture = fixture();
    let old = mover_testdata::random_bytes(31, 64 << 10);
    fs::write(fixture.target.join("f"), &old).unwrap();
    // A real delta of the old content shifted by 3 bytes, against a signature of all of it.
    let mut new = b"abc".to_vec();
    new.extend_from_slice(&old[..old.len() - 3]);
    let mut real = Vec::new();
    fast_rsync::diff(&blocks::sign(&old, 4096).index(), &new, &mut real).unwrap();
    let mut short = Vec::new();
    fast_rsync::diff(&blocks::sign(&old, 4096).index(), &new[..1000], &mut short).unwrap();
    let delta = |id: u64, len: usize, window_len: u64, bytes: &[u8]| {
        frame(&Message::Delta(DeltaChunk {
            id,
            offset: 0,
            len: len as u32,
            window_start: 0,
            window_len: window_len as u32,
            delta_len: bytes.len() as u32,
            compressed: false,
            bytes: bytes.to_vec(),
        }))
    };
    let file =
        |id: u64, name: &[u8]| frame(&entry(id, name, EntryKind::File { size: new.len() as u64, leader: false }));
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        // A new file has no basis to copy from.
        ("cannot serve one", vec![file(1, b"g"), delta(1, new.len(), old.len() as u64, &real)]),
        ("window", vec![file(1, b"f"), delta(1, new.len(), blocks::MAX_WINDOW + 1, &real)]),
        ("bad delta", vec![file(1, b"f"), delta(1, new.len(), old.len() as u64, b"\x72\x73\x02\x36\xff\xff")]),
        // Copies past the window it declared (the basis is longer).
        ("bad delta", vec![file(1, b"f"), delta(1, new.len(), 4096, &real)]),
        // Makes more than it declares, or less.
        ("bad delta", vec![file(1, b"f"), delta(1, 1000, old.len() as u64, &real)]),
        ("makes 1000 bytes", vec![file(1, b"f"), delta(1, new.len(), old.len() as u64, &short)]),
        ("bad delta", vec![file(1, b"f"), delta(1, new.len(), old.len() as u64, &real[..real.len() - 1])]),
    ];
    for (expected, script) in cases {
        let error = attack(&fixture, script);
        assert_eq!(error.kind, RemoteErrorKind::Protocol, "{error:?}");
        assert!(error.message.contains(expected), "expected `{expected}` in: {}", error.message);
        assert_eq!(fs::read(fixture.target.join("f")).unwrap(), old, "the old file changed");
        assert!(!fixture.target.join("g").exists());
        assert_untouched(&fixture);
    }
}

/// The next message on `reader`, failing the test if none comes within 20 s.
async fn next_message<R: tokio::io::AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(20), reader.read_message())
        .await
        .expect("the agent neither answered nor hung up")
        .ok()
        .flatten()
}

/// Opens a two-stream receive: its first connection and its lane 1.
async fn open_two_lanes(fixture: &Fixture) -> (mover_engine::tunnel::ClientStream, mover_engine::tunnel::ClientStream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let options = SyncOptions { streams: 2, ..SyncOptions::default() };
    let token = vec![2u8; 32];
    let first = loop {
        let request = Request::Receive { volume: "vol".into(), options: options.clone(), lanes: token.clone() };
        match client::open(&fixture.identity, &fixture.agent.addr, request, None).await {
            Ok((first, _)) => break first,
            Err(client::CopyError::Session(client::SessionError::Refused { error, .. }))
                if error.kind == RemoteErrorKind::Busy && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot open a session: {error}"),
        }
    };
    let join = Request::JoinLane { token, lane: 1 };
    let (lane, _) = client::open(&fixture.identity, &fixture.agent.addr, join, None).await.unwrap();
    (first, lane)
}

/// The two ends a test drives of a two-stream receive: the first connection's reader and
/// writer, and lane 1's writer (which keeps the lane open).
struct TwoLanes {
    first_reader: FrameReader<ReadHalf<ClientStream>>,
    first_writer: FrameWriter<WriteHalf<ClientStream>>,
    lane_writer: FrameWriter<WriteHalf<ClientStream>>,
}

/// Opens a two-stream receive and offers file 1 at `path` (`size` bytes) on the first
/// connection; returns once the target asked for it.
async fn requested_over_two_lanes(fixture: &Fixture, path: &[u8], size: u64) -> TwoLanes {
    let (first, lane) = open_two_lanes(fixture).await;
    let (first_reader, first_writer) = tokio::io::split(first);
    let (mut first_reader, mut first_writer) = (FrameReader::new(first_reader), FrameWriter::new(first_writer));
    first_writer.write_frame(&frame(&entry(1, path, EntryKind::File { size, leader: false }))).await.unwrap();
    first_writer.flush().await.unwrap();
    match next_message(&mut first_reader).await {
        Some(Message::Need { id: 1 } | Message::NeedBlocks { id: 1, .. }) => {}
        other => panic!("expected a verdict for entry 1, got {other:?}"),
    }
    let (_, lane_writer) = tokio::io::split(lane);
    TwoLanes { first_reader, first_writer, lane_writer: FrameWriter::new(lane_writer) }
}

#[test]
fn a_content_lane_takes_only_requested_files_and_each_file_stays_on_one_lane() {
    let fixture = fixture();
    fs::write(fixture.target.join("a"), b"old content").unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Content on a lane for a file nobody asked for.
        let (_first, lane) = open_two_lanes(&fixture).await;
        let (reader, writer) = tokio::io::split(lane);
        let (mut reader, mut writer) = (FrameReader::new(reader), FrameWriter::new(writer));
        writer.write_frame(&frame(&Message::FileEnd { id: 9, blake3: [0; 32] })).await.unwrap();
        writer.flush().await.unwrap();
        match next_message(&mut reader).await {
            Some(Message::Error(error)) => assert!(error.message.contains("not requested"), "{}", error.message),
            other => panic!("expected an error on the lane, got {other:?}"),
        }
    });
    runtime.block_on(async {
        // A file started on lane 1, continued on the first connection.
        let TwoLanes { mut first_reader, mut first_writer, mut lane_writer } =
            requested_over_two_lanes(&fixture, b"a", 8).await;
        let chunk = |offset: u64, bytes: &[u8]| {
            frame(&Message::Data(DataChunk {
                id: 1,
                offset,
                raw_len: bytes.len() as u32,
                compressed: false,
                bytes: bytes.to_vec(),
            }))
        };
        lane_writer.write_frame(&chunk(0, b"abcd")).await.unwrap();
        lane_writer.flush().await.unwrap();
        // Lane 1 has the file once its partial exists.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fs::read_dir(&fixture.target)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains("part-"))
        {
            assert!(std::time::Instant::now() < deadline, "lane 1 never started the file");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first_writer.write_frame(&chunk(4, b"efgh")).await.unwrap();
        first_writer.flush().await.unwrap();
        loop {
            match next_message(&mut first_reader).await {
                Some(Message::Error(error)) => {
                    assert!(error.message.contains("not requested"), "{}", error.message);
                    break;
                }
                Some(Message::Need { .. } | Message::NeedBlocks { .. } | Message::Skip { .. }) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
    assert_eq!(fs::read(fixture.target.join("a")).unwrap(), b"old content");
    // The failed session discards what lane 1 received (it was no interruption).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs::read_dir(&fixture.target).unwrap().count() > 1 {
        assert!(std::time::Instant::now() < deadline, "the half-received file was left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_untouched(&fixture);
}

#[test]
fn a_file_that_fails_on_a_content_lane_fails_the_session_and_keeps_the_old_file() {
    let fixture = fixture();
    fs::write(fixture.target.join("b"), b"old content").unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let content = b"new!";
        let TwoLanes { mut first_reader, mut first_writer, mut lane_writer } =
            requested_over_two_lanes(&fixture, b"b", content.len() as u64).await;
        let data = DataChunk { id: 1, offset: 0, raw_len: 4, compressed: false, bytes: content.to_vec() };
        lane_writer.write_frame(&frame(&Message::Data(data))).await.unwrap();
        let wrong = Message::FileEnd { id: 1, blake3: *blake3::hash(b"something else").as_bytes() };
        lane_writer.write_frame(&frame(&wrong)).await.unwrap();
        lane_writer.flush().await.unwrap();
        // The tree ends at once: the session must still end with the lane's error, not `Done`.
        first_writer.write_frame(&frame(&Message::EndOfEntries)).await.unwrap();
        first_writer.flush().await.unwrap();
        match next_message(&mut first_reader).await {
            Some(Message::Error(error)) => {
                assert_eq!(error.kind, RemoteErrorKind::Verification, "{error:?}");
            }
            other => panic!("expected the lane's verification error, got {other:?}"),
        }
    });
    assert_eq!(fs::read(fixture.target.join("b")).unwrap(), b"old content");
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_sender_that_never_reads_cannot_make_the_agent_hold_its_replies() {
    let fixture = fixture();
    // 200 sparse 1 GiB files: each changed one is answered with a 1.5 MiB block signature,
    // 300 MiB in all, that this sender never reads.
    let files = 200u64;
    for i in 0..files {
        fs::File::create(fixture.target.join(format!("f{i:03}"))).unwrap().set_len(1 << 30).unwrap();
    }
    let before = rss_kib(fixture.agent.child.id());
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let stream = open_when_free(&fixture).await;
        let (_reader, writer) = tokio::io::split(stream);
        let mut writer = FrameWriter::new(writer);
        for i in 0..files {
            let name = format!("f{i:03}");
            // Another mtime than the target's: a changed file.
            let message = entry(i + 1, name.as_bytes(), EntryKind::File { size: 1 << 30, leader: false });
            writer.write_frame(&frame(&message)).await.unwrap();
        }
        writer.flush().await.unwrap();
        // Let the agent sign every file it can, then look at what it holds.
        let mut peak = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(rss_kib(fixture.agent.child.id()));
        }
        let grown = peak.saturating_sub(before);
        assert!(grown < 100 << 10, "the agent grew by {} MiB holding unread replies", grown >> 10);
    });
}
