//! The cluster port: TLS 1.3 connections between nodes, one service per connection
//! chosen by ALPN, carrying length-prefixed bincode frames.
//!
//! - A server ([`serve`]) presents its node certificate plus the cluster CA certificate,
//!   and asks clients for a certificate from the cluster CA. A client without one is
//!   served only for [`Service::JOIN`]; any other service is refused (closed).
//! - Nodes dial each other with a [`Dialer`] that presents the node's certificate and
//!   trusts only the cluster CA, always verifying the server name
//!   [`CLUSTER_SERVER_NAME`] carried by every node certificate.
//! - A joining node has no certificate yet: it connects with [`connect_pinned`], which
//!   accepts the server only if it chains to the CA whose fingerprint is in the join token.
//! - A frame is a big-endian `u32` payload length and the payload, the bincode
//!   (standard configuration) encoding of a serde type; payloads are at most
//!   [`MAX_FRAME`] bytes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::pki::{fingerprint_of_der, node_id_of_peer, NodeCert, CLUSTER_SERVER_NAME};

/// ALPN name of the Raft RPC service.
pub const ALPN_RAFT: &[u8] = b"pa-raft/1";
/// ALPN name of the write-forwarding service (follower to leader).
pub const ALPN_WRITE: &[u8] = b"pa-write/1";
/// ALPN name of the join service (the only one open to clients without a certificate).
pub const ALPN_JOIN: &[u8] = b"pa-join/1";
/// ALPN name of the status service.
pub const ALPN_STATUS: &[u8] = b"pa-status/1";

/// The largest frame payload accepted or sent (64 MiB, room for snapshot chunks).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// How long a server waits for a client to complete the TLS handshake.
pub const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default time a client allows for connecting and completing the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle connections kept per (address, service) by a [`Dialer`].
const MAX_IDLE_PER_KEY: usize = 8;

/// A service on the cluster port, selected by ALPN. The cluster's own services are the
/// constants below; other layers define theirs (the mail store's LMTP, proxied
/// sessions) and register them with a handler in [`Services`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    name: &'static str,
    alpn: &'static [u8],
    anonymous: bool,
}

impl Service {
    /// Raft RPCs (append entries, vote, snapshot chunks).
    pub const RAFT: Service = Service::new("raft", ALPN_RAFT);
    /// Writes forwarded to the leader.
    pub const WRITE: Service = Service::new("write", ALPN_WRITE);
    /// Joining the cluster (open to clients without a certificate).
    pub const JOIN: Service = Service {
        name: "join",
        alpn: ALPN_JOIN,
        anonymous: true,
    };
    /// Node status and operator requests for `pigeonair status`, tokens, the drill.
    pub const STATUS: Service = Service::new("status", ALPN_STATUS);

    /// A service for nodes only (clients must present a cluster certificate), named
    /// `name` in logs and selected by the ALPN protocol name `alpn`.
    pub const fn new(name: &'static str, alpn: &'static [u8]) -> Service {
        Service {
            name,
            alpn,
            anonymous: false,
        }
    }

    /// The service's ALPN protocol name.
    pub fn alpn(self) -> &'static [u8] {
        self.alpn
    }

    /// Whether a client without a cluster certificate may use this service.
    pub fn open_to_anonymous(self) -> bool {
        self.anonymous
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The services a cluster port offers, each with the handler that serves its
/// connections. The server's ALPN list is the registration order.
#[derive(Clone, Default)]
pub struct Services {
    entries: Vec<(Service, Arc<dyn Handler>)>,
}

impl Services {
    /// No services.
    pub fn new() -> Services {
        Services::default()
    }

    /// Serve `service` with `handler`. A second registration of the same ALPN name is
    /// refused, so two layers cannot take one service by mistake.
    pub fn register(
        &mut self,
        service: Service,
        handler: Arc<dyn Handler>,
    ) -> Result<(), TransportError> {
        if self.entries.iter().any(|(s, _)| s.alpn == service.alpn) {
            return Err(TransportError::DuplicateService(service.to_string()));
        }
        self.entries.push((service, handler));
        Ok(())
    }

    /// Every service of `other` added after these (refused as [`Services::register`]).
    pub fn extend(&mut self, other: Services) -> Result<(), TransportError> {
        for (service, handler) in other.entries {
            self.register(service, handler)?;
        }
        Ok(())
    }

    /// The registered services, in order.
    pub fn services(&self) -> impl Iterator<Item = Service> + '_ {
        self.entries.iter().map(|(s, _)| *s)
    }

    fn find(&self, alpn: &[u8]) -> Option<(Service, Arc<dyn Handler>)> {
        self.entries
            .iter()
            .find(|(s, _)| s.alpn == alpn)
            .map(|(s, h)| (*s, h.clone()))
    }
}

