//! Entries and attributes.

use serde::{Deserialize, Serialize};

/// An attribute: its type name and values, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// The attribute description as the schema names it (canonical name when stored).
    pub name: String,
    /// The values, raw bytes as sent by the client.
    pub values: Vec<Vec<u8>>,
}

impl Attribute {
    /// An attribute with string values.
    pub fn new<S: AsRef<[u8]>>(name: &str, values: impl IntoIterator<Item = S>) -> Attribute {
        Attribute {
            name: name.to_string(),
            values: values.into_iter().map(|v| v.as_ref().to_vec()).collect(),
        }
    }
}

/// An entry as stored: its DN in the form it was given, its DN key, and all attributes
/// (user and stored operational ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The DN as the client wrote it when the entry was added (or renamed).
    pub dn: String,
    /// The normalised DN key (see `Schema::dn_key`).
    pub key: String,
    /// The attributes; names are canonical schema names.
    pub attrs: Vec<Attribute>,
}

impl StoredEntry {
    /// The attribute with this canonical name (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.attrs
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// Mutable access to an attribute.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Attribute> {
        self.attrs
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The first value of an attribute as text.
    pub fn first_str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|a| a.values.first())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Set an attribute's values, replacing any.
    pub fn set(&mut self, name: &str, values: Vec<Vec<u8>>) {
        match self.get_mut(name) {
            Some(a) => a.values = values,
            None => self.attrs.push(Attribute {
                name: name.to_string(),
                values,
            }),
        }
    }

    /// Remove an attribute.
    pub fn remove(&mut self, name: &str) {
        self.attrs.retain(|a| !a.name.eq_ignore_ascii_case(name));
    }

    /// The depth of the entry below the root (number of RDNs).
    pub fn depth(&self) -> usize {
        self.key.matches('\0').count()
    }
}

/// Decode a stored entry (bincode's standard configuration of [`StoredEntry`]) keeping
/// only the attributes `keep` accepts; the others are skipped without being copied. A
/// search that returns two attributes of an entry with a dozen reads just those.
/// `None` when the bytes are not a whole entry.
pub fn decode_some(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<StoredEntry> {
    let mut r = Cursor { bytes, at: 0 };
    let dn = r.string()?.to_string();
    let key = r.string()?.to_string();
    let n = r.len()?;
    let mut attrs = Vec::new();
    for _ in 0..n {
        let name = r.string()?;
        let count = r.len()?;
        if keep(name) {
            let mut values = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                values.push(r.bytes()?.to_vec());
            }
            attrs.push(Attribute {
                name: name.to_string(),
                values,
            });
        } else {
            for _ in 0..count {
                r.bytes()?;
            }
        }
    }
    (r.at == bytes.len()).then_some(StoredEntry { dn, key, attrs })
}

/// A reader of bincode's standard encoding: variable-length integers, lengths before
/// sequences, `u8` as itself.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn len(&mut self) -> Option<usize> {
        let first = *self.take(1)?.first()?;
        let v = match first {
            0..=250 => first as u64,
            251 => u16::from_le_bytes(self.take(2)?.try_into().ok()?) as u64,
            252 => u32::from_le_bytes(self.take(4)?.try_into().ok()?) as u64,
            253 => u64::from_le_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        };
        usize::try_from(v).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(e: &StoredEntry) -> Vec<u8> {
        bincode::serde::encode_to_vec(e, bincode::config::standard()).unwrap()
    }

    #[test]
    fn partial_decoding_reads_what_bincode_wrote() {
        let long = vec![b'x'; 70_000];
        let e = StoredEntry {
            dn: "uid=alice,ou=people,dc=example.org".into(),
            key: "dc=example.org\0ou=people\0uid=alice".into(),
            attrs: vec![
                Attribute::new("objectClass", ["top", "inetOrgPerson"]),
                Attribute::new("mail", ["alice@example.org"]),
                Attribute::new("jpegPhoto", [long.as_slice()]),
                Attribute::new("description", Vec::<&[u8]>::new()),
                Attribute::new("cn", (0..300).map(|i| format!("name {i}"))),
            ],
        };
        let bytes = encode(&e);
        assert_eq!(decode_some(&bytes, &|_| true), Some(e.clone()));
        let some = decode_some(&bytes, &|n| n == "mail" || n == "cn").unwrap();
        assert_eq!(some.dn, e.dn);
        assert_eq!(some.key, e.key);
        assert_eq!(some.attrs, vec![e.attrs[1].clone(), e.attrs[4].clone()]);
        // Truncated or padded bytes are not an entry.
        for cut in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode_some(&bytes[..cut], &|_| true), None, "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(decode_some(&padded, &|_| true), None);
    }
}
