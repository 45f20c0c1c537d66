//! The checks behind mover's fuzz targets, in one place, inside the engine so that they reach
//! the decoders without making them public (built under `cfg(fuzzing)`, which cargo-fuzz sets,
//! and in the engine's own tests).
//!
//! Each `fuzz/fuzz_targets/<name>.rs` hands its input to one function here, and the tests in
//! [`corpus`](self) replay every checked-in seed (`fuzz/corpus/<name>/`) and crash seed
//! (`fuzz/artifacts/<name>/`) through the same function in a plain `cargo test`, on stable,
//! without cargo-fuzz.
//!
//! A check returns when the decoder accepted or refused the input as it should, and panics when
//! the decoder panicked or broke one of the invariants written out below.

#[cfg(test)]
mod corpus;

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use crate::compress::{Compressor, Decompressor};
use crate::confine::{self, MAX_NAME, MAX_PATH, RelPath};
use crate::image::manifest::{self, Content, Descriptor, Parsed};
use crate::image::{Digest, ImageRef, Platform, Version};
use crate::sync::blocks;
use crate::wire::{
    CHUNK_SIZE, FrameReader, FrameWriter, HelloReply, Incoming, MAGIC, MAX_FRAME, Message, PROTOCOL_VERSION, WireError,
    decode_hello, decode_incoming, decode_message, decode_reply, encode_data, encode_hello, encode_message,
};

/// A fuzz target's check.
pub type Check = fn(&[u8]);

/// Every fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the folders
/// `fuzz/corpus/<name>/` and `fuzz/artifacts/<name>/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("wire_decode", wire_decode),
    ("frame_reader", frame_reader),
    ("message_roundtrip", message_roundtrip),
    ("decompress", decompress),
    ("manifest", manifest),
    ("image_ref", image_ref),
    ("rel_path", rel_path),
];

/// Longest error message, in characters, that a reference or digest parser may produce: it
/// echoes at most 200 characters of its input and 300 of its reason (the input may be a hostile
/// registry's).
pub const MAX_PARSE_ERROR: usize = 600;

/// Frame bodies: [`decode_message`], [`decode_incoming`], [`decode_hello`] and [`decode_reply`]
/// on the same bytes, which must agree with each other and survive re-encoding.
pub fn wire_decode(body: &[u8]) {
    let message = decode_message(body);
    match (decode_incoming(body), &message) {
        (Ok(Incoming::Data(chunk)), Ok(Message::Data(full))) => {
            assert_eq!(
                (chunk.id, chunk.offset, chunk.raw_len, chunk.compressed, chunk.bytes),
                (full.id, full.offset, full.raw_len, full.compressed, &full.bytes[..]),
                "decode_incoming and decode_message read different data chunks"
            );
            let frame = encode_data(chunk.id, chunk.offset, chunk.raw_len, chunk.compressed, chunk.bytes);
            assert_eq!(frame, encode_message(&Message::Data(full.clone())), "encode_data differs from encode_message");
        }
        (Ok(Incoming::Data(_)), other) => panic!("decode_incoming read a data chunk, decode_message {other:?}"),
        (Ok(Incoming::Message(incoming)), Ok(message)) => {
            assert_eq!(encode_message(&incoming), encode_message(message), "decoders disagree");
        }
        (Ok(Incoming::Message(incoming)), Err(error)) => {
            panic!("decode_incoming read {incoming:?}, decode_message failed: {error}")
        }
        (Err(error), Ok(message)) => {
            panic!("decode_incoming failed ({error}), decode_message read {message:?}")
        }
        (Err(error), Err(_)) => {
            let _ = error.to_string();
        }
    }
    if let Ok(message) = &message {
        assert_stable(message);
    }

    let preamble_ok = body.len() >= 8 && &body[..4] == MAGIC && body[4..8] == PROTOCOL_VERSION.to_be_bytes();
    match decode_hello(body) {
        Ok(hello) => {
            assert!(preamble_ok, "a hello without mover's preamble was accepted");
            let frame = encode_hello(PROTOCOL_VERSION, &hello);
            assert_eq!(decode_hello(&frame[4..]).expect("a re-encoded hello decodes"), hello);
        }
        Err(error) => check_handshake_error(&error, body, preamble_ok),
    }
    match decode_reply(body) {
        Ok(reply) => {
            assert!(preamble_ok, "a reply without mover's preamble was accepted");
            let expected_status = u8::from(matches!(reply, HelloReply::Refused(_)));
            assert_eq!(body[8], expected_status, "reply status byte and variant differ");
            let mut frame = Vec::new();
            poll_to_end(FrameWriter::new(&mut frame).send_reply(&reply)).expect("writing to a Vec");
            assert_eq!(decode_reply(&frame[4..]).expect("a re-encoded reply decodes"), reply);
        }
        Err(error) => check_handshake_error(&error, body, preamble_ok),
    }
}

