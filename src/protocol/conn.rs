//! A framed msgpack connection: hides the socket, exposes typed
//! `read`/`write`, and performs the handshake on both ends.

use super::{Hello, HelloReply, Role, MAGIC, PROTOCOL_VERSION};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
}

/// The write half of a split connection.
pub type FrameSink = futures::stream::SplitSink<Framed<TcpStream, LengthDelimitedCodec>, Bytes>;
/// The read half of a split connection.
pub type FrameStream = futures::stream::SplitStream<Framed<TcpStream, LengthDelimitedCodec>>;

pub fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().length_field_length(4).max_frame_length(max_frame).new_codec()
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, ConnError> {
    rmp_serde::to_vec_named(msg).map(Bytes::from).map_err(|e| ConnError::Encode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, ConnError> {
    rmp_serde::from_slice(frame).map_err(|e| ConnError::Decode(e.to_string()))
}

/// Maps a codec error (e.g. an oversized frame) to a `ConnError`.
fn read_err(e: std::io::Error) -> ConnError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        ConnError::Decode(e.to_string())
    } else {
        ConnError::Io(e)
    }
}

pub struct Conn {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
}

impl Conn {
    pub fn new(stream: TcpStream, max_frame: usize) -> Self {
        let _ = stream.set_nodelay(true);
        Conn { framed: Framed::new(stream, codec(max_frame)) }
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

    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), ConnError> {
        self.framed.send(encode(msg)?).await?;
        Ok(())
    }

    /// Connects and performs the client side of the handshake.
    pub async fn connect(
        addr: &str,
        role: Role,
        secret: &str,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<(Conn, HelloReply), ConnError> {
        Conn::connect_epoch(addr, role, secret, 0, max_frame, timeout).await
    }

    /// `connect`, saying which scheduler epoch the scheduler file named.
    pub async fn connect_epoch(
        addr: &str,
        role: Role,
        secret: &str,
        epoch: u64,
        max_frame: usize,
        timeout: Duration,
    ) -> Result<(Conn, HelloReply), ConnError> {
        let run = async {
            let stream = TcpStream::connect(addr).await?;
            let mut conn = Conn::new(stream, max_frame);
            conn.write(&Hello {
                magic: MAGIC.into(),
                protocol: PROTOCOL_VERSION,
                role,
                secret: secret.into(),
                host: crate::util::hostname(),
                pid: std::process::id(),
                user: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default(),
                epoch,
            })
            .await?;
            let reply: HelloReply = conn.read().await?;
            match reply {
                HelloReply::Rejected { error } => Err(ConnError::Rejected(error)),
                ok => Ok((conn, ok)),
            }
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| ConnError::Timeout(timeout))?
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
