//! Distinguished names in the RFC 4514 string form.
//!
//! [`Dn::parse`] reads the string form (escapes, hex-encoded values, multi-valued RDNs)
//! into attribute/value pairs with the escapes removed; `Display` writes it back with the
//! escapes RFC 4514 section 2.4 requires. Normalisation by matching rule lives in the
//! schema, which knows each attribute's equality rule.

use std::fmt;

/// One `attribute=value` pair of an RDN, with escapes removed from the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ava {
    /// The attribute type as written (a name or a numeric OID).
    pub attr: String,
    /// The value, unescaped. A `#hex` value is kept as its decoded bytes.
    pub value: Vec<u8>,
}

/// A relative distinguished name: one or more AVAs joined by `+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rdn(pub Vec<Ava>);

/// A distinguished name, leaf RDN first. The empty DN names the Root DSE.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Dn {
    /// The RDNs, leaf first.
    pub rdns: Vec<Rdn>,
}

/// Why a string is not a DN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN: {0}")]
pub struct DnError(pub String);

impl Dn {
    /// The empty DN (the Root DSE).
    pub fn root() -> Dn {
        Dn { rdns: Vec::new() }
    }

    /// Parse the RFC 4514 string form. Spaces around `,`, `+` and `=` are tolerated as
    /// RFC 4514 section 3 allows for input.
    pub fn parse(s: &str) -> Result<Dn, DnError> {
        let b = s.as_bytes();
        let mut i = 0usize;
        let mut rdns = Vec::new();
        skip_spaces(b, &mut i);
        if i == b.len() {
            return Ok(Dn::root());
        }
        loop {
            let mut avas = Vec::new();
            loop {
                skip_spaces(b, &mut i);
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'.')
                {
                    i += 1;
                }
                let attr = &s[start..i];
                skip_spaces(b, &mut i);
                if attr.is_empty() || i == b.len() || b[i] != b'=' {
                    return Err(DnError(format!("expected attribute=value at offset {i}")));
                }
                if attr.starts_with(|c: char| c.is_ascii_digit()) {
                    if !attr
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
                    {
                        return Err(DnError(format!("bad numeric OID {attr:?}")));
                    }
                } else if !attr.starts_with(|c: char| c.is_ascii_alphabetic()) || attr.contains('.')
                {
                    return Err(DnError(format!("bad attribute type {attr:?}")));
                }
                i += 1; // '='
                skip_spaces(b, &mut i);
                let value = parse_value(b, &mut i)?;
                avas.push(Ava {
                    attr: attr.to_string(),
                    value,
                });
                skip_spaces(b, &mut i);
                if i < b.len() && b[i] == b'+' {
                    i += 1;
                    continue;
                }
                break;
            }
            rdns.push(Rdn(avas));
            if i == b.len() {
                break;
            }
            if b[i] == b',' || b[i] == b';' {
                i += 1;
                continue;
            }
            return Err(DnError(format!("unexpected character at offset {i}")));
        }
        Ok(Dn { rdns })
    }

    /// True for the empty DN.
    pub fn is_root(&self) -> bool {
        self.rdns.is_empty()
    }

    /// The number of RDNs (0 for the root).
    pub fn depth(&self) -> usize {
        self.rdns.len()
    }

    /// The DN one level up; the root's parent is the root.
    pub fn parent(&self) -> Dn {
        Dn {
            rdns: self.rdns.iter().skip(1).cloned().collect(),
        }
    }

    /// The DN of a child of this one.
    pub fn child(&self, rdn: Rdn) -> Dn {
        let mut rdns = Vec::with_capacity(self.rdns.len() + 1);
        rdns.push(rdn);
        rdns.extend(self.rdns.iter().cloned());
        Dn { rdns }
    }

    /// The leaf RDN, if any.
    pub fn rdn(&self) -> Option<&Rdn> {
        self.rdns.first()
    }
}

