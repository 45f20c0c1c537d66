//! A hand-made hostile receiver (a rogue target agent holding the migration's agent certificate)
//! answers a real `mover copy`: every attack ends the copy with a clear error, the source is never
//! modified, and a flood of frames sent while the receiver stops reading costs the sender a
//! bounded amount of memory.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{certs, text};
use mover_engine::certs::{Identity, Role};
use mover_engine::tunnel;
use mover_engine::wire::{FrameReader, FrameWriter, HelloReply, MAX_FRAME, Message, Welcome, encode_message};
use tokio::io::AsyncWriteExt;

/// What the rogue receiver does once the handshake is done.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Asks for a file that was never offered.
    UnknownVerdict,
    /// Asks for blocks of zero bytes.
    ZeroBlockSize,
    /// Asks for blocks of 4 GiB.
    HugeBlockSize,
    /// A frame that is not a message.
    Garbage,
    /// Asks for the big file, stops reading and floods 4 MiB frames.
    FloodWhileNotReading,
}

/// Starts the rogue receiver on an ephemeral port; it serves one connection with `attack`.
fn rogue(certs: &Path, attack: Attack) -> String {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let identity = Identity::load(certs, Role::Agent).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tunnel::server_config(&identity).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, peer) = listener.accept().await.unwrap();
            let (stream, _) = tunnel::accept(tcp, &acceptor, &peer.to_string()).await.unwrap();
            let (reader, writer) = tokio::io::split(stream);
            let mut reader = FrameReader::new(reader);
            let mut writer = FrameWriter::new(writer);
            reader.read_hello().await.unwrap();
            writer.send_reply(&HelloReply::Welcome(Welcome::default())).await.unwrap();
            writer.flush().await.unwrap();
            // Wait for the big file's entry.
            let id = loop {
                match reader.read_message().await {
                    Ok(Some(Message::Entry(entry))) if entry.path == b"big" => break entry.id,
                    Ok(Some(_)) => {}
                    _ => return,
                }
            };
            let reply = match attack {
                Attack::UnknownVerdict => encode_message(&Message::Need { id: id + 1_000_000 }),
                Attack::ZeroBlockSize => {
                    encode_message(&Message::NeedBlocks { id, signature: signature_header(0), shifts: true })
                }
                Attack::HugeBlockSize => {
                    encode_message(&Message::NeedBlocks { id, signature: signature_header(1 << 31), shifts: true })
                }
                Attack::Garbage => {
                    let mut frame = vec![0, 0, 0, 8];
                    frame.extend_from_slice(&[0xff; 8]);
                    frame
                }
                Attack::FloodWhileNotReading => {
                    // Ask for every file: one is being sent, one waits in the job queue, and the
                    // sender's tree thread blocks handing over the third, so it stops reading
                    // replies and the flood can only pile up in front of it.
                    let mut reply = encode_message(&Message::Need { id });
                    while let Ok(Some(message)) = reader.read_message().await {
                        if let Message::Entry(entry) = message {
                            reply.extend_from_slice(&encode_message(&Message::Need { id: entry.id }));
                            if entry.path == b"small" {
                                break;
                            }
                        }
                    }
                    reply
                }
            };
            let raw = writer.get_mut();
            raw.write_all(&reply).await.unwrap();
            raw.flush().await.unwrap();
            if let Attack::FloodWhileNotReading = attack {
                // Never read again: the sender's data backs up. Meanwhile send 1 GiB of frames.
                let mut frame = encode_message(&Message::Skip { id: u64::MAX });
                let body_len = MAX_FRAME - 16;
                frame.truncate(4);
                frame[..4].copy_from_slice(&u32::try_from(body_len).unwrap().to_be_bytes());
                frame.resize(4 + body_len, 0x07);
                for _ in 0..256 {
                    if raw.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            } else {
                // Read until the sender hangs up.
                while let Ok(Some(_)) = reader.read_frame().await {}
            }
        });
    });
    addr
}

fn source(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    mover_testdata::write_random(&src.join("big"), 256 << 20, 3).unwrap();
    mover_testdata::write_random(&src.join("big2"), 32 << 20, 4).unwrap();
    fs::write(src.join("small"), b"small file").unwrap();
    src
}

fn spawn_copy(src: &Path, addr: &str, certs: &Path) -> Child {
    Command::new(common::bin("mover"))
        .args(["copy", src.to_str().unwrap(), &format!("agent://{addr}/vol"), "--certs", certs.to_str().unwrap()])
        // The rogue serves one connection: no further lanes.
        .args(["--compress", "off", "--streams", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib / 1024)
}

#[test]
fn rogue_verdicts_end_the_copy_with_a_protocol_error_and_leave_the_source_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let src = source(tmp.path());
    let before = blake3::hash(&fs::read(src.join("big")).unwrap());
    for (attack, expected) in [
        (Attack::UnknownVerdict, "not waiting for one"),
        (Attack::ZeroBlockSize, "block size 0"),
        (Attack::HugeBlockSize, "block size 2147483648"),
        (Attack::Garbage, "malformed"),
    ] {
        let addr = rogue(&certs, attack);
        let child = spawn_copy(&src, &addr, &certs);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{attack:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(stderr.contains(expected), "{attack:?}: {}", text(&output));
    }
    assert_eq!(blake3::hash(&fs::read(src.join("big")).unwrap()), before, "the source was modified");
    assert_eq!(fs::read(src.join("small")).unwrap(), b"small file");
}

#[test]
fn a_receiver_that_floods_while_not_reading_costs_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let src = source(tmp.path());
    let addr = rogue(&certs, Attack::FloodWhileNotReading);
    let mut child = spawn_copy(&src, &addr, &certs);
    // Let the flood arrive (it is 1 GiB; without a byte budget the sender would queue up to
    // 2,064 of these 4 MiB frames).
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut peak = 0;
    while Instant::now() < deadline {
        if let Some(rss) = peak_rss_mib(child.id()) {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(peak > 0, "could not read the sender's memory: {}", text(&output));
    assert!(peak < 200, "the sender buffered the flood: peak RSS {peak} MiB");
}

/// An rsync (MD4) signature header for `block_size`, with 4 zeroed entries.
fn signature_header(block_size: u32) -> Vec<u8> {
    let mut signature = 0x7273_0136u32.to_be_bytes().to_vec();
    signature.extend_from_slice(&block_size.to_be_bytes());
    signature.extend_from_slice(&8u32.to_be_bytes());
    signature.extend_from_slice(&[0; 4 * 12]);
    signature
}
