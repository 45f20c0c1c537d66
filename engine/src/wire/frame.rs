//! Length-prefixed frames over any async byte stream, and the handshake preamble.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::message::{Hello, HelloReply, Message, RemoteError, Welcome};
use super::{MAGIC, PROTOCOL_VERSION, Result, WireError};

/// Largest frame body accepted: one data chunk plus generous room for its header, or an entry
/// with its extended attributes.
pub const MAX_FRAME: usize = 4 << 20;

/// Encodes one message as a complete frame (length prefix included).
#[must_use]
pub fn encode_message(message: &Message) -> Vec<u8> {
    // Room for an entry with a long path: growing from nothing took several reallocations.
    let mut frame = Vec::with_capacity(256);
    append_message(&mut frame, message);
    frame
}

/// Appends one message to `buffer` as a complete frame (length prefix included): a batch of
/// small messages is encoded in place, without a buffer per message.
pub fn append_message(buffer: &mut Vec<u8>, message: &Message) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    // Writing into a Vec cannot fail; postcard only fails on a full fixed buffer.
    let mut frame = postcard::to_extend(message, std::mem::take(buffer)).expect("encoding into a Vec cannot fail");
    let length = u32::try_from(frame.len() - start - 4).expect("messages are far below 4 GiB");
    frame[start..start + 4].copy_from_slice(&length.to_be_bytes());
    *buffer = frame;
}

/// The borrowed twin of [`DataChunk`](super::DataChunk): same fields, same order, so it
/// encodes to the same bytes without copying the payload first, and decodes without copying it
/// out of the frame.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DataChunkRef<'a> {
    /// The file's entry id.
    pub id: u64,
    /// Offset of this chunk in the file.
    pub offset: u64,
    /// Length once decompressed.
    pub raw_len: u32,
    /// Whether `bytes` is one zstd frame.
    pub compressed: bool,
    /// The payload, borrowed from the frame.
    #[serde(with = "serde_bytes", borrow)]
    pub bytes: &'a [u8],
}

/// A decoded frame body: data chunks stay borrowed from the body.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A data chunk.
    Data(DataChunkRef<'a>),
    /// Any other message.
    Message(Message),
}

/// Decodes a frame body, leaving a data chunk's payload in place.
pub fn decode_incoming(body: &[u8]) -> Result<Incoming<'_>> {
    if body.first().is_some_and(|&b| u32::from(b) == DATA_VARIANT) {
        let (_, chunk): (u32, DataChunkRef<'_>) =
            postcard::from_bytes(body).map_err(|source| WireError::Malformed { what: "data chunk", source })?;
        return Ok(Incoming::Data(chunk));
    }
    decode_message(body).map(Incoming::Message)
}

/// Postcard's variant index of [`Message::Data`] (checked by a test against the derived
/// encoding).
const DATA_VARIANT: u32 = 5;

/// Encodes `Message::Data` as a complete frame straight from a borrowed payload: the same bytes
/// as [`encode_message`] gives, one copy fewer.
#[must_use]
pub fn encode_data(id: u64, offset: u64, raw_len: u32, compressed: bool, bytes: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(bytes.len() + 40);
    frame.extend_from_slice(&[0; 4]);
    let chunk = DataChunkRef { id, offset, raw_len, compressed, bytes };
    let mut frame = postcard::to_extend(&(DATA_VARIANT, chunk), frame).expect("encoding into a Vec cannot fail");
    let length = u32::try_from(frame.len() - 4).expect("chunks are far below 4 GiB");
    frame[..4].copy_from_slice(&length.to_be_bytes());
    frame
}

/// Decodes one frame body as a message.
pub fn decode_message(body: &[u8]) -> Result<Message> {
    postcard::from_bytes(body).map_err(|source| WireError::Malformed { what: "message", source })
}

fn encode_preamble(version: u32) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&version.to_be_bytes());
    body
}

fn finish_frame(mut frame: Vec<u8>) -> Vec<u8> {
    let length = u32::try_from(frame.len() - 4).expect("handshakes are small");
    frame[..4].copy_from_slice(&length.to_be_bytes());
    frame
}

/// Encodes a hello frame claiming `version` (tests use other versions than ours).
#[must_use]
pub fn encode_hello(version: u32, hello: &Hello) -> Vec<u8> {
    let frame = postcard::to_extend(hello, encode_preamble(version)).expect("Vec cannot fail");
    finish_frame(frame)
}

fn encode_reply(reply: &HelloReply) -> Vec<u8> {
    let mut frame = encode_preamble(PROTOCOL_VERSION);
    let frame = match reply {
        HelloReply::Welcome(welcome) => {
            frame.push(0);
            postcard::to_extend(welcome, frame)
        }
        HelloReply::Refused(error) => {
            frame.push(1);
            postcard::to_extend(error, frame)
        }
    }
    .expect("Vec cannot fail");
    finish_frame(frame)
}

