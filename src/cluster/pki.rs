//! The cluster's public-key infrastructure: the cluster CA, node certificates, their
//! files in a node's data directory, and the few certificate facts the transport reads
//! back (fingerprints, the node id in a peer certificate's common name).
//!
//! Every node certificate is signed by the cluster CA, carries the DNS name
//! [`CLUSTER_SERVER_NAME`] (clients connect using that name, whatever address they
//! dial), `node-<id>.pigeonair-cluster`, and the node's hosts; its common name is
//! `pigeonair-node-<id>`, which is how a server learns which node a verified client is.

use std::fs;
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
use crate::durable::{write_atomic, Access};
use crate::net::der::{self, hex};

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

/// Writes `path` atomically and durably, with mode 0600 if `secret`.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let access = if secret {
        Access::Private
    } else {
        Access::Public
    };
    Ok(write_atomic(path, contents, access)?)
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
    use crate::net::tls::{client_names, percent_decode};

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
