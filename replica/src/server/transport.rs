//! Outbound peer streams: one long-lived client stream per peer, fed from a
//! bounded per-peer queue (bytes; the oldest frames are dropped when full,
//! and counted), reconnecting with exponential backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::server::rpc::{peer_client::PeerClient, Frame};

/// Frames waiting for one peer.
pub struct PeerQueue {
    pub id: u32,
    pub address: Mutex<String>,
    frames: Mutex<(VecDeque<Bytes>, usize)>,
    cap_bytes: usize,
    notify: Notify,
    pub connected: AtomicBool,
    pub dropped: AtomicU64,
}

impl PeerQueue {
    pub fn new(id: u32, address: String, cap_bytes: usize) -> Arc<PeerQueue> {
        Arc::new(PeerQueue {
            id,
            address: Mutex::new(address),
            frames: Mutex::new((VecDeque::new(), 0)),
            cap_bytes,
            notify: Notify::new(),
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a frame, dropping the oldest ones while over the byte cap.
    pub fn push(&self, b: Bytes) {
        if let Ok(mut g) = self.frames.lock() {
            g.1 += b.len();
            g.0.push_back(b);
            while g.1 > self.cap_bytes {
                match g.0.pop_front() {
                    Some(old) => {
                        g.1 -= old.len();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }
        self.notify.notify_one();
    }

    fn try_pop(&self) -> Option<Bytes> {
        let mut g = self.frames.lock().ok()?;
        let b = g.0.pop_front()?;
        g.1 -= b.len();
        Some(b)
    }

    async fn pop(&self) -> Bytes {
        loop {
            if let Some(b) = self.try_pop() {
                return b;
            }
            self.notify.notified().await;
        }
    }

    fn address(&self) -> String {
        self.address.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Keeps a stream to `queue`'s peer open until `shutdown`, sending its frames.
pub async fn run_peer(me: u32, queue: Arc<PeerQueue>, max_message_bytes: usize, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let addr = queue.address();
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map(|e| {
            e.connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
        });
        let conn = match endpoint {
            Ok(e) => tokio::select! {
                c = e.connect() => c.ok(),
                _ = shutdown.changed() => return,
            },
            Err(e) => {
                tracing::warn!(peer = queue.id, %addr, "bad peer address: {e}");
                None
            }
        };
        if let Some(channel) = conn {
            let mut client = PeerClient::new(channel)
                .max_encoding_message_size(max_message_bytes + 1024)
                .max_decoding_message_size(64 * 1024);
            let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(64);
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            if let Ok(v) = me.to_string().parse() {
                req.metadata_mut().insert("pbft-from", v);
            }
            let call = client.stream(req);
            tokio::pin!(call);
            queue.connected.store(true, Ordering::Relaxed);
            tracing::debug!(peer = queue.id, %addr, "peer stream open");
            backoff = Duration::from_millis(50);
            loop {
                tokio::select! {
                    r = &mut call => {
                        if let Err(e) = r { tracing::debug!(peer = queue.id, "peer stream ended: {e}"); }
                        break;
                    }
                    b = queue.pop() => {
                        if tx.send(Frame { envelope: b }).await.is_err() { break; }
                    }
                    _ = shutdown.changed() => { queue.connected.store(false, Ordering::Relaxed); return; }
                }
            }
            queue.connected.store(false, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
