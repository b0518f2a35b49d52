//! TLS for the public listeners: a server configuration from PEM files (optionally
//! asking for client certificates from trusted CAs), how a listener uses it, and what
//! a verified client certificate says about its holder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// rustls refused the configuration (a key that does not match, no usable CA, ...).
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// How a listener handles TLS.
#[derive(Clone)]
pub enum ListenerTls {
    /// Plain text first; the protocol's upgrade command (StartTLS, STARTTLS, STLS) is
    /// offered when an acceptor is given.
    Plain(Option<TlsAcceptor>),
    /// TLS from the first byte (LDAPS, SMTPS, IMAPS, POP3S).
    Implicit(TlsAcceptor),
}

impl ListenerTls {
    /// The TLS of a listener: implicit when `implicit` and a certificate is configured,
    /// else plain with the upgrade command offered when one is.
    pub fn new(acceptor: &Option<TlsAcceptor>, implicit: bool) -> ListenerTls {
        match (acceptor, implicit) {
            (Some(a), true) => ListenerTls::Implicit(a.clone()),
            (a, _) => ListenerTls::Plain(a.clone()),
        }
    }
}

/// A server configuration for a public listener: the certificate chain in `cert` and
/// the private key in `key` (PEM), TLS 1.2 and 1.3. When `client_cas` names any CA
/// file, clients are asked for a certificate, which is optional but must chain to one
/// of those CAs when presented.
pub fn server_acceptor(
    cert: &Path,
    key: &Path,
    client_cas: &[PathBuf],
) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for file in client_cas {
        for cert in CertificateDer::pem_file_iter(file).map_err(|e| file_error(file, e))? {
            let cert = cert.map_err(|e| file_error(file, e))?;
            roots.add(cert).map_err(|e| file_error(file, e))?;
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(format!("TLS client CAs: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let server = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(format!("TLS certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The names in the client's certificate, when it presented one (rustls has verified it
/// against the trusted client CAs already).
pub fn client_cert<S>(tls: &tokio_rustls::server::TlsStream<S>) -> Option<Arc<ClientNames>> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    client_names(cert).map(Arc::new)
}

/// The protocol version and cipher suite a TLS session agreed on, as trace headers and
/// logs write them (`TLSv1.3`, `TLS13_AES_256_GCM_SHA384`).
pub fn session_summary<S>(tls: &tokio_rustls::server::TlsStream<S>) -> (String, String) {
    let conn = tls.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    (version, cipher)
}

/// What a verified client certificate says about who its holder is, for SASL EXTERNAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientNames {
    /// The subject as an RFC 4514 string, RDNs from the most specific to the root
    /// (`cn=dovecot,ou=system,dc=pigeonair`). Attribute types LDAP knows get their
    /// short names (`emailAddress` for the PKCS #9 one, as OpenSSL and OpenLDAP print
    /// it); others are written as a dotted OID with the value in `#hex`.
    pub subject: String,
    /// DNs named by `ldap:///<dn>` URI subject alternative names.
    pub ldap_dns: Vec<String>,
    /// Mail addresses: rfc822Name alternative names and subject `emailAddress`es.
    pub emails: Vec<String>,
}

/// The names in a client certificate (DER); `None` if it cannot be parsed.
pub fn client_names(cert_der: &[u8]) -> Option<ClientNames> {
    let parts = crate::net::der::parse_certificate(cert_der)?;
    let subject = crate::net::der::name_to_string(parts.subject_content)?;
    let mut names = ClientNames {
        subject,
        ..ClientNames::default()
    };
    for (tag, value) in crate::net::der::subject_alt_names(parts.extensions)? {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        match tag {
            crate::net::der::SAN_EMAIL => names.emails.push(text.to_string()),
            crate::net::der::SAN_URI => {
                let Some(rest) = text
                    .get(..8)
                    .filter(|p| p.eq_ignore_ascii_case("ldap:///"))
                    .map(|_| &text[8..])
                else {
                    continue;
                };
                // No attributes, scope or filter: just the DN.
                if !rest.contains('?') {
                    if let Some(dn) = percent_decode(rest) {
                        names.ldap_dns.push(dn);
                    }
                }
            }
            _ => {}
        }
    }
    for rdn in names.subject.split(',') {
        if let Some(mail) = rdn.strip_prefix("emailAddress=") {
            names.emails.push(mail.replace('\\', ""));
        }
    }
    Some(names)
}

/// Decodes `%XX` escapes; `None` on a broken escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