fn check_handshake_error(error: &WireError, body: &[u8], preamble_ok: bool) {
    match error {
        WireError::VersionMismatch { ours, theirs } => {
            assert_eq!(*ours, PROTOCOL_VERSION);
            assert_ne!(*theirs, PROTOCOL_VERSION);
            assert!(body.starts_with(MAGIC));
        }
        WireError::NotMover | WireError::Malformed { .. } => {}
        other => panic!("a handshake body failed to decode with {other:?}"),
    }
    if matches!(error, WireError::Malformed { .. }) {
        assert!(preamble_ok, "malformed, yet the preamble was wrong");
    }
    let _ = error.to_string();
}

/// The frame stream: [`FrameReader`] over the whole input at once and over a reader that hands out
/// a few bytes at a time and stalls every other poll. Both must read the same frames, never a body
/// over [`MAX_FRAME`], and stop exactly where the input says they must.
pub fn frame_reader(stream: &[u8]) {
    let whole = read_frames(FrameReader::new(stream), stream);
    for step in [1, 7] {
        let trickled = read_frames(FrameReader::new(Trickle { data: stream, step, stall: false }), stream);
        assert_eq!(whole, trickled, "a stream read {step} bytes at a time gave other frames");
    }
}

/// What reading a stream to its end gave: the bodies, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Frames {
    bodies: Vec<Vec<u8>>,
    end: String,
}

fn read_frames<R: tokio::io::AsyncRead + Unpin>(mut reader: FrameReader<R>, stream: &[u8]) -> Frames {
    let mut bodies = Vec::new();
    let mut at = 0;
    let end = loop {
        let rest = &stream[at..];
        let declared = rest.get(..4).map(|header| u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize);
        match poll_to_end(reader.read_frame()) {
            Ok(Some(body)) => {
                assert!(body.len() <= MAX_FRAME, "a frame of {} bytes was accepted", body.len());
                assert_eq!(Some(body.len()), declared, "the body length is not the declared one");
                assert_eq!(body, rest[4..4 + body.len()], "the body is not the bytes after its header");
                // Whatever a body holds, decoding it must not panic.
                let _ = decode_incoming(&body);
                at += 4 + body.len();
                bodies.push(body);
            }
            Ok(None) => {
                // A clean end: nothing left (a cut inside a header is an error).
                assert!(rest.is_empty(), "a stream with {} bytes left ended cleanly", rest.len());
                break "end".to_owned();
            }
            Err(WireError::FrameTooLarge { length, limit }) => {
                assert_eq!(limit, MAX_FRAME);
                assert_eq!(Some(length), declared);
                assert!(length > MAX_FRAME, "a frame of {length} bytes was refused as too large");
                break format!("too large: {length}");
            }
            Err(WireError::Closed { .. }) => {
                let Some(declared) = declared else {
                    assert!(
                        !rest.is_empty() && rest.len() < 4,
                        "closed in a header, yet {} bytes were left",
                        rest.len()
                    );
                    break format!("closed in a header after {} bytes", rest.len());
                };
                assert!(declared <= MAX_FRAME && rest.len() - 4 < declared, "closed, yet the frame was complete");
                break format!("closed in a frame of {declared}");
            }
            Err(other) => panic!("reading an in-memory stream failed: {other}"),
        }
    };
    Frames { bodies, end }
}

/// A reader that hands out at most `step` bytes per read and is not ready every other poll.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    stall: bool,
}

impl tokio::io::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.stall = !this.stall;
        if this.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = this.step.min(buf.remaining()).min(this.data.len());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Drives a future over in-memory I/O to its end (it never waits on anything).