/// Splits the preamble off a handshake body and checks magic and version.
fn check_preamble(body: &[u8]) -> Result<&[u8]> {
    if body.len() < 8 || &body[..4] != MAGIC {
        return Err(WireError::NotMover);
    }
    let theirs = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
    if theirs != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch { ours: PROTOCOL_VERSION, theirs });
    }
    Ok(&body[8..])
}

/// Decodes a hello frame body.
pub fn decode_hello(body: &[u8]) -> Result<Hello> {
    let rest = check_preamble(body)?;
    postcard::from_bytes(rest).map_err(|source| WireError::Malformed { what: "hello", source })
}

/// Decodes a hello reply frame body.
pub fn decode_reply(body: &[u8]) -> Result<HelloReply> {
    let rest = check_preamble(body)?;
    let (status, rest) = rest.split_first().ok_or(WireError::NotMover)?;
    let malformed = |source| WireError::Malformed { what: "hello reply", source };
    match status {
        0 => Ok(HelloReply::Welcome(postcard::from_bytes(rest).map_err(malformed)?)),
        1 => Ok(HelloReply::Refused(postcard::from_bytes::<RemoteError>(rest).map_err(malformed)?)),
        _ => Err(WireError::NotMover),
    }
}

/// Reads frames from a stream, refusing oversize lengths before allocating.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    limit: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream; frames up to [`MAX_FRAME`] are accepted.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, limit: MAX_FRAME }
    }

    /// Reads one frame body; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>> {
        let mut header = [0u8; 4];
        // A clean end is an end before the first byte of a header; inside one it is a cut.
        match self.inner.read_exact(&mut header[..1]).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(WireError::Io { context: "reading a frame header", source }),
        }
        self.inner.read_exact(&mut header[1..]).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                WireError::Closed { context: "in the middle of a frame header" }
            } else {
                WireError::Io { context: "reading a frame header", source }
            }
        })?;
        let length = u32::from_be_bytes(header) as usize;
        if length > self.limit {
            return Err(WireError::FrameTooLarge { length, limit: self.limit });
        }
        let mut body = vec![0u8; length];
        self.inner.read_exact(&mut body).await.map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                WireError::Closed { context: "in the middle of a frame" }
            } else {
                WireError::Io { context: "reading a frame body", source }
            }
        })?;
        Ok(Some(body))
    }

    /// Reads one frame and fails if the stream ended.
    pub async fn expect_frame(&mut self, context: &'static str) -> Result<Vec<u8>> {
        self.read_frame().await?.ok_or(WireError::Closed { context })
    }

    /// Reads and decodes one message; `Ok(None)` on a clean end of stream.
    pub async fn read_message(&mut self) -> Result<Option<Message>> {
        match self.read_frame().await? {
            Some(body) => decode_message(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the client's hello.
    pub async fn read_hello(&mut self) -> Result<Hello> {
        decode_hello(&self.expect_frame("before sending its hello").await?)
    }

    /// Reads the server's reply to our hello; a refusal becomes [`WireError::Remote`].
    pub async fn read_welcome(&mut self) -> Result<Welcome> {
        match decode_reply(&self.expect_frame("before answering our hello").await?)? {
            HelloReply::Welcome(welcome) => Ok(welcome),
            HelloReply::Refused(error) => Err(WireError::Remote(error)),
        }
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    written: u64,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter { inner, written: 0 }
    }

    /// Bytes written so far (frame headers included).
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes an already encoded frame.
    pub async fn write_frame(&mut self, frame: &[u8]) -> Result<()> {
        self.inner.write_all(frame).await.map_err(|source| WireError::Io { context: "writing a frame", source })?;
        self.written += frame.len() as u64;
        Ok(())
    }

    /// Encodes and writes one message, then flushes.
    pub async fn send(&mut self, message: &Message) -> Result<()> {
        self.write_frame(&encode_message(message)).await?;
        self.flush().await
    }

    /// Flushes buffered frames to the peer.
    pub async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await.map_err(|source| WireError::Io { context: "flushing", source })
    }

    /// Sends our hello with the current protocol version.
    pub async fn send_hello(&mut self, hello: &Hello) -> Result<()> {
        self.write_frame(&encode_hello(PROTOCOL_VERSION, hello)).await?;
        self.flush().await
    }

    /// Sends the reply to a hello.
    pub async fn send_reply(&mut self, reply: &HelloReply) -> Result<()> {
        self.write_frame(&encode_reply(reply)).await?;
        self.flush().await
    }

    /// Shuts the write half down (TLS `close_notify`).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.inner.shutdown().await.map_err(|source| WireError::Io { context: "closing", source })
    }

    /// The wrapped stream.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}
