//! A minimal, bounded, panic-free DER reader: just enough of X.509 to find the issuer,
//! subject (and its common name) and public key of a certificate.

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
pub(crate) struct CertParts<'a> {
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
pub(crate) fn parse_certificate(der: &[u8]) -> Option<CertParts<'_>> {
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
pub(crate) const SAN_EMAIL: u8 = 0x81;
/// The uniformResourceIdentifier tag of a GeneralName.
pub(crate) const SAN_URI: u8 = 0x86;
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

/// The GeneralNames of the subjectAltName extension, as (tag, contents); empty when
/// there is none, `None` when the extensions are malformed.
pub(crate) fn subject_alt_names(extensions: &[u8]) -> Option<Vec<(u8, &[u8])>> {
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
pub(crate) fn name_to_string(name_content: &[u8]) -> Option<String> {
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
                    out.push_str(&hex(value.whole));
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
pub(crate) fn dotted(oid: &[u8]) -> Option<String> {
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
pub(crate) fn single_common_name(name_content: &[u8]) -> Option<&str> {
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

/// Lower-case hex of a byte string.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