fn skip_spaces(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i] == b' ' {
        *i += 1;
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_value(b: &[u8], i: &mut usize) -> Result<Vec<u8>, DnError> {
    if *i < b.len() && b[*i] == b'#' {
        *i += 1;
        let mut out = Vec::new();
        while *i < b.len() && hex(b[*i]).is_some() {
            let hi = hex(b[*i]).unwrap_or(0);
            let lo = b
                .get(*i + 1)
                .and_then(|c| hex(*c))
                .ok_or_else(|| DnError("odd hex string".into()))?;
            out.push(hi << 4 | lo);
            *i += 2;
        }
        if out.is_empty() {
            return Err(DnError("empty hex string".into()));
        }
        // The hex form holds a BER encoding; take the content of a primitive string.
        return Ok(ber_string_content(&out).unwrap_or(out));
    }
    let mut out = Vec::new();
    let mut trailing_unescaped_spaces = 0usize;
    while *i < b.len() {
        let c = b[*i];
        match c {
            b',' | b'+' | b';' => break,
            b'\\' => {
                *i += 1;
                let Some(&n) = b.get(*i) else {
                    return Err(DnError("dangling escape".into()));
                };
                if let (Some(hi), Some(lo)) = (hex(n), b.get(*i + 1).and_then(|c| hex(*c))) {
                    out.push(hi << 4 | lo);
                    *i += 2;
                } else if b" \"#+,;<=>\\".contains(&n) {
                    out.push(n);
                    *i += 1;
                } else {
                    return Err(DnError(format!("bad escape at offset {i}")));
                }
                trailing_unescaped_spaces = 0;
                continue;
            }
            b'"' => return Err(DnError("unescaped quote".into())),
            _ => {
                out.push(c);
                if c == b' ' {
                    trailing_unescaped_spaces += 1;
                } else {
                    trailing_unescaped_spaces = 0;
                }
                *i += 1;
            }
        }
    }
    out.truncate(out.len() - trailing_unescaped_spaces);
    Ok(out)
}

/// The contents of a BER-encoded primitive string value (`#04...` style hex values).
fn ber_string_content(ber: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = ber.split_first()?;
    if tag & 0x20 != 0 {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (len0 as usize, rest)
    } else {
        let n = (len0 & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (
            rest[..n].iter().fold(0usize, |a, &x| a << 8 | x as usize),
            &rest[n..],
        )
    };
    (rest.len() == len).then(|| rest.to_vec())
}

/// Write one value with the escapes RFC 4514 section 2.4 requires.
pub fn escape_value(v: &[u8], out: &mut String) {
    let s = String::from_utf8_lossy(v);
    let n = s.chars().count();
    for (k, ch) in s.chars().enumerate() {
        let special = matches!(ch, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (k == 0 && (ch == '#' || ch == ' '))
            || (k + 1 == n && ch == ' ');
        if ch == '\0' {
            out.push_str("\\00");
        } else if special {
            out.push('\\');
            out.push(ch);
        } else if (ch as u32) < 0x20 || ch as u32 == 0x7f {
            out.push_str(&format!("\\{:02x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
}

impl fmt::Display for Rdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        for (k, ava) in self.0.iter().enumerate() {
            if k > 0 {
                s.push('+');
            }
            s.push_str(&ava.attr);
            s.push('=');
            escape_value(&ava.value, &mut s);
        }
        f.write_str(&s)
    }
}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, rdn) in self.rdns.iter().enumerate() {
            if k > 0 {
                f.write_str(",")?;
            }
            write!(f, "{rdn}")?;
        }
        Ok(())
    }
}

impl Rdn {
    /// Parse a single RDN (`cn=a+sn=b`).
    pub fn parse(s: &str) -> Result<Rdn, DnError> {
        let dn = Dn::parse(s)?;
        if dn.rdns.len() != 1 {
            return Err(DnError("expected exactly one RDN".into()));
        }
        Ok(dn.rdns.into_iter().next().unwrap_or(Rdn(Vec::new())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc4514_examples() {
        let dn = Dn::parse("UID=jsmith,DC=example,DC=net").unwrap();
        assert_eq!(dn.rdns.len(), 3);
        assert_eq!(dn.rdns[0].0[0].value, b"jsmith");
        let dn = Dn::parse("OU=Sales+CN=J.  Smith,DC=example,DC=net").unwrap();
        assert_eq!(dn.rdns[0].0.len(), 2);
        assert_eq!(dn.rdns[0].0[1].value, b"J.  Smith");
        let dn = Dn::parse("CN=James \\\"Jim\\\" Smith\\, III,DC=example,DC=net").unwrap();
        assert_eq!(dn.rdns[0].0[0].value, b"James \"Jim\" Smith, III");
        let dn = Dn::parse("CN=Before\\0dAfter,DC=example,DC=net").unwrap();
        assert_eq!(dn.rdns[0].0[0].value, b"Before\rAfter");
        let dn = Dn::parse("1.3.6.1.4.1.1466.0=#04024869,DC=example,DC=com").unwrap();
        assert_eq!(dn.rdns[0].0[0].value, b"Hi");
        let dn = Dn::parse("CN=Lu\\C4\\8Di\\C4\\87").unwrap();
        assert_eq!(
            String::from_utf8(dn.rdns[0].0[0].value.clone()).unwrap(),
            "Lučić"
        );
    }

    #[test]
    fn round_trips_escapes() {
        for s in [
            "cn=a\\,b,dc=x",
            "cn=\\ lead,dc=x",
            "cn=trail\\ ,dc=x",
            "cn=\\#x",
            "cn=a\\+b+sn=c",
            "",
        ] {
            let dn = Dn::parse(s).unwrap();
            assert_eq!(Dn::parse(&dn.to_string()).unwrap(), dn, "{s}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "cn", "=x", "cn=a,", "cn=a\\", "cn=a\\zz", "c n=x", "1..2=x", "cn=\"q\"",
        ] {
            assert!(Dn::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn spaces_around_separators() {
        let dn = Dn::parse(" cn = a b , dc = x ").unwrap();
        assert_eq!(dn.rdns[0].0[0].value, b"a b");
        assert_eq!(dn.rdns[1].0[0].value, b"x");
    }
}
