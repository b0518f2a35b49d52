//! LDAP search filters: the model of RFC 4511 section 4.5.1 and the string
//! representation of RFC 4515.
//!
//! The string parser follows RFC 4515 with a few leniencies that common tools
//! (OpenLDAP's `ldapsearch` among them) also have:
//!
//! * a bare filter component without the outer parentheses (`uid=alice`,
//!   `&(a=1)(b=2)`) is accepted as if it were parenthesised;
//! * ASCII whitespace is skipped before and after the whole filter (when it
//!   starts with `(`) and between the members of `&`, `|` and `!` lists;
//! * `(&)` and `(|)` are the absolute true and false filters of RFC 4526;
//! * the `dn` of an extensible match is matched case-insensitively
//!   (`(:DN:2.4.6.8.10:=Dino)` is an example of RFC 4515 itself).
//!
//! Everything else is strict: attribute descriptions must follow RFC 4512
//! (`descr` or `numericoid`, then `;option`s), values may only contain
//! `\XX` hex escapes, and nesting is limited to [`MAX_DEPTH`] levels so that
//! hostile input yields an error instead of a stack overflow.

use std::collections::HashSet;
use std::fmt;

/// The deepest nesting of filters accepted, counting the outermost filter as
/// level 1 (so `(!(!(a=b)))` has depth 3). Both the string parser and the wire
/// decoder reject anything deeper.
pub const MAX_DEPTH: usize = 100;

/// A search filter (RFC 4511 section 4.5.1).
///
/// Attribute descriptions and matching rule ids are kept exactly as written
/// (case and options included); values are raw octets.
///
/// [`Filter::parse`] of the [`Display`](fmt::Display) form gives back the same
/// filter for every filter whose names are valid RFC 4512 descriptions (which
/// includes every filter produced by the parser), with two unavoidable
/// exceptions of the string form itself: an empty `initial` / `last` of a
/// substrings filter reads back as `None`, and a substrings filter without
/// any part prints as a presence filter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// `(&...)`: true when every member is true; empty is absolute true.
    And(Vec<Filter>),
    /// `(|...)`: true when any member is true; empty is absolute false.
    Or(Vec<Filter>),
    /// `(!...)`: negation.
    Not(Box<Filter>),
    /// `(attr=value)`: equality match.
    Equality(String, Vec<u8>),
    /// `(attr=initial*any*...*last)`: substrings match. `any` parts may be
    /// empty (`a**b` has one empty `any`).
    Substrings {
        /// The attribute description.
        attr: String,
        /// The value must start with this.
        initial: Option<Vec<u8>>,
        /// The value must contain these, in order, after `initial`.
        any: Vec<Vec<u8>>,
        /// The value must end with this.
        last: Option<Vec<u8>>,
    },
    /// `(attr>=value)`: ordering match.
    GreaterOrEqual(String, Vec<u8>),
    /// `(attr<=value)`: ordering match.
    LessOrEqual(String, Vec<u8>),
    /// `(attr=*)`: presence.
    Present(String),
    /// `(attr~=value)`: approximate match.
    Approx(String, Vec<u8>),
    /// `(attr:dn:rule:=value)`: extensible match. RFC 4511 requires at least
    /// one of `rule` and `attr`.
    Extensible {
        /// The matching rule (a descriptor or numeric OID).
        rule: Option<String>,
        /// The attribute description.
        attr: Option<String>,
        /// The assertion value.
        value: Vec<u8>,
        /// Whether the match also applies to the entry's DN attributes.
        dn_attributes: bool,
    },
}

/// Why a filter was rejected, and where.
///
/// For the string form `position` is a byte offset into the input; for
/// filters decoded from the wire it is 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad filter at byte {position}: {message}")]
pub struct FilterError {
    /// Byte offset of the problem in the parsed string.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        position,
        message: message.into(),
    })
}

