//! The node as Python's `ldap3` package sees it: Root DSE, schema and a search.

use crate::harness::{run, Node};
use std::collections::BTreeMap;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ldap3_schema.py");

#[test]
fn python_ldap3_reads_schema_and_finds_alice() {
    let node = Node::start();
    let out = run(
        "python3",
        &[SCRIPT, &node.url, &node.admin_dn, &node.admin_pw],
    );
    assert_eq!(
        out.code(),
        0,
        "{} failed (exit 3 means `pip install ldap3` is missing):\n{out}",
        out.command
    );
    let json = Json::parse(out.stdout.trim())
        .unwrap_or_else(|e| panic!("the script did not print JSON ({e}):\n{out}"));

    let contexts = json.get("naming_contexts").strings();
    assert!(
        contexts
            .iter()
            .any(|c| c.eq_ignore_ascii_case("dc=pigeonair")),
        "{contexts:?}"
    );
    assert!(json
        .get("supported_ldap_versions")
        .strings()
        .contains(&"3".to_string()));
    assert!(
        !json.get("vendor_name").strings().is_empty(),
        "no vendorName"
    );
    assert!(json.get("object_classes").number() > 10.0);
    assert!(json.get("attribute_types").number() > 50.0);

    let iop = json.get("inetOrgPerson");
    assert_eq!(iop.get("oid").str(), "2.16.840.1.113730.3.2.2");
    assert_eq!(iop.get("superior").strings(), vec!["organizationalPerson"]);
    assert!(
        iop.get("kind").str().eq_ignore_ascii_case("structural"),
        "{iop:?}"
    );
    let host = json.get("mailHost");
    assert_eq!(host.get("oid").str(), "2.16.840.1.113730.3.1.18");
    assert_eq!(host.get("single_value"), &Json::Bool(true));
    let mail = json.get("mail");
    assert_eq!(mail.get("oid").str(), "0.9.2342.19200300.100.1.3");
    assert!(mail.get("names").strings().contains(&"mail".to_string()));

    let Json::Array(found) = json.get("search") else {
        panic!("search is not a list: {json:?}")
    };
    assert_eq!(found.len(), 1, "{found:?}");
    let alice = &found[0];
    assert_eq!(alice.get("dn").str(), node.alice().dn);
    assert_eq!(alice.get("uid").strings(), vec!["alice"]);
    assert_eq!(alice.get("mail").strings(), vec!["alice@example.org"]);
    assert_eq!(alice.get("mailHost").strings().len(), 1);
    let classes: Vec<String> = alice
        .get("objectClass")
        .strings()
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    assert!(
        classes.contains(&"inetorgperson".to_string()),
        "{classes:?}"
    );
}

/// Just enough JSON to read the script's summary (no dependency on serde_json).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    #[track_caller]
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(m) => m
                .get(key)
                .unwrap_or_else(|| panic!("no key {key:?} in {self:?}")),
            _ => panic!("not an object: {self:?}"),
        }
    }

    #[track_caller]
    fn str(&self) -> &str {
        match self {
            Json::String(s) => s,
            _ => panic!("not a string: {self:?}"),
        }
    }

    #[track_caller]
    fn number(&self) -> f64 {
        match self {
            Json::Number(n) => *n,
            _ => panic!("not a number: {self:?}"),
        }
    }

    #[track_caller]
    fn strings(&self) -> Vec<String> {
        match self {
            Json::Array(a) => a.iter().map(|v| v.str().to_string()).collect(),
            _ => panic!("not a list: {self:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        let Some(&c) = self.s.get(self.i) else {
            return Err("unexpected end".into());
        };
        match c {
            b'{' => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.eat("}") {
                    return Ok(Json::Object(m));
                }
                loop {
                    self.ws();
                    let Json::String(k) = self.value()? else {
                        return Err(format!("object key expected at {}", self.i));
                    };
                    self.ws();
                    if !self.eat(":") {
                        return Err(format!("':' expected at {}", self.i));
                    }
                    let v = self.value()?;
                    m.insert(k, v);
                    self.ws();
                    if self.eat("}") {
                        return Ok(Json::Object(m));
                    }
                    if !self.eat(",") {
                        return Err(format!("',' expected at {}", self.i));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(Json::Array(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    if self.eat("]") {
                        return Ok(Json::Array(a));
                    }
                    if !self.eat(",") {
                        return Err(format!("',' expected at {}", self.i));
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    let Some(&c) = self.s.get(self.i) else {
                        return Err("unterminated string".into());
                    };
                    self.i += 1;
                    match c {
                        b'"' => return Ok(Json::String(out)),
                        b'\\' => {
                            let e = *self.s.get(self.i).ok_or("bad escape")?;
                            self.i += 1;
                            match e {
                                b'n' => out.push('\n'),
                                b't' => out.push('\t'),
                                b'r' => out.push('\r'),
                                b'b' => out.push('\u{8}'),
                                b'f' => out.push('\u{c}'),
                                b'u' => {
                                    let hex = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                        .map_err(|e| e.to_string())?;
                                    let code =
                                        u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                    self.i += 4;
                                    out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                }
                                other => out.push(other as char),
                            }
                        }
                        _ => {
                            // copy one UTF-8 sequence
                            let start = self.i - 1;
                            let mut end = self.i;
                            while end < self.s.len() && (self.s[end] & 0xc0) == 0x80 {
                                end += 1;
                            }
                            out.push_str(
                                std::str::from_utf8(&self.s[start..end])
                                    .map_err(|e| e.to_string())?,
                            );
                            self.i = end;
                        }
                    }
                }
            }
            b't' if self.eat("true") => Ok(Json::Bool(true)),
            b'f' if self.eat("false") => Ok(Json::Bool(false)),
            b'n' if self.eat("null") => Ok(Json::Null),
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .map(Json::Number)
                    .ok_or_else(|| format!("bad value at {start}"))
            }
        }
    }
}
