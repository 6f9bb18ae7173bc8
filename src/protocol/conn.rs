//! A framed msgpack connection: hides the socket and exposes typed
//! `read`/`write` (the handshake that opens one is `security::handshake`).
//! Frames are 4-byte big-endian lengths followed by one msgpack value.

use crate::security::tls::Transport;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

/// Largest frame accepted before the handshake has succeeded: a `Hello` or
/// `HelloReply` is a few hundred bytes.
pub const HANDSHAKE_MAX_FRAME: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("handshake refused: {0}")]
    Rejected(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
}

/// Length-prefixed frames. Unlike tokio-util's `LengthDelimitedCodec` it
/// never reserves the length a peer declares: the read buffer grows only
/// with bytes that arrived, so a 4-byte header cannot make it allocate.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> FrameCodec {
        FrameCodec { max_frame }
    }
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let Some(head) = src.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.max_frame {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes is over the limit of {} bytes", self.max_frame),
            ));
        }
        if src.len() - 4 < len {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let len = match u32::try_from(item.len()) {
            Ok(len) if item.len() <= self.max_frame => len,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the message is {}, over the frame limit of {}",
                        crate::util::format_size(item.len() as u64),
                        crate::util::format_size(self.max_frame as u64)
                    ),
                ))
            }
        };
        dst.reserve(4 + item.len());
        dst.put_u32(len);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// The write half of a split connection.
pub type FrameSink = futures::stream::SplitSink<Framed<Transport, FrameCodec>, Bytes>;
/// The read half of a split connection.
pub type FrameStream = futures::stream::SplitStream<Framed<Transport, FrameCodec>>;

pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ConnError> {
    rmp_serde::to_vec_named(msg).map(Bytes::from).map_err(|e| ConnError::Encode(e.to_string()))
}

/// Decodes one message strictly: the frame must hold exactly one
/// well-formed msgpack value (no trailing bytes), and the message must be
/// named: a variant by its name (a string, or a one-key map whose key is
/// the name) or a struct by its field names — never by index.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ConnError> {
    check_frame(frame)?;
    rmp_serde::from_slice(frame).map_err(|e| ConnError::Decode(e.to_string()))
}

/// `decode` through a seed (a message decoded straight into its receiver's
/// form), with the same checks first.
pub fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    frame: &'de [u8],
    seed: S,
) -> Result<S::Value, ConnError> {
    check_frame(frame)?;
    let mut de = rmp_serde::Deserializer::from_read_ref(frame);
    seed.deserialize(&mut de).map_err(|e| ConnError::Decode(e.to_string()))
}

/// Exactly one well-formed, named msgpack value.
fn check_frame(frame: &[u8]) -> Result<(), ConnError> {
    let len = value_len(frame).map_err(ConnError::Decode)?;
    if len != frame.len() {
        return Err(ConnError::Decode(format!("{} trailing bytes after the message", frame.len() - len)));
    }
    check_named(frame).map_err(ConnError::Decode)
}

/// The top-level value must be a string (a unit variant) or a map whose
/// first key is a string (a variant with data, or a struct).
fn check_named(frame: &[u8]) -> Result<(), String> {
    let is_str = |b: u8| matches!(b, 0xa0..=0xbf | 0xd9..=0xdb);
    let first = frame.first().copied().ok_or("empty frame")?;
    let key_at = match first {
        b if is_str(b) => return Ok(()),
        0x80 => return Ok(()), // an empty map: a struct whose fields all default
        0x81..=0x8f => 1,
        0xde => 3,
        0xdf => 5,
        b => return Err(format!("expected a message named by a string, found marker 0x{b:02x}")),
    };
    match frame.get(key_at) {
        Some(&b) if is_str(b) => Ok(()),
        Some(&b) => Err(format!("expected a variant or field name, found marker 0x{b:02x}")),
        None => Err("truncated message".into()),
    }
}

/// The length in bytes of the first msgpack value in `buf`, checking that
/// it is well formed and complete. Walks the bytes without allocating or
/// recursing: `pending` counts the values still to read.
pub fn value_len(buf: &[u8]) -> Result<usize, String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    let be = |at: usize, n: usize| -> Result<u64, String> {
        let b = buf.get(at..at + n).ok_or("truncated message")?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    while pending > 0 {
        let m = *buf.get(pos).ok_or("truncated message")?;
        pending -= 1;
        // (bytes of this value's header and payload, values it contains)
        let (size, items): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0),
            0x80..=0x8f => (1, 2 * u64::from(m & 0x0f)),
            0x90..=0x9f => (1, u64::from(m & 0x0f)),
            0xa0..=0xbf => (1 + u64::from(m & 0x1f), 0),
            0xc1 => return Err("invalid marker 0xc1".into()),
            0xc4 | 0xd9 => (2 + be(pos + 1, 1)?, 0),
            0xc5 | 0xda => (3 + be(pos + 1, 2)?, 0),
            0xc6 | 0xdb => (5 + be(pos + 1, 4)?, 0),
            0xc7 => (3 + be(pos + 1, 1)?, 0),
            0xc8 => (4 + be(pos + 1, 2)?, 0),
            0xc9 => (6 + be(pos + 1, 4)?, 0),
            0xca => (5, 0),
            0xcb => (9, 0),
            0xcc | 0xd0 => (2, 0),
            0xcd | 0xd1 => (3, 0),
            0xce | 0xd2 => (5, 0),
            0xcf | 0xd3 => (9, 0),
            0xd4 => (3, 0),
            0xd5 => (4, 0),
            0xd6 => (6, 0),
            0xd7 => (10, 0),
            0xd8 => (18, 0),
            0xdc => (3, be(pos + 1, 2)?),
            0xdd => (5, be(pos + 1, 4)?),
            0xde => (3, 2 * be(pos + 1, 2)?),
            0xdf => (5, 2 * be(pos + 1, 4)?),
        };
        let end =
            (pos as u64).checked_add(size).filter(|&e| e <= buf.len() as u64).ok_or("truncated message")?;
        pos = end as usize;
        pending += items;
        // Every value takes at least one byte: more than are left is a lie.
        if pending > (buf.len() - pos) as u64 {
            return Err("truncated message".into());
        }
    }
    Ok(pos)
}

