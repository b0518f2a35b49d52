//! RFC 2849 LDIF (LDAP Data Interchange Format) reading and writing.
//!
//! [`LdifReader`] streams records out of any [`BufRead`], one record at a
//! time, so arbitrarily large files can be processed in constant memory
//! (per record). [`parse_str`] is a convenience wrapper for in-memory text.
//!
//! [`write_entry`], [`write_record`] and [`write_version`] produce LDIF that
//! any RFC 2849 reader accepts: values that are not a SAFE-STRING are written
//! base64-encoded (`attr:: ...`) and lines longer than 76 characters are
//! folded.
//!
//! This module is self-contained: it depends only on `std`, `base64` and
//! `thiserror`.
#![deny(missing_docs)]

use std::fmt;
use std::io::{self, BufRead, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Maximum length of a physical line produced by the writer; longer lines are folded.
pub const MAX_LINE_LEN: usize = 76;

/// One LDIF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdifRecord {
    /// A content record: an entry (attribute name as written, value bytes) in file order.
    Entry {
        /// Distinguished name of the entry.
        dn: String,
        /// Attributes in file order: (attribute description as written, value bytes).
        attrs: Vec<(String, Vec<u8>)>,
    },
    /// changetype: add
    Add {
        /// Distinguished name of the entry to add.
        dn: String,
        /// Attributes in file order: (attribute description as written, value bytes).
        attrs: Vec<(String, Vec<u8>)>,
    },
    /// changetype: delete
    Delete {
        /// Distinguished name of the entry to delete.
        dn: String,
    },
    /// changetype: modify
    Modify {
        /// Distinguished name of the entry to modify.
        dn: String,
        /// Modifications, in file order.
        mods: Vec<LdifMod>,
    },
    /// changetype: modrdn / moddn
    ModRdn {
        /// Distinguished name of the entry to rename.
        dn: String,
        /// The new RDN (`newrdn:`).
        new_rdn: String,
        /// Whether the old RDN values are removed (`deleteoldrdn: 1`).
        delete_old_rdn: bool,
        /// The new parent DN (`newsuperior:`), if the entry is moved.
        new_superior: Option<String>,
    },
}

impl LdifRecord {
    /// The DN the record is about.
    pub fn dn(&self) -> &str {
        match self {
            LdifRecord::Entry { dn, .. }
            | LdifRecord::Add { dn, .. }
            | LdifRecord::Delete { dn }
            | LdifRecord::Modify { dn, .. }
            | LdifRecord::ModRdn { dn, .. } => dn,
        }
    }
}

/// The operation of one modification in a `changetype: modify` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModOp {
    /// `add: attr` — add the listed values.
    Add,
    /// `delete: attr` — delete the listed values, or the whole attribute if none are listed.
    Delete,
    /// `replace: attr` — replace all values with the listed ones (none: remove the attribute).
    Replace,
    /// `increment: attr` — RFC 4525 increment by the (single) listed value.
    Increment,
}

impl ModOp {
    /// The LDIF keyword for this operation (`add`, `delete`, `replace`, `increment`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModOp::Add => "add",
            ModOp::Delete => "delete",
            ModOp::Replace => "replace",
            ModOp::Increment => "increment",
        }
    }

    fn from_keyword(s: &str) -> Option<ModOp> {
        if s.eq_ignore_ascii_case("add") {
            Some(ModOp::Add)
        } else if s.eq_ignore_ascii_case("delete") {
            Some(ModOp::Delete)
        } else if s.eq_ignore_ascii_case("replace") {
            Some(ModOp::Replace)
        } else if s.eq_ignore_ascii_case("increment") {
            Some(ModOp::Increment)
        } else {
            None
        }
    }
}

impl fmt::Display for ModOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One modification of a `changetype: modify` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdifMod {
    /// What to do.
    pub op: ModOp,
    /// The attribute description, as written.
    pub attr: String,
    /// The values listed in the block (may be empty).
    pub values: Vec<Vec<u8>>,
}

/// An error while reading LDIF.
#[derive(Debug, thiserror::Error)]
pub enum LdifError {
    /// Malformed input.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line number where the problem is (first physical line of a folded line).
        line: usize,
        /// Short description of the problem.
        message: String,
    },
    /// The underlying reader failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn syntax(line: usize, message: impl Into<String>) -> LdifError {
    LdifError::Syntax {
        line,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------

/// A logical (unfolded) line with the number of its first physical line.
struct Line {
    no: usize,
    text: Vec<u8>,
}

enum Logical {
    Blank,
    Line(Line),
    Eof,
}

/// Streaming reader over any BufRead: yields records one by one (must handle 1,000,000-entry files without loading them whole).
///
/// Only the current record is held in memory. After a syntax error the
/// reader skips to the end of the offending record and continues with the
/// next one; after an I/O error it stops.
pub struct LdifReader<R: BufRead> {
    inner: R,
    /// Number of physical lines read so far.
    line_no: usize,
    /// One physical line of look-ahead (needed to detect folding).
    peeked: Option<(usize, Vec<u8>)>,
    /// No record has been seen yet, so a `version:` line is allowed.
    first: bool,
    done: bool,
}

impl<R: BufRead> LdifReader<R> {
    /// Create a reader over `r`.
    pub fn new(r: R) -> Self {
        LdifReader {
            inner: r,
            line_no: 0,
            peeked: None,
            first: true,
            done: false,
        }
    }

    fn read_physical(&mut self) -> io::Result<Option<(usize, Vec<u8>)>> {
        if let Some(p) = self.peeked.take() {
            return Ok(Some(p));
        }
        let mut buf = Vec::new();
        if self.inner.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        self.line_no += 1;
        if self.line_no == 1 && buf.starts_with(b"\xEF\xBB\xBF") {
            buf.drain(..3);
        }
        Ok(Some((self.line_no, buf)))
    }

    /// Read one logical line, joining continuation lines.
    fn read_logical(&mut self) -> Result<Logical, LdifError> {
        let Some((no, mut text)) = self.read_physical()? else {
            return Ok(Logical::Eof);
        };
        if text.is_empty() {
            return Ok(Logical::Blank);
        }
        if text[0] == b' ' {
            if text.iter().all(|&b| b == b' ' || b == b'\t') {
                return Ok(Logical::Blank);
            }
            return Err(syntax(
                no,
                "continuation line (starting with a space) without a preceding line",
            ));
        }
        loop {
            match self.read_physical()? {
                Some((_, t)) if t.first() == Some(&b' ') => text.extend_from_slice(&t[1..]),
                other => {
                    self.peeked = other;
                    break;
                }
            }
        }
        Ok(Logical::Line(Line { no, text }))
    }

    /// Collect the non-comment logical lines of the next record.
    /// On a syntax error the rest of the record is still consumed.
    fn collect_record(&mut self) -> Result<Option<Vec<Line>>, LdifError> {
        let mut lines = Vec::new();
        let mut err = None;
        loop {
            match self.read_logical() {
                Ok(Logical::Eof) => break,
                Ok(Logical::Blank) => {
                    if lines.is_empty() && err.is_none() {
                        continue;
                    }
                    break;
                }
                Ok(Logical::Line(l)) => {
                    if l.text[0] != b'#' {
                        lines.push(l);
                    }
                }
                Err(e @ LdifError::Io(_)) => return Err(e),
                Err(e) => {
                    if err.is_none() {
                        err = Some(e);
                    }
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None if lines.is_empty() => Ok(None),
            None => Ok(Some(lines)),
        }
    }
}

impl<R: BufRead> Iterator for LdifReader<R> {
    type Item = Result<LdifRecord, LdifError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let lines = match self.collect_record() {
                Ok(Some(lines)) => lines,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    if matches!(e, LdifError::Io(_)) {
                        self.done = true;
                    }
                    self.first = false;
                    return Some(Err(e));
                }
            };
            let mut lines = &lines[..];
            if self.first {
                self.first = false;
                if name_of(&lines[0].text).is_some_and(|n| n.eq_ignore_ascii_case(b"version")) {
                    if let Err(e) = check_version(&lines[0]) {
                        return Some(Err(e));
                    }
                    lines = &lines[1..];
                    if lines.is_empty() {
                        continue;
                    }
                }
            }
            return Some(parse_record(lines));
        }
    }
}

/// Parse a whole string.
pub fn parse_str(s: &str) -> Result<Vec<LdifRecord>, LdifError> {
    LdifReader::new(s.as_bytes()).collect()
}

/// The bytes before the first `:` of a line, if any.
fn name_of(text: &[u8]) -> Option<&[u8]> {
    text.iter().position(|&b| b == b':').map(|i| &text[..i])
}