fn poll_to_end<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100_000_000u64 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("in-memory I/O never finished");
}

/// Messages (entries, block-hash requests, data, reports...): whatever decodes re-encodes to a
/// frame no longer than the input, which decodes to the same message and re-encodes to the same
/// bytes. Then what the receiver and sender do next with the fields that carry further structure
/// (paths, block hash lists, data chunks) must not panic either.
pub fn message_roundtrip(body: &[u8]) {
    let Ok(message) = decode_message(body) else { return };
    assert_stable(&message);
    let frame = encode_message(&message);
    assert!(frame.len() - 4 <= body.len(), "re-encoding grew {} bytes into {}", body.len(), frame.len() - 4);
    let _ = message.name();
    match &message {
        Message::Entry(entry) => check_path(&entry.path),
        Message::Keep { path } => check_path(path),
        Message::NeedBlocks { signature, .. } => match blocks::BasisSignature::parse(signature.clone()) {
            Ok(parsed) => {
                let block_size = parsed.block_size();
                assert!(block_size.is_power_of_two() && block_size >= blocks::MIN_BLOCK);
                assert!(block_size as usize <= CHUNK_SIZE);
                assert_eq!(parsed.blocks() as usize * blocks::ENTRY_LEN + blocks::HEADER_LEN, signature.len());
                // What the sender does with it: windows, indexes, a delta of a little data.
                let window = parsed.window(1, 3);
                let mut delta = Vec::new();
                fast_rsync::diff(&window.index(), &signature[..signature.len().min(3 * 4096)], &mut delta)
                    .expect("a delta against a checked signature");
            }
            Err(reason) => assert!(!reason.is_empty()),
        },
        // The receiver applies a delta against its basis window: bounded output, no panic.
        Message::Delta(chunk) if chunk.len as usize <= CHUNK_SIZE && chunk.delta_len as usize <= 2 * CHUNK_SIZE => {
            let mut delta = Vec::new();
            if Decompressor::new()
                .unwrap()
                .unpack(chunk.compressed, &chunk.bytes, chunk.delta_len as usize, &mut delta)
                .is_ok()
            {
                let base = vec![7u8; 64 * 1024];
                let mut out = Vec::new();
                if fast_rsync::apply_limited(&base, &delta, &mut out, chunk.len as usize).is_ok() {
                    assert!(out.len() <= chunk.len as usize);
                }
            }
        }
        // The receiver's own bounds come first (sync/receiver.rs), then the decompressor.
        Message::Data(chunk) if chunk.raw_len as usize <= CHUNK_SIZE && chunk.bytes.len() <= CHUNK_SIZE + 1024 => {
            check_unpack(chunk.compressed, &chunk.bytes, chunk.raw_len as usize);
        }
        _ => {}
    }
}

/// A decoded message re-encodes to a frame with the right length prefix, which decodes (also
/// through [`decode_incoming`]) to the same message and re-encodes to the same bytes.
fn assert_stable(message: &Message) {
    let frame = encode_message(message);
    assert_eq!(frame[..4], u32::try_from(frame.len() - 4).expect("small").to_be_bytes(), "bad length prefix");
    let again = decode_message(&frame[4..]).expect("an encoded message decodes");
    // `Summary` carries an f64: NaN is not equal to itself, so compare the encodings too.
    assert!(again == *message || format!("{message:?}").contains("NaN"), "{message:?} came back as {again:?}");
    assert_eq!(encode_message(&again), frame, "re-encoding is not stable");
    match decode_incoming(&frame[4..]).expect("an encoded message decodes as incoming") {
        Incoming::Data(chunk) => {
            let Message::Data(data) = message else { panic!("{message:?} came back as a data chunk") };
            assert_eq!((chunk.id, chunk.offset, chunk.bytes), (data.id, data.offset, &data.bytes[..]));
        }
        Incoming::Message(incoming) => {
            assert!(!matches!(message, Message::Data(_)), "a data chunk was not decoded as one");
            assert_eq!(encode_message(&incoming), frame);
        }
    }
}

/// A peer's path, as the receiver validates it before any file system call.
fn check_path(path: &[u8]) {
    if let Ok(rel) = RelPath::new(path) {
        let (_, name) = rel.split();
        let _ = confine::cname(name);
    }
}