/// Errors of the cluster transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket error (connecting, reading or writing).
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A TLS error: bad configuration, certificate or handshake failure.
    #[error("tls error: {0}")]
    Tls(String),
    /// Connecting or the handshake took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// A frame announced (or would need) more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    FrameTooLarge(usize),
    /// A frame's payload is not a valid encoding of the expected type.
    #[error("cannot decode frame: {0}")]
    Decode(String),
    /// A value could not be encoded into a frame.
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The peer closed the connection before the expected frame (or in the middle of one).
    #[error("connection closed by peer")]
    Closed,
    /// The peer refused the connection (a TLS alert, e.g. our certificate was rejected).
    #[error("refused by peer: {0}")]
    Refused(String),
    /// Two handlers were registered for one service of the cluster port.
    #[error("the {0} service is registered twice")]
    DuplicateService(String),
}

/// Turns an I/O error into a transport error, surfacing TLS errors and alerts.
fn map_io(e: io::Error) -> TransportError {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match inner {
            rustls::Error::AlertReceived(alert) => {
                TransportError::Refused(format!("peer sent TLS alert {alert:?}"))
            }
            other => TransportError::Tls(other.to_string()),
        };
    }
    TransportError::Io(e)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// Writes `value` as one frame (length prefix and bincode payload) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), TransportError> {
    let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| TransportError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(TransportError::FrameTooLarge(payload.len()));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf).await.map_err(map_io)?;
    w.flush().await.map_err(map_io)?;
    Ok(())
}

/// How reading a frame failed, and whether anything of it had been read.
struct ReadFailure {
    error: TransportError,
    /// No byte of the frame was read (the connection failed between frames).
    at_start: bool,
}

