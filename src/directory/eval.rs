//! Evaluating a filter on an entry, with RFC 4511's three-valued logic.

use std::cmp::Ordering;

use super::dn::Dn;
use super::entry::StoredEntry;
use super::filter::Filter;
use super::schema::{rule_by_name, AttributeType, Rule, RuleKind, Schema};

/// The result of a filter item (RFC 4511 section 4.5.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// The item matches.
    True,
    /// The item does not match.
    False,
    /// The item cannot be evaluated (unknown attribute, no matching rule, bad value).
    Undefined,
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

/// True when the filter is TRUE for the entry.
pub fn matches(schema: &Schema, f: &Filter, e: &StoredEntry) -> bool {
    evaluate(schema, f, e, 0) == Truth::True
}

/// Values of `at` and its subtypes in the entry.
fn values_of<'e>(
    schema: &'e Schema,
    at: &'e AttributeType,
    e: &'e StoredEntry,
) -> impl Iterator<Item = &'e Vec<u8>> + 'e {
    e.attrs
        .iter()
        .filter(move |a| {
            a.name.eq_ignore_ascii_case(at.name())
                || schema
                    .attr(&a.name)
                    .is_some_and(|t| schema.is_subtype(t, at))
        })
        .flat_map(|a| a.values.iter())
}

/// Evaluate a filter on an entry.
pub fn evaluate(schema: &Schema, f: &Filter, e: &StoredEntry, depth: usize) -> Truth {
    if depth > 128 {
        return Truth::Undefined;
    }
    match f {
        Filter::And(parts) => {
            let mut out = Truth::True;
            for p in parts {
                match evaluate(schema, p, e, depth + 1) {
                    Truth::False => return Truth::False,
                    Truth::Undefined => out = Truth::Undefined,
                    Truth::True => {}
                }
            }
            out
        }
        Filter::Or(parts) => {
            let mut out = Truth::False;
            for p in parts {
                match evaluate(schema, p, e, depth + 1) {
                    Truth::True => return Truth::True,
                    Truth::Undefined => out = Truth::Undefined,
                    Truth::False => {}
                }
            }
            out
        }
        Filter::Not(inner) => match evaluate(schema, inner, e, depth + 1) {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Undefined => Truth::Undefined,
        },
        Filter::Present(attr) => match schema.attr(attr) {
            Some(at) => Truth::from_bool(values_of(schema, at, e).next().is_some()),
            None => Truth::False,
        },
        Filter::Equality(attr, value) | Filter::Approx(attr, value) => {
            let Some(at) = schema.attr(attr) else {
                return Truth::Undefined;
            };
            let Some(rule) = at.equality else {
                return Truth::Undefined;
            };
            equality(schema, rule, values_of(schema, at, e), value)
        }
        Filter::GreaterOrEqual(attr, value) | Filter::LessOrEqual(attr, value) => {
            let Some(at) = schema.attr(attr) else {
                return Truth::Undefined;
            };
            let Some(rule) = at.ordering else {
                return Truth::Undefined;
            };
            let want_ge = matches!(f, Filter::GreaterOrEqual(..));
            let mut out = Truth::False;
            for v in values_of(schema, at, e) {
                match schema.order(rule, v, value) {
                    Some(Ordering::Equal) => return Truth::True,
                    Some(Ordering::Greater) if want_ge => return Truth::True,
                    Some(Ordering::Less) if !want_ge => return Truth::True,
                    Some(_) => {}
                    None => out = Truth::Undefined,
                }
            }
            out
        }
        Filter::Substrings {
            attr,
            initial,
            any,
            last,
        } => {
            let Some(at) = schema.attr(attr) else {
                return Truth::Undefined;
            };
            let Some(rule) = at.substr else {
                return Truth::Undefined;
            };
            let parts = SubstringParts::new(schema, rule, initial.as_deref(), any, last.as_deref());
            Truth::from_bool(values_of(schema, at, e).any(|v| parts.matches(schema, rule, v)))
        }
        Filter::Extensible {
            rule,
            attr,
            value,
            dn_attributes,
        } => extensible(
            schema,
            rule.as_deref(),
            attr.as_deref(),
            value,
            *dn_attributes,
            e,
        ),
    }
}

