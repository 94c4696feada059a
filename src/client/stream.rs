//! One stream of a connection: its sending half (data within the server's window, end,
//! cancel) and its receiving half (frames in order, window granted back as they are taken).

use super::{Client, ClientError, Result, server_error};
use crate::tcp::codec::{Frame, Kind};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};

/// The sending half of a stream; clone it to feed data from another task.
#[derive(Clone)]
pub struct StreamSender {
    /// The stream id.
    pub id: u32,
    window: Arc<Semaphore>,
    client: Client,
}

impl StreamSender {
    /// Sends data, waiting for window as needed; splits it into frame-sized pieces.
    pub async fn send_data(&self, mut bytes: Bytes) -> Result<()> {
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(self.client.chunk));
            let permit = self
                .window
                .acquire_many(piece.len() as u32)
                .await
                .map_err(|_| ClientError::Protocol("the connection closed".into()))?;
            permit.forget();
            self.client
                .send(Frame::new(Kind::Data, self.id, piece))
                .await?;
        }
        Ok(())
    }

    /// Says that no more stdin follows.
    pub async fn send_eof(&self) -> Result<()> {
        self.send_eof_with(Bytes::new()).await
    }

    /// Ends the data with an `Eof` that carries `payload` (a put's trailing MD5).
    pub async fn send_eof_with(&self, payload: Bytes) -> Result<()> {
        self.client
            .send(Frame::new(Kind::Eof, self.id, payload))
            .await
    }

    /// Asks the server to cancel the stream.
    pub async fn cancel(&self) -> Result<()> {
        self.client
            .send(Frame::new(Kind::Cancel, self.id, Bytes::new()))
            .await
    }

    /// The largest data payload sent in one frame.
    pub fn chunk(&self) -> usize {
        self.client.chunk
    }
}

/// One stream: read its frames in order; send through its [`StreamSender`].
pub struct StreamHandle {
    rx: mpsc::UnboundedReceiver<Frame>,
    sender: StreamSender,
    ended: bool,
}

impl std::ops::Deref for StreamHandle {
    type Target = StreamSender;
    fn deref(&self) -> &StreamSender {
        &self.sender
    }
}

impl StreamHandle {
    /// Stream `id` of `client`, whose frames arrive on `rx`, with the server's `window` for
    /// its data.
    pub(super) fn new(
        id: u32,
        rx: mpsc::UnboundedReceiver<Frame>,
        window: Arc<Semaphore>,
        client: Client,
    ) -> StreamHandle {
        StreamHandle {
            rx,
            sender: StreamSender { id, window, client },
            ended: false,
        }
    }

    /// The next frame of the stream; data frames are granted back to the server as they are taken.
    /// An `Error` frame becomes `Err`.
    pub async fn recv(&mut self) -> Result<Frame> {
        let f = self
            .rx
            .recv()
            .await
            .ok_or_else(|| ClientError::Protocol("the connection closed mid-stream".into()))?;
        self.ended |= matches!(f.kind, Kind::End | Kind::Error);
        if f.kind == Kind::Error {
            return Err(server_error(&f));
        }
        if f.kind.is_flow_controlled() && !f.payload.is_empty() {
            let grant = Frame::window(self.sender.id, f.payload.len() as u32);
            self.sender.client.send(grant).await?;
        }
        Ok(f)
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.sender
            .client
            .streams
            .lock()
            .unwrap()
            .remove(&self.sender.id);
        // A stream dropped before its end is cancelled, so the server stops its work.
        if !self.ended {
            let cancel = Frame::new(Kind::Cancel, self.sender.id, Bytes::new());
            let _ = self.sender.client.out.try_send(cancel);
        }
    }
}