/// Reads one frame's payload; `Ok(None)` on a clean end of stream before the frame.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, ReadFailure> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ReadFailure {
                    error: TransportError::Closed,
                    at_start: false,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A peer that closes the TCP connection without a TLS close_notify between
            // frames has still closed cleanly as far as frames are concerned.
            Err(e) if got == 0 && e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => {
                return Err(ReadFailure {
                    error: map_io(e),
                    at_start: got == 0,
                })
            }
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ReadFailure {
            error: TransportError::FrameTooLarge(len),
            at_start: false,
        });
    }
    // Grow with the data actually received rather than trusting the announced length.
    let mut payload = Vec::with_capacity(len.min(64 * 1024));
    let read = (&mut *r)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await
        .map_err(|e| ReadFailure {
            error: map_io(e),
            at_start: false,
        })?;
    if read < len {
        return Err(ReadFailure {
            error: TransportError::Closed,
            at_start: false,
        });
    }
    Ok(Some(payload))
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    let config = bincode::config::standard().with_limit::<MAX_FRAME>();
    let (value, used) = bincode::serde::decode_from_slice(payload, config)
        .map_err(|e| TransportError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(TransportError::Decode(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// Reads one frame and decodes it. `Ok(None)` if the stream ended cleanly before the
/// frame's first byte; an error if it ended inside a frame, if the announced length
/// exceeds [`MAX_FRAME`] (the caller should then close the connection), or if the
/// payload does not decode.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, TransportError> {
    match read_payload(r).await {
        Ok(Some(payload)) => decode(&payload).map(Some),
        Ok(None) => Ok(None),
        Err(f) => Err(f.error),
    }
}

// ---------------------------------------------------------------------------------------
// Identity and configurations
// ---------------------------------------------------------------------------------------

/// What a node presents and trusts on the cluster port (all PEM).
#[derive(Clone)]
pub struct TlsIdentity {
    /// The cluster CA certificate: the only trust anchor.
    pub ca_pem: String,
    /// The node certificate, signed by the cluster CA.
    pub cert_pem: String,
    /// The node's private key.
    pub key_pem: String,
}

impl TlsIdentity {
    /// The identity of a node holding `node`, in a cluster whose CA certificate is `ca_pem`.
    pub fn new(ca_pem: impl Into<String>, node: &NodeCert) -> TlsIdentity {
        TlsIdentity {
            ca_pem: ca_pem.into(),
            cert_pem: node.cert_pem.clone(),
            key_pem: node.key_pem.clone(),
        }
    }

    fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::Tls(format!("{what}: {e}")))?;
        if certs.is_empty() {
            return Err(TransportError::Tls(format!("{what}: no certificate")));
        }
        Ok(certs)
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        for cert in Self::certs(&self.ca_pem, "cluster CA")? {
            roots
                .add(cert)
                .map_err(|e| TransportError::Tls(format!("cluster CA: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TransportError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TransportError::Tls(format!("node key: {e}")))
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster port's server configuration: TLS 1.3 only (its ALPN list is set by
/// [`serve`] from the registered [`Services`]),
/// client certificates verified against the cluster CA but optional (anonymous clients
/// are then limited to [`Service::JOIN`] by [`serve`]), and the chain
/// `[node certificate, CA certificate]` so that a joiner can pin the CA.
pub fn server_config(id: &TlsIdentity) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(id.roots()?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut chain = TlsIdentity::certs(&id.cert_pem, "node certificate")?;
    for ca in TlsIdentity::certs(&id.ca_pem, "cluster CA")? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, id.key()?)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A client configuration for node-to-node connections: TLS 1.3 only, the cluster CA
/// as the only root, the node certificate as client certificate. It has no ALPN;
/// [`connect_with`] (and the [`Dialer`]) set the service's.
pub fn client_config(id: &TlsIdentity) -> Result<Arc<ClientConfig>, TransportError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(
            TlsIdentity::certs(&id.cert_pem, "node certificate")?,
            id.key()?,
        )
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Accepts a server only if one of the certificates it presents has the pinned SHA-256
/// fingerprint and its end-entity certificate chains to that certificate and is valid
/// for [`CLUSTER_SERVER_NAME`].
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates.iter())
            .find(|c| fingerprint_of_der(c) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(CLUSTER_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for a node without a certificate (a joiner): TLS 1.3 only, no
/// client certificate, and the server accepted only if it chains to the CA whose
/// certificate has SHA-256 `ca_fingerprint` (hex, as in join tokens; case and `:`
/// separators are ignored). It has no ALPN; [`connect_with`] sets the service's.
pub fn pinned_client_config(ca_fingerprint: &str) -> Arc<ClientConfig> {
    let provider = provider();
    let fingerprint: String = ca_fingerprint
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint,
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One accepted, authenticated connection handed to a [`Handler`].
pub struct Conn {
    /// The service the client chose (by ALPN).
    pub service: Service,
    /// The client's node id, from its verified cluster certificate; `None` only for an
    /// anonymous [`Service::JOIN`] client.
    pub peer_node: Option<u64>,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The TLS stream.
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
}

impl Conn {
    /// Reads the next frame (`None` when the client has closed the connection).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        read_frame(&mut self.stream).await
    }

    /// Writes one frame.
    pub async fn send<T: Serialize>(&mut self, value: &T) -> Result<(), TransportError> {
        write_frame(&mut self.stream, value).await
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("service", &self.service)
            .field("peer_node", &self.peer_node)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

/// Serves connections accepted by [`serve`]; each runs in its own task.
pub trait Handler: Send + Sync + 'static {
    /// Handles one connection until it is done with it.
    fn handle(&self, conn: Conn) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, conn: Conn) -> BoxFuture<'static, ()> {
        Box::pin(self(conn))
    }
}

/// Accepts connections on the cluster port until `shutdown` becomes `true` (or its
/// sender is dropped). Each connection gets [`SERVER_HANDSHAKE_TIMEOUT`] to complete
/// the handshake; then a connection without a known ALPN service is closed, and one
/// for any service but [`Service::JOIN`] whose client presented no valid cluster
/// certificate is refused (closed, with a warning). The rest go to their service's
/// handler, each in its own task; connections already handed over are not interrupted
/// by shutdown. The server offers exactly the ALPN names of `services`.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    services: Arc<Services>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut config = (*config).clone();
    config.alpn_protocols = services.services().map(|s| s.alpn().to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        match accepted {
            Ok((tcp, peer_addr)) => {
                let acceptor = acceptor.clone();
                let services = services.clone();
                tokio::spawn(accept_one(acceptor, tcp, peer_addr, services));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster port: accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    tracing::debug!("cluster port: stopped accepting");
}

async fn accept_one(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    services: Arc<Services>,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = match tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            match map_io(e) {
                TransportError::Tls(msg) => tracing::warn!(
                    %peer_addr, error = %msg,
                    "cluster port: TLS handshake failed (peer without a valid cluster certificate?)"
                ),
                other => {
                    tracing::debug!(%peer_addr, error = %other, "cluster port: handshake failed")
                }
            }
            return;
        }
        Err(_) => {
            tracing::warn!(%peer_addr, "cluster port: TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let found = session.alpn_protocol().and_then(|alpn| services.find(alpn));
    let peer_node = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| node_id_of_peer(cert));
    let Some((service, handler)) = found else {
        tracing::debug!(%peer_addr, "cluster port: no known ALPN service; closing");
        close_quietly(&mut stream).await;
        return;
    };
    if peer_node.is_none() && !service.open_to_anonymous() {
        tracing::warn!(
            %peer_addr, %service,
            "cluster port: refused a peer without a valid cluster certificate"
        );
        close_quietly(&mut stream).await;
        return;
    }
    tracing::trace!(%peer_addr, %service, ?peer_node, "cluster port: connection accepted");
    handler
        .handle(Conn {
            service,
            peer_node,
            peer_addr,
            stream,
        })
        .await;
}

async fn close_quietly<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A client connection to one service of a node's cluster port.
pub struct ClientConn {
    service: Service,
    stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl std::fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConn")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Whether a failed call on a pooled connection may be retried on a fresh one.
struct CallFailure {
    error: TransportError,
    /// The request was not written, or the connection turned out closed before any
    /// byte of the reply: the pooled connection was stale.
    stale: bool,
}

impl ClientConn {
    /// The service this connection is for.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The server's node id, from the CN of its certificate.
    pub fn server_node(&self) -> Option<u64> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| node_id_of_peer(c))
    }

    /// Sends one frame.
    pub async fn send<T: Serialize>(&mut self, value: &T) -> Result<(), TransportError> {
        write_frame(&mut self.stream, value).await
    }

    /// Receives one frame (`None` if the server closed the connection between frames).
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        read_frame(&mut self.stream).await
    }

    /// Sends a request frame and reads the reply frame. A connection closed before the
    /// reply is [`TransportError::Closed`].
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        req: &Req,
    ) -> Result<Resp, TransportError> {
        self.call_detailed(req).await.map_err(|f| f.error)
    }

    async fn call_detailed<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        req: &Req,
    ) -> Result<Resp, CallFailure> {
        if let Err(error) = write_frame(&mut self.stream, req).await {
            let stale = matches!(error, TransportError::Io(_));
            return Err(CallFailure { error, stale });
        }
        match read_payload(&mut self.stream).await {
            Ok(Some(payload)) => decode(&payload).map_err(|error| CallFailure {
                error,
                stale: false,
            }),
            Ok(None) => Err(CallFailure {
                error: TransportError::Closed,
                stale: true,
            }),
            Err(f) => {
                let stale = f.at_start
                    && matches!(&f.error, TransportError::Io(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    ));
                Err(CallFailure {
                    error: f.error,
                    stale,
                })
            }
        }
    }

    /// The underlying TLS stream, for services that stream rather than exchange frames.
    pub fn stream_mut(&mut self) -> &mut tokio_rustls::client::TlsStream<TcpStream> {
        &mut self.stream
    }

    /// Gives up the connection's TLS stream.
    pub fn into_stream(self) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.stream
    }
}

/// Connects to `addr` (`host:port`) for `service` with the given client configuration
/// (its ALPN is replaced by the service's), verifying the server as
/// [`CLUSTER_SERVER_NAME`]; connecting and the handshake together get `timeout`.
pub async fn connect_with(
    config: &ClientConfig,
    addr: &str,
    service: Service,
    timeout: Duration,
) -> Result<ClientConn, TransportError> {
    let mut config = config.clone();
    config.alpn_protocols = vec![service.alpn().to_vec()];
    connect_prepared(Arc::new(config), addr, service, timeout).await
}

async fn connect_prepared(
    config: Arc<ClientConfig>,
    addr: &str,
    service: Service,
    timeout: Duration,
) -> Result<ClientConn, TransportError> {
    let connector = TlsConnector::from(config);
    let name = ServerName::try_from(CLUSTER_SERVER_NAME)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(map_io)
    };
    let stream = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| TransportError::Timeout)??;
    if stream.get_ref().1.alpn_protocol() != Some(service.alpn()) {
        return Err(TransportError::Refused(format!(
            "server does not offer the {service} service"
        )));
    }
    Ok(ClientConn { service, stream })
}

/// Connects without a client certificate, trusting only the CA pinned by fingerprint
/// (see [`pinned_client_config`]); used by a joining node. Times out after
/// [`DEFAULT_CONNECT_TIMEOUT`].
pub async fn connect_pinned(
    addr: &str,
    ca_fingerprint: &str,
    service: Service,
) -> Result<ClientConn, TransportError> {
    connect_with(
        &pinned_client_config(ca_fingerprint),
        addr,
        service,
        DEFAULT_CONNECT_TIMEOUT,
    )
    .await
}

/// Dials other nodes with this node's certificate, and pools idle connections per
/// (address, service).
pub struct Dialer {
    base: Arc<ClientConfig>,
    configs: Mutex<HashMap<Service, Arc<ClientConfig>>>,
    timeout: Duration,
    idle: Mutex<HashMap<(String, Service), Vec<ClientConn>>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer presenting `id`'s node certificate and trusting only its cluster CA,
    /// with the [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(id: &TlsIdentity) -> Result<Dialer, TransportError> {
        Ok(Dialer {
            base: client_config(id)?,
            configs: Mutex::new(HashMap::new()),
            timeout: DEFAULT_CONNECT_TIMEOUT,
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// The same dialer with another connect-and-handshake timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Dialer {
        self.timeout = timeout;
        self
    }

    /// The connect-and-handshake timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Opens a new (unpooled) connection to `addr` for `service`.
    pub async fn connect(
        &self,
        addr: &str,
        service: Service,
    ) -> Result<ClientConn, TransportError> {
        let config = {
            let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
            configs
                .entry(service)
                .or_insert_with(|| {
                    let mut c = (*self.base).clone();
                    c.alpn_protocols = vec![service.alpn().to_vec()];
                    Arc::new(c)
                })
                .clone()
        };
        connect_prepared(config, addr, service, self.timeout).await
    }

    /// Sends `req` to `service` at `addr` and returns the reply, on an idle pooled
    /// connection if there is one (else a new one), which goes back to the pool after a
    /// successful exchange. A connection that fails is dropped. If a pooled connection
    /// turns out stale (the request could not be written, or the connection was closed
    /// before any byte of the reply), the pool for that target is emptied and the call
    /// is retried once on a new connection. The call has no overall deadline: wrap it in
    /// `tokio::time::timeout` (dropping the future drops its connection).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        service: Service,
        req: &Req,
    ) -> Result<Resp, TransportError> {
        let key = (addr.to_string(), service);
        let pooled = self.take_idle(&key);
        if let Some(mut conn) = pooled {
            match conn.call_detailed(req).await {
                Ok(resp) => {
                    self.put_idle(key, conn);
                    return Ok(resp);
                }
                Err(f) if f.stale => {
                    tracing::debug!(addr, %service, error = %f.error, "stale pooled connection; reconnecting");
                    self.forget_key(&key);
                }
                Err(f) => return Err(f.error),
            }
        }
        let mut conn = self.connect(addr, service).await?;
        let resp = conn.call_detailed(req).await.map_err(|f| f.error)?;
        self.put_idle(key, conn);
        Ok(resp)
    }

    /// Drops every idle connection to `addr` (e.g. when the node leaves the cluster).
    pub fn forget(&self, addr: &str) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(a, _), _| a != addr);
        }
    }

    fn forget_key(&self, key: &(String, Service)) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.remove(key);
        }
    }

    fn take_idle(&self, key: &(String, Service)) -> Option<ClientConn> {
        self.idle.lock().ok()?.get_mut(key)?.pop()
    }

    fn put_idle(&self, key: (String, Service), conn: ClientConn) {
        if let Ok(mut idle) = self.idle.lock() {
            let conns = idle.entry(key).or_default();
            if conns.len() < MAX_IDLE_PER_KEY {
                conns.push(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pki::ClusterCa;
    use serde::Deserialize;
    use tokio::sync::mpsc;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u64,
        text: String,
    }

    struct Cluster {
        ca: ClusterCa,
        server_id: TlsIdentity,
        client_id: TlsIdentity,
    }

    fn cluster() -> Cluster {
        let ca = ClusterCa::generate("test").unwrap();
        let n1 = ca.issue_node(1, "n1", &["127.0.0.1".into()]).unwrap();
        let n2 = ca.issue_node(2, "n2", &["127.0.0.1".into()]).unwrap();
        Cluster {
            server_id: TlsIdentity::new(ca.cert_pem.clone(), &n1),
            client_id: TlsIdentity::new(ca.cert_pem.clone(), &n2),
            ca,
        }
    }

    /// What the test server saw of each connection it handed to its handler.
    #[derive(Debug)]
    struct Seen {
        service: Service,
        peer_node: Option<u64>,
        error: Option<String>,
    }

    /// Starts a server whose handler echoes frames (`Ping` with `n + 1`) until the client
    /// closes, or answers `once` frame then closes; reports each connection on the channel.
    async fn start(
        id: &TlsIdentity,
        once: bool,
    ) -> (String, mpsc::UnboundedReceiver<Seen>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let handler = move |mut conn: Conn| {
            let tx = tx.clone();
            async move {
                let mut error = None;
                loop {
                    match conn.recv::<Ping>().await {
                        Ok(Some(mut p)) => {
                            p.n += 1;
                            if conn.send(&p).await.is_err() || once {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(format!("{e:?}"));
                            break;
                        }
                    }
                }
                let _ = tx.send(Seen {
                    service: conn.service,
                    peer_node: conn.peer_node,
                    error,
                });
            }
        };
        let config = server_config(id).unwrap();
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let mut services = Services::new();
        for service in [
            Service::RAFT,
            Service::WRITE,
            Service::JOIN,
            Service::STATUS,
        ] {
            services.register(service, handler.clone()).unwrap();
        }
        assert!(services.register(Service::RAFT, handler).is_err());
        tokio::spawn(serve(listener, config, Arc::new(services), stop_rx));
        (addr, rx, stop_tx)
    }

    fn ping(n: u64) -> Ping {
        Ping {
            n,
            text: "hello".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nodes_exchange_frames_and_server_knows_the_peer() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, false).await;
        let dialer = Dialer::new(&c.client_id).unwrap();

        let mut conn = dialer.connect(&addr, Service::RAFT).await.unwrap();
        assert_eq!(conn.server_node(), Some(1));
        let reply: Ping = conn.call(&ping(1)).await.unwrap();
        assert_eq!(reply, ping(2));
        let reply: Ping = conn.call(&ping(10)).await.unwrap();
        assert_eq!(reply, ping(11));
        drop(conn);
        let s = seen.recv().await.unwrap();
        assert_eq!(s.service, Service::RAFT);
        assert_eq!(s.peer_node, Some(2));
        assert!(s.error.is_none(), "{s:?}");

        // Pooled calls reuse one connection.
        for i in 0..5 {
            let reply: Ping = dialer.call(&addr, Service::RAFT, &ping(i)).await.unwrap();
            assert_eq!(reply.n, i + 1);
        }
        assert!(
            seen.try_recv().is_err(),
            "the pooled connection is still open"
        );
        dialer.forget(&addr);
        let s = seen.recv().await.unwrap();
        assert_eq!(s.peer_node, Some(2));

        // A second connection (possibly a resumed session) still identifies the peer.
        let reply: Ping = dialer.call(&addr, Service::WRITE, &ping(5)).await.unwrap();
        assert_eq!(reply.n, 6);
        dialer.forget(&addr);
        let s = seen.recv().await.unwrap();
        assert_eq!((s.service, s.peer_node), (Service::WRITE, Some(2)));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stale_pooled_connection_is_replaced() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, true).await;
        let dialer = Dialer::new(&c.client_id).unwrap();
        for i in 0..4 {
            let reply: Ping = dialer.call(&addr, Service::RAFT, &ping(i)).await.unwrap();
            assert_eq!(reply.n, i + 1);
            // The server has closed that connection once it reports it.
            assert!(seen.recv().await.is_some());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn certificate_from_another_ca_is_refused() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, false).await;
        let other = ClusterCa::generate("other").unwrap();
        let intruder = other.issue_node(2, "n2", &[]).unwrap();
        // Trusts the real CA (so it would accept the server) but presents a foreign cert.
        let id = TlsIdentity::new(c.ca.cert_pem.clone(), &intruder);
        let dialer = Dialer::new(&id).unwrap();
        let result: Result<Ping, _> = dialer.call(&addr, Service::RAFT, &ping(1)).await;
        assert!(result.is_err(), "{result:?}");
        assert!(
            seen.try_recv().is_err(),
            "handler must not see the intruder"
        );

        // A node of another cluster does not trust this server either.
        let dialer = Dialer::new(&TlsIdentity::new(other.cert_pem.clone(), &intruder)).unwrap();
        assert!(dialer.connect(&addr, Service::RAFT).await.is_err());
        assert!(seen.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn anonymous_client_is_refused_except_for_join() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, false).await;
        let fp = c.ca.fingerprint();

        for service in [Service::RAFT, Service::WRITE, Service::STATUS] {
            let mut conn = connect_pinned(&addr, &fp, service).await.unwrap();
            let result: Result<Ping, _> = conn.call(&ping(1)).await;
            assert!(result.is_err(), "{service}: {result:?}");
        }
        assert!(
            seen.try_recv().is_err(),
            "refused before reaching the handler"
        );

        let mut conn = connect_pinned(&addr, &fp.to_uppercase(), Service::JOIN)
            .await
            .unwrap();
        assert_eq!(conn.server_node(), Some(1));
        let reply: Ping = conn.call(&ping(7)).await.unwrap();
        assert_eq!(reply.n, 8);
        drop(conn);
        let s = seen.recv().await.unwrap();
        assert_eq!((s.service, s.peer_node), (Service::JOIN, None));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pinned_client_needs_the_right_fingerprint() {
        let c = cluster();
        let (addr, _seen, _stop) = start(&c.server_id, false).await;
        let good = c.ca.fingerprint();
        assert!(connect_pinned(&addr, &good, Service::JOIN).await.is_ok());

        let other = ClusterCa::generate("other").unwrap();
        for wrong in [
            other.fingerprint(),
            "00".repeat(32),
            String::new(),
            // The server's own (leaf) certificate is not the CA.
            fingerprint_of_der(
                &CertificateDer::from_pem_slice(c.server_id.cert_pem.as_bytes()).unwrap(),
            ),
        ] {
            let r = connect_pinned(&addr, &wrong, Service::JOIN).await;
            assert!(matches!(r, Err(TransportError::Tls(_))), "{wrong}: {r:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn oversized_frame_closes_the_connection() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, false).await;
        let dialer = Dialer::new(&c.client_id).unwrap();
        let mut conn = dialer.connect(&addr, Service::RAFT).await.unwrap();
        let stream = conn.stream_mut();
        stream
            .write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let s = seen.recv().await.unwrap();
        assert!(
            s.error.as_deref().unwrap_or("").contains("FrameTooLarge"),
            "{s:?}"
        );
        // The server closed the connection without answering.
        let after: Result<Option<Ping>, _> = conn.recv().await;
        assert!(matches!(after, Ok(None) | Err(_)), "{after:?}");
        assert!(!matches!(after, Ok(Some(_))));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connection_without_alpn_is_closed() {
        let c = cluster();
        let (addr, mut seen, _stop) = start(&c.server_id, false).await;
        // A certified client that names no service.
        let config = client_config(&c.client_id).unwrap();
        let connector = TlsConnector::from(config);
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let name = ServerName::try_from(CLUSTER_SERVER_NAME).unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        write_frame(&mut stream, &ping(1)).await.unwrap();
        let r: Result<Option<Ping>, _> = read_frame(&mut stream).await;
        assert!(!matches!(r, Ok(Some(_))), "{r:?}");
        assert!(seen.try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn server_stops_on_shutdown() {
        let c = cluster();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut services = Services::new();
        services
            .register(Service::RAFT, Arc::new(|_conn: Conn| async {}))
            .unwrap();
        let task = tokio::spawn(serve(
            listener,
            server_config(&c.server_id).unwrap(),
            Arc::new(services),
            stop_rx,
        ));
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn frames_round_trip_and_report_truncation() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &ping(3)).await.unwrap();
        write_frame(&mut a, &vec![1u8, 2, 3]).await.unwrap();
        let p: Option<Ping> = read_frame(&mut b).await.unwrap();
        assert_eq!(p, Some(ping(3)));
        // Decoding as the wrong type fails cleanly.
        let wrong: Result<Option<Ping>, _> = read_frame(&mut b).await;
        assert!(matches!(wrong, Err(TransportError::Decode(_))), "{wrong:?}");
        drop(a);
        let end: Option<Ping> = read_frame(&mut b).await.unwrap();
        assert_eq!(end, None);

        // A frame cut short is an error, not a clean end.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        let cut: Result<Option<Ping>, _> = read_frame(&mut b).await;
        assert!(matches!(cut, Err(TransportError::Closed)), "{cut:?}");

        // A header cut short too.
        let (mut a, mut b) = tokio::io::duplex(16);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        let cut: Result<Option<Ping>, _> = read_frame(&mut b).await;
        assert!(matches!(cut, Err(TransportError::Closed)), "{cut:?}");

        // An oversized announcement is rejected before reading the payload.
        let (mut a, mut b) = tokio::io::duplex(16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let big: Result<Option<Ping>, _> = read_frame(&mut b).await;
        assert!(
            matches!(big, Err(TransportError::FrameTooLarge(n)) if n == u32::MAX as usize),
            "{big:?}"
        );
    }
}
