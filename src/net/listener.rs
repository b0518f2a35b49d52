//! The accept loop of a public listener: connections are capped in total and per
//! client address, each accepted one runs in its own task, and the loop stops when
//! the node shuts down. The protocol says how to refuse (in its own words) and how to
//! serve a connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::limits::AddressSlots;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a connection was turned away before the protocol saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's cap on connections at once is reached.
    TotalCap,
    /// The client's address already holds its share of connections.
    AddressCap,
}

impl Refusal {
    /// A short text for the client and the log.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::TotalCap => "too many connections",
            Refusal::AddressCap => "too many connections from your address",
        }
    }
}

/// One protocol served on a listener.
pub trait Protocol: Send + Sync + 'static {
    /// The protocol's name in logs (`ldap`, `smtp`, ...).
    fn name(&self) -> &'static str;

    /// How many connections one client address may hold now (read at every accept,
    /// so that a cluster-wide setting applies at once).
    fn max_connections_per_address(&self) -> usize;

    /// Tell a refused client why, in the protocol's words, and close. Counting the
    /// refusal in the protocol's metrics belongs here too.
    fn refuse(&self, stream: TcpStream, why: Refusal) -> BoxFuture<'static, ()>;

    /// Serve one accepted connection until it ends. `session` numbers the listener's
    /// connections, for the connection's tracing span.
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        session: u64,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()>;
}

/// Accept connections on a bound listener until `shutdown` turns true: at most
/// `max_connections` at once, and at most the protocol's share per client address
/// (counted in `address_slots`, which listeners of one protocol share). Connections
/// already accepted run on after the loop stops; they watch `shutdown` themselves.
pub async fn serve<P: Protocol>(
    protocol: Arc<P>,
    listener: TcpListener,
    max_connections: usize,
    address_slots: Arc<AddressSlots>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut next_session = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(protocol = protocol.name(), error = %e, "accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
        };
        next_session += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(protocol = protocol.name(), %peer, "connection refused: the listener's connection cap is reached");
            tokio::spawn(protocol.refuse(stream, Refusal::TotalCap));
            continue;
        };
        let Some(address_slot) =
            address_slots.take(peer.ip(), protocol.max_connections_per_address())
        else {
            tracing::warn!(protocol = protocol.name(), %peer, "connection refused: too many connections from this address");
            tokio::spawn(protocol.refuse(stream, Refusal::AddressCap));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let served = protocol
            .clone()
            .serve(stream, peer, next_session, shutdown.clone());
        tokio::spawn(async move {
            served.await;
            drop(address_slot);
            drop(permit);
        });
    }
}