fn equality<'v>(
    schema: &Schema,
    rule: Rule,
    values: impl Iterator<Item = &'v Vec<u8>>,
    assertion: &[u8],
) -> Truth {
    let Some(want) = schema.normalize_by(rule, assertion) else {
        return Truth::Undefined;
    };
    let mut out = Truth::False;
    for v in values {
        match schema.normalize_by(rule, v) {
            Some(n) if n == want => return Truth::True,
            Some(_) => {}
            None => out = Truth::Undefined,
        }
    }
    out
}

struct SubstringParts {
    initial: Option<String>,
    any: Vec<String>,
    last: Option<String>,
}

impl SubstringParts {
    fn new(
        schema: &Schema,
        rule: Rule,
        initial: Option<&[u8]>,
        any: &[Vec<u8>],
        last: Option<&[u8]>,
    ) -> SubstringParts {
        let norm =
            |v: &[u8]| String::from_utf8_lossy(&schema.normalize_substring(rule, v)).into_owned();
        SubstringParts {
            initial: initial.map(|v| norm(v).trim_start().to_string()),
            any: any.iter().map(|v| norm(v)).collect(),
            last: last.map(|v| norm(v).trim_end().to_string()),
        }
    }

    fn matches(&self, schema: &Schema, rule: Rule, value: &[u8]) -> bool {
        let n = schema
            .normalize_by(rule, value)
            .unwrap_or_else(|| value.to_vec());
        let s = String::from_utf8_lossy(&n);
        let mut rest: &str = &s;
        if let Some(i) = &self.initial {
            match rest.strip_prefix(i.as_str()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        let mut end = rest.len();
        if let Some(l) = &self.last {
            if !rest.ends_with(l.as_str()) {
                return false;
            }
            end -= l.len();
        }
        let mut middle = &rest[..end];
        for a in &self.any {
            match middle.find(a.as_str()) {
                Some(p) => middle = &middle[p + a.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A substring assertion's parts: initial, any, final.
type RawSubstrings = (Option<Vec<u8>>, Vec<Vec<u8>>, Option<Vec<u8>>);

fn parse_substring_assertion(v: &[u8]) -> RawSubstrings {
    let parts: Vec<&[u8]> = v.split(|&c| c == b'*').collect();
    if parts.len() < 2 {
        return (Some(v.to_vec()), Vec::new(), Some(Vec::new()));
    }
    let opt = |p: &[u8]| (!p.is_empty()).then(|| p.to_vec());
    let any = parts[1..parts.len() - 1]
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.to_vec())
        .collect();
    (opt(parts[0]), any, opt(parts[parts.len() - 1]))
}

fn extensible(
    schema: &Schema,
    rule: Option<&str>,
    attr: Option<&str>,
    value: &[u8],
    dn_attributes: bool,
    e: &StoredEntry,
) -> Truth {
    let at = match attr {
        Some(a) => match schema.attr(a) {
            Some(at) => Some(at),
            None => return Truth::Undefined,
        },
        None => None,
    };
    let (rule, kind) = match (rule, at) {
        (Some(r), _) => match rule_by_name(r) {
            Some(rk) => rk,
            None => return Truth::Undefined,
        },
        (None, Some(at)) => match at.equality {
            Some(r) => (r, RuleKind::Equality),
            None => return Truth::Undefined,
        },
        (None, None) => return Truth::Undefined,
    };
    let check = |values: &mut dyn Iterator<Item = &Vec<u8>>| -> Truth {
        match kind {
            RuleKind::Equality => equality(schema, rule, values, value),
            RuleKind::Ordering => {
                let mut hit = false;
                for v in values {
                    hit |= schema.order(rule, v, value) == Some(Ordering::Less);
                }
                Truth::from_bool(hit)
            }
            RuleKind::Substring => {
                let (i, a, l) = parse_substring_assertion(value);
                let parts = SubstringParts::new(schema, rule, i.as_deref(), &a, l.as_deref());
                let mut hit = false;
                for v in values {
                    hit |= parts.matches(schema, rule, v);
                }
                Truth::from_bool(hit)
            }
        }
    };
    let mut out = match at {
        Some(at) => check(&mut values_of(schema, at, e)),
        None => {
            let mut out = Truth::False;
            for a in &e.attrs {
                match check(&mut a.values.iter()) {
                    Truth::True => return Truth::True,
                    Truth::Undefined => out = Truth::Undefined,
                    Truth::False => {}
                }
            }
            out
        }
    };
    if out != Truth::True && dn_attributes {
        if let Ok(dn) = Dn::parse(&e.dn) {
            for ava in dn.rdns.iter().flat_map(|r| r.0.iter()) {
                let applies = match at {
                    Some(at) => schema
                        .attr(&ava.attr)
                        .is_some_and(|t| schema.is_subtype(t, at)),
                    None => true,
                };
                if applies && check(&mut std::iter::once(&ava.value)) == Truth::True {
                    out = Truth::True;
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::entry::Attribute;

    fn entry() -> StoredEntry {
        StoredEntry {
            dn: "uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair".into(),
            key: String::new(),
            attrs: vec![
                Attribute::new("objectClass", ["top", "inetOrgPerson"]),
                Attribute::new("uid", ["alice"]),
                Attribute::new("cn", ["Alice  Liddell"]),
                Attribute::new("sn", ["Liddell"]),
                Attribute::new("mail", ["Alice@Example.org"]),
                Attribute::new("pigeonairTokenUses", ["1000"]),
            ],
        }
    }

    fn eval(f: &str) -> Truth {
        let schema = Schema::builtin();
        evaluate(&schema, &Filter::parse(f).unwrap(), &entry(), 0)
    }

    #[test]
    fn equality_uses_matching_rules() {
        assert_eq!(eval("(mail=alice@example.ORG)"), Truth::True);
        assert_eq!(eval("(cn=alice liddell)"), Truth::True);
        assert_eq!(eval("(objectClass=INETORGPERSON)"), Truth::True);
        assert_eq!(eval("(objectClass=2.16.840.1.113730.3.2.2)"), Truth::True);
        assert_eq!(eval("(uid=bob)"), Truth::False);
        assert_eq!(
            eval("(name=liddell)"),
            Truth::True,
            "name matches its subtypes"
        );
    }

    #[test]
    fn three_valued_logic() {
        assert_eq!(eval("(nosuchattr=x)"), Truth::Undefined);
        assert_eq!(eval("(!(nosuchattr=x))"), Truth::Undefined);
        assert_eq!(eval("(|(nosuchattr=x)(uid=alice))"), Truth::True);
        assert_eq!(eval("(&(nosuchattr=x)(uid=bob))"), Truth::False);
        assert_eq!(eval("(&)"), Truth::True);
        assert_eq!(eval("(|)"), Truth::False);
        assert_eq!(eval("(nosuchattr=*)"), Truth::False);
    }

    #[test]
    fn substrings_ordering_extensible() {
        assert_eq!(eval("(mail=*@example.org)"), Truth::True);
        assert_eq!(eval("(cn=ali*lid*ll)"), Truth::True);
        assert_eq!(eval("(cn=*x*)"), Truth::False);
        assert_eq!(eval("(pigeonairTokenUses>=999)"), Truth::True);
        assert_eq!(eval("(pigeonairTokenUses<=999)"), Truth::False);
        assert_eq!(eval("(uid:caseExactMatch:=alice)"), Truth::True);
        assert_eq!(eval("(uid:caseExactMatch:=Alice)"), Truth::False);
        assert_eq!(eval("(ou:dn:=people)"), Truth::True);
        assert_eq!(eval("(ou=people)"), Truth::False);
        assert_eq!(eval("(:caseIgnoreMatch:=liddell)"), Truth::True);
        assert_eq!(eval("(mail~=ALICE@example.org)"), Truth::True);
    }
}