impl Filter {
    /// Parse the RFC 4515 string form, e.g.
    /// `"(&(objectClass=inetOrgPerson)(mail=a*@example.org))"`.
    ///
    /// Never panics; any malformed input gives a [`FilterError`].
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let mut p = Parser {
            s: s.as_bytes(),
            pos: 0,
        };
        p.skip_ws();
        let filter = if p.peek() == Some(b'(') {
            let f = p.filter(1)?;
            p.skip_ws();
            f
        } else if p.at_end() {
            return err(p.pos, "empty filter");
        } else {
            p.filter_comp(1)?
        };
        if !p.at_end() {
            return err(p.pos, "trailing garbage after filter");
        }
        Ok(filter)
    }

    /// Every attribute description the filter names (for planning), in order
    /// of first appearance, without repeats (compared ASCII
    /// case-insensitively; the first spelling is kept).
    pub fn attributes(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        self.collect_attributes(&mut seen, &mut out);
        out
    }

    /// True when the filter can look at attribute `name` (by its name, compared ASCII
    /// case-insensitively; an extensible match without an attribute looks at all).
    pub fn mentions(&self, name: &str) -> bool {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().any(|f| f.mentions(name)),
            Filter::Not(f) => f.mentions(name),
            Filter::Equality(a, _)
            | Filter::GreaterOrEqual(a, _)
            | Filter::LessOrEqual(a, _)
            | Filter::Approx(a, _)
            | Filter::Present(a)
            | Filter::Substrings { attr: a, .. }
            | Filter::Extensible { attr: Some(a), .. } => {
                a.split(';').next().unwrap_or(a).eq_ignore_ascii_case(name)
            }
            Filter::Extensible { attr: None, .. } => true,
        }
    }

    /// True when the filter can look at every attribute (an extensible match without
    /// an attribute type).
    pub fn reads_every_attribute(&self) -> bool {
        match self {
            Filter::And(fs) | Filter::Or(fs) => fs.iter().any(|f| f.reads_every_attribute()),
            Filter::Not(f) => f.reads_every_attribute(),
            Filter::Extensible { attr: None, .. } => true,
            _ => false,
        }
    }

    fn collect_attributes<'a>(&'a self, seen: &mut HashSet<String>, out: &mut Vec<&'a str>) {
        let attr: &str = match self {
            Filter::And(fs) | Filter::Or(fs) => {
                for f in fs {
                    f.collect_attributes(seen, out);
                }
                return;
            }
            Filter::Not(f) => return f.collect_attributes(seen, out),
            Filter::Equality(a, _)
            | Filter::GreaterOrEqual(a, _)
            | Filter::LessOrEqual(a, _)
            | Filter::Approx(a, _)
            | Filter::Present(a)
            | Filter::Substrings { attr: a, .. } => a,
            Filter::Extensible { attr: Some(a), .. } => a,
            Filter::Extensible { attr: None, .. } => return,
        };
        if seen.insert(attr.to_ascii_lowercase()) {
            out.push(attr);
        }
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;

    /// Same as [`Filter::parse`].
    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(s)
    }
}

