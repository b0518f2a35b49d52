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
