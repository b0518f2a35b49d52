//! openraft's network over the cluster transport: one request frame and one reply frame
//! per RPC on a pooled TLS connection (ALPN `pa-raft/1`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::transport::{Dialer, Service, TransportError};
use super::types::{ClusterNode, NodeId, Raft, TypeConfig};

/// A Raft RPC as sent over the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries (also heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The reply to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpcReply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Serve one inbound Raft connection: answer RPCs until the peer closes it. The first
/// AppendEntries from a current leader sets `heard_leader`.
pub async fn serve_raft<S>(
    raft: Raft,
    mut stream: S,
    heard_leader: &tokio::sync::watch::Sender<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let rpc: RaftRpc = match super::transport::read_frame(&mut stream).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "raft connection ended");
                return;
            }
        };
        let reply = match rpc {
            RaftRpc::Append(r) => {
                let resp = raft.append_entries(r).await;
                // Success or a log conflict: either way a current leader reached us.
                if matches!(&resp, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    heard_leader.send_if_modified(|h| !std::mem::replace(h, true));
                }
                RaftRpcReply::Append(resp)
            }
            RaftRpc::Vote(r) => RaftRpcReply::Vote(raft.vote(r).await),
            RaftRpc::Snapshot(r) => RaftRpcReply::Snapshot(raft.install_snapshot(r).await),
        };
        if super::transport::write_frame(&mut stream, &reply)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Creates a connection handle per peer.
#[derive(Clone)]
pub struct Network {
    dialer: Arc<Dialer>,
    muted: Arc<AtomicBool>,
    retry: std::time::Duration,
}

impl Network {
    /// A network that dials peers with the node's own certificate. While `muted` is
    /// set, this node sends no Raft RPCs at all (no heartbeats, no replication, no
    /// votes): the failover drill uses it to make a leader fall silent. `retry` is the
    /// first pause before replication to an unreachable peer is tried again (the
    /// heartbeat interval); it doubles up to four times that.
    pub fn new(dialer: Arc<Dialer>, muted: Arc<AtomicBool>, retry: std::time::Duration) -> Network {
        Network {
            dialer,
            muted,
            retry,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &ClusterNode) -> PeerConnection {
        PeerConnection {
            dialer: self.dialer.clone(),
            target,
            addr: node.addr.clone(),
            muted: self.muted.clone(),
            retry: self.retry,
        }
    }
}

/// The link to one peer (connections are pooled by the dialer).
pub struct PeerConnection {
    dialer: Arc<Dialer>,
    target: NodeId,
    addr: String,
    muted: Arc<AtomicBool>,
    retry: std::time::Duration,
}

fn transport_error<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, ClusterNode, E> {
    match e {
        TransportError::Io(_)
        | TransportError::Timeout
        | TransportError::Refused(_)
        | TransportError::Tls(_) => RPCError::Unreachable(Unreachable::new(&e)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

impl PeerConnection {
    async fn call(&self, rpc: RaftRpc, option: &RPCOption) -> Result<RaftRpcReply, TransportError> {
        if self.muted.load(Ordering::Relaxed) {
            return Err(TransportError::Refused(
                "this node is muted by a failover drill".into(),
            ));
        }
        match tokio::time::timeout(
            option.hard_ttl(),
            self.dialer.call(&self.addr, Service::RAFT, &rpc),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout),
        }
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, ClusterNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "unexpected reply type",
    )))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    /// How long replication waits before trying an unreachable peer again. openraft's
    /// default is a flat 500 ms, so a restarted follower heard from its leader only after
    /// up to half a second, long enough to time out and call an election that unseats
    /// a healthy leader. Here: the heartbeat interval, doubling to four times that.
    fn backoff(&self) -> openraft::network::Backoff {
        let first = self.retry;
        openraft::network::Backoff::new(
            [first, first * 2]
                .into_iter()
                .chain(std::iter::repeat(first * 4)),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>>
    {
        match self
            .call(RaftRpc::Append(rpc), &option)
            .await
            .map_err(transport_error)?
        {
            RaftRpcReply::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ClusterNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRpc::Snapshot(rpc), &option)
            .await
            .map_err(transport_error)?
        {
            RaftRpcReply::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ClusterNode, RaftError<NodeId>>> {
        match self
            .call(RaftRpc::Vote(rpc), &option)
            .await
            .map_err(transport_error)?
        {
            RaftRpcReply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }
}