/// Writes `value` with the RFC 4515 escapes: `*`, `(`, `)`, `\` and NUL are
/// written as `\2a`, `\28`, `\29`, `\5c`, `\00`, and bytes that are not part
/// of valid UTF-8 as `\xx`; everything else is written as is.
fn write_value(f: &mut fmt::Formatter<'_>, value: &[u8]) -> fmt::Result {
    for chunk in value.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, b) in valid.bytes().enumerate() {
            if matches!(b, b'*' | b'(' | b')' | b'\\' | 0) {
                f.write_str(&valid[start..i])?;
                write!(f, "\\{b:02x}")?;
                start = i + 1;
            }
        }
        f.write_str(&valid[start..])?;
        for b in chunk.invalid() {
            write!(f, "\\{b:02x}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Filter {
    /// The RFC 4515 string form, always parenthesised, values escaped (see
    /// [`Filter`] for the round-trip guarantee).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(fs) | Filter::Or(fs) => {
                f.write_str(if matches!(self, Filter::And(_)) {
                    "(&"
                } else {
                    "(|"
                })?;
                for x in fs {
                    fmt::Display::fmt(x, f)?;
                }
                f.write_str(")")
            }
            Filter::Not(x) => write!(f, "(!{x})"),
            Filter::Equality(a, v)
            | Filter::GreaterOrEqual(a, v)
            | Filter::LessOrEqual(a, v)
            | Filter::Approx(a, v) => {
                let op = match self {
                    Filter::Equality(..) => "=",
                    Filter::GreaterOrEqual(..) => ">=",
                    Filter::LessOrEqual(..) => "<=",
                    _ => "~=",
                };
                write!(f, "({a}{op}")?;
                write_value(f, v)?;
                f.write_str(")")
            }
            Filter::Substrings {
                attr,
                initial,
                any,
                last,
            } => {
                write!(f, "({attr}=")?;
                if let Some(i) = initial {
                    write_value(f, i)?;
                }
                f.write_str("*")?;
                for a in any {
                    write_value(f, a)?;
                    f.write_str("*")?;
                }
                if let Some(l) = last {
                    write_value(f, l)?;
                }
                f.write_str(")")
            }
            Filter::Present(a) => write!(f, "({a}=*)"),
            Filter::Extensible {
                rule,
                attr,
                value,
                dn_attributes,
            } => {
                f.write_str("(")?;
                if let Some(a) = attr {
                    f.write_str(a)?;
                }
                if *dn_attributes {
                    f.write_str(":dn")?;
                }
                if let Some(r) = rule {
                    write!(f, ":{r}")?;
                }
                f.write_str(":=")?;
                write_value(f, value)?;
                f.write_str(")")
            }
        }
    }
}