/// Maps a codec error (e.g. an oversized frame) to a `ConnError`.
fn read_err(e: std::io::Error) -> ConnError {
    // A TLS peer that exits without close_notify has simply hung up.
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return ConnError::Closed;
    }
    if e.kind() == std::io::ErrorKind::InvalidData {
        ConnError::Decode(e.to_string())
    } else {
        ConnError::Io(e)
    }
}

pub struct Conn {
    framed: Framed<Transport, FrameCodec>,
}

impl Conn {
    /// A plaintext connection that accepts frames up to `max_frame` bytes.
    pub fn new(stream: TcpStream, max_frame: usize) -> Self {
        let _ = stream.set_nodelay(true);
        Conn::over(Transport::Plain(stream), max_frame)
    }

    /// A connection over `transport` (plain or TLS).
    pub fn over(transport: Transport, max_frame: usize) -> Self {
        // Large writes: many frames go out in few TLS records and syscalls.
        let mut framed = Framed::with_capacity(transport, FrameCodec::new(max_frame), 64 << 10);
        framed.set_backpressure_boundary(64 << 10);
        Conn { framed }
    }

    /// Raises (or lowers) the frame limit, e.g. once the handshake succeeded.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.framed.codec_mut().set_max_frame(max_frame);
    }

    pub async fn read_frame(&mut self) -> Result<Bytes, ConnError> {
        match self.framed.next().await {
            Some(Ok(frame)) => Ok(frame.freeze()),
            Some(Err(e)) => Err(read_err(e)),
            None => Err(ConnError::Closed),
        }
    }

    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, ConnError> {
        let frame = self.read_frame().await?;
        decode(&frame)
    }

    /// Writes one message. One over the frame limit (the codec refuses it)
    /// is an encoding error, not a lost connection, which a caller may retry.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.framed.send(encode(msg)?).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => ConnError::Encode(e.to_string()),
            _ => ConnError::Io(e),
        })
    }

    pub fn into_split(self) -> (FrameSink, FrameStream) {
        self.framed.split()
    }
}

/// Reads the next frame of a split stream, with codec errors mapped.
pub async fn next_frame(stream: &mut FrameStream) -> Result<Bytes, ConnError> {
    match stream.next().await {
        Some(Ok(frame)) => Ok(frame.freeze()),
        Some(Err(e)) => Err(read_err(e)),
        None => Err(ConnError::Closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FromClient, FromWorker};

    #[test]
    fn a_variant_by_index_or_with_trailing_bytes_is_refused() {
        // 0x08 is variant 8 by index (Shutdown), then "Status" trailing.
        let mut frame = vec![0x08];
        frame.extend_from_slice(b"Status");
        let err = decode::<FromClient>(&frame).unwrap_err().to_string();
        assert!(err.contains("trailing bytes"), "{err}");
        let err = decode::<FromClient>(&[0x08]).unwrap_err().to_string();
        assert!(err.contains("named by a string"), "{err}");
        // A one-key map keyed by an index.
        let err = decode::<FromWorker>(&[0x81, 0x01, 0x80]).unwrap_err().to_string();
        assert!(err.contains("variant or field name"), "{err}");
        // By name it is fine, and a trailing byte after it is not.
        let ok = encode(&FromClient::Status).unwrap();
        assert!(matches!(decode::<FromClient>(&ok), Ok(FromClient::Status)));
        let mut bad = ok.to_vec();
        bad.push(0xc0);
        assert!(decode::<FromClient>(&bad).is_err());
    }

    #[test]
    fn value_len_walks_every_kind_of_value() {
        let v = rmpv::Value::Map(vec![
            (
                rmpv::Value::from("a"),
                rmpv::Value::from(vec![rmpv::Value::from(1), rmpv::Value::from(-70000)]),
            ),
            (rmpv::Value::from("b"), rmpv::Value::Binary(vec![7; 300])),
            (rmpv::Value::from("c"), rmpv::Value::F64(1.5)),
            (rmpv::Value::from("d"), rmpv::Value::Ext(3, vec![1, 2, 3, 4])),
            (rmpv::Value::from("e"), rmpv::Value::from("x".repeat(70_000))),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        assert_eq!(value_len(&buf), Ok(buf.len()));
        for cut in [1, buf.len() / 2, buf.len() - 1] {
            assert!(value_len(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // An array that claims more elements than there are bytes left.
        assert!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn a_declared_length_reserves_nothing() {
        let mut codec = FrameCodec::new(64 << 20);
        let mut buf = BytesMut::with_capacity(16);
        buf.extend_from_slice(&(60u32 << 20).to_be_bytes());
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "reserved {} bytes for a promise", buf.capacity());
        let mut small = FrameCodec::new(HANDSHAKE_MAX_FRAME);
        let err = small.decode(&mut buf).unwrap_err().to_string();
        assert!(err.contains("over the limit of 16384 bytes"), "{err}");
    }

    #[test]
    fn frames_round_trip_through_the_codec() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"hello"), &mut buf).unwrap();
        codec.encode(Bytes::new(), &mut buf).unwrap();
        assert!(codec.encode(Bytes::from(vec![0; 1025]), &mut buf).is_err());
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 0);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
}
