//! Equality, presence and substring indexes, and the planner that uses them to choose
//! candidate entries for a filter.
//!
//! Index keys are `attr \0 kind value`: kind `=` holds the value normalised by the
//! attribute's equality rule, `*` marks presence, `~` holds one trigram of the value
//! normalised for substrings (with start and end anchors). Candidates are a superset of
//! the matches: every candidate is still checked against the whole filter, so an
//! unindexed attribute only costs speed, never correctness.

use std::collections::{BTreeMap, BTreeSet};

use super::entry::{Attribute, StoredEntry};
use super::filter::Filter;
use super::schema::Schema;
use super::store::{Reader, StoreError};

/// Which indexes an attribute has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexKinds {
    /// Equality (and approximate) lookups.
    pub eq: bool,
    /// Presence lookups.
    pub pres: bool,
    /// Substring lookups.
    pub sub: bool,
}

/// The indexes of a directory: canonical lower-case attribute name to kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexSet {
    /// Indexed attributes.
    pub attrs: BTreeMap<String, IndexKinds>,
    /// Indexed attributes that have subtypes (a filter on them also matches the
    /// subtypes, which the index does not hold): the planner leaves these alone.
    #[serde(skip)]
    pub with_subtypes: BTreeSet<String>,
}

const START: char = '\u{1}';
const END: char = '\u{2}';

