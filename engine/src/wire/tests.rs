use proptest::prelude::*;

use super::*;

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 1..40), proptest::collection::vec(any::<u8>(), 0..100)),
            0..4,
        ),
        prop_oneof![
            Just(EntryKind::Dir),
            (any::<u64>(), any::<bool>()).prop_map(|(size, leader)| EntryKind::File { size, leader }),
            any::<u64>().prop_map(|leader| EntryKind::Hardlink { leader }),
            proptest::collection::vec(any::<u8>(), 1..100).prop_map(|target| EntryKind::Symlink { target }),
            Just(EntryKind::Fifo),
            any::<u64>().prop_map(|rdev| EntryKind::CharDevice { rdev }),
        ],
    )
        .prop_map(|(id, path, uid, gid, sec, nsec, xattrs, kind)| Entry {
            id,
            path,
            kind,
            mode: uid & 0o7777,
            uid,
            gid,
            mtime: Timestamp { sec, nsec },
            atime: Timestamp { sec: -sec / 2, nsec },
            xattrs: xattrs.into_iter().map(|(name, value)| Xattr { name, value }).collect(),
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_entry().prop_map(Message::Entry),
        Just(Message::EndOfEntries),
        any::<u64>().prop_map(|id| Message::Need { id }),
        any::<u64>().prop_map(|id| Message::Skip { id }),
        (any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..2000), any::<bool>()).prop_map(
            |(id, offset, bytes, compressed)| Message::Data(DataChunk {
                id,
                offset,
                raw_len: bytes.len() as u32,
                compressed,
                bytes
            })
        ),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(id, blake3)| Message::FileEnd { id, blake3 }),
        any::<u64>().prop_map(|id| Message::FileFailed { id, reason: FileFailure::Changed }),
        ".{0,40}".prop_map(|m| Message::Error(RemoteError::new(RemoteErrorKind::Protocol, m))),
    ]
}

proptest! {
    #[test]
    fn message_round_trip(message in arb_message()) {
        let frame = encode_message(&message);
        let length = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(length, frame.len() - 4);
        prop_assert_eq!(decode_message(&frame[4..]).unwrap(), message);
    }

    #[test]
    fn messages_appended_to_a_batch_are_the_frames_encoded_one_by_one(
        messages in proptest::collection::vec(arb_message(), 1..8),
        head in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut batch = head.clone();
        for message in &messages {
            append_message(&mut batch, message);
        }
        let expected: Vec<u8> = head.iter().copied().chain(messages.iter().flat_map(encode_message)).collect();
        prop_assert_eq!(&batch, &expected);
        let mut rest = &batch[head.len()..];
        for message in &messages {
            let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(&decode_message(&rest[4..4 + length]).unwrap(), message);
            rest = &rest[4 + length..];
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&bytes);
        let _ = frame::decode_hello(&bytes);
        let _ = frame::decode_reply(&bytes);
    }

    #[test]
    fn hello_round_trip(id in ".{0,20}", volume in ".{0,20}") {
        let hello = Hello { migration_id: id, request: Request::Receive { volume, options: SyncOptions::default(), lanes: vec![3; 32] } };
        let frame = encode_hello(PROTOCOL_VERSION, &hello);
        prop_assert_eq!(frame::decode_hello(&frame[4..]).unwrap(), hello);
    }
}

#[test]
fn version_mismatch_names_both_versions() {
    let hello = Hello { migration_id: "m".into(), request: Request::Ping };
    let frame = encode_hello(PROTOCOL_VERSION + 6, &hello);
    let error = frame::decode_hello(&frame[4..]).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}"))
            && text.contains(&format!("version {}", PROTOCOL_VERSION + 6)),
        "{text}"
    );
}

#[tokio::test]
async fn oversize_frame_is_refused_before_allocation() {
    let mut bytes = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    let mut reader = FrameReader::new(bytes.as_slice());
    let error = reader.read_frame().await.unwrap_err();
    assert!(matches!(error, WireError::FrameTooLarge { .. }), "{error}");
}

#[tokio::test]
async fn truncated_frame_is_an_error_not_a_clean_end() {
    let mut frame = encode_message(&Message::EndOfEntries);
    frame.extend_from_slice(&100u32.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3]);
    let mut reader = FrameReader::new(frame.as_slice());
    assert_eq!(reader.read_message().await.unwrap(), Some(Message::EndOfEntries));
    assert!(matches!(reader.read_message().await, Err(WireError::Closed { .. })));
    // A stream cut inside a frame header is a cut too, not a clean end.
    for cut in 1..4 {
        let mut frame = encode_message(&Message::EndOfEntries);
        frame.extend_from_slice(&[0; 3][..cut]);
        let mut reader = FrameReader::new(frame.as_slice());
        assert_eq!(reader.read_message().await.unwrap(), Some(Message::EndOfEntries));
        assert!(matches!(reader.read_message().await, Err(WireError::Closed { .. })), "cut after {cut} header bytes");
    }
}

proptest! {
    #[test]
    fn borrowed_data_encoding_matches_the_derived_one(
        id in any::<u64>(), offset in any::<u64>(), compressed in any::<bool>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let raw_len = bytes.len() as u32;
        let owned = encode_message(&Message::Data(DataChunk { id, offset, raw_len, compressed, bytes: bytes.clone() }));
        prop_assert_eq!(encode_data(id, offset, raw_len, compressed, &bytes), owned.clone());
        match decode_incoming(&owned[4..]).unwrap() {
            Incoming::Data(chunk) => {
                prop_assert_eq!((chunk.id, chunk.offset, chunk.raw_len, chunk.compressed), (id, offset, raw_len, compressed));
                prop_assert_eq!(chunk.bytes, &bytes[..]);
            }
            Incoming::Message(other) => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn incoming_decoding_agrees_with_message_decoding(message in arb_message()) {
        let frame = encode_message(&message);
        match decode_incoming(&frame[4..]).unwrap() {
            Incoming::Data(chunk) => {
                let Message::Data(owned) = message else { panic!("not data") };
                prop_assert_eq!(chunk.bytes, &owned.bytes[..]);
            }
            Incoming::Message(decoded) => prop_assert_eq!(decoded, message),
        }
    }

    #[test]
    fn decoding_garbage_as_incoming_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_incoming(&bytes);
    }
}