/// Recursive-descent parser over the bytes of the input string. Every
/// recursion goes through [`Parser::filter`], which enforces [`MAX_DEPTH`].
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// `filter = "(" filtercomp ")"`, at nesting level `depth`.
    fn filter(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if self.peek() != Some(b'(') {
            return err(self.pos, "expected '('");
        }
        if depth > MAX_DEPTH {
            return err(
                self.pos,
                format!("filter nested deeper than {MAX_DEPTH} levels"),
            );
        }
        self.pos += 1;
        let f = self.filter_comp(depth)?;
        match self.peek() {
            Some(b')') => {
                self.pos += 1;
                Ok(f)
            }
            None => err(self.pos, "missing ')'"),
            Some(_) => err(self.pos, "expected ')'"),
        }
    }

    /// `filtercomp = and / or / not / item`.
    fn filter_comp(&mut self, depth: usize) -> Result<Filter, FilterError> {
        match self.peek() {
            Some(b'&') => {
                self.pos += 1;
                Ok(Filter::And(self.filter_list(depth)?))
            }
            Some(b'|') => {
                self.pos += 1;
                Ok(Filter::Or(self.filter_list(depth)?))
            }
            Some(b'!') => {
                let at = self.pos;
                self.pos += 1;
                let mut list = self.filter_list(depth)?;
                if list.len() != 1 {
                    return err(at, "'!' must be followed by exactly one filter");
                }
                Ok(Filter::Not(Box::new(list.remove(0))))
            }
            _ => self.item(),
        }
    }

    /// Zero or more parenthesised filters, whitespace allowed around them.
    fn filter_list(&mut self, depth: usize) -> Result<Vec<Filter>, FilterError> {
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() != Some(b'(') {
                return Ok(out);
            }
            out.push(self.filter(depth + 1)?);
        }
    }

    /// `item = simple / present / substring / extensible`; consumes up to
    /// (not including) the next `)` or the end of input.
    fn item(&mut self) -> Result<Filter, FilterError> {
        let start = self.pos;
        let end = self.s[start..]
            .iter()
            .position(|&b| b == b')')
            .map_or(self.s.len(), |i| start + i);
        self.pos = end;
        let Some(eq) = self.s[start..end]
            .iter()
            .position(|&b| b == b'=')
            .map(|i| start + i)
        else {
            return err(start, "expected an attribute, a filter type and a value");
        };
        let op = if eq > start { self.s[eq - 1] } else { b'=' };
        let lhs_end = if matches!(op, b'~' | b'>' | b'<' | b':') {
            eq - 1
        } else {
            eq
        };
        let value = (eq + 1, end);
        match op {
            b':' => self.extensible(start, lhs_end, value),
            b'~' | b'>' | b'<' => {
                let attr = self.attr(start, lhs_end)?;
                let v = self.value(value)?;
                Ok(match op {
                    b'~' => Filter::Approx(attr, v),
                    b'>' => Filter::GreaterOrEqual(attr, v),
                    _ => Filter::LessOrEqual(attr, v),
                })
            }
            _ => {
                let attr = self.attr(start, lhs_end)?;
                if &self.s[value.0..value.1] == b"*" {
                    return Ok(Filter::Present(attr));
                }
                let mut parts = self.value_parts(value)?;
                if parts.len() == 1 {
                    return Ok(Filter::Equality(attr, parts.remove(0)));
                }
                let last = parts.pop().filter(|v| !v.is_empty());
                let mut rest = parts.into_iter();
                let initial = rest.next().filter(|v| !v.is_empty());
                Ok(Filter::Substrings {
                    attr,
                    initial,
                    any: rest.collect(),
                    last,
                })
            }
        }
    }

    /// The left-hand side of `:=`: `attr[:dn][:rule]` or `[:dn]:rule`.
    fn extensible(
        &self,
        start: usize,
        lhs_end: usize,
        value: (usize, usize),
    ) -> Result<Filter, FilterError> {
        // Split the left-hand side on ':' into (offset, end) ranges.
        let mut pieces = Vec::new();
        let mut piece_start = start;
        for i in start..lhs_end {
            if self.s[i] == b':' {
                pieces.push((piece_start, i));
                piece_start = i + 1;
            }
        }
        pieces.push((piece_start, lhs_end));
        let mut pieces = pieces.into_iter().peekable();
        let (a0, a1) = pieces.next().unwrap_or((start, start));
        let attr = if a0 == a1 {
            None
        } else {
            Some(self.attr(a0, a1)?)
        };
        let mut dn_attributes = false;
        if let Some(&(d0, d1)) = pieces.peek() {
            if self.s[d0..d1].eq_ignore_ascii_case(b"dn") {
                dn_attributes = true;
                pieces.next();
            }
        }
        let rule = match pieces.next() {
            Some((r0, r1)) => {
                let rule = self.oid(r0, r1, "matching rule")?;
                Some(rule)
            }
            None => None,
        };
        if let Some((x0, _)) = pieces.next() {
            return err(x0, "unexpected text before ':='");
        }
        if attr.is_none() && rule.is_none() {
            return err(
                start,
                "extensible match needs an attribute or a matching rule",
            );
        }
        Ok(Filter::Extensible {
            rule,
            attr,
            value: self.value(value)?,
            dn_attributes,
        })
    }

    /// An RFC 4512 attribute description: `oid *(";" option)`.
    fn attr(&self, start: usize, end: usize) -> Result<String, FilterError> {
        if start == end {
            return err(start, "empty attribute description");
        }
        let bytes = &self.s[start..end];
        let type_end = bytes
            .iter()
            .position(|&b| b == b';')
            .map_or(end, |i| start + i);
        self.oid(start, type_end, "attribute type")?;
        let mut opt_start = type_end;
        while opt_start < end {
            // self.s[opt_start] is ';'
            let o0 = opt_start + 1;
            let o1 = self.s[o0..end]
                .iter()
                .position(|&b| b == b';')
                .map_or(end, |i| o0 + i);
            if o0 == o1 {
                return err(o0, "empty attribute option");
            }
            if let Some(i) = self.s[o0..o1].iter().position(|&b| !is_keychar(b)) {
                return err(o0 + i, "invalid character in attribute option");
            }
            opt_start = o1;
        }
        Ok(self.text(start, end))
    }

    /// `oid = descr / numericoid`.
    fn oid(&self, start: usize, end: usize, what: &str) -> Result<String, FilterError> {
        let bytes = &self.s[start..end];
        match bytes.first() {
            None => return err(start, format!("empty {what}")),
            Some(b) if b.is_ascii_alphabetic() => {
                if let Some(i) = bytes.iter().position(|&b| !is_keychar(b)) {
                    return err(start + i, format!("invalid character in {what}"));
                }
            }
            Some(b) if b.is_ascii_digit() => {
                let mut arcs = 0;
                let mut arc_start = start;
                for i in start..=end {
                    if i == end || self.s[i] == b'.' {
                        if i == arc_start {
                            return err(i, format!("empty arc in numeric OID {what}"));
                        }
                        arcs += 1;
                        arc_start = i + 1;
                    } else if !self.s[i].is_ascii_digit() {
                        return err(i, format!("invalid character in numeric OID {what}"));
                    }
                }
                if arcs < 2 {
                    return err(start, format!("numeric OID {what} needs at least two arcs"));
                }
            }
            Some(_) => return err(start, format!("invalid character in {what}")),
        }
        Ok(self.text(start, end))
    }

    /// The input between two byte offsets as a `String`. Callers only pass
    /// ASCII-delimited ranges, so this is lossless; `from_utf8_lossy` just
    /// keeps it panic-free.
    fn text(&self, start: usize, end: usize) -> String {
        String::from_utf8_lossy(&self.s[start..end]).into_owned()
    }

    /// An assertion value with no unescaped `*`.
    fn value(&self, range: (usize, usize)) -> Result<Vec<u8>, FilterError> {
        let mut parts = self.value_parts(range)?;
        if parts.len() != 1 {
            let star = self.s[range.0..range.1]
                .iter()
                .position(|&b| b == b'*')
                .map_or(range.0, |i| range.0 + i);
            return err(star, "unescaped '*' in assertion value");
        }
        Ok(parts.remove(0))
    }

    /// Decodes a value, splitting it at unescaped `*`s.
    fn value_parts(&self, (start, end): (usize, usize)) -> Result<Vec<Vec<u8>>, FilterError> {
        let mut parts = vec![Vec::new()];
        let mut i = start;
        while i < end {
            let b = self.s[i];
            match b {
                b'\\' => {
                    let hex = |j: usize| {
                        if j < end {
                            (self.s[j] as char).to_digit(16)
                        } else {
                            None
                        }
                    };
                    match (hex(i + 1), hex(i + 2)) {
                        (Some(h), Some(l)) => {
                            // Two hex digits always fit in a byte.
                            let byte = (h * 16 + l) as u8;
                            if let Some(p) = parts.last_mut() {
                                p.push(byte);
                            }
                            i += 3;
                            continue;
                        }
                        _ => return err(i, "'\\' must be followed by two hex digits"),
                    }
                }
                b'*' => parts.push(Vec::new()),
                b'(' => return err(i, "unescaped '(' in value"),
                0 => return err(i, "unescaped NUL in value"),
                _ => {
                    if let Some(p) = parts.last_mut() {
                        p.push(b);
                    }
                }
            }
            i += 1;
        }
        Ok(parts)
    }
}