impl IndexSet {
    /// Build from config lines like `("mail", "eq,sub")`, resolving names by the schema.
    pub fn from_config(
        schema: &Schema,
        spec: &BTreeMap<String, String>,
    ) -> Result<IndexSet, String> {
        let mut attrs = BTreeMap::new();
        for (name, kinds) in spec {
            let at = schema
                .attr(name)
                .ok_or_else(|| format!("index on unknown attribute {name}"))?;
            let mut k = IndexKinds::default();
            for part in kinds.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part {
                    "eq" => k.eq = true,
                    "pres" => k.pres = true,
                    "sub" => k.sub = true,
                    other => {
                        return Err(format!(
                            "index kind {other:?} for {name} (use eq, pres, sub)"
                        ))
                    }
                }
            }
            if k.eq && at.equality.is_none() {
                return Err(format!("{name} has no equality rule to index"));
            }
            if k.sub && at.substr.is_none() {
                return Err(format!("{name} has no substring rule to index"));
            }
            attrs.insert(at.name().to_ascii_lowercase(), k);
        }
        let with_subtypes = attrs
            .keys()
            .filter(|a| {
                let at = schema.attr(a);
                schema.attribute_types().iter().any(|t| {
                    t.sup
                        .as_deref()
                        .and_then(|s| schema.attr(s))
                        .map(|s| s.oid.clone())
                        == at.map(|a| a.oid.clone())
                })
            })
            .cloned()
            .collect();
        Ok(IndexSet {
            attrs,
            with_subtypes,
        })
    }

    fn kinds(&self, attr_lc: &str) -> Option<IndexKinds> {
        if self.with_subtypes.contains(attr_lc) {
            return None;
        }
        self.attrs.get(attr_lc).copied()
    }

    /// Every index key of an entry.
    pub fn keys_of(&self, schema: &Schema, entry: &StoredEntry) -> Vec<Vec<u8>> {
        self.keys_where(schema, entry, |_| true)
    }

    /// The index keys of an entry's attributes for which `wanted` holds.
    pub fn keys_where(
        &self,
        schema: &Schema,
        entry: &StoredEntry,
        wanted: impl Fn(&Attribute) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut keys = BTreeSet::new();
        for attr in &entry.attrs {
            let lc = attr.name.to_ascii_lowercase();
            let Some(kinds) = self.attrs.get(&lc).copied() else {
                continue;
            };
            if !wanted(attr) {
                continue;
            }
            let Some(at) = schema.attr(&lc) else { continue };
            if kinds.pres {
                keys.insert(key(&lc, b'*', b""));
            }
            for v in &attr.values {
                if kinds.eq {
                    if let Some(n) = schema.normalize(at, v) {
                        keys.insert(key(&lc, b'=', &n));
                    }
                }
                if let (true, Some(rule)) = (kinds.sub, at.substr) {
                    let n = schema.normalize_by(rule, v).unwrap_or_else(|| v.clone());
                    let s = format!("{START}{}{END}", String::from_utf8_lossy(&n));
                    for t in trigrams(&s) {
                        keys.insert(key(&lc, b'~', t.as_bytes()));
                    }
                }
            }
        }
        keys.into_iter().collect()
    }

    /// Candidate ids for a filter, ascending, or `None` when the indexes cannot narrow
    /// it (every entry in scope must then be checked).
    pub fn candidates(
        &self,
        schema: &Schema,
        r: &impl Reader,
        f: &Filter,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        self.plan(schema, r, f, 0)
    }

    fn plan(
        &self,
        schema: &Schema,
        r: &impl Reader,
        f: &Filter,
        depth: usize,
    ) -> Result<Option<Vec<u64>>, StoreError> {
        if depth > 64 {
            return Ok(None);
        }
        let resolve = |attr: &str| {
            schema
                .attr(attr)
                .map(|at| (at, at.name().to_ascii_lowercase()))
        };
        Ok(match f {
            Filter::Equality(attr, value) | Filter::Approx(attr, value) => {
                let Some((at, lc)) = resolve(attr) else {
                    return Ok(Some(Vec::new()));
                };
                match (self.kinds(&lc), schema.normalize(at, value)) {
                    (Some(k), Some(n)) if k.eq => Some(r.index_get(&key(&lc, b'=', &n))?),
                    (Some(k), None) if k.eq => Some(Vec::new()),
                    _ => None,
                }
            }
            Filter::Present(attr) => {
                let Some((_, lc)) = resolve(attr) else {
                    return Ok(Some(Vec::new()));
                };
                match self.kinds(&lc) {
                    Some(k) if k.pres => Some(r.index_get(&key(&lc, b'*', b""))?),
                    _ => None,
                }
            }
            Filter::Substrings {
                attr,
                initial,
                any,
                last,
            } => {
                let Some((at, lc)) = resolve(attr) else {
                    return Ok(Some(Vec::new()));
                };
                let (Some(k), Some(rule)) = (self.kinds(&lc), at.substr) else {
                    return Ok(None);
                };
                if !k.sub {
                    return Ok(None);
                }
                let norm = |v: &Vec<u8>| {
                    String::from_utf8_lossy(&schema.normalize_substring(rule, v)).into_owned()
                };
                let mut grams = BTreeSet::new();
                if let Some(i) = initial {
                    grams.extend(trigrams(&format!("{START}{}", norm(i).trim_start())));
                }
                for a in any {
                    grams.extend(trigrams(&norm(a)));
                }
                if let Some(l) = last {
                    grams.extend(trigrams(&format!("{}{END}", norm(l).trim_end())));
                }
                // Spaces were folded for matching; a gram with a space still matches the
                // stored folded form, so it stays.
                if grams.is_empty() {
                    return Ok(None);
                }
                // Read the rarest grams first and stop once few candidates are left:
                // every candidate is checked against the filter anyway, and a gram that
                // occurs in most entries costs a long read for little narrowing.
                let mut sized = Vec::with_capacity(grams.len());
                for g in grams {
                    let k = key(&lc, b'~', g.as_bytes());
                    sized.push((r.index_len(&k)?, k));
                }
                sized.sort();
                let mut acc: Option<Vec<u64>> = None;
                for (len, k) in sized {
                    if let Some(prev) = &acc {
                        if prev.len() <= 64 || len > 16 * prev.len() as u64 {
                            break;
                        }
                    }
                    let ids = r.index_get(&k)?;
                    acc = Some(match acc {
                        None => ids,
                        Some(prev) => intersect(&prev, &ids),
                    });
                    if acc.as_ref().is_some_and(Vec::is_empty) {
                        break;
                    }
                }
                acc
            }
            Filter::And(parts) => {
                let mut acc: Option<Vec<u64>> = None;
                for p in parts {
                    if let Some(ids) = self.plan(schema, r, p, depth + 1)? {
                        acc = Some(match acc {
                            None => ids,
                            Some(prev) => intersect(&prev, &ids),
                        });
                        if acc.as_ref().is_some_and(Vec::is_empty) {
                            break;
                        }
                    }
                }
                acc
            }
            Filter::Or(parts) => {
                if parts.is_empty() {
                    return Ok(Some(Vec::new()));
                }
                let mut all = BTreeSet::new();
                for p in parts {
                    match self.plan(schema, r, p, depth + 1)? {
                        Some(ids) => all.extend(ids),
                        None => return Ok(None),
                    }
                }
                Some(all.into_iter().collect())
            }
            _ => None,
        })
    }
}

fn key(attr_lc: &str, kind: u8, value: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(attr_lc.len() + 2 + value.len());
    k.extend_from_slice(attr_lc.as_bytes());
    k.push(0);
    k.push(kind);
    k.extend_from_slice(value);
    k
}

fn trigrams(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    chars.windows(3).map(|w| w.iter().collect()).collect()
}

/// Intersection of two ascending id lists.
pub fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersects() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 7, 9]), vec![3, 7]);
        assert!(intersect(&[], &[1]).is_empty());
    }

    #[test]
    fn trigram_windows() {
        assert_eq!(trigrams("abcd"), vec!["abc", "bcd"]);
        assert!(trigrams("ab").is_empty());
    }
}
