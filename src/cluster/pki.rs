//! The cluster's public-key infrastructure: the cluster CA, node certificates, their
//! files in a node's data directory, and the few certificate facts the transport reads
//! back (fingerprints, the node id in a peer certificate's common name).
//!
//! Every node certificate is signed by the cluster CA, carries the DNS name
//! [`CLUSTER_SERVER_NAME`] (clients connect using that name, whatever address they
//! dial), `node-<id>.pigeonair-cluster`, and the node's hosts; its common name is
//! `pigeonair-node-<id>`, which is how a server learns which node a verified client is.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName};
use sha2::{Digest, Sha256};

use super::transport::TlsIdentity;

/// The DNS name every node certificate carries; clients verify servers against it.
pub const CLUSTER_SERVER_NAME: &str = "pigeonair-cluster";

/// The common-name prefix of node certificates (`pigeonair-node-<id>`).
pub const NODE_CN_PREFIX: &str = "pigeonair-node-";

/// The common-name prefix of the cluster CA certificate.
const CA_CN_PREFIX: &str = "PigeonAir cluster ";

/// How long the cluster CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a node certificate is valid.
const NODE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How far back `not_before` is set, so peers with slightly late clocks accept a new
/// certificate.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// Errors of the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating or signing a certificate or key failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A PEM file or string could not be parsed.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A certificate or key is well-formed but not what was expected.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// Reading or writing a certificate file failed.
    #[error("certificate file error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Generate(e.to_string())
    }
}

/// The cluster certificate authority: signs every node certificate.
pub struct ClusterCa {
    /// The CA certificate (PEM); public, shared with every node and pinned by joiners.
    pub cert_pem: String,
    /// The CA private key (PEM, PKCS#8).
    key_pem: String,
    /// The CA certificate's subject common name (needed to sign as this CA).
    common_name: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("common_name", &self.common_name)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A node's certificate and private key.
#[derive(Clone)]
pub struct NodeCert {
    /// The node certificate (PEM), signed by the cluster CA.
    pub cert_pem: String,
    /// The node's private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Sets `not_before` to a day ago and `not_after` to `validity` from now.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + validity;
}

/// A random, positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep it 16 bytes long and positive
    SerialNumber::from_slice(&bytes)
}

/// The distinguished name `CN=<cn>`, encoded the same way whenever it is rebuilt.
fn cn_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Lower-case hex of a byte string.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Lower-case hex SHA-256 of a DER certificate (the form pinned in join tokens).
pub fn fingerprint_of_der(cert_der: &[u8]) -> String {
    hex(&Sha256::digest(cert_der))
}

/// Lower-case hex SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn fingerprint_of_pem(cert_pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_of_der(&first_cert_der(cert_pem)?))
}