fn check_version(line: &Line) -> Result<(), LdifError> {
    let (_, spec) = parse_line(line)?;
    let v = spec.into_string(line.no, "version")?;
    if v.trim() != "1" {
        return Err(syntax(
            line.no,
            format!(
                "unsupported LDIF version '{}' (only 1 is supported)",
                v.trim()
            ),
        ));
    }
    Ok(())
}

/// The value part of an `attr:` line.
enum ValueSpec {
    /// `attr: value`
    Plain(Vec<u8>),
    /// `attr:: base64` (already decoded)
    Base64(Vec<u8>),
    /// `attr:< url`
    Url(String),
}

impl ValueSpec {
    /// The value bytes; reads the file for `:<` URLs.
    fn load(self, line: usize) -> Result<Vec<u8>, LdifError> {
        match self {
            ValueSpec::Plain(v) | ValueSpec::Base64(v) => Ok(v),
            ValueSpec::Url(url) => load_url(&url, line),
        }
    }

    /// The value as a UTF-8 string (`what` names it in error messages).
    fn into_string(self, line: usize, what: &str) -> Result<String, LdifError> {
        let bytes = self.load(line)?;
        String::from_utf8(bytes).map_err(|_| syntax(line, format!("{what} is not valid UTF-8")))
    }
}

fn valid_attr_desc(name: &[u8]) -> bool {
    !name.is_empty()
        && name[0].is_ascii_alphanumeric()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b';' | b'.' | b'_'))
}