/// Compressed chunks: `flags:u8 raw_len:u24le bytes`. Bit 0 of `flags` says whether `bytes` is a
/// zstd frame; `raw_len` is taken modulo `CHUNK_SIZE + 1` (the receiver refuses larger ones before
/// decompressing). Unpacking must give exactly `raw_len` bytes or an error, allocate no more than
/// `raw_len` for the output, and do the same again on a reused decompressor. Raw `bytes` packed by
/// the [`Compressor`] must unpack to themselves.
pub fn decompress(input: &[u8]) {
    let Some((header, bytes)) = input.split_at_checked(4) else { return };
    let compressed = header[0] & 1 == 1;
    let raw_len = (u32::from_le_bytes([header[1], header[2], header[3], 0]) as usize) % (CHUNK_SIZE + 1);
    check_unpack(compressed, bytes, raw_len);

    if bytes.len() <= CHUNK_SIZE {
        let level = i32::from(header[0] >> 1) % 4;
        let mut compressor = Compressor::new(level).expect("a compressor");
        let packed = compressor.pack(bytes).expect("packing");
        let mut out = Vec::new();
        Decompressor::new()
            .expect("a decompressor")
            .unpack(packed.compressed, &packed.bytes, bytes.len(), &mut out)
            .expect("a packed chunk unpacks");
        assert!(out == bytes, "a packed chunk unpacked to other bytes");
    }
}

fn check_unpack(compressed: bool, bytes: &[u8], raw_len: usize) {
    let mut decompressor = Decompressor::new().expect("a decompressor");
    let mut out = Vec::new();
    let first = decompressor.unpack(compressed, bytes, raw_len, &mut out);
    // A fresh Vec reserves exactly what is asked (or a minimum of 8 bytes): only `raw_len`.
    assert!(out.capacity() <= raw_len.max(8), "{} bytes allocated for a {raw_len}-byte chunk", out.capacity());
    let first = match first {
        Ok(()) => {
            assert_eq!(out.len(), raw_len, "unpacked to another length than declared");
            if !compressed {
                assert!(out == bytes);
            }
            Ok(out.clone())
        }
        Err(error) => Err(error.to_string()),
    };
    let capacity = out.capacity();
    let second = decompressor.unpack(compressed, bytes, raw_len, &mut out).map(|()| out.clone());
    assert_eq!(first, second.map_err(|e| e.to_string()), "a reused decompressor gave another result");
    assert!(out.capacity() <= capacity.max(raw_len.max(8)), "the reused buffer grew past raw_len");
}

/// The media types a manifest is parsed under: none, each accepted one, generic JSON, and one
/// with parameters.
const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some(manifest::OCI_MANIFEST),
    Some(manifest::OCI_INDEX),
    Some(manifest::DOCKER_MANIFEST),
    Some(manifest::DOCKER_LIST),
    Some("application/json"),
    Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
];

/// Manifests and indexes ([`manifest::parse`]) under every content type: an accepted document is
/// of an accepted media type, within the child and layer caps, with digests safe in file names and
/// URLs, and parses to the same thing under the media type it will be pushed with.
pub fn manifest(bytes: &[u8]) {
    for content_type in CONTENT_TYPES {
        let parsed = match manifest::parse(bytes, content_type) {
            Ok(parsed) => parsed,
            Err(error) => {
                let _ = error.to_string();
                continue;
            }
        };
        assert!(bytes.len() <= manifest::MAX_MANIFEST_BYTES);
        assert!(manifest::is_manifest_type(&parsed.media_type), "accepted media type {}", parsed.media_type);
        let is_index = [manifest::OCI_INDEX, manifest::DOCKER_LIST].contains(&parsed.media_type.as_str());
        match &parsed.content {
            Content::Image { config, layers } => {
                assert!(!is_index, "an image under an index media type");
                assert!(layers.len() <= manifest::MAX_LAYERS);
                check_descriptor(config);
                layers.iter().for_each(check_descriptor);
            }
            Content::Index { manifests } => {
                assert!(is_index, "an index under an image media type");
                assert!(manifests.len() <= manifest::MAX_CHILDREN);
                manifests.iter().for_each(check_descriptor);
            }
        }
        let again: Parsed = manifest::parse(bytes, Some(&parsed.media_type)).expect("parses under its own media type");
        assert_eq!(again, parsed, "parsing under its own media type gave another result");
    }
}