fn is_keychar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn eq(a: &str, v: &[u8]) -> Filter {
        Filter::Equality(a.into(), v.to_vec())
    }

    fn bad(s: &str) -> FilterError {
        match Filter::parse(s) {
            Ok(f) => panic!("{s:?} parsed as {f:?}"),
            Err(e) => e,
        }
    }

    fn roundtrip(f: &Filter) {
        let s = f.to_string();
        assert_eq!(&p(&s), f, "display form {s:?}");
    }

    #[test]
    fn filter_rfc4515_examples() {
        assert_eq!(p("(cn=Babs Jensen)"), eq("cn", b"Babs Jensen"));
        assert_eq!(
            p("(!(cn=Tim Howes))"),
            Filter::Not(Box::new(eq("cn", b"Tim Howes")))
        );
        assert_eq!(
            p("(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))"),
            Filter::And(vec![
                eq("objectClass", b"Person"),
                Filter::Or(vec![
                    eq("sn", b"Jensen"),
                    Filter::Substrings {
                        attr: "cn".into(),
                        initial: Some(b"Babs J".to_vec()),
                        any: vec![],
                        last: None
                    }
                ])
            ])
        );
        assert_eq!(
            p("(o=univ*of*mich*)"),
            Filter::Substrings {
                attr: "o".into(),
                initial: Some(b"univ".to_vec()),
                any: vec![b"of".to_vec(), b"mich".to_vec()],
                last: None
            }
        );
        assert_eq!(p("(seeAlso=)"), eq("seeAlso", b""));
        assert_eq!(
            p("(cn:caseExactMatch:=Fred Flintstone)"),
            Filter::Extensible {
                rule: Some("caseExactMatch".into()),
                attr: Some("cn".into()),
                value: b"Fred Flintstone".to_vec(),
                dn_attributes: false
            }
        );
        assert_eq!(
            p("(cn:=Betty Rubble)"),
            Filter::Extensible {
                rule: None,
                attr: Some("cn".into()),
                value: b"Betty Rubble".to_vec(),
                dn_attributes: false
            }
        );
        assert_eq!(
            p("(sn:dn:2.4.6.8.10:=Barney Rubble)"),
            Filter::Extensible {
                rule: Some("2.4.6.8.10".into()),
                attr: Some("sn".into()),
                value: b"Barney Rubble".to_vec(),
                dn_attributes: true
            }
        );
        assert_eq!(
            p("(o:dn:=Ace Industry)"),
            Filter::Extensible {
                rule: None,
                attr: Some("o".into()),
                value: b"Ace Industry".to_vec(),
                dn_attributes: true
            }
        );
        assert_eq!(
            p("(:1.2.3:=Wilma Flintstone)"),
            Filter::Extensible {
                rule: Some("1.2.3".into()),
                attr: None,
                value: b"Wilma Flintstone".to_vec(),
                dn_attributes: false
            }
        );
        assert_eq!(
            p("(:DN:2.4.6.8.10:=Dino)"),
            Filter::Extensible {
                rule: Some("2.4.6.8.10".into()),
                attr: None,
                value: b"Dino".to_vec(),
                dn_attributes: true
            }
        );
        assert_eq!(
            p(r"(o=Parens R Us \28for all your parenthetical needs\29)"),
            eq("o", b"Parens R Us (for all your parenthetical needs)")
        );
        assert_eq!(
            p(r"(cn=*\2A*)"),
            Filter::Substrings {
                attr: "cn".into(),
                initial: None,
                any: vec![b"*".to_vec()],
                last: None
            }
        );
        assert_eq!(p(r"(filename=C:\5cMyFile)"), eq("filename", b"C:\\MyFile"));
        assert_eq!(p(r"(bin=\00\00\00\04)"), eq("bin", b"\0\0\0\x04"));
        assert_eq!(p(r"(sn=Lu\c4\8di\c4\87)"), eq("sn", "Lučić".as_bytes()));
        assert_eq!(
            p(r"(1.3.6.1.4.1.1466.0=\04\02\48\69)"),
            eq("1.3.6.1.4.1.1466.0", b"\x04\x02Hi")
        );
    }

    #[test]
    fn filter_other_forms() {
        assert_eq!(p("(cn=*)"), Filter::Present("cn".into()));
        assert_eq!(p(r"(cn=\2a)"), eq("cn", b"*"));
        assert_eq!(
            p("(age>=30)"),
            Filter::GreaterOrEqual("age".into(), b"30".to_vec())
        );
        assert_eq!(
            p("(age<=30)"),
            Filter::LessOrEqual("age".into(), b"30".to_vec())
        );
        assert_eq!(
            p("(sn~=jensn)"),
            Filter::Approx("sn".into(), b"jensn".to_vec())
        );
        assert_eq!(p("(&)"), Filter::And(vec![]));
        assert_eq!(p("(|)"), Filter::Or(vec![]));
        assert_eq!(p("uid=alice"), eq("uid", b"alice"));
        assert_eq!(p("uid=alice smith "), eq("uid", b"alice smith "));
        assert_eq!(
            p("&(a=1)(b=2)"),
            Filter::And(vec![eq("a", b"1"), eq("b", b"2")])
        );
        assert_eq!(
            p("  (& (a=1)\n (b=2) )  "),
            Filter::And(vec![eq("a", b"1"), eq("b", b"2")])
        );
        assert_eq!(p("(cn;lang-en=x)"), eq("cn;lang-en", b"x"));
        assert_eq!(p("(cn;lang-en;x-foo=x)"), eq("cn;lang-en;x-foo", b"x"));
        assert_eq!(p("(2.5.4.3=x)"), eq("2.5.4.3", b"x"));
        assert_eq!(p(r"(cn=\E2\82\ac)"), eq("cn", "€".as_bytes()));
        assert_eq!(p("(cn=a=b)"), eq("cn", b"a=b"));
        assert_eq!(
            p("(cn=a**b)"),
            Filter::Substrings {
                attr: "cn".into(),
                initial: Some(b"a".to_vec()),
                any: vec![vec![]],
                last: Some(b"b".to_vec())
            }
        );
        assert_eq!(
            p("(mail=*@example.org)"),
            Filter::Substrings {
                attr: "mail".into(),
                initial: None,
                any: vec![],
                last: Some(b"@example.org".to_vec())
            }
        );
        assert_eq!(
            p("(cn:dn:dn:=x)"),
            Filter::Extensible {
                rule: Some("dn".into()),
                attr: Some("cn".into()),
                value: b"x".to_vec(),
                dn_attributes: true
            }
        );
        assert_eq!("(uid=x)".parse::<Filter>().unwrap(), eq("uid", b"x"));
    }

    #[test]
    fn filter_rejects() {
        for s in [
            "",
            "   ",
            "(",
            ")",
            "()",
            "(cn=x",
            "(cn=x))",
            "(cn=x)(cn=y)",
            "(cn=x) junk",
            "((cn=x))",
            "(&(cn=x)",
            "(&(cn=x)))",
            "(=x)",
            "(~=x)",
            "(>=x)",
            "(:=x)",
            "(:dn:=x)",
            "(cn)",
            "(cn x)",
            "(c n=x)",
            "(-cn=x)",
            "(cn;=x)",
            "(cn;lang_en=x)",
            "(1.=x)",
            "(1..2=x)",
            "(1=x)",
            "(1.2a=x)",
            "(cn=\\)",
            "(cn=\\4)",
            "(cn=\\4g)",
            "(cn=\\zz)",
            "(cn=a(b)",
            "(cn=a\0b)",
            "(cn~=a*)",
            "(cn>=*)",
            "(cn:=a*b)",
            "(cn:dn:1.2:x:=v)",
            "(cn:1..2:=v)",
            "(cn::=v)",
            "(!)",
            "(!(a=1)(b=2))",
            "(!a=1)",
            "(&a=1)",
            "uid=alice)",
            "( cn=x)",
        ] {
            bad(s);
        }
        assert_eq!(bad("(cn=a\\zz)").position, 5);
        assert_eq!(bad("(&(cn=x)").position, 8);
        assert_eq!(bad("(=x)").position, 1);
        assert_eq!(
            bad("(a=b)x").to_string(),
            "bad filter at byte 5: trailing garbage after filter"
        );
    }

    #[test]
    fn filter_depth_limit() {
        let nest = |n: usize| format!("{}(a=b){}", "(!".repeat(n - 1), ")".repeat(n - 1));
        p(&nest(MAX_DEPTH));
        bad(&nest(MAX_DEPTH + 1));
        let deep_and = format!("{}{}", "(&".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        p(&deep_and);
        bad(&format!("(&{deep_and})"));
        // Far too deep: must be an error, not a stack overflow.
        bad(&"(".repeat(1_000_000));
        bad(&"(&".repeat(1_000_000));
        bad(&"(!".repeat(1_000_000));
        bad(&nest(100_000));
    }

    #[test]
    fn filter_escapes_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        let f = eq("cn", &all);
        let s = f.to_string();
        assert!(s.contains(r"'\28\29\2a+,-"), "{s}");
        assert!(s.contains(r"[\5c]"), "{s}");
        assert!(s.starts_with(r"(cn=\00"), "{s}");
        roundtrip(&f);
        assert_eq!(
            eq("cn", b"a*(b)\\c\0").to_string(),
            r"(cn=a\2a\28b\29\5cc\00)"
        );
        assert_eq!(eq("cn", b"\xff\xfe").to_string(), r"(cn=\ff\fe)");
        assert_eq!(eq("cn", "Lučić".as_bytes()).to_string(), "(cn=Lučić)");
        for f in [
            Filter::Substrings {
                attr: "cn".into(),
                initial: Some(b"*(".to_vec()),
                any: vec![vec![], b"\\".to_vec(), vec![0xc4]],
                last: Some(b")\0".to_vec()),
            },
            Filter::Substrings {
                attr: "cn".into(),
                initial: None,
                any: vec![vec![]],
                last: None,
            },
            Filter::Extensible {
                rule: None,
                attr: Some("cn;x-a".into()),
                value: b"*".to_vec(),
                dn_attributes: true,
            },
            Filter::Extensible {
                rule: Some("1.2.3".into()),
                attr: None,
                value: vec![],
                dn_attributes: false,
            },
            Filter::Not(Box::new(Filter::And(vec![
                Filter::Or(vec![]),
                Filter::Present("objectClass".into()),
                Filter::Approx("sn".into(), b"(x)".to_vec()),
                Filter::GreaterOrEqual("n".into(), b"\x80".to_vec()),
                Filter::LessOrEqual("n".into(), b"*".to_vec()),
            ]))),
        ] {
            roundtrip(&f);
        }
    }

    #[test]
    fn filter_attributes() {
        let f = p("(&(objectClass=person)(|(cn=a*)(CN~=b)(:1.2.3:=x)(sn:dn:=y))(!(mail=*)))");
        assert_eq!(f.attributes(), vec!["objectClass", "cn", "sn", "mail"]);
        assert!(p("(&)").attributes().is_empty());
    }

    #[test]
    fn filter_serde_via_bincode() {
        let f = p("(&(cn=a*b)(:dn:1.2:=\\ff))");
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&f, cfg).unwrap();
        let (back, _): (Filter, usize) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, f);
    }

    /// Tiny xorshift generator so the fuzz-style tests are deterministic.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Parsing must never panic; whatever parses must print and re-parse to
    /// the same filter.
    fn check_no_panic(s: &str) -> bool {
        match Filter::parse(s) {
            Ok(f) => {
                roundtrip(&f);
                let _ = f.attributes();
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn filter_never_panics() {
        let complex = [
            "(&(objectClass=inetOrgPerson)(mail=a*@example.org))",
            r"(&(|(cn;lang-en=Babs J*)(sn~=jensn)(!(uid>=\c4\8d)))(:DN:2.4.6.8.10:=Dino)(o=univ*of*mich*)(x<=\2a))",
            r"(|(&)(|)(cn:caseExactMatch:=\28x\29)(bin=\00\ff*\5c*)(1.3.6.1=*))",
            "(!(&(a=é*ü)(b:dn:=ø)))",
        ];
        for s in complex {
            p(s);
            for (i, _) in s.char_indices() {
                let _ = check_no_panic(&s[..i]);
                let _ = check_no_panic(&s[i..]);
            }
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = check_no_panic(&String::from_utf8_lossy(&bytes));
        }
        // Random strings over the filter alphabet reach much deeper.
        let alphabet: &[&str] = &[
            "(", ")", "&", "|", "!", "=", "*", "~", ">", "<", ":", ";", "\\", "a", "c", "n", "dn",
            "1", ".", "2f", "é", " ", "\0", "-",
        ];
        let mut parsed = 0;
        for _ in 0..20000 {
            let len = (rng.next() % 24) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            parsed += usize::from(check_no_panic(&s));
        }
        eprintln!("random alphabet strings that parsed: {parsed}");
        assert!(
            parsed > 20,
            "the generator should hit valid filters sometimes"
        );
    }
}