/// Split an `attr: value` / `attr:: base64` / `attr:< url` line.
fn parse_line(line: &Line) -> Result<(String, ValueSpec), LdifError> {
    let text = &line.text;
    let Some(colon) = text.iter().position(|&b| b == b':') else {
        return Err(syntax(
            line.no,
            "expected 'attribute: value', found a line without ':'",
        ));
    };
    let name = &text[..colon];
    if !valid_attr_desc(name) {
        return Err(syntax(
            line.no,
            format!(
                "invalid attribute description '{}'",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    let name = String::from_utf8(name.to_vec()).expect("validated ASCII");
    let rest = &text[colon + 1..];
    let spec = match rest.first() {
        Some(b':') => {
            let b64 = rest[1..].trim_ascii();
            match STANDARD.decode(b64) {
                Ok(v) => ValueSpec::Base64(v),
                Err(e) => {
                    return Err(syntax(
                        line.no,
                        format!("invalid base64 value for '{name}': {e}"),
                    ))
                }
            }
        }
        Some(b'<') => {
            let url = rest[1..].trim_ascii();
            match std::str::from_utf8(url) {
                Ok(u) if !u.is_empty() => ValueSpec::Url(u.to_string()),
                Ok(_) => return Err(syntax(line.no, format!("empty URL for '{name}'"))),
                Err(_) => return Err(syntax(line.no, format!("URL for '{name}' is not UTF-8"))),
            }
        }
        _ => {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            ValueSpec::Plain(rest[start..].to_vec())
        }
    };
    Ok((name, spec))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Read the contents of a `file://` URL.
fn load_url(url: &str, line: usize) -> Result<Vec<u8>, LdifError> {
    const SCHEME: &str = "file://";
    if url.len() < SCHEME.len() || !url[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(syntax(
            line,
            format!("unsupported URL '{url}' (only file:// URLs are supported)"),
        ));
    }
    let rest = &url[SCHEME.len()..];
    let path_part = if rest.starts_with('/') {
        rest
    } else {
        match rest.find('/') {
            Some(i) if rest[..i].eq_ignore_ascii_case("localhost") => &rest[i..],
            _ => {
                return Err(syntax(
                    line,
                    format!(
                        "unsupported file URL '{url}' (only local absolute paths are supported)"
                    ),
                ))
            }
        }
    };
    let path = percent_decode(path_part)
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(|| syntax(line, format!("invalid percent-encoding in URL '{url}'")))?;
    // file:///C:/dir/file on Windows.
    let path = if cfg!(windows) && path.len() >= 3 && path.as_bytes()[2] == b':' {
        path[1..].to_string()
    } else {
        path
    };
    std::fs::read(&path).map_err(|e| syntax(line, format!("cannot read '{url}': {e}")))
}

fn is_dash(text: &[u8]) -> bool {
    text.trim_ascii_end() == b"-"
}

fn parse_record(lines: &[Line]) -> Result<LdifRecord, LdifError> {
    let first = &lines[0];
    match name_of(&first.text) {
        Some(n) if n.eq_ignore_ascii_case(b"dn") => {}
        Some(n) => {
            return Err(syntax(
                first.no,
                format!(
                    "missing dn: record starts with '{}:' instead of 'dn:'",
                    String::from_utf8_lossy(n)
                ),
            ))
        }
        None => {
            return Err(syntax(
                first.no,
                "missing dn: record starts with a line without ':'",
            ))
        }
    }
    let (_, spec) = parse_line(first)?;
    let dn = match spec {
        ValueSpec::Url(_) => return Err(syntax(first.no, "dn cannot be given by URL")),
        spec => spec.into_string(first.no, "dn")?,
    };

    let rest = &lines[1..];
    let is = |l: &Line, kw: &[u8]| name_of(&l.text).is_some_and(|n| n.eq_ignore_ascii_case(kw));

    // Optional control lines, then changetype.
    let mut i = 0;
    while i < rest.len() && is(&rest[i], b"control") {
        parse_line(&rest[i])?;
        i += 1;
    }
    if i < rest.len() && is(&rest[i], b"changetype") {
        let ct_line = &rest[i];
        let (_, spec) = parse_line(ct_line)?;
        let ct = spec.into_string(ct_line.no, "changetype")?;
        let ct = ct.trim();
        let body = &rest[i + 1..];
        return if ct.eq_ignore_ascii_case("add") {
            let attrs = parse_attrs(body)?;
            if attrs.is_empty() {
                return Err(syntax(ct_line.no, "add record has no attributes"));
            }
            Ok(LdifRecord::Add { dn, attrs })
        } else if ct.eq_ignore_ascii_case("delete") {
            if let Some(l) = body.first() {
                return Err(syntax(l.no, "unexpected line in delete record"));
            }
            Ok(LdifRecord::Delete { dn })
        } else if ct.eq_ignore_ascii_case("modify") {
            Ok(LdifRecord::Modify {
                dn,
                mods: parse_mods(body)?,
            })
        } else if ct.eq_ignore_ascii_case("modrdn") || ct.eq_ignore_ascii_case("moddn") {
            parse_modrdn(dn, ct_line, body)
        } else {
            Err(syntax(ct_line.no, format!("unknown changetype '{ct}'")))
        };
    }
    if i > 0 {
        let l = rest.get(i).unwrap_or(&rest[i - 1]);
        return Err(syntax(l.no, "'control:' must be followed by 'changetype:'"));
    }
    let attrs = parse_attrs(rest)?;
    if attrs.is_empty() {
        return Err(syntax(first.no, format!("entry '{dn}' has no attributes")));
    }
    Ok(LdifRecord::Entry { dn, attrs })
}

fn parse_attrs(lines: &[Line]) -> Result<Vec<(String, Vec<u8>)>, LdifError> {
    let mut attrs = Vec::with_capacity(lines.len());
    for l in lines {
        let (name, spec) = parse_line(l)?;
        if name.eq_ignore_ascii_case("dn") {
            return Err(syntax(
                l.no,
                "unexpected 'dn:' inside a record (missing blank line between records?)",
            ));
        }
        attrs.push((name, spec.load(l.no)?));
    }
    Ok(attrs)
}

fn parse_mods(lines: &[Line]) -> Result<Vec<LdifMod>, LdifError> {
    let mut mods = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let op_line = &lines[i];
        if is_dash(&op_line.text) {
            return Err(syntax(
                op_line.no,
                "unexpected '-' (expected 'add:', 'delete:', 'replace:' or 'increment:')",
            ));
        }
        let (kw, spec) = parse_line(op_line)?;
        let Some(op) = ModOp::from_keyword(&kw) else {
            return Err(syntax(
                op_line.no,
                format!("expected 'add:', 'delete:', 'replace:' or 'increment:', found '{kw}:'"),
            ));
        };
        let attr = spec.into_string(op_line.no, "attribute name")?;
        let attr = attr.trim().to_string();
        if !valid_attr_desc(attr.as_bytes()) {
            return Err(syntax(
                op_line.no,
                format!("invalid attribute description '{attr}' after '{kw}:'"),
            ));
        }
        i += 1;
        let mut values = Vec::new();
        while i < lines.len() {
            let l = &lines[i];
            i += 1;
            if is_dash(&l.text) {
                break;
            }
            let (name, spec) = parse_line(l)?;
            if !name.eq_ignore_ascii_case(&attr) {
                return Err(syntax(
                    l.no,
                    format!(
                        "attribute '{name}' does not match '{attr}' being modified (missing '-' line?)"
                    ),
                ));
            }
            values.push(spec.load(l.no)?);
        }
        if op == ModOp::Increment && values.len() != 1 {
            return Err(syntax(
                op_line.no,
                format!("'increment: {attr}' needs exactly one value"),
            ));
        }
        mods.push(LdifMod { op, attr, values });
    }
    Ok(mods)
}

fn parse_modrdn(dn: String, ct_line: &Line, body: &[Line]) -> Result<LdifRecord, LdifError> {
    let mut new_rdn = None;
    let mut delete_old_rdn = None;
    let mut new_superior = None;
    for l in body {
        let (name, spec) = parse_line(l)?;
        let lname = name.to_ascii_lowercase();
        let slot_taken = match lname.as_str() {
            "newrdn" => new_rdn.is_some(),
            "deleteoldrdn" => delete_old_rdn.is_some(),
            "newsuperior" => new_superior.is_some(),
            _ => {
                return Err(syntax(
                    l.no,
                    format!("unexpected '{name}:' in modrdn record"),
                ))
            }
        };
        if slot_taken {
            return Err(syntax(
                l.no,
                format!("duplicate '{name}:' in modrdn record"),
            ));
        }
        let value = spec.into_string(l.no, &lname)?;
        match lname.as_str() {
            "newrdn" => new_rdn = Some(value),
            "deleteoldrdn" => {
                delete_old_rdn = Some(match value.trim() {
                    "0" => false,
                    "1" => true,
                    other => {
                        return Err(syntax(
                            l.no,
                            format!("deleteoldrdn must be 0 or 1, found '{other}'"),
                        ))
                    }
                })
            }
            _ => new_superior = Some(value),
        }
    }
    let Some(new_rdn) = new_rdn else {
        return Err(syntax(ct_line.no, "modrdn record is missing 'newrdn:'"));
    };
    let Some(delete_old_rdn) = delete_old_rdn else {
        return Err(syntax(
            ct_line.no,
            "modrdn record is missing 'deleteoldrdn:'",
        ));
    };
    Ok(LdifRecord::ModRdn {
        dn,
        new_rdn,
        delete_old_rdn,
        new_superior,
    })
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Whether `v` can be written as a plain value (`attr: v`).
///
/// This is RFC 2849's SAFE-STRING, further restricted to printable ASCII:
/// no leading space, `:` or `<`, no trailing space, and no byte outside
/// 0x20..=0x7E. The empty value is safe.
pub fn is_safe_string(v: &[u8]) -> bool {
    if let Some(&first) = v.first() {
        if matches!(first, b' ' | b':' | b'<') {
            return false;
        }
    }
    if v.last() == Some(&b' ') {
        return false;
    }
    v.iter().all(|&b| (0x20..=0x7e).contains(&b))
}

/// Write one logical line, folding it at [`MAX_LINE_LEN`] characters.
fn write_folded<W: Write>(w: &mut W, line: &[u8]) -> io::Result<()> {
    if line.len() <= MAX_LINE_LEN {
        w.write_all(line)?;
        return w.write_all(b"\n");
    }
    w.write_all(&line[..MAX_LINE_LEN])?;
    w.write_all(b"\n")?;
    for chunk in line[MAX_LINE_LEN..].chunks(MAX_LINE_LEN - 1) {
        w.write_all(b" ")?;
        w.write_all(chunk)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Write one `name: value` line (or `name:: base64` when the value is not a
/// safe string), folded at 76 characters. `name` is written as given.
pub fn write_attr<W: Write>(w: &mut W, name: &str, value: &[u8]) -> io::Result<()> {
    let mut line = Vec::with_capacity(name.len() + 3 + value.len() * 4 / 3 + 4);
    line.extend_from_slice(name.as_bytes());
    if value.is_empty() {
        line.push(b':');
    } else if is_safe_string(value) {
        line.extend_from_slice(b": ");
        line.extend_from_slice(value);
    } else {
        line.extend_from_slice(b":: ");
        line.extend_from_slice(STANDARD.encode(value).as_bytes());
    }
    write_folded(w, &line)
}

/// Write one entry as a content record (followed by a blank line). Values that are not SAFE-STRING per RFC 2849 (leading space/colon/<, non-ASCII or control bytes, trailing space) are written base64 with `::`. DNs likewise. Lines longer than 76 characters are folded (continuation lines begin with one space).
pub fn write_entry<W: Write>(w: &mut W, dn: &str, attrs: &[(String, Vec<u8>)]) -> io::Result<()> {
    write_attr(w, "dn", dn.as_bytes())?;
    for (name, value) in attrs {
        write_attr(w, name, value)?;
    }
    w.write_all(b"\n")
}

/// Write the `version: 1` header.
///
/// It is followed by a blank line, so records can then be written with
/// [`write_entry`] or [`write_record`].
pub fn write_version<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(b"version: 1\n\n")
}

/// Write any record (content or change record), followed by a blank line,
/// with the same encoding and folding rules as [`write_entry`].
pub fn write_record<W: Write>(w: &mut W, record: &LdifRecord) -> io::Result<()> {
    match record {
        LdifRecord::Entry { dn, attrs } => write_entry(w, dn, attrs),
        LdifRecord::Add { dn, attrs } => {
            write_attr(w, "dn", dn.as_bytes())?;
            w.write_all(b"changetype: add\n")?;
            for (name, value) in attrs {
                write_attr(w, name, value)?;
            }
            w.write_all(b"\n")
        }
        LdifRecord::Delete { dn } => {
            write_attr(w, "dn", dn.as_bytes())?;
            w.write_all(b"changetype: delete\n\n")
        }
        LdifRecord::Modify { dn, mods } => {
            write_attr(w, "dn", dn.as_bytes())?;
            w.write_all(b"changetype: modify\n")?;
            for m in mods {
                write_attr(w, m.op.as_str(), m.attr.as_bytes())?;
                for v in &m.values {
                    write_attr(w, &m.attr, v)?;
                }
                w.write_all(b"-\n")?;
            }
            w.write_all(b"\n")
        }
        LdifRecord::ModRdn {
            dn,
            new_rdn,
            delete_old_rdn,
            new_superior,
        } => {
            write_attr(w, "dn", dn.as_bytes())?;
            w.write_all(b"changetype: modrdn\n")?;
            write_attr(w, "newrdn", new_rdn.as_bytes())?;
            w.write_all(if *delete_old_rdn {
                b"deleteoldrdn: 1\n"
            } else {
                b"deleteoldrdn: 0\n"
            })?;
            if let Some(sup) = new_superior {
                write_attr(w, "newsuperior", sup.as_bytes())?;
            }
            w.write_all(b"\n")
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Read};

    fn attrs(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    fn one(s: &str) -> LdifRecord {
        let mut v = parse_str(s).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v.pop().unwrap()
    }

    fn err_line(s: &str) -> (usize, String) {
        match parse_str(s) {
            Err(LdifError::Syntax { line, message }) => (line, message),
            other => panic!("expected syntax error, got {other:?}"),
        }
    }

    fn entry_text(dn: &str, a: &[(String, Vec<u8>)]) -> String {
        let mut out = Vec::new();
        write_entry(&mut out, dn, a).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn temp_file(tag: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "pigeonair-ldif-test-{}-{tag}.bin",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn file_url(path: &std::path::Path) -> String {
        let s = path.to_str().unwrap().replace('\\', "/");
        if s.starts_with('/') {
            format!("file://{s}")
        } else {
            format!("file:///{s}")
        }
    }

    // ----- writer -----

    #[test]
    fn safe_string_rules() {
        assert!(is_safe_string(b""));
        assert!(is_safe_string(b"hello world"));
        assert!(is_safe_string(b"a:b<c"));
        assert!(is_safe_string(b"#not a comment"));
        assert!(!is_safe_string(b" leading"));
        assert!(!is_safe_string(b":colon"));
        assert!(!is_safe_string(b"<lt"));
        assert!(!is_safe_string(b"trailing "));
        assert!(!is_safe_string("é".as_bytes()));
        assert!(!is_safe_string(b"a\nb"));
        assert!(!is_safe_string(b"a\rb"));
        assert!(!is_safe_string(b"a\0b"));
        assert!(!is_safe_string(b"tab\there"));
        assert!(!is_safe_string(b"del\x7f"));
    }

    #[test]
    fn write_plain_and_base64() {
        let a = attrs(&[
            ("cn", b"Barbara Jensen"),
            ("description", b" leading space"),
            ("sn", "Jénsen".as_bytes()),
            ("empty", b""),
            ("cn;lang-en", b"x"),
        ]);
        let text = entry_text("cn=Barbara Jensen,dc=example", &a);
        assert_eq!(
            text,
            "dn: cn=Barbara Jensen,dc=example\n\
             cn: Barbara Jensen\n\
             description:: IGxlYWRpbmcgc3BhY2U=\n\
             sn:: SsOpbnNlbg==\n\
             empty:\n\
             cn;lang-en: x\n\
             \n"
        );
        assert_eq!(
            one(&text),
            LdifRecord::Entry {
                dn: "cn=Barbara Jensen,dc=example".into(),
                attrs: a
            }
        );
    }

    #[test]
    fn write_dn_base64_when_unsafe() {
        let text = entry_text("cn=Émile,dc=x", &attrs(&[("cn", "Émile".as_bytes())]));
        assert!(text.starts_with("dn:: "), "{text}");
        let text2 = entry_text(" cn=x", &attrs(&[("cn", b"x")]));
        assert!(text2.starts_with("dn:: "), "{text2}");
        assert_eq!(one(&text).dn(), "cn=Émile,dc=x");
        assert_eq!(one(&text2).dn(), " cn=x");
    }

    #[test]
    fn write_version_header() {
        let mut out = Vec::new();
        write_version(&mut out).unwrap();
        write_entry(&mut out, "dc=x", &attrs(&[("dc", b"x")])).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("version: 1\n"));
        assert_eq!(
            parse_str(&text).unwrap(),
            vec![LdifRecord::Entry {
                dn: "dc=x".into(),
                attrs: attrs(&[("dc", b"x")])
            }]
        );
    }

    #[test]
    fn folding_at_76_columns() {
        let value = "a".repeat(200);
        let text = entry_text("dc=x", &attrs(&[("description", value.as_bytes())]));
        let lines: Vec<&str> = text.lines().collect();
        // "description: " + 200 chars = 213 chars → 76 + 75 + 62.
        assert_eq!(lines[0], "dn: dc=x");
        assert_eq!(lines[1].len(), 76);
        assert_eq!(lines[1], format!("description: {}", "a".repeat(63)));
        assert_eq!(lines[2], format!(" {}", "a".repeat(75)));
        assert_eq!(lines[3], format!(" {}", "a".repeat(62)));
        assert_eq!(lines[4], "");
        assert_eq!(lines.len(), 5);
        let LdifRecord::Entry { attrs: got, .. } = one(&text) else {
            panic!()
        };
        assert_eq!(got[0].1, value.as_bytes());
    }

    #[test]
    fn folding_boundary() {
        // "cn: " is 4 characters; 72 more make exactly 76: not folded.
        let exact = "x".repeat(72);
        let text = entry_text("dc=x", &attrs(&[("cn", exact.as_bytes())]));
        assert_eq!(text.lines().nth(1).unwrap().len(), 76);
        assert_eq!(text.lines().count(), 3);
        // One more character: folded into 76 + " y".
        let over = format!("{exact}y");
        let text = entry_text("dc=x", &attrs(&[("cn", over.as_bytes())]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("cn: {exact}"));
        assert_eq!(lines[2], " y");
        let LdifRecord::Entry { attrs: got, .. } = one(&text) else {
            panic!()
        };
        assert_eq!(got[0].1, over.as_bytes());
    }

    #[test]
    fn folding_preserves_spaces_at_fold_points() {
        let value: String = (0..300)
            .map(|i| if i % 7 == 0 { ' ' } else { 'k' })
            .collect::<String>()
            .trim()
            .to_string();
        let text = entry_text("dc=x", &attrs(&[("description", value.as_bytes())]));
        for l in text.lines() {
            assert!(l.len() <= 76);
        }
        let LdifRecord::Entry { attrs: got, .. } = one(&text) else {
            panic!()
        };
        assert_eq!(got[0].1, value.as_bytes());
    }

    #[test]
    fn round_trip_many_values() {
        let mut rng = crate::testing::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut rnd = move || rng.next();
        let mut entries = Vec::new();
        let specials: Vec<Vec<u8>> = vec![
            b" leading space".to_vec(),
            b":leading colon".to_vec(),
            b"<leading lt".to_vec(),
            b"trailing space ".to_vec(),
            b"#hash".to_vec(),
            b"-".to_vec(),
            "non-ASCII: 営業部 Ünïcødé".as_bytes().to_vec(),
            b"\0nul".to_vec(),
            b"line\r\nbreak".to_vec(),
            b"\xff\xfe binary \x00\x01".to_vec(),
            vec![],
            "é".repeat(100).into_bytes(),
            "long ".repeat(60).trim_end().as_bytes().to_vec(),
            (0u8..=255).collect(),
        ];
        for (i, v) in specials.into_iter().enumerate() {
            entries.push((
                format!("cn=special{i},dc=example"),
                vec![
                    ("cn".to_string(), format!("special{i}").into_bytes()),
                    ("description".to_string(), v),
                ],
            ));
        }
        for i in 0..200 {
            let n = (rnd() % 6 + 1) as usize;
            let mut a = Vec::new();
            for j in 0..n {
                let len = (rnd() % 300) as usize;
                let binary = rnd() % 3 == 0;
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = rnd();
                        if binary {
                            r as u8
                        } else {
                            b' ' + (r % 95) as u8
                        }
                    })
                    .collect();
                a.push((format!("attr{j};opt-{}", rnd() % 3), v));
            }
            let dn = if i % 5 == 0 {
                format!("cn=Ådne {i} ,dc=example")
            } else {
                format!("cn=user{i},{}dc=example", "ou=deep,".repeat(i % 13))
            };
            entries.push((dn, a));
        }
        let mut out = Vec::new();
        write_version(&mut out).unwrap();
        for (dn, a) in &entries {
            write_entry(&mut out, dn, a).unwrap();
        }
        assert!(out.is_ascii(), "writer must only produce ASCII");
        for line in out.split(|&b| b == b'\n') {
            assert!(
                line.len() <= 76,
                "line too long: {}",
                String::from_utf8_lossy(line)
            );
        }
        let got: Vec<LdifRecord> = LdifReader::new(&out[..]).collect::<Result<_, _>>().unwrap();
        let want: Vec<LdifRecord> = entries
            .into_iter()
            .map(|(dn, attrs)| LdifRecord::Entry { dn, attrs })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn round_trip_change_records() {
        let records = vec![
            LdifRecord::Add {
                dn: "cn=new,dc=x".into(),
                attrs: attrs(&[
                    ("objectClass", b"person"),
                    ("cn", b"new"),
                    ("photo", b"\x89PNG\0"),
                ]),
            },
            LdifRecord::Delete {
                dn: "cn=Ødegaard,dc=x".into(),
            },
            LdifRecord::Modify {
                dn: "cn=m,dc=x".into(),
                mods: vec![
                    LdifMod {
                        op: ModOp::Add,
                        attr: "mail".into(),
                        values: vec![b"a@x".to_vec(), b" b@x".to_vec()],
                    },
                    LdifMod {
                        op: ModOp::Delete,
                        attr: "description".into(),
                        values: vec![],
                    },
                    LdifMod {
                        op: ModOp::Replace,
                        attr: "cn;lang-de".into(),
                        values: vec!["Müller".as_bytes().to_vec()],
                    },
                    LdifMod {
                        op: ModOp::Replace,
                        attr: "seeAlso".into(),
                        values: vec![],
                    },
                    LdifMod {
                        op: ModOp::Increment,
                        attr: "uidNumber".into(),
                        values: vec![b"1".to_vec()],
                    },
                ],
            },
            LdifRecord::ModRdn {
                dn: "cn=a,dc=x".into(),
                new_rdn: "cn=b".into(),
                delete_old_rdn: true,
                new_superior: None,
            },
            LdifRecord::ModRdn {
                dn: "cn=a,dc=x".into(),
                new_rdn: "cn=Ä".into(),
                delete_old_rdn: false,
                new_superior: Some("ou=elsewhere,dc=x".into()),
            },
            LdifRecord::Entry {
                dn: "dc=x".into(),
                attrs: attrs(&[("dc", b"x")]),
            },
        ];
        let mut out = Vec::new();
        for r in &records {
            write_record(&mut out, r).unwrap();
        }
        let got = parse_str(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(got, records);
    }

    // ----- reader basics -----

    #[test]
    fn leading_spaces_after_colon_skipped_and_trailing_kept() {
        let r = one("dn:   cn=x\ncn:    x\nsn:y\ndescription: z  \n");
        assert_eq!(
            r,
            LdifRecord::Entry {
                dn: "cn=x".into(),
                attrs: attrs(&[("cn", b"x"), ("sn", b"y"), ("description", b"z  ")])
            }
        );
    }

    #[test]
    fn options_and_case_kept_as_written() {
        let r = one("DN: cn=x\nCN;lang-en: x\ncn;lang-ja;phonetic: y\n2.5.4.3: z\n");
        assert_eq!(
            r,
            LdifRecord::Entry {
                dn: "cn=x".into(),
                attrs: attrs(&[
                    ("CN;lang-en", b"x"),
                    ("cn;lang-ja;phonetic", b"y"),
                    ("2.5.4.3", b"z")
                ])
            }
        );
    }

    #[test]
    fn empty_values_and_base64_empty() {
        let r = one("dn: cn=x\ncn:\nsn::\ndescription: \n");
        assert_eq!(
            r,
            LdifRecord::Entry {
                dn: "cn=x".into(),
                attrs: attrs(&[("cn", b""), ("sn", b""), ("description", b"")])
            }
        );
    }

    #[test]
    fn folded_lines_and_comments() {
        let text = "# a comment\n that is folded\ndn: cn=Fo\n lded,dc=x\n# inside\ndescr\n iption: one\n  two\ncn:: SGVs\n bG8=\n";
        assert_eq!(
            one(text),
            LdifRecord::Entry {
                dn: "cn=Folded,dc=x".into(),
                attrs: attrs(&[("description", b"one two"), ("cn", b"Hello")])
            }
        );
    }

    #[test]
    fn folded_utf8_split_across_lines() {
        let bytes = "cn: Ü".as_bytes();
        // Split between the two bytes of 'Ü'.
        let mut text = b"dn: dc=x\n".to_vec();
        text.extend_from_slice(&bytes[..5]);
        text.extend_from_slice(b"\n ");
        text.extend_from_slice(&bytes[5..]);
        text.push(b'\n');
        let r: Vec<_> = LdifReader::new(&text[..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            r,
            vec![LdifRecord::Entry {
                dn: "dc=x".into(),
                attrs: attrs(&[("cn", "Ü".as_bytes())])
            }]
        );
    }

    #[test]
    fn multiple_blank_lines_and_trailing_whitespace_lines() {
        let text = "\n\n\ndn: dc=a\ndc: a\n\n\n\n# only a comment\n\ndn: dc=b\ndc: b\n\n\n";
        let r = parse_str(text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].dn(), "dc=a");
        assert_eq!(r[1].dn(), "dc=b");
    }

    #[test]
    fn no_trailing_newline() {
        let r = parse_str("dn: dc=a\ndc: a").unwrap();
        assert_eq!(
            r,
            vec![LdifRecord::Entry {
                dn: "dc=a".into(),
                attrs: attrs(&[("dc", b"a")])
            }]
        );
    }

    #[test]
    fn crlf_line_endings() {
        let text = "version: 1\r\ndn: cn=x,dc=y\r\ncn: x\r\ndescription: fol\r\n ded\r\n\r\ndn: dc=y\r\ndc: y\r\n";
        let r = parse_str(text).unwrap();
        assert_eq!(
            r,
            vec![
                LdifRecord::Entry {
                    dn: "cn=x,dc=y".into(),
                    attrs: attrs(&[("cn", b"x"), ("description", b"folded")])
                },
                LdifRecord::Entry {
                    dn: "dc=y".into(),
                    attrs: attrs(&[("dc", b"y")])
                }
            ]
        );
    }

    #[test]
    fn utf8_bom_is_skipped() {
        let r = parse_str("\u{feff}version: 1\ndn: dc=a\ndc: a\n").unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn version_only_header_then_blank_line() {
        let r = parse_str("version: 1\n\ndn: dc=a\ndc: a\n").unwrap();
        assert_eq!(r.len(), 1);
        assert!(parse_str("version: 1\n").unwrap().is_empty());
        assert!(parse_str("").unwrap().is_empty());
    }

    #[test]
    fn file_url_value() {
        let data = b"\xff\xd8\xff\xe0 fake jpeg \x00\x01\x02";
        let path = temp_file("url", data);
        let url = file_url(&path);
        let text = format!("dn: cn=x\njpegPhoto:<  {url}\n");
        let r = one(&text);
        std::fs::remove_file(&path).ok();
        assert_eq!(
            r,
            LdifRecord::Entry {
                dn: "cn=x".into(),
                attrs: vec![("jpegPhoto".into(), data.to_vec())]
            }
        );
    }

    #[test]
    fn file_url_localhost_and_percent_encoding() {
        let path = std::env::temp_dir().join(format!("pigeonair ldif {}.txt", std::process::id()));
        std::fs::write(&path, b"spaced").unwrap();
        let s = path
            .to_str()
            .unwrap()
            .replace('\\', "/")
            .replace(' ', "%20");
        let s = if s.starts_with('/') {
            s
        } else {
            format!("/{s}")
        };
        let text = format!("dn: cn=x\na:< file://localhost{s}\nb:< FILE://{s}\n");
        let r = one(&text);
        std::fs::remove_file(&path).ok();
        assert_eq!(
            r,
            LdifRecord::Entry {
                dn: "cn=x".into(),
                attrs: attrs(&[("a", b"spaced"), ("b", b"spaced")])
            }
        );
    }

    #[test]
    fn streaming_large_input() {
        /// Generates `n` entries lazily, never holding the whole text.
        struct Gen {
            next: usize,
            n: usize,
            buf: Vec<u8>,
            pos: usize,
        }
        impl Read for Gen {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.pos == self.buf.len() {
                    if self.next == self.n {
                        return Ok(0);
                    }
                    self.buf.clear();
                    self.pos = 0;
                    let i = self.next;
                    self.next += 1;
                    write!(
                        self.buf,
                        "dn: uid=u{i},ou=people,dc=example\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn:: VXNlcg==\n\n"
                    )?;
                }
                let k = out.len().min(self.buf.len() - self.pos);
                out[..k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
                self.pos += k;
                Ok(k)
            }
        }
        let n = 200_000;
        let reader = LdifReader::new(BufReader::new(Gen {
            next: 0,
            n,
            buf: Vec::new(),
            pos: 0,
        }));
        let mut count = 0;
        for (i, r) in reader.enumerate() {
            let r = r.unwrap();
            if i == n - 1 {
                assert_eq!(r.dn(), format!("uid=u{i},ou=people,dc=example"));
            }
            count += 1;
        }
        assert_eq!(count, n);
    }

    #[test]
    fn io_error_is_reported_and_stops() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut r = LdifReader::new(BufReader::new(Failing));
        assert!(matches!(r.next(), Some(Err(LdifError::Io(_)))));
        assert!(r.next().is_none());
    }

    // ----- change records -----

    #[test]
    fn change_add() {
        let r = one("dn: cn=a,dc=x\nchangetype: add\nobjectClass: person\ncn: a\nsn:: Yg==\n");
        assert_eq!(
            r,
            LdifRecord::Add {
                dn: "cn=a,dc=x".into(),
                attrs: attrs(&[("objectClass", b"person"), ("cn", b"a"), ("sn", b"b")])
            }
        );
    }

    #[test]
    fn change_delete_with_controls() {
        let r = one("dn: ou=Product Development, dc=airius, dc=com\n\
             control: 1.2.840.113556.1.4.805 true\n\
             control: 1.2.3.4 false:: AAEC\n\
             changetype: delete\n");
        assert_eq!(
            r,
            LdifRecord::Delete {
                dn: "ou=Product Development, dc=airius, dc=com".into()
            }
        );
    }

    #[test]
    fn change_modify_all_ops_and_missing_final_dash() {
        let r = one("dn: cn=a,dc=x\nchangetype: modify\n\
             add: mail\nmail: a@x\nmail:: YkB4\n-\n\
             delete: description\n-\n\
             delete: cn;lang-en\ncn;lang-en: old\n-\n\
             replace: telephoneNumber\ntelephonenumber: 1\nTELEPHONENUMBER: 2\n-\n\
             replace: seeAlso\n-\n\
             increment: uidNumber\nuidNumber: 5\n");
        let m = |op, attr: &str, values: &[&[u8]]| LdifMod {
            op,
            attr: attr.into(),
            values: values.iter().map(|v| v.to_vec()).collect(),
        };
        assert_eq!(
            r,
            LdifRecord::Modify {
                dn: "cn=a,dc=x".into(),
                mods: vec![
                    m(ModOp::Add, "mail", &[b"a@x", b"b@x"]),
                    m(ModOp::Delete, "description", &[]),
                    m(ModOp::Delete, "cn;lang-en", &[b"old"]),
                    m(ModOp::Replace, "telephoneNumber", &[b"1", b"2"]),
                    m(ModOp::Replace, "seeAlso", &[]),
                    m(ModOp::Increment, "uidNumber", &[b"5"]),
                ]
            }
        );
    }

    #[test]
    fn change_modify_empty_and_dash_without_values() {
        assert_eq!(
            one("dn: cn=a\nchangetype: modify\n"),
            LdifRecord::Modify {
                dn: "cn=a".into(),
                mods: vec![]
            }
        );
        assert_eq!(
            one("dn: cn=a\nchangetype: modify\ndelete: description\n"),
            LdifRecord::Modify {
                dn: "cn=a".into(),
                mods: vec![LdifMod {
                    op: ModOp::Delete,
                    attr: "description".into(),
                    values: vec![]
                }]
            }
        );
    }

    #[test]
    fn change_modrdn_and_moddn() {
        assert_eq!(
            one("dn: cn=a,dc=x\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 1\n"),
            LdifRecord::ModRdn {
                dn: "cn=a,dc=x".into(),
                new_rdn: "cn=b".into(),
                delete_old_rdn: true,
                new_superior: None
            }
        );
        assert_eq!(
            one("dn: cn=a,dc=x\nchangetype: moddn\nnewrdn:: Y249w4Q=\ndeleteoldrdn: 0\nnewsuperior: ou=y,dc=x\n"),
            LdifRecord::ModRdn {
                dn: "cn=a,dc=x".into(),
                new_rdn: "cn=Ä".into(),
                delete_old_rdn: false,
                new_superior: Some("ou=y,dc=x".into())
            }
        );
    }

    #[test]
    fn changetype_case_insensitive() {
        assert_eq!(
            one("dn: cn=a\nChangeType: Delete\n"),
            LdifRecord::Delete { dn: "cn=a".into() }
        );
    }

    #[test]
    fn mixed_content_and_change_records() {
        let r = parse_str("dn: dc=a\ndc: a\n\ndn: dc=b\nchangetype: delete\n").unwrap();
        assert_eq!(r.len(), 2);
        assert!(matches!(r[0], LdifRecord::Entry { .. }));
        assert!(matches!(r[1], LdifRecord::Delete { .. }));
    }

    // ----- RFC 2849 examples -----

    const EXAMPLE1: &str = "version: 1
dn: cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Barbara Jensen
cn: Barbara J Jensen
cn: Babs Jensen
sn: Jensen
uid: bjensen
telephonenumber: +1 408 555 1212
description: A big sailing fan.

dn: cn=Bjorn Jensen, ou=Accounting, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Bjorn Jensen
sn: Jensen
telephonenumber: +1 408 555 1212
";

    #[test]
    fn rfc2849_example1() {
        let r = parse_str(EXAMPLE1).unwrap();
        assert_eq!(
            r,
            vec![
                LdifRecord::Entry {
                    dn: "cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com".into(),
                    attrs: attrs(&[
                        ("objectclass", b"top"),
                        ("objectclass", b"person"),
                        ("objectclass", b"organizationalPerson"),
                        ("cn", b"Barbara Jensen"),
                        ("cn", b"Barbara J Jensen"),
                        ("cn", b"Babs Jensen"),
                        ("sn", b"Jensen"),
                        ("uid", b"bjensen"),
                        ("telephonenumber", b"+1 408 555 1212"),
                        ("description", b"A big sailing fan."),
                    ])
                },
                LdifRecord::Entry {
                    dn: "cn=Bjorn Jensen, ou=Accounting, dc=airius, dc=com".into(),
                    attrs: attrs(&[
                        ("objectclass", b"top"),
                        ("objectclass", b"person"),
                        ("objectclass", b"organizationalPerson"),
                        ("cn", b"Bjorn Jensen"),
                        ("sn", b"Jensen"),
                        ("telephonenumber", b"+1 408 555 1212"),
                    ])
                },
            ]
        );
        // Write it back and read again: same records.
        let mut out = Vec::new();
        write_version(&mut out).unwrap();
        for rec in &r {
            write_record(&mut out, rec).unwrap();
        }
        assert_eq!(parse_str(std::str::from_utf8(&out).unwrap()).unwrap(), r);
    }

    #[test]
    fn rfc2849_example2_folded() {
        let text = "version: 1
dn:cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com
objectclass:top
objectclass:person
objectclass:organizationalPerson
cn:Barbara Jensen
cn:Barbara J Jensen
cn:Babs Jensen
sn:Jensen
uid:bjensen
telephonenumber:+1 408 555 1212
description:Babs is a big sailing fan, and travels extensively in sea
 rch of perfect sailing conditions.
title:Product Manager, Rod and Reel Division
";
        let LdifRecord::Entry { dn, attrs } = one(text) else {
            panic!("not an entry")
        };
        assert_eq!(
            dn,
            "cn=Barbara Jensen, ou=Product Development, dc=airius, dc=com"
        );
        assert_eq!(attrs.len(), 11);
        assert_eq!(attrs[0], ("objectclass".to_string(), b"top".to_vec()));
        assert_eq!(
            attrs[9],
            (
                "description".to_string(),
                b"Babs is a big sailing fan, and travels extensively in search of perfect sailing conditions.".to_vec()
            )
        );
        assert_eq!(
            attrs[10],
            (
                "title".to_string(),
                b"Product Manager, Rod and Reel Division".to_vec()
            )
        );
    }

    #[test]
    fn rfc2849_example3_base64() {
        let text = "version: 1
dn: cn=Gern Jensen, ou=Product Testing, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Gern Jensen
cn: Gern O Jensen
sn: Jensen
uid: gernj
telephonenumber: +1 408 555 1212
description:: V2hhdCBhIGNhcmVmdWwgcmVhZGVyIHlvdSBhcmUhICBUaGlzIHZhbHVl
 IGlzIGJhc2UtNjQtZW5jb2RlZCBiZWNhdXNlIGl0IGhhcyBhIGNvbnRyb2wgY2hhcmFjdG
 VyIGluIGl0IChhIENSKS4NICBCeSB0aGUgd2F5LCB5b3Ugc2hvdWxkIHJlYWxseSBnZXQg
 b3V0IG1vcmUu
";
        let LdifRecord::Entry { dn, attrs } = one(text) else {
            panic!("not an entry")
        };
        assert_eq!(dn, "cn=Gern Jensen, ou=Product Testing, dc=airius, dc=com");
        let (name, value) = attrs.last().unwrap();
        assert_eq!(name, "description");
        assert_eq!(
            value.as_slice(),
            &b"What a careful reader you are!  This value is base-64-encoded because it has a control character in it (a CR).\r  By the way, you should really get out more."[..]
        );
        // The writer must base64 it again (it contains a CR).
        let back = entry_text(&dn, &attrs);
        assert!(back.contains("description:: "));
        assert_eq!(one(&back), LdifRecord::Entry { dn, attrs });
    }

    #[test]
    fn rfc2849_example4_utf8_and_language_tags() {
        let text = "version: 1
dn:: b3U95Za25qWt6YOoLG89QWlyaXVz
# dn:: ou=<JapaneseOU>,o=Airius
objectclass: top
objectclass: organizationalUnit
ou:: 5Za25qWt6YOo
# ou:: <JapaneseOU>
ou;lang-ja:: 5Za25qWt6YOo
# ou;lang-ja:: <JapaneseOU>
ou;lang-ja;phonetic:: 44GI44GE44GO44KH44GG44G2
# ou;lang-ja:: <JapaneseOU_in_phonetic_representation>
ou;lang-en: Sales
description: Japanese office

dn:: dWlkPXJvZ2FzYXdhcmEsb3U95Za25qWt6YOoLG89QWlyaXVz
# dn:: uid=<uid>,ou=<JapaneseOU>,o=Airius
userpassword: {SHA}O3HSv1MusyL4kTjP+HKI5uxuNoM=
objectclass: top
objectclass: person
objectclass: organizationalPerson
objectclass: inetOrgPerson
uid: rogasawara
mail: rogasawara@airius.co.jp
givenname;lang-ja:: 44Ot44OJ44OL44O8
# givenname;lang-ja:: <JapaneseGivenname>
sn;lang-ja:: 5bCP56yg5Y6f
# sn;lang-ja:: <JapaneseSn>
cn;lang-ja:: 5bCP56yg5Y6fIOODreODieODi+ODvA==
# cn;lang-ja:: <JapaneseCn>
title;lang-ja:: 5Za25qWt6YOoIOmDqOmVtw==
# title;lang-ja:: <JapaneseTitle>
preferredlanguage: ja
givenname:: 44Ot44OJ44OL44O8
# givenname:: <JapaneseGivenname>
sn:: 5bCP56yg5Y6f
# sn:: <JapaneseSn>
cn:: 5bCP56yg5Y6fIOODreODieODi+ODvA==
# cn:: <JapaneseCn>
title:: 5Za25qWt6YOoIOmDqOmVtw==
# title:: <JapaneseTitle>
preferredlanguage: ja
givenname;lang-ja;phonetic:: 44KN44Gj44Gx44KL44Gr44GQ
# givenname;lang-ja;phonetic::
<JapaneseGivenname_in_phonetic_representation_kana>
sn;lang-ja;phonetic:: 44GK44GM44GV44KP44KJ
# sn;lang-ja;phonetic:: <JapaneseSn_in_phonetic_representation_kana>
cn;lang-ja;phonetic:: 44GK44GM44GV44KP44KJIOOCjeOBo+OBseOCi+OBq+OBkA==
# cn;lang-ja;phonetic:: <JapaneseCn_in_phonetic_representation_kana>
title;lang-ja;phonetic:: 44GI44GE44GO44KH44GG44G2IOOBtuOBoeOCh+OBhg==
# title;lang-ja;phonetic::
# <JapaneseTitle_in_phonetic_representation_kana>
givenname;lang-en: Rodney
sn;lang-en: Ogasawara
cn;lang-en: Rodney Ogasawara
title;lang-en: Sales, Director
";
        // The RFC's own example contains a comment wrapped without a leading
        // space ("<JapaneseGivenname_in_phonetic_representation_kana>"), which is
        // not valid LDIF; check that it is reported, then fix it and parse.
        let (line, msg) = err_line(text);
        assert_eq!(line, 44, "{msg}");
        let fixed = text.replace(
            "\n<JapaneseGivenname_in_phonetic_representation_kana>",
            "\n <JapaneseGivenname_in_phonetic_representation_kana>",
        );
        let r = parse_str(&fixed).unwrap();
        assert_eq!(r.len(), 2);
        let LdifRecord::Entry { dn, attrs } = &r[0] else {
            panic!()
        };
        assert_eq!(dn, "ou=営業部,o=Airius");
        assert_eq!(attrs[2], ("ou".to_string(), "営業部".as_bytes().to_vec()));
        assert_eq!(
            attrs[3],
            ("ou;lang-ja".to_string(), "営業部".as_bytes().to_vec())
        );
        assert_eq!(attrs[4].0, "ou;lang-ja;phonetic");
        assert_eq!(attrs[5], ("ou;lang-en".to_string(), b"Sales".to_vec()));
        let LdifRecord::Entry { dn, attrs } = &r[1] else {
            panic!()
        };
        assert_eq!(dn, "uid=rogasawara,ou=営業部,o=Airius");
        assert_eq!(
            attrs[0],
            (
                "userpassword".to_string(),
                b"{SHA}O3HSv1MusyL4kTjP+HKI5uxuNoM=".to_vec()
            )
        );
        let cn_ja = attrs.iter().find(|(n, _)| n == "cn;lang-ja").unwrap();
        assert_eq!(cn_ja.1, "小笠原 ロドニー".as_bytes());
        assert_eq!(
            attrs.last().unwrap(),
            &("title;lang-en".to_string(), b"Sales, Director".to_vec())
        );
        // Round trip through the writer.
        let mut out = Vec::new();
        for rec in &r {
            write_record(&mut out, rec).unwrap();
        }
        assert_eq!(parse_str(std::str::from_utf8(&out).unwrap()).unwrap(), r);
    }

    #[test]
    fn rfc2849_example5_file_url() {
        let photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 hjensen";
        let path = temp_file("hjensen", photo);
        let text = format!(
            "version: 1
dn: cn=Horatio Jensen, ou=Product Testing, dc=airius, dc=com
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Horatio Jensen
cn: Horatio N Jensen
sn: Jensen
uid: hjensen
telephonenumber: +1 408 555 1212
jpegphoto:< {}
",
            file_url(&path)
        );
        let r = one(&text);
        std::fs::remove_file(&path).ok();
        let LdifRecord::Entry { dn, attrs } = r else {
            panic!()
        };
        assert_eq!(
            dn,
            "cn=Horatio Jensen, ou=Product Testing, dc=airius, dc=com"
        );
        assert_eq!(attrs.len(), 9);
        assert_eq!(attrs[8], ("jpegphoto".to_string(), photo.to_vec()));
    }

    #[test]
    fn rfc2849_example6_change_records() {
        let photo = b"fiona's photo \x00\xff";
        let path = temp_file("fiona", photo);
        let text = format!(
            "version: 1
# Add a new entry
dn: cn=Fiona Jensen, ou=Marketing, dc=airius, dc=com
changetype: add
objectclass: top
objectclass: person
objectclass: organizationalPerson
cn: Fiona Jensen
sn: Jensen
uid: fiona
telephonenumber: +1 408 555 1212
jpegphoto:< {}

# Delete an existing entry
dn: cn=Robert Jensen, ou=Marketing, dc=airius, dc=com
changetype: delete

# Modify an entry's relative distinguished name
dn: cn=Paul Jensen, ou=Product Development, dc=airius, dc=com
changetype: modrdn
newrdn: cn=Paula Jensen
deleteoldrdn: 1

# Rename an entry and move all of its children to a new location in
# the directory tree (only implemented by LDAPv3 servers).
dn: ou=PD Accountants, ou=Product Development, dc=airius, dc=com
changetype: modrdn
newrdn: ou=Product Development Accountants
deleteoldrdn: 0
newsuperior: ou=Accounting, dc=airius, dc=com

# Modify an entry: add an additional value to the postaladdress
# attribute, completely delete the description attribute, replace
# the telephonenumber attribute with two values, and delete a specific
# value from the facsimiletelephonenumber attribute
dn: cn=Paula Jensen, ou=Product Development, dc=airius, dc=com
changetype: modify
add: postaladdress
postaladdress: 123 Anystreet $ Sunnyvale, CA $ 94086
-
delete: description
-
replace: telephonenumber
telephonenumber: +1 408 555 1234
telephonenumber: +1 408 555 5678
-
delete: facsimiletelephonenumber
facsimiletelephonenumber: +1 408 555 9876
-

# Modify an entry: replace the postaladdress attribute with an empty
# set of values (which will cause the attribute to be removed), and
# delete the entire description attribute. Note that the first will
# always succeed, while the second will only succeed if at least
# one value for the description attribute is present.
dn: cn=Ingrid Jensen, ou=Product Support, dc=airius, dc=com
changetype: modify
replace: postaladdress
-
delete: description
-
",
            file_url(&path)
        );
        let r = parse_str(&text);
        std::fs::remove_file(&path).ok();
        let r = r.unwrap();
        let m = |op, attr: &str, values: &[&str]| LdifMod {
            op,
            attr: attr.into(),
            values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        };
        assert_eq!(
            r,
            vec![
                LdifRecord::Add {
                    dn: "cn=Fiona Jensen, ou=Marketing, dc=airius, dc=com".into(),
                    attrs: attrs(&[
                        ("objectclass", b"top"),
                        ("objectclass", b"person"),
                        ("objectclass", b"organizationalPerson"),
                        ("cn", b"Fiona Jensen"),
                        ("sn", b"Jensen"),
                        ("uid", b"fiona"),
                        ("telephonenumber", b"+1 408 555 1212"),
                        ("jpegphoto", photo),
                    ])
                },
                LdifRecord::Delete {
                    dn: "cn=Robert Jensen, ou=Marketing, dc=airius, dc=com".into()
                },
                LdifRecord::ModRdn {
                    dn: "cn=Paul Jensen, ou=Product Development, dc=airius, dc=com".into(),
                    new_rdn: "cn=Paula Jensen".into(),
                    delete_old_rdn: true,
                    new_superior: None
                },
                LdifRecord::ModRdn {
                    dn: "ou=PD Accountants, ou=Product Development, dc=airius, dc=com".into(),
                    new_rdn: "ou=Product Development Accountants".into(),
                    delete_old_rdn: false,
                    new_superior: Some("ou=Accounting, dc=airius, dc=com".into())
                },
                LdifRecord::Modify {
                    dn: "cn=Paula Jensen, ou=Product Development, dc=airius, dc=com".into(),
                    mods: vec![
                        m(
                            ModOp::Add,
                            "postaladdress",
                            &["123 Anystreet $ Sunnyvale, CA $ 94086"]
                        ),
                        m(ModOp::Delete, "description", &[]),
                        m(
                            ModOp::Replace,
                            "telephonenumber",
                            &["+1 408 555 1234", "+1 408 555 5678"]
                        ),
                        m(
                            ModOp::Delete,
                            "facsimiletelephonenumber",
                            &["+1 408 555 9876"]
                        ),
                    ]
                },
                LdifRecord::Modify {
                    dn: "cn=Ingrid Jensen, ou=Product Support, dc=airius, dc=com".into(),
                    mods: vec![
                        m(ModOp::Replace, "postaladdress", &[]),
                        m(ModOp::Delete, "description", &[]),
                    ]
                },
            ]
        );
        // And the writer reproduces the same records.
        let mut out = Vec::new();
        write_version(&mut out).unwrap();
        for rec in &r {
            write_record(&mut out, rec).unwrap();
        }
        assert_eq!(parse_str(std::str::from_utf8(&out).unwrap()).unwrap(), r);
    }

    #[test]
    fn rfc2849_example7_control() {
        let text = "version: 1
# Delete an entry. The operation will attach the LDAPv3
# Tree Delete Control defined in [9]. The criticality
# field is \"true\" and the controlValue field is
# absent, as required by [9].
dn: ou=Product Development, dc=airius, dc=com
control: 1.2.840.113556.1.4.805 true
changetype: delete
";
        assert_eq!(
            one(text),
            LdifRecord::Delete {
                dn: "ou=Product Development, dc=airius, dc=com".into()
            }
        );
    }

    // ----- errors and line numbers -----

    #[test]
    fn error_missing_dn() {
        let (line, msg) = err_line("version: 1\n\ncn: x\nsn: y\n");
        assert_eq!(line, 3);
        assert!(msg.contains("missing dn"), "{msg}");
        let (line, msg) = err_line("dn: dc=a\ndc: a\n\n# c\njunk\n");
        assert_eq!(line, 5);
        assert!(msg.contains("missing dn"), "{msg}");
    }

    #[test]
    fn error_bad_base64() {
        let (line, msg) = err_line("dn: dc=a\ndc: a\ndescription:: !!!notbase64\n");
        assert_eq!(line, 3);
        assert!(msg.contains("base64"), "{msg}");
        let (line, _) = err_line("dn:: %%%\ncn: x\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn error_dn_not_utf8() {
        // 0xFF 0xFE base64-encoded.
        let (line, msg) = err_line("dn:: //4=\ncn: x\n");
        assert_eq!(line, 1);
        assert!(msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn error_dn_by_url() {
        let (line, msg) = err_line("dn:< file:///etc/hostname\ncn: x\n");
        assert_eq!(line, 1);
        assert!(msg.contains("URL"), "{msg}");
    }

    #[test]
    fn error_unknown_changetype() {
        let (line, msg) = err_line("# x\ndn: cn=a\ncontrol: 1.2.3\nchangetype: frobnicate\n");
        assert_eq!(line, 4);
        assert!(msg.contains("unknown changetype 'frobnicate'"), "{msg}");
    }

    #[test]
    fn error_line_without_colon() {
        let (line, msg) = err_line("dn: cn=a\ncn: a\nthis has no colon\n");
        assert_eq!(line, 3);
        assert!(msg.contains("without ':'"), "{msg}");
    }

    #[test]
    fn error_invalid_attribute_description() {
        let (line, msg) = err_line("dn: cn=a\ncn : a\n");
        assert_eq!(line, 2);
        assert!(msg.contains("invalid attribute description"), "{msg}");
    }

    #[test]
    fn error_line_numbers_count_folds_comments_and_crlf() {
        let text =
            "# comment\n folded comment\ndn: cn=a,\n dc=x\ncn: a\n\n\ndn: cn=b\nbad\n line\n";
        let (line, _) = err_line(text);
        assert_eq!(line, 9);
        let (line, _) = err_line(&text.replace('\n', "\r\n"));
        assert_eq!(line, 9);
    }

    #[test]
    fn error_entry_without_attributes() {
        let (line, msg) = err_line("dn: dc=a\ndc: a\n\n# c\ndn: cn=lonely\n\ndn: dc=b\ndc: b\n");
        assert_eq!(line, 5);
        assert!(msg.contains("no attributes"), "{msg}");
    }

    #[test]
    fn error_add_without_attributes() {
        let (line, msg) = err_line("dn: cn=a\nchangetype: add\n");
        assert_eq!(line, 2);
        assert!(msg.contains("no attributes"), "{msg}");
    }

    #[test]
    fn error_delete_with_extra_lines() {
        let (line, msg) = err_line("dn: cn=a\nchangetype: delete\ncn: a\n");
        assert_eq!(line, 3);
        assert!(msg.contains("delete"), "{msg}");
    }

    #[test]
    fn error_modify_attribute_mismatch() {
        let (line, msg) =
            err_line("dn: cn=a\nchangetype: modify\nadd: mail\nmail: a\ndelete: sn\n-\n");
        assert_eq!(line, 5);
        assert!(msg.contains("does not match"), "{msg}");
    }

    #[test]
    fn error_modify_bad_op() {
        let (line, msg) = err_line("dn: cn=a\nchangetype: modify\nfrob: mail\n-\n");
        assert_eq!(line, 3);
        assert!(msg.contains("expected 'add:'"), "{msg}");
        let (line, _) = err_line("dn: cn=a\nchangetype: modify\n-\n");
        assert_eq!(line, 3);
    }

    #[test]
    fn error_increment_value_count() {
        let (line, msg) = err_line(
            "dn: cn=a\nchangetype: modify\nincrement: uidNumber\nuidNumber: 1\nuidNumber: 2\n-\n",
        );
        assert_eq!(line, 3);
        assert!(msg.contains("exactly one"), "{msg}");
    }

    #[test]
    fn error_modrdn_problems() {
        let (line, msg) = err_line("dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\ndeleteoldrdn: 2\n");
        assert_eq!(line, 4);
        assert!(msg.contains("0 or 1"), "{msg}");
        let (line, msg) = err_line("dn: cn=a\nchangetype: modrdn\ndeleteoldrdn: 1\n");
        assert_eq!(line, 2);
        assert!(msg.contains("newrdn"), "{msg}");
        let (line, msg) = err_line("dn: cn=a\nchangetype: modrdn\nnewrdn: cn=b\n");
        assert_eq!(line, 2);
        assert!(msg.contains("deleteoldrdn"), "{msg}");
        let (line, msg) =
            err_line("dn: cn=a\nchangetype: moddn\nnewrdn: cn=b\ndeleteoldrdn: 1\ncn: x\n");
        assert_eq!(line, 5);
        assert!(msg.contains("unexpected"), "{msg}");
    }

    #[test]
    fn error_unsupported_url_scheme_and_missing_file() {
        let (line, msg) = err_line("dn: cn=a\njpegPhoto:< http://example.com/x.jpg\n");
        assert_eq!(line, 2);
        assert!(msg.contains("unsupported URL"), "{msg}");
        let missing = std::env::temp_dir().join("pigeonair-ldif-definitely-missing-file");
        let (line, msg) = err_line(&format!(
            "dn: cn=a\ncn: a\nphoto:< {}\n",
            file_url(&missing)
        ));
        assert_eq!(line, 3);
        assert!(msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn error_bad_version() {
        let (line, msg) = err_line("version: 2\ndn: cn=a\ncn: a\n");
        assert_eq!(line, 1);
        assert!(msg.contains("version"), "{msg}");
    }

    #[test]
    fn error_control_without_changetype() {
        let (line, msg) = err_line("dn: cn=a\ncontrol: 1.2.3\ncn: a\n");
        assert_eq!(line, 3);
        assert!(msg.contains("changetype"), "{msg}");
    }

    #[test]
    fn error_missing_blank_line_between_records() {
        let (line, msg) = err_line("dn: cn=a\ncn: a\ndn: cn=b\ncn: b\n");
        assert_eq!(line, 3);
        assert!(msg.contains("dn:"), "{msg}");
    }

    #[test]
    fn error_continuation_without_preceding_line() {
        let (line, msg) = err_line("dn: cn=a\ncn: a\n\n continued\ndn: cn=b\ncn: b\n");
        assert_eq!(line, 4);
        assert!(msg.contains("continuation"), "{msg}");
    }

    #[test]
    fn reader_recovers_after_syntax_error() {
        let text = "dn: cn=a\ncn: a\n\ndn: cn=b\nbroken\nmore: junk\n\ndn: cn=c\ncn: c\n";
        let results: Vec<_> = LdifReader::new(text.as_bytes()).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().dn(), "cn=a");
        match &results[1] {
            Err(LdifError::Syntax { line, .. }) => assert_eq!(*line, 5),
            other => panic!("{other:?}"),
        }
        assert_eq!(results[2].as_ref().unwrap().dn(), "cn=c");
    }

    #[test]
    fn error_display_format() {
        let e = parse_str("dn: cn=a\nbad\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: expected 'attribute: value', found a line without ':'"
        );
    }
}
