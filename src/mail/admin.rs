//! The queue's operator commands (`pigeonair queue list|retry|delete`), served on the
//! cluster port as `pa-queue/1`: only holders of a cluster certificate (the node's own
//! CLI uses the node's) reach it.

use serde::{Deserialize, Serialize};

use super::queue::Queue;
use super::spool::Envelope;
use crate::cluster::transport::{Conn, Service};

/// The cluster port's queue service.
pub const SERVICE: Service = Service::new("queue", b"pa-queue/1");

/// What an operator asks of a node's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueueRequest {
    /// Every queued message.
    List,
    /// Try one message (or all) now.
    Retry(Option<String>),
    /// Drop a message without delivering or bouncing it.
    Delete(String),
}

/// The node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueueReply {
    /// The queued messages, oldest first.
    List(Vec<Envelope>),
    /// How many recipients are due now.
    Retried(usize),
    /// The message is gone.
    Deleted(String),
    /// The request failed.
    Error(String),
}

/// Answer one connection's requests until it closes.
pub async fn serve(queue: Queue, mut conn: Conn) {
    loop {
        let request: QueueRequest = match conn.recv().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "queue request unreadable");
                return;
            }
        };
        let q = queue.clone();
        let reply = tokio::task::spawn_blocking(move || match request {
            QueueRequest::List => q.list().map(QueueReply::List),
            QueueRequest::Retry(id) => q.retry(id.as_deref()).map(QueueReply::Retried),
            QueueRequest::Delete(id) => q.delete(&id).map(|()| QueueReply::Deleted(id)),
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .unwrap_or_else(QueueReply::Error);
        if conn.send(&reply).await.is_err() {
            return;
        }
    }
}