/// The DER of the first certificate in a PEM string.
pub(crate) fn first_cert_der(cert_pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

impl ClusterCa {
    /// Makes a new cluster CA: a self-signed ECDSA P-256 certificate with
    /// CN `PigeonAir cluster <cluster_id>`, valid ten years, allowed to sign certificates.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate()?;
        let common_name = format!("{CA_CN_PREFIX}{cluster_id}");
        let mut params = CertificateParams::default();
        params.distinguished_name = cn_name(&common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            common_name,
        })
    }

    /// Loads a CA from its certificate and private key (both PEM). Fails if the key
    /// does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let der = first_cert_der(cert_pem)?;
        let parts = der::parse_certificate(&der)
            .ok_or_else(|| PkiError::Invalid("cannot parse the CA certificate".into()))?;
        let common_name = der::single_common_name(parts.subject_content)
            .ok_or_else(|| PkiError::Invalid("the CA certificate has no single CN".into()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(e.to_string()))?;
        if key.subject_public_key_info() != parts.spki {
            return Err(PkiError::Invalid(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            common_name: common_name.to_string(),
        })
    }

    /// The CA private key (PEM); write it only where [`PkiFiles::save_ca`] does.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Lower-case hex SHA-256 of the CA certificate's DER: the fingerprint carried in
    /// join tokens (`PA1.<id>.<secret>.<fingerprint>`).
    pub fn fingerprint(&self) -> String {
        fingerprint_of_pem(&self.cert_pem).unwrap_or_default()
    }

    /// Issues a node certificate signed by this CA: CN `pigeonair-node-<node_id>`, SANs
    /// `pigeonair-cluster`, `node-<node_id>.pigeonair-cluster` and each of `hosts` (an IP
    /// address SAN if it parses as one, else a DNS name), usable for both TLS server and
    /// client authentication, valid five years, with a fresh P-256 key.
    ///
    /// `node_name` is informational only (it is recorded in the log, not the certificate,
    /// so that renaming a node does not invalidate it).
    pub fn issue_node(
        &self,
        node_id: u64,
        node_name: &str,
        hosts: &[String],
    ) -> Result<NodeCert, PkiError> {
        let issuer = self.issuer()?;
        let mut sans = vec![
            SanType::DnsName(CLUSTER_SERVER_NAME.try_into()?),
            SanType::DnsName(format!("node-{node_id}.{CLUSTER_SERVER_NAME}").try_into()?),
        ];
        for host in hosts {
            let host = host.trim();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() {
                continue;
            }
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    let name = host.trim_end_matches('.').to_ascii_lowercase();
                    let invalid = || {
                        PkiError::Invalid(format!(
                            "host {host:?} is neither an IP address nor a DNS name"
                        ))
                    };
                    DnsName::try_from(name.as_str()).map_err(|_| invalid())?;
                    SanType::DnsName(name.try_into().map_err(|_| invalid())?)
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = cn_name(&format!("{NODE_CN_PREFIX}{node_id}"));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, NODE_VALIDITY);
        let cert = self.sign(params, &key, &issuer)?;
        tracing::info!(node_id, node_name, "issued a node certificate");
        Ok(NodeCert {
            cert_pem: cert,
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a TLS client certificate for SASL EXTERNAL binds to the LDAP listeners,
    /// which trust the cluster CA for client certificates. The certificate names the
    /// entry `dn` in a URI subject alternative name `ldap:///<dn>` (RFC 4516, the DN
    /// percent-encoded), which the node maps back to the entry; the subject is just
    /// `CN=<common_name>`. Client authentication only, a fresh P-256 key, valid for
    /// `validity`.
    pub fn issue_client(
        &self,
        dn: &str,
        common_name: &str,
        validity: Duration,
    ) -> Result<NodeCert, PkiError> {
        let uri = format!("ldap:///{}", percent_encode(dn));
        let uri = uri
            .try_into()
            .map_err(|_| PkiError::Invalid(format!("cannot put {dn:?} in a URI")))?;
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = cn_name(common_name);
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, validity);
        let cert = self.sign(params, &key, &issuer)?;
        Ok(NodeCert {
            cert_pem: cert,
            key_pem: key.serialize_pem(),
        })
    }

    /// This CA as an issuer for rcgen.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::Pem(e.to_string()))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = cn_name(&self.common_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Issuer::new(ca_params, ca_key))
    }

    /// Signs `params` for `key`; the certificate as PEM. Checks that the issuer name is
    /// byte-identical to the CA's subject, which path building needs.
    fn sign(
        &self,
        params: CertificateParams,
        key: &KeyPair,
        issuer: &Issuer<'static, KeyPair>,
    ) -> Result<String, PkiError> {
        let cert = params.signed_by(key, issuer)?;
        let ca_der = first_cert_der(&self.cert_pem)?;
        let ca_parts = der::parse_certificate(&ca_der)
            .ok_or_else(|| PkiError::Invalid("cannot parse the CA certificate".into()))?;
        let parts = der::parse_certificate(cert.der())
            .ok_or_else(|| PkiError::Invalid("cannot parse the issued certificate".into()))?;
        if parts.issuer != ca_parts.subject {
            return Err(PkiError::Invalid(
                "the issued certificate's issuer does not match the CA subject".into(),
            ));
        }
        Ok(cert.pem())
    }
}

/// Percent-encodes everything but unreserved characters and the DN punctuation
/// `,=+@` (RFC 3986, RFC 4516).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~,=+@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` on a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
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
    let parts = der::parse_certificate(cert_der)?;
    let subject = der::name_to_string(parts.subject_content)?;
    let mut names = ClientNames {
        subject,
        ..ClientNames::default()
    };
    for (tag, value) in der::subject_alt_names(parts.extensions)? {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        match tag {
            der::SAN_EMAIL => names.emails.push(text.to_string()),
            der::SAN_URI => {
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

/// The node id in a peer certificate (DER): the `<id>` of its subject common name
/// `pigeonair-node-<id>`. `None` if the certificate cannot be parsed, has no single CN,
/// or the CN is not of that form. Only meaningful for a certificate already verified
/// against the cluster CA.
pub fn node_id_of_peer(cert_der: &[u8]) -> Option<u64> {
    let parts = der::parse_certificate(cert_der)?;
    let cn = der::single_common_name(parts.subject_content)?;
    let digits = cn.strip_prefix(NODE_CN_PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The certificate files of a node, in the `tls/` folder of its data directory:
/// `ca.pem`, `ca-key.pem` (0600; kept by voters, any of which may become leader and
/// sign join requests), `node.pem` and `node-key.pem` (0600).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    dir: PathBuf,
}

impl PkiFiles {
    /// The files of the node whose data directory is `data_dir` (in `data_dir/tls`).
    pub fn new(data_dir: &Path) -> PkiFiles {
        PkiFiles {
            dir: data_dir.join("tls"),
        }
    }

    /// The `tls/` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate (`ca.pem`).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Path of the CA private key (`ca-key.pem`).
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// Path of the node certificate (`node.pem`).
    pub fn node_cert_path(&self) -> PathBuf {
        self.dir.join("node.pem")
    }

    /// Path of the node private key (`node-key.pem`).
    pub fn node_key_path(&self) -> PathBuf {
        self.dir.join("node-key.pem")
    }

    /// Whether the CA certificate and the node certificate and key are all present.
    pub fn exists(&self) -> bool {
        self.ca_cert_path().is_file()
            && self.node_cert_path().is_file()
            && self.node_key_path().is_file()
    }

    /// Whether this node holds the CA private key (and so can sign join requests).
    pub fn has_ca_key(&self) -> bool {
        self.ca_key_path().is_file()
    }

    /// Saves the CA certificate and its private key (the key with mode 0600).
    pub fn save_ca(&self, ca: &ClusterCa) -> Result<(), PkiError> {
        self.save_ca_cert(&ca.cert_pem)?;
        write_file(&self.ca_key_path(), ca.key_pem.as_bytes(), true)
    }

    /// Saves only the CA certificate (a node that does not hold the CA key).
    pub fn save_ca_cert(&self, cert_pem: &str) -> Result<(), PkiError> {
        self.ensure_dir()?;
        write_file(&self.ca_cert_path(), cert_pem.as_bytes(), false)
    }

    /// Saves the node certificate and its private key (the key with mode 0600).
    pub fn save_node(&self, node: &NodeCert) -> Result<(), PkiError> {
        self.ensure_dir()?;
        write_file(&self.node_key_path(), node.key_pem.as_bytes(), true)?;
        write_file(&self.node_cert_path(), node.cert_pem.as_bytes(), false)
    }

    /// Loads the CA certificate (PEM).
    pub fn load_ca_cert(&self) -> Result<String, PkiError> {
        Ok(fs::read_to_string(self.ca_cert_path())?)
    }

    /// Loads the CA with its private key; fails if this node does not hold the key.
    pub fn load_ca(&self) -> Result<ClusterCa, PkiError> {
        let cert = self.load_ca_cert()?;
        let key = fs::read_to_string(self.ca_key_path())?;
        ClusterCa::from_pem(&cert, &key)
    }

    /// Loads the node certificate and key.
    pub fn load_node(&self) -> Result<NodeCert, PkiError> {
        Ok(NodeCert {
            cert_pem: fs::read_to_string(self.node_cert_path())?,
            key_pem: fs::read_to_string(self.node_key_path())?,
        })
    }

    /// Loads what the transport needs: the CA certificate and the node certificate/key.
    pub fn load_identity(&self) -> Result<TlsIdentity, PkiError> {
        let node = self.load_node()?;
        Ok(TlsIdentity {
            ca_pem: self.load_ca_cert()?,
            cert_pem: node.cert_pem,
            key_pem: node.key_pem,
        })
    }

    fn ensure_dir(&self) -> Result<(), PkiError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir)?;
        Ok(())
    }
}

/// Writes `path` atomically (temporary file, fsync, rename), with mode 0600 if `secret`.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PkiError::Invalid(format!("bad path {}", path.display())))?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok::<(), std::io::Error>(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}

/// A minimal, bounded, panic-free DER reader: just enough of X.509 to find the issuer,
/// subject (and its common name) and public key of a certificate.
mod der {
    /// One TLV: its tag, its contents, the whole encoding, and what follows it.
    struct Tlv<'a> {
        tag: u8,
        content: &'a [u8],
        whole: &'a [u8],
        rest: &'a [u8],
    }

    fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, after_tag) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags do not occur in what we read
        }
        let (&first, after_len) = after_tag.split_first()?;
        let (len, header_len, body) = if first < 0x80 {
            (first as usize, 2usize, after_len)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || after_len.len() < n {
                return None; // indefinite or absurd lengths
            }
            let mut len = 0usize;
            for &b in &after_len[..n] {
                len = (len << 8) | b as usize;
            }
            (len, 2 + n, &after_len[n..])
        };
        if body.len() < len {
            return None;
        }
        let total = header_len.checked_add(len)?;
        Some(Tlv {
            tag,
            content: &body[..len],
            whole: input.get(..total)?,
            rest: &body[len..],
        })
    }

    fn expect(input: &[u8], tag: u8) -> Option<Tlv<'_>> {
        let tlv = read_tlv(input)?;
        (tlv.tag == tag).then_some(tlv)
    }

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

    /// The parts of a certificate the PKI reads.
    pub(super) struct CertParts<'a> {
        /// The issuer Name, whole encoding.
        pub issuer: &'a [u8],
        /// The subject Name, whole encoding.
        pub subject: &'a [u8],
        /// The subject Name's contents (its RDNs).
        pub subject_content: &'a [u8],
        /// The SubjectPublicKeyInfo, whole encoding.
        pub spki: &'a [u8],
        /// The contents of the Extensions SEQUENCE (empty when there are none).
        pub extensions: &'a [u8],
    }

    /// Splits a DER certificate into the parts above.
    pub(super) fn parse_certificate(der: &[u8]) -> Option<CertParts<'_>> {
        let cert = expect(der, SEQUENCE)?;
        if !cert.rest.is_empty() {
            return None;
        }
        let tbs = expect(cert.content, SEQUENCE)?;
        let mut r = tbs.content;
        let first = read_tlv(r)?;
        if first.tag == VERSION {
            r = first.rest;
        }
        let serial = expect(r, INTEGER)?;
        let sig_alg = expect(serial.rest, SEQUENCE)?;
        let issuer = expect(sig_alg.rest, SEQUENCE)?;
        let validity = expect(issuer.rest, SEQUENCE)?;
        let subject = expect(validity.rest, SEQUENCE)?;
        let spki = expect(subject.rest, SEQUENCE)?;
        let mut extensions: &[u8] = &[];
        let mut r = spki.rest;
        while !r.is_empty() {
            let field = read_tlv(r)?;
            r = field.rest;
            // [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions
            if field.tag == 0xa3 {
                extensions = expect(field.content, SEQUENCE)?.content;
            }
        }
        Some(CertParts {
            issuer: issuer.whole,
            subject: subject.whole,
            subject_content: subject.content,
            spki: spki.whole,
            extensions,
        })
    }

    /// The rfc822Name tag of a GeneralName.
    pub(super) const SAN_EMAIL: u8 = 0x81;
    /// The uniformResourceIdentifier tag of a GeneralName.
    pub(super) const SAN_URI: u8 = 0x86;
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

    /// The GeneralNames of the subjectAltName extension, as (tag, contents); empty when
    /// there is none, `None` when the extensions are malformed.
    pub(super) fn subject_alt_names(extensions: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let mut out = Vec::new();
        let mut exts = extensions;
        while !exts.is_empty() {
            let ext = expect(exts, SEQUENCE)?;
            exts = ext.rest;
            let oid = expect(ext.content, OID)?;
            if oid.content != SAN_OID {
                continue;
            }
            let mut next = read_tlv(oid.rest)?;
            if next.tag == 0x01 {
                next = read_tlv(next.rest)?; // critical BOOLEAN
            }
            if next.tag != 0x04 {
                return None;
            }
            let names = expect(next.content, SEQUENCE)?;
            let mut r = names.content;
            while !r.is_empty() {
                let name = read_tlv(r)?;
                r = name.rest;
                out.push((name.tag, name.content));
            }
        }
        Some(out)
    }

    /// A Name's contents as an RFC 4514 string (see `ClientNames::subject`).
    pub(super) fn name_to_string(name_content: &[u8]) -> Option<String> {
        let mut rdns_out: Vec<String> = Vec::new();
        let mut rdns = name_content;
        while !rdns.is_empty() {
            let rdn = expect(rdns, SET)?;
            rdns = rdn.rest;
            let mut avas_out: Vec<String> = Vec::new();
            let mut atvs = rdn.content;
            while !atvs.is_empty() {
                let atv = expect(atvs, SEQUENCE)?;
                atvs = atv.rest;
                let oid = expect(atv.content, OID)?;
                let value = read_tlv(oid.rest)?;
                if !value.rest.is_empty() {
                    return None;
                }
                let name = match oid.content {
                    [0x55, 0x04, 0x03] => Some("cn"),
                    [0x55, 0x04, 0x06] => Some("c"),
                    [0x55, 0x04, 0x07] => Some("l"),
                    [0x55, 0x04, 0x08] => Some("st"),
                    [0x55, 0x04, 0x09] => Some("street"),
                    [0x55, 0x04, 0x0a] => Some("o"),
                    [0x55, 0x04, 0x0b] => Some("ou"),
                    [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("dc"),
                    [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("uid"),
                    [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => Some("emailAddress"),
                    _ => None,
                };
                let text = match value.tag {
                    // UTF8String, PrintableString, IA5String
                    0x0c | 0x13 | 0x16 => std::str::from_utf8(value.content).ok(),
                    _ => None,
                };
                let mut out = String::new();
                match (name, text) {
                    (Some(name), Some(text)) => {
                        out.push_str(name);
                        out.push('=');
                        crate::directory::dn::escape_value(text.as_bytes(), &mut out);
                    }
                    _ => {
                        out.push_str(&dotted(oid.content)?);
                        out.push_str("=#");
                        out.push_str(&super::hex(value.whole));
                    }
                }
                avas_out.push(out);
            }
            if avas_out.is_empty() {
                return None;
            }
            rdns_out.push(avas_out.join("+"));
        }
        rdns_out.reverse();
        Some(rdns_out.join(","))
    }

    /// An OID's contents in dotted-decimal form.
    pub(super) fn dotted(oid: &[u8]) -> Option<String> {
        let mut arcs: Vec<u64> = Vec::new();
        let mut acc: u64 = 0;
        for (i, &b) in oid.iter().enumerate() {
            if acc > (u64::MAX >> 7) {
                return None;
            }
            acc = (acc << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (acc / 40).min(2);
                    arcs.push(first);
                    arcs.push(acc - first * 40);
                } else {
                    arcs.push(acc);
                }
                acc = 0;
            } else if i + 1 == oid.len() {
                return None;
            }
        }
        if arcs.is_empty() {
            return None;
        }
        Some(
            arcs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("."),
        )
    }

    /// The one common name in a Name's contents; `None` if there is none, more than
    /// one, or it is not a UTF8String, PrintableString or IA5String.
    pub(super) fn single_common_name(name_content: &[u8]) -> Option<&str> {
        let mut found: Option<&str> = None;
        let mut rdns = name_content;
        while !rdns.is_empty() {
            let rdn = expect(rdns, SET)?;
            rdns = rdn.rest;
            let mut atvs = rdn.content;
            while !atvs.is_empty() {
                let atv = expect(atvs, SEQUENCE)?;
                atvs = atv.rest;
                let oid = expect(atv.content, OID)?;
                if oid.content != CN_OID {
                    continue;
                }
                let value = read_tlv(oid.rest)?;
                if !value.rest.is_empty() || !matches!(value.tag, 0x0c | 0x13 | 0x16) {
                    return None;
                }
                let s = std::str::from_utf8(value.content).ok()?;
                if found.replace(s).is_some() {
                    return None;
                }
            }
        }
        found
    }
}

/// A self-signed server certificate for `hosts` (names or IP addresses), for a
/// quickstart node's LDAPS and StartTLS: clients must be told to trust it explicitly.
pub fn self_signed_server(hosts: &[String]) -> Result<NodeCert, PkiError> {
    let certified = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    Ok(NodeCert {
        cert_pem: certified.cert.pem(),
        key_pem: certified.signing_key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_node_certificates() {
        let ca = ClusterCa::generate("c1").unwrap();
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(fingerprint_of_pem(&ca.cert_pem).unwrap(), fp);

        let node = ca
            .issue_node(
                7,
                "n7",
                &["10.0.0.7".to_string(), "mail7.example.org".into()],
            )
            .unwrap();
        let der = first_cert_der(&node.cert_pem).unwrap();
        assert_eq!(node_id_of_peer(&der), Some(7));
        // The CA certificate is not a node certificate.
        let ca_der = first_cert_der(&ca.cert_pem).unwrap();
        assert_eq!(node_id_of_peer(&ca_der), None);
        let parts = der::parse_certificate(&ca_der).unwrap();
        assert_eq!(
            der::single_common_name(parts.subject_content),
            Some("PigeonAir cluster c1")
        );

        // A CA reloaded from PEM issues certificates that chain the same way.
        let reloaded = ClusterCa::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
        assert_eq!(reloaded.fingerprint(), fp);
        let node2 = reloaded.issue_node(u64::MAX, "big", &[]).unwrap();
        let der2 = first_cert_der(&node2.cert_pem).unwrap();
        assert_eq!(node_id_of_peer(&der2), Some(u64::MAX));

        // A key from another CA is refused.
        let other = ClusterCa::generate("c2").unwrap();
        assert!(ClusterCa::from_pem(&ca.cert_pem, other.key_pem()).is_err());
        // Bad hosts are refused.
        assert!(ca.issue_node(1, "n1", &["not a host!".into()]).is_err());
    }

    #[test]
    fn client_certificates_name_an_ldap_entry() {
        let ca = ClusterCa::generate("c1").unwrap();
        let dn = "uid=Dove Cot\\, auth,ou=people,dc=example.org,ou=domains,dc=pigeonair";
        let client = ca.issue_client(dn, "dovecot", NODE_VALIDITY).unwrap();
        let der = first_cert_der(&client.cert_pem).unwrap();
        let names = client_names(&der).unwrap();
        assert_eq!(names.subject, "cn=dovecot");
        assert_eq!(names.ldap_dns, vec![dn.to_string()]);
        assert!(names.emails.is_empty());
        assert_eq!(node_id_of_peer(&der), None);
        assert!(ca.issue_client("cn=é", "x", NODE_VALIDITY).is_ok());

        // A node certificate names no entry; its DNS and IP names are not read as ones.
        let node = ca.issue_node(3, "n3", &["10.0.0.3".into()]).unwrap();
        let names = client_names(&first_cert_der(&node.cert_pem).unwrap()).unwrap();
        assert_eq!(names.subject, "cn=pigeonair-node-3");
        assert!(names.ldap_dns.is_empty() && names.emails.is_empty());

        // Subjects with repeated types, escapes and e-mail addresses, as other CAs write them.
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Smith, John");
        name.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            rcgen::DnValue::Ia5String("john@example.org".try_into().unwrap()),
        );
        name.push(DnType::CustomDnType(vec![1, 2, 3, 4]), "x");
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::Rfc822Name("js@example.org".try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = client_names(cert.der()).unwrap();
        assert_eq!(
            names.subject,
            "1.2.3.4=#0c0178+emailAddress=john@example.org+cn=Smith\\, John"
                .split('+')
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(names.emails, vec!["js@example.org", "john@example.org"]);

        assert_eq!(percent_decode(&percent_encode(dn)).as_deref(), Some(dn));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(der::dotted(&[0x2a, 0x86, 0x48]).as_deref(), Some("1.2.840"));
        assert_eq!(der::dotted(&[0x2a, 0x86]), None);
        assert_eq!(client_names(b"garbage"), None);
    }

    #[test]
    fn cn_parser_is_panic_free_on_garbage() {
        assert_eq!(node_id_of_peer(&[]), None);
        assert_eq!(node_id_of_peer(&[0x30]), None);
        assert_eq!(node_id_of_peer(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(node_id_of_peer(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(node_id_of_peer(&[0x1f, 0x01, 0x00]), None);
        assert_eq!(node_id_of_peer(b"hello, world, this is not DER"), None);

        let ca = ClusterCa::generate("g").unwrap();
        let node = ca.issue_node(42, "n", &[]).unwrap();
        let der = first_cert_der(&node.cert_pem).unwrap().to_vec();
        // Every truncation and every single-byte corruption is handled without panicking.
        for n in 0..der.len() {
            assert_eq!(node_id_of_peer(&der[..n]), None);
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..der.len() {
            let mut bad = der.clone();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bad[i] ^= (seed >> 56) as u8 | 1;
            let _ = node_id_of_peer(&bad);
        }
        for _ in 0..2000 {
            let mut junk = vec![0u8; (seed % 300) as usize];
            for b in junk.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (seed >> 33) as u8;
            }
            if let Some(first) = junk.first_mut() {
                *first = 0x30;
            }
            let _ = node_id_of_peer(&junk);
        }
    }

    #[test]
    fn files_round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let files = PkiFiles::new(tmp.path());
        assert!(!files.exists());
        let ca = ClusterCa::generate("f").unwrap();
        let node = ca.issue_node(1, "n1", &["127.0.0.1".into()]).unwrap();
        files.save_ca(&ca).unwrap();
        files.save_node(&node).unwrap();
        assert!(files.exists());
        assert!(files.has_ca_key());
        assert_eq!(files.load_ca().unwrap().fingerprint(), ca.fingerprint());
        let id = files.load_identity().unwrap();
        assert_eq!(id.cert_pem, node.cert_pem);
        assert_eq!(id.key_pem, node.key_pem);
        assert_eq!(id.ca_pem, ca.cert_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [files.ca_key_path(), files.node_key_path()] {
                let mode = fs::metadata(&p).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            }
        }
        // Saving again overwrites.
        files.save_node(&node).unwrap();
    }
}