fn check_descriptor(descriptor: &Descriptor) {
    check_digest(&descriptor.digest);
    let _ = descriptor.is_foreign();
    if let Some(platform) = &descriptor.platform {
        let _ = platform.to_string();
    }
}

/// A parsed digest is `ALGORITHM:HEX` with lowercase hex of the algorithm's length, and prints as
/// what it parsed from.
fn check_digest(digest: &Digest) {
    let hex_len = match digest.algorithm().name() {
        "sha256" => 64,
        "sha512" => 128,
        other => panic!("unknown algorithm {other}"),
    };
    assert_eq!(digest.hex().len(), hex_len);
    assert!(digest.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{digest}");
    assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(digest));
    let _ = digest.short();
}

/// Digests, image references and platforms (`"…".parse::<Digest>()`, `.parse::<ImageRef>()`,
/// [`Platform::parse`]) on the input as text: digests are accepted exactly when they follow the
/// spec, references print to text that parses back to them, and refusals echo a bounded amount of
/// the input.
pub fn image_ref(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();

    match text.parse::<Digest>() {
        Ok(digest) => {
            assert!(digest_by_spec(text), "accepted digest {text:?}");
            assert_eq!(digest.to_string(), text);
            check_digest(&digest);
        }
        Err(error) => {
            assert!(!digest_by_spec(text), "refused digest {text:?}: {error}");
            check_parse_error(&error.to_string());
        }
    }

    match text.parse::<ImageRef>() {
        Ok(reference) => {
            let shown = reference.to_string();
            assert_eq!(shown.parse::<ImageRef>().as_ref(), Ok(&reference), "{text:?} printed as {shown:?}");
            let _ = reference.tag();
            if let ImageRef::Registry { repository, version } = &reference {
                assert!(crate::image::reference::valid_repository(&repository.name), "{repository}");
                match version {
                    Some(Version::Tag(tag)) => assert!(crate::image::reference::valid_tag(tag)),
                    Some(Version::Digest(digest)) => check_digest(digest),
                    None => {}
                }
            }
            let _ = reference.with_version(None);
        }
        Err(error) => check_parse_error(&error.to_string()),
    }

    if let Ok(platform) = Platform::parse(text) {
        assert_eq!(platform.to_string(), text);
        assert!(platform.matches(&platform));
    }
}

fn digest_by_spec(text: &str) -> bool {
    let lower_hex = |hex: &str| hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match text.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && lower_hex(hex),
        Some(("sha512", hex)) => hex.len() == 128 && lower_hex(hex),
        _ => false,
    }
}

fn check_parse_error(message: &str) {
    let length = message.chars().count();
    assert!(
        length <= MAX_PARSE_ERROR,
        "a parse error echoes {length} characters: {}...",
        message.chars().take(300).collect::<String>()
    );
}

/// Confined relative paths ([`RelPath::new`]): accepted exactly when the rules of
/// `engine/src/confine.rs` hold, and split into a parent that is itself valid (or empty) and a
/// name.
pub fn rel_path(bytes: &[u8]) {
    let by_spec = rel_path_by_spec(bytes);
    match RelPath::new(bytes) {
        Ok(path) => {
            assert!(by_spec, "accepted path {bytes:?}");
            assert_eq!(path.as_bytes(), bytes);
            let (parent, name) = path.split();
            assert!(!name.is_empty() && !name.contains(&b'/'));
            if parent.is_empty() {
                assert_eq!(name, bytes);
            } else {
                assert!(RelPath::new(parent).is_ok(), "the parent of a valid path is invalid");
                assert_eq!([parent, b"/", name].concat(), bytes);
            }
            let _ = confine::cname(name);
            let _ = path.display();
        }
        Err(error) => {
            assert!(!by_spec, "refused path {bytes:?}: {error}");
            let _ = error.to_string();
        }
    }
}

fn rel_path_by_spec(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_PATH
        && !bytes.contains(&0)
        && bytes.split(|&b| b == b'/').all(|name| {
            !name.is_empty()
                && name != b"."
                && name != b".."
                && name.len() <= MAX_NAME
                && !crate::reserved::is_generated(name)
        })
}
