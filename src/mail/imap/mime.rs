//! The MIME facts FETCH and SEARCH need, from `mail-parser`: ENVELOPE,
//! BODY/BODYSTRUCTURE, `BODY[section]` (RFC 3501 §6.4.5, §7.4.2), decoded header
//! values, the sent date and the decoded body text.
//!
//! No MIME is parsed here: `mail-parser` finds the parts, their byte offsets and
//! their decoded content; this module only maps its tree onto IMAP's part numbering
//! and data structures. Every string goes out 7-bit where IMAP4rev1 wants it to be
//! (RFC 2047 words for names and subjects, RFC 2231 for parameters); what still
//! cannot be quoted becomes a literal.
//!
//! Broken input never fails: bytes `mail-parser` cannot read as a message become one
//! text/plain part with an empty header, a multipart without its boundary shows an
//! empty text/plain child (as Dovecot does), and a part that does not exist reads as
//! empty. Walks of the part tree stop at 64 levels (deeper parts show as empty
//! text/plain placeholders and cannot be fetched), and the parsed tree is dismantled
//! without recursion, so a message nested a million times deep cannot exhaust the
//! stack.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::num::NonZeroU32;

use base64::Engine as _;
use imap_next::imap_types::{
    body::{
        BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
        SinglePartExtensionData, SpecificFields,
    },
    core::{AString, IString, Literal, NString, Quoted, Vec1},
    envelope::{Address, Envelope},
    fetch::{Part, Section},
};
use mail_parser::{
    parsers::MessageStream, Addr, Address as MailAddress, ContentType, Encoding, Header,
    HeaderName, HeaderValue, Message, MessageParser, MessagePart, PartType,
};

/// How many levels of multiparts and encapsulated messages are followed: enough for any
/// real message, few enough that the recursive walks below stay shallow.
const MAX_DEPTH: usize = 64;

/// One message parsed for FETCH/SEARCH. Never fails: bytes that are not a valid message
/// still give a single text/plain part, as other servers do.
pub struct Parsed<'m> {
    raw: &'m [u8],
    msg: Message<'m>,
}

impl<'m> Parsed<'m> {
    /// Parses `raw` (the message as stored, header and body).
    pub fn new(raw: &'m [u8]) -> Parsed<'m> {
        let msg = MessageParser::default()
            .parse(raw)
            .filter(|msg| !msg.parts.is_empty())
            .unwrap_or_else(|| unparsable(raw));
        Parsed { raw, msg }
    }

    /// RFC 3501 ENVELOPE: date, subject, message-id, in-reply-to as the raw (unfolded)
    /// header values; from/sender/reply-to defaulting per RFC 3501 (sender and reply-to
    /// default to from); group syntax where mail-parser gives groups; non-ASCII display
    /// names re-encoded as RFC 2047 `=?utf-8?b?...?=` so every string is 7-bit (IMAP4rev1
    /// quoted strings must be).
    pub fn envelope(&self) -> Envelope<'static> {
        self.root().map_or_else(empty_envelope, envelope_of)
    }

    /// BODYSTRUCTURE when `extended` (with md5, disposition, language, location extension
    /// data), BODY when not. Sizes are octets of the part body as stored (encoded), lines
    /// counted for text/* and message/rfc822; message/rfc822 parts carry their envelope
    /// and nested structure; multipart subtype and boundary params; default content type
    /// text/plain; charset us-ascii per RFC 2045 when absent; content-transfer-encoding
    /// default "7BIT".
    pub fn body_structure(&self, extended: bool) -> BodyStructure<'static> {
        match self.root() {
            Some(root) => structure(root, extended, 0),
            None => placeholder_text(0, 0, extended),
        }
    }

    /// The bytes of BODY[section] (None = the whole message): HEADER, HEADER.FIELDS
    /// (list), HEADER.FIELDS.NOT (list), TEXT, MIME, part numbers like 1, 1.2, 2.1.TEXT,
    /// 3.HEADER of a message/rfc822 part, per RFC 3501 §6.4.5 (a non-multipart message's
    /// part 1 is its body; HEADER.FIELDS matching is case-insensitive; returned headers
    /// end with the blank line CRLF). A part that does not exist gives an empty Vec (as
    /// Dovecot does).
    pub fn section(&self, section: Option<&Section<'_>>) -> Vec<u8> {
        let Some(section) = section else {
            return self.raw.to_vec();
        };
        let bytes = match section {
            Section::Part(part) => self.resolve(part).map(|node| node.body().to_vec()),
            Section::Mime(part) => self.resolve(part).map(|node| node.header_block().to_vec()),
            Section::Header(part) => self
                .message_at(part.as_ref())
                .map(|root| root.header_block().to_vec()),
            Section::Text(part) => self
                .message_at(part.as_ref())
                .map(|root| root.body().to_vec()),
            Section::HeaderFields(part, names) => self
                .message_at(part.as_ref())
                .map(|root| header_fields(root, names.as_ref(), true)),
            Section::HeaderFieldsNot(part, names) => self
                .message_at(part.as_ref())
                .map(|root| header_fields(root, names.as_ref(), false)),
        };
        bytes.unwrap_or_default()
    }

    /// RFC822.HEADER / BODY[HEADER]: the header block including the empty line.
    pub fn header(&self) -> &'m [u8] {
        let end = self.header_end();
        self.raw.get(..end).unwrap_or_default()
    }

    /// RFC822.TEXT / BODY[TEXT]: everything after the header block.
    pub fn text(&self) -> &'m [u8] {
        let end = self.header_end();
        self.raw.get(end..).unwrap_or_default()
    }

    /// Decoded values of every header field `name` (case-insensitive), unfolded, for
    /// SEARCH FROM/TO/CC/BCC/SUBJECT/HEADER; address fields give their text form
    /// ("Name <a@b>").
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let Some(root) = self.root() else {
            return Vec::new();
        };
        let name = name.trim();
        root.part
            .headers
            .iter()
            .filter(|header| header.name.as_str().eq_ignore_ascii_case(name))
            .map(|header| decoded_value(root, header))
            .collect()
    }

    /// The Date: header as (year, month, day) in the header's own zone (for SEARCH
    /// SENTBEFORE/SENTON/SENTSINCE), None when absent or unparsable.
    pub fn sent_date(&self) -> Option<(i32, u32, u32)> {
        let date = self.root()?.first(&HeaderName::Date)?.value.as_datetime()?;
        date.is_valid().then(|| {
            (
                i32::from(date.year),
                u32::from(date.month),
                u32::from(date.day),
            )
        })
    }

    /// Whether `needle` occurs, case-insensitively (Unicode simple lowercase is fine), in
    /// the decoded text of the body parts (text/* decoded from base64/quoted-printable
    /// and charset), or also in the header when `with_header` (SEARCH TEXT vs BODY).
    pub fn contains_text(&self, needle: &str, with_header: bool) -> bool {
        let needle = needle.to_lowercase();
        if needle.is_empty() {
            return true;
        }
        let Some(root) = self.root() else {
            return false;
        };
        (with_header && headers_contain(root, &needle)) || body_contains(root, &needle, 0)
    }

    fn root(&self) -> Option<Node<'_, 'm>> {
        Node::root(&self.msg)
    }

    fn header_end(&self) -> usize {
        self.msg
            .parts
            .first()
            .map_or(0, |root| (root.offset_body as usize).min(self.raw.len()))
    }

    /// The part a section's part number names. The top level behaves like the inside of
    /// a message/rfc822 part: its numbers count the root's children when the root is a
    /// multipart, and otherwise only 1 exists, the root itself.
    fn resolve(&self, part: &Part) -> Option<Node<'_, 'm>> {
        let numbers: &[NonZeroU32] = part.0.as_ref();
        if numbers.len() > MAX_DEPTH {
            return None;
        }
        let mut node: Option<Node<'_, 'm>> = None;
        for number in numbers {
            let index = number.get() as usize;
            node = Some(match node {
                None => inside_message(self.root()?, index)?,
                Some(current) => match current.kind() {
                    Kind::Multi(children) => children.into_iter().nth(index - 1)?,
                    Kind::Message(root) => inside_message(root, index)?,
                    Kind::Leaf => return None,
                },
            });
        }
        node
    }

    /// The root part of the message HEADER/TEXT refer to: the whole message without a
    /// part number, else the message encapsulated in the message/rfc822 part it names.
    fn message_at(&self, part: Option<&Part>) -> Option<Node<'_, 'm>> {
        match part {
            None => self.root(),
            Some(part) => match self.resolve(part)?.kind() {
                Kind::Message(root) => Some(root),
                _ => None,
            },
        }
    }
}

impl Drop for Parsed<'_> {
    /// `mail-parser` nests each encapsulated message inside its parent, so dropping the
    /// tree the ordinary way recurses once per level; a crafted message a few megabytes
    /// long would overflow the stack. Taking the levels apart one by one does not.
    fn drop(&mut self) {
        let mut pending = vec![std::mem::take(&mut self.msg)];
        while let Some(mut msg) = pending.pop() {
            for part in &mut msg.parts {
                if matches!(part.body, PartType::Message(_)) {
                    if let PartType::Message(inner) = std::mem::take(&mut part.body) {
                        pending.push(inner);
                    }
                }
            }
        }
    }
}

/// What `mail-parser` makes of no message at all (no header line found): one text/plain
/// part with an empty header and all the bytes as its body.
fn unparsable(raw: &[u8]) -> Message<'_> {
    Message {
        text_body: vec![0],
        parts: vec![MessagePart {
            headers: Vec::new(),
            is_encoding_problem: true,
            body: PartType::Text(String::from_utf8_lossy(raw)),
            encoding: Encoding::None,
            offset_header: 0,
            offset_body: 0,
            offset_end: to_u32(raw.len()),
        }],
        raw_message: Cow::Borrowed(raw),
        ..Message::default()
    }
}

/// Part 1, 2, … inside a message whose root part is `root`.
fn inside_message<'a, 'm>(root: Node<'a, 'm>, index: usize) -> Option<Node<'a, 'm>> {
    match root.kind() {
        Kind::Multi(children) => children.into_iter().nth(index.checked_sub(1)?),
        _ if root.is_broken_multipart() => None,
        _ => (index == 1).then_some(root),
    }
}

/// One part of a (possibly encapsulated) message. Offsets of a part are relative to the
/// `raw_message` of the `Message` that lists it: the stored bytes for the message and
/// every message/rfc822 part inside it, the decoded bytes for an encoded one.
#[derive(Clone, Copy)]
struct Node<'a, 'm> {
    msg: &'a Message<'m>,
    id: usize,
    part: &'a MessagePart<'m>,
}

enum Kind<'a, 'm> {
    /// A multipart, with its children in order.
    Multi(Vec<Node<'a, 'm>>),
    /// A message/rfc822 part, with the root part of the message inside.
    Message(Node<'a, 'm>),
    Leaf,
}

impl<'a, 'm> Node<'a, 'm> {
    fn root(msg: &'a Message<'m>) -> Option<Self> {
        Self::at(msg, 0)
    }

    fn at(msg: &'a Message<'m>, id: usize) -> Option<Self> {
        msg.parts.get(id).map(|part| Node { msg, id, part })
    }

    fn bytes(&self, from: u32, to: u32) -> &'a [u8] {
        let raw: &'a [u8] = &self.msg.raw_message;
        let to = (to as usize).min(raw.len());
        raw.get(from as usize..to).unwrap_or_default()
    }

    /// The part's header (the MIME header, or the message header of a root part),
    /// including the empty line that ends it.
    fn header_block(&self) -> &'a [u8] {
        self.bytes(self.part.offset_header, self.part.offset_body)
    }

    /// The part's body as stored, without the line break that belongs to the next
    /// boundary.
    fn body(&self) -> &'a [u8] {
        self.bytes(self.part.offset_body, self.part.offset_end)
    }

    fn kind(&self) -> Kind<'a, 'm> {
        match &self.part.body {
            PartType::Multipart(ids) => Kind::Multi(
                ids.iter()
                    // Children always come after their parent; anything else would be a
                    // cycle.
                    .filter(|&&id| id as usize > self.id)
                    .filter_map(|&id| Node::at(self.msg, id as usize))
                    .collect(),
            ),
            // message/global has no message form in IMAP4rev1's BODYSTRUCTURE.
            PartType::Message(inner) if !self.is_type("message", Some("global")) => {
                Node::root(inner).map_or(Kind::Leaf, Kind::Message)
            }
            _ => Kind::Leaf,
        }
    }

    /// Declared multipart, but `mail-parser` found no boundary and kept it whole.
    fn is_broken_multipart(&self) -> bool {
        !matches!(self.part.body, PartType::Multipart(_)) && self.is_type("multipart", None)
    }

    fn is_type(&self, ty: &str, subtype: Option<&str>) -> bool {
        self.content_type().is_some_and(|ct| {
            ct.c_type.eq_ignore_ascii_case(ty)
                && subtype.is_none_or(|subtype| {
                    ct.c_subtype
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
                })
        })
    }

    fn first(&self, name: &HeaderName<'_>) -> Option<&'a Header<'m>> {
        self.part.headers.iter().find(|header| header.name == *name)
    }

    fn content_type(&self) -> Option<&'a ContentType<'m>> {
        self.first(&HeaderName::ContentType)?
            .value
            .as_content_type()
    }

    /// The media type as BODYSTRUCTURE shows it (upper case) and the Content-Type it came
    /// from; a missing or invalid Content-Type means text/plain (RFC 2045 §5.2), or
    /// message/rfc822 where `mail-parser` applied multipart/digest's default.
    fn media(&self) -> (String, String, Option<&'a ContentType<'m>>) {
        match self.content_type() {
            Some(ct)
                if !ct.c_type.is_empty()
                    && ct.c_subtype.as_deref().is_some_and(|s| !s.is_empty()) =>
            {
                (
                    ct.c_type.to_ascii_uppercase(),
                    ct.c_subtype
                        .as_deref()
                        .unwrap_or_default()
                        .to_ascii_uppercase(),
                    Some(ct),
                )
            }
            _ if matches!(self.part.body, PartType::Message(_)) => {
                ("MESSAGE".to_owned(), "RFC822".to_owned(), None)
            }
            _ => ("TEXT".to_owned(), "PLAIN".to_owned(), None),
        }
    }

    /// The header's value as stored, without the line breaks of folding and without
    /// the surrounding white space.
    fn unfolded(&self, header: &Header<'_>) -> Vec<u8> {
        unfold(self.bytes(header.offset_start, header.offset_end))
    }
}

fn structure(node: Node<'_, '_>, extended: bool, depth: usize) -> BodyStructure<'static> {
    let deeper = depth + 1 < MAX_DEPTH;
    match node.kind() {
        Kind::Multi(children) => {
            let bodies = if deeper {
                children
                    .into_iter()
                    .map(|child| structure(child, extended, depth + 1))
                    .collect()
            } else {
                Vec::new()
            };
            multipart(node, bodies, extended)
        }
        Kind::Message(root) => message_rfc822(node, deeper.then_some(root), extended, depth),
        Kind::Leaf => single(node, extended, depth),
    }
}

fn multipart(
    node: Node<'_, '_>,
    bodies: Vec<BodyStructure<'static>>,
    extended: bool,
) -> BodyStructure<'static> {
    let ct = node.content_type();
    let subtype = ct
        .and_then(|ct| ct.c_subtype.as_deref())
        .filter(|s| !s.is_empty())
        // RFC 2046 §5.1.3: an unknown multipart is handled as mixed.
        .unwrap_or("mixed")
        .to_ascii_uppercase();
    // A multipart needs at least one body; Dovecot shows an empty text/plain one.
    let bodies =
        Vec1::try_from(bodies).unwrap_or_else(|_| Vec1::from(placeholder_text(0, 0, extended)));
    BodyStructure::Multi {
        bodies,
        subtype: istring(subtype),
        extension_data: extended.then(|| MultiPartExtensionData {
            parameter_list: parameters(ct),
            tail: Some(disposition_tail(node)),
        }),
    }
}

fn single(node: Node<'_, '_>, extended: bool, depth: usize) -> BodyStructure<'static> {
    let (ty, subtype, ct) = node.media();
    if ty == "MULTIPART" {
        return multipart(node, Vec::new(), extended);
    }
    if ty == "MESSAGE" && subtype == "RFC822" {
        // Nothing `mail-parser` could read inside; the message form is still required.
        return message_rfc822(node, None, extended, depth);
    }
    let is_text = ty == "TEXT";
    let mut parameter_list = parameters(ct);
    let has_charset = ct.and_then(|ct| ct.attributes()).is_some_and(|attributes| {
        attributes
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case("charset"))
    });
    if is_text && !has_charset {
        parameter_list.insert(0, (istring("CHARSET"), istring("US-ASCII")));
    }
    let body = node.body();
    let specific = if is_text {
        SpecificFields::Text {
            subtype: istring(subtype),
            number_of_lines: count_lines(body),
        }
    } else {
        SpecificFields::Basic {
            r#type: istring(ty),
            subtype: istring(subtype),
        }
    };
    BodyStructure::Single {
        body: Body {
            basic: basic_fields(node, parameter_list),
            specific,
        },
        extension_data: extended.then(|| single_extension(node)),
    }
}

/// A message/rfc822 part: its own fields, then the envelope and structure of the
/// message inside (`inner`), or placeholders when there is none to show.
fn message_rfc822(
    node: Node<'_, '_>,
    inner: Option<Node<'_, '_>>,
    extended: bool,
    depth: usize,
) -> BodyStructure<'static> {
    let body = node.body();
    let (envelope, body_structure) = match inner {
        Some(root) => (envelope_of(root), structure(root, extended, depth + 1)),
        None => (
            empty_envelope(),
            placeholder_text(to_u32(body.len()), count_lines(body), extended),
        ),
    };
    BodyStructure::Single {
        body: Body {
            basic: basic_fields(node, parameters(node.content_type())),
            specific: SpecificFields::Message {
                envelope: Box::new(envelope),
                body_structure: Box::new(body_structure),
                number_of_lines: count_lines(body),
            },
        },
        extension_data: extended.then(|| single_extension(node)),
    }
}

/// `("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" size lines)`, standing in
/// for a body that is missing or too deep to show.
fn placeholder_text(size: u32, lines: u32, extended: bool) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![(istring("CHARSET"), istring("US-ASCII"))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring("7BIT"),
                size,
            },
            specific: SpecificFields::Text {
                subtype: istring("PLAIN"),
                number_of_lines: lines,
            },
        },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: Some(Disposition {
                disposition: None,
                tail: Some(Language {
                    language: Vec::new(),
                    tail: Some(Location {
                        location: NString(None),
                        extensions: Vec::new(),
                    }),
                }),
            }),
        }),
    }
}

fn basic_fields(
    node: Node<'_, '_>,
    parameter_list: Vec<(IString<'static>, IString<'static>)>,
) -> BasicFields<'static> {
    let encoding = node
        .first(&HeaderName::ContentTransferEncoding)
        .map(|header| node.unfolded(header))
        .filter(|value| !value.is_empty())
        .map_or_else(|| b"7BIT".to_vec(), |value| value.to_ascii_uppercase());
    BasicFields {
        parameter_list,
        id: field_nstring(node, &HeaderName::ContentId),
        description: field_nstring(node, &HeaderName::ContentDescription),
        content_transfer_encoding: istring(encoding),
        size: to_u32(node.body().len()),
    }
}

fn single_extension(node: Node<'_, '_>) -> SinglePartExtensionData<'static> {
    SinglePartExtensionData {
        md5: field_nstring(node, &HeaderName::ContentMd5),
        tail: Some(disposition_tail(node)),
    }
}

/// Disposition, language and location: the extension data single parts and
/// multiparts share.
fn disposition_tail(node: Node<'_, '_>) -> Disposition<'static> {
    let disposition = node
        .first(&HeaderName::ContentDisposition)
        .and_then(|header| header.value.as_content_type())
        .filter(|cd| !cd.c_type.is_empty())
        .map(|cd| {
            (
                istring(cd.c_type.to_ascii_uppercase()),
                parameters(Some(cd)),
            )
        });
    let language = match node.first(&HeaderName::ContentLanguage).map(|h| &h.value) {
        Some(HeaderValue::TextList(tags)) => tags.iter().map(|tag| tag.as_ref()).collect(),
        Some(HeaderValue::Text(tag)) => vec![tag.as_ref()],
        _ => Vec::new(),
    };
    Disposition {
        disposition,
        tail: Some(Language {
            language: language
                .into_iter()
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(istring)
                .collect(),
            tail: Some(Location {
                location: field_nstring(node, &HeaderName::ContentLocation),
                extensions: Vec::new(),
            }),
        }),
    }
}

/// Content-Type or Content-Disposition parameters, names upper case. `mail-parser` has
/// joined RFC 2231 continuations and decoded charsets; a value that is not ASCII is
/// re-encoded the RFC 2231 way (`NAME*` = `utf-8''…`) so that it can be quoted.
fn parameters(ct: Option<&ContentType<'_>>) -> Vec<(IString<'static>, IString<'static>)> {
    ct.and_then(|ct| ct.attributes())
        .unwrap_or_default()
        .iter()
        .map(|attribute| {
            let name = attribute.name.to_ascii_uppercase();
            if attribute.value.is_ascii() {
                (istring(name), istring(attribute.value.as_ref()))
            } else {
                (istring(name + "*"), istring(rfc2231(&attribute.value)))
            }
        })
        .collect()
}

fn rfc2231(value: &str) -> String {
    let mut encoded = String::from("utf-8''");
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// A body field taken from a header as stored (Content-ID keeps its angle brackets);
/// NIL when absent or empty.
fn field_nstring(node: Node<'_, '_>, name: &HeaderName<'_>) -> NString<'static> {
    match node.first(name) {
        Some(header) => {
            let value = node.unfolded(header);
            if value.is_empty() {
                NString(None)
            } else {
                NString(Some(seven_bit(node, header, value)))
            }
        }
        None => NString(None),
    }
}

/// `value` (the unfolded raw header) itself when it is ASCII; otherwise the decoded
/// text as RFC 2047 words, so it can still be quoted.
fn seven_bit(node: Node<'_, '_>, header: &Header<'_>, value: Vec<u8>) -> IString<'static> {
    if value.is_ascii() {
        istring(value)
    } else {
        istring(encoded_words(&decoded_value(node, header)))
    }
}

fn empty_envelope() -> Envelope<'static> {
    Envelope {
        date: NString(None),
        subject: NString(None),
        from: Vec::new(),
        sender: Vec::new(),
        reply_to: Vec::new(),
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        in_reply_to: NString(None),
        message_id: NString(None),
    }
}

/// The ENVELOPE of the message whose root part is `root`.
fn envelope_of(root: Node<'_, '_>) -> Envelope<'static> {
    let text = |name: HeaderName<'_>| match root.first(&name) {
        Some(header) => NString(Some(seven_bit(root, header, root.unfolded(header)))),
        None => NString(None),
    };
    let from = addresses(root, HeaderName::From);
    // RFC 3501 §7.4.2: a missing or empty Sender or Reply-To is the From.
    let or_from = |list: Vec<Address<'static>>| if list.is_empty() { from.clone() } else { list };
    Envelope {
        date: text(HeaderName::Date),
        subject: text(HeaderName::Subject),
        sender: or_from(addresses(root, HeaderName::Sender)),
        reply_to: or_from(addresses(root, HeaderName::ReplyTo)),
        to: addresses(root, HeaderName::To),
        cc: addresses(root, HeaderName::Cc),
        bcc: addresses(root, HeaderName::Bcc),
        in_reply_to: text(HeaderName::InReplyTo),
        message_id: text(HeaderName::MessageId),
        from,
    }
}

/// The first `name` header as IMAP addresses; a group is framed by its start
/// `(NIL NIL "name" NIL)` and end `(NIL NIL NIL NIL)` markers (RFC 3501 §7.4.2).
fn addresses(root: Node<'_, '_>, name: HeaderName<'_>) -> Vec<Address<'static>> {
    let mut list = Vec::new();
    match root.first(&name).map(|header| &header.value) {
        Some(HeaderValue::Address(MailAddress::List(addrs))) => {
            list.extend(addrs.iter().filter_map(address));
        }
        Some(HeaderValue::Address(MailAddress::Group(groups))) => {
            for group in groups {
                match &group.name {
                    Some(group_name) => {
                        list.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(Some(istring(encoded_words(group_name)))),
                            host: NString(None),
                        });
                        list.extend(group.addresses.iter().filter_map(address));
                        list.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(None),
                            host: NString(None),
                        });
                    }
                    None => list.extend(group.addresses.iter().filter_map(address)),
                }
            }
        }
        _ => {}
    }
    list
}

fn address(addr: &Addr<'_>) -> Option<Address<'static>> {
    let name = addr
        .name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let email = addr
        .address
        .as_deref()
        .map(str::trim)
        .filter(|email| !email.is_empty());
    if name.is_none() && email.is_none() {
        return None;
    }
    // A NIL host would read as a group marker, so missing halves get Dovecot's
    // placeholders instead.
    let (mailbox, host) = match email.map(|email| email.rsplit_once('@').unwrap_or((email, ""))) {
        Some((mailbox, host)) => (mailbox, host),
        None => ("", ""),
    };
    let or = |value: &str, missing: &str| {
        istring(if value.is_empty() { missing } else { value }.to_owned())
    };
    Some(Address {
        name: NString(name.map(|name| istring(encoded_words(name)))),
        adl: NString(None),
        mailbox: NString(Some(or(mailbox, "MISSING_MAILBOX"))),
        host: NString(Some(or(host, "MISSING_DOMAIN"))),
    })
}

/// `text` itself when it is ASCII, else all of it as RFC 2047 base64 words of UTF-8,
/// each short enough for the 75-character limit.
fn encoded_words(text: &str) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    const CHUNK: usize = 45;
    let mut out = String::new();
    let mut push = |chunk: &str| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("=?utf-8?b?");
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk));
        out.push_str("?=");
    };
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if at > start && at + c.len_utf8() - start > CHUNK {
            push(&text[start..at]);
            start = at;
        }
    }
    push(&text[start..]);
    out
}

/// A header value decoded the way SEARCH compares it: addresses in their text form,
/// anything else as unstructured text (RFC 2047 words and folding undone).
fn decoded_value(node: Node<'_, '_>, header: &Header<'_>) -> String {
    match &header.value {
        HeaderValue::Address(address) => address_text(address),
        _ => {
            let raw = node.bytes(header.offset_start, header.offset_end);
            // The unstructured parser only ends a value at a line break.
            let mut value = raw.to_vec();
            if !value.ends_with(b"\n") {
                value.extend_from_slice(b"\r\n");
            }
            match MessageStream::new(&value).parse_unstructured() {
                HeaderValue::Text(text) => text.into_owned(),
                _ => String::new(),
            }
        }
    }
}

fn address_text(address: &MailAddress<'_>) -> String {
    fn one(addr: &Addr<'_>) -> String {
        match (addr.name.as_deref(), addr.address.as_deref()) {
            (Some(name), Some(email)) if !name.is_empty() => format!("{name} <{email}>"),
            (_, Some(email)) => email.to_owned(),
            (Some(name), None) => name.to_owned(),
            (None, None) => String::new(),
        }
    }
    fn list(addrs: &[Addr<'_>]) -> String {
        addrs.iter().map(one).collect::<Vec<_>>().join(", ")
    }
    match address {
        MailAddress::List(addrs) => list(addrs),
        MailAddress::Group(groups) => groups
            .iter()
            .map(|group| match &group.name {
                Some(name) => format!("{name}: {};", list(&group.addresses)),
                None => list(&group.addresses),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// HEADER.FIELDS (`include`) or HEADER.FIELDS.NOT of the message whose root part is
/// `root`: the selected fields as stored, in their order, then the blank line.
fn header_fields(root: Node<'_, '_>, names: &[AString<'_>], include: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for header in &root.part.headers {
        let name = header.name.as_str().as_bytes();
        let listed = names
            .iter()
            .any(|wanted| wanted.as_ref().eq_ignore_ascii_case(name));
        if listed == include {
            let field = root.bytes(header.offset_field, header.offset_end);
            out.extend_from_slice(field);
            if !field.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn headers_contain(root: Node<'_, '_>, needle: &str) -> bool {
    root.part.headers.iter().any(|header| {
        contains_lowercase(header.name.as_str(), needle)
            || contains_lowercase(&decoded_value(root, header), needle)
    })
}

/// The decoded text parts under `node`; an encapsulated message's header is part of
/// the body it sits in.
fn body_contains(node: Node<'_, '_>, needle: &str, depth: usize) -> bool {
    if depth >= MAX_DEPTH {
        return false;
    }
    match &node.part.body {
        PartType::Text(text) => contains_lowercase(text, needle),
        PartType::Html(html) => {
            contains_lowercase(html, needle)
                || contains_lowercase(&mail_parser::decoders::html::html_to_text(html), needle)
        }
        PartType::Multipart(_) => match node.kind() {
            Kind::Multi(children) => children
                .into_iter()
                .any(|child| body_contains(child, needle, depth + 1)),
            _ => false,
        },
        PartType::Message(inner) => Node::root(inner).is_some_and(|root| {
            headers_contain(root, needle) || body_contains(root, needle, depth + 1)
        }),
        PartType::Binary(_) | PartType::InlineBinary(_) => false,
    }
}

fn contains_lowercase(haystack: &str, lowercase_needle: &str) -> bool {
    haystack.to_lowercase().contains(lowercase_needle)
}

/// Without the surrounding white space and the CR and LF of folding.
fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .trim_ascii()
        .iter()
        .copied()
        .filter(|&byte| byte != b'\r' && byte != b'\n')
        .collect()
}

/// Text lines: line feeds, plus a last line without one.
fn count_lines(body: &[u8]) -> u32 {
    let feeds = body.iter().filter(|&&byte| byte == b'\n').count();
    let unterminated = !body.is_empty() && !body.ends_with(b"\n");
    to_u32(feeds + usize::from(unterminated))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A quoted string when the bytes allow one (7-bit, no CR, LF or NUL), else a literal
/// (NULs, which no IMAP string can carry, dropped).
fn istring(value: impl Into<Vec<u8>>) -> IString<'static> {
    let mut bytes = value.into();
    if Quoted::validate(&bytes).is_ok() {
        if let Ok(quoted) = Quoted::try_from(bytes) {
            return IString::Quoted(quoted);
        }
        return IString::Quoted(Quoted::unvalidated(""));
    }
    bytes.retain(|&byte| byte != 0);
    match Literal::try_from(bytes) {
        Ok(literal) => IString::Literal(literal),
        Err(_) => IString::Quoted(Quoted::unvalidated("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_next::{
        client::{Client, Event as ClientEvent, Options as ClientOptions},
        imap_types::{
            fetch::MessageDataItem,
            response::{Data, Greeting},
        },
        server::{Options as ServerOptions, Server},
        Interrupt, Io, State,
    };

    /// The wire form imap-codec (through imap-next's server) gives `item` in
    /// `* 1 FETCH (…)`, checked to parse back (through imap-next's client) to the same
    /// bytes, so the structures are valid IMAP, not just plausible types.
    fn wire(item: MessageDataItem<'static>) -> String {
        let data = Data::Fetch {
            seq: NonZeroU32::MIN,
            items: Vec1::from(item),
        };
        let bytes = encode(data.clone());
        let greeting = b"* OK hi\r\n";
        let mut client = Client::new(ClientOptions::default());
        client.enqueue_input(greeting);
        client.enqueue_input(&bytes);
        let mut decoded = None;
        for _ in 0..16 {
            match client.next() {
                Ok(ClientEvent::DataReceived { data }) => {
                    decoded = Some(data);
                    break;
                }
                Ok(_) => {}
                Err(Interrupt::Io(Io::Output(_))) => {}
                Err(other) => panic!("client could not read {:?}: {other:?}", lossy(&bytes)),
            }
        }
        let decoded = decoded.expect("client read no data");
        assert_eq!(lossy(&encode(decoded)), lossy(&bytes));
        let text = lossy(&bytes);
        let text = text.strip_prefix("* 1 FETCH (").expect("fetch prefix");
        text.strip_suffix(")\r\n").expect("fetch suffix").to_owned()
    }

    fn encode(data: Data<'static>) -> Vec<u8> {
        let greeting = Greeting::ok(None, "hi").expect("greeting");
        let mut server = Server::new(ServerOptions::default(), greeting);
        let mut out = Vec::new();
        server.enqueue_data(data);
        for _ in 0..32 {
            match server.next() {
                Err(Interrupt::Io(Io::Output(bytes))) => out.extend(bytes),
                Err(Interrupt::Io(Io::NeedMoreInput)) => break,
                Err(other) => panic!("server: {other:?}"),
                Ok(_) => {}
            }
        }
        out.strip_prefix(b"* OK hi\r\n")
            .expect("greeting first")
            .to_vec()
    }

    fn lossy(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn body(raw: &[u8]) -> String {
        let parsed = Parsed::new(raw);
        wire(MessageDataItem::Body(parsed.body_structure(false)))
            .strip_prefix("BODY ")
            .expect("BODY")
            .to_owned()
    }

    fn bodystructure(raw: &[u8]) -> String {
        let parsed = Parsed::new(raw);
        wire(MessageDataItem::BodyStructure(parsed.body_structure(true)))
            .strip_prefix("BODYSTRUCTURE ")
            .expect("BODYSTRUCTURE")
            .to_owned()
    }

    fn envelope(raw: &[u8]) -> String {
        let parsed = Parsed::new(raw);
        wire(MessageDataItem::Envelope(parsed.envelope()))
            .strip_prefix("ENVELOPE ")
            .expect("ENVELOPE")
            .to_owned()
    }

    fn part(numbers: &[u32]) -> Part {
        let numbers: Vec<NonZeroU32> = numbers
            .iter()
            .map(|&n| NonZeroU32::new(n).expect("part numbers start at 1"))
            .collect();
        Part(Vec1::try_from(numbers).expect("a part number"))
    }

    fn names(list: &[&'static str]) -> Vec1<AString<'static>> {
        let list: Vec<AString<'static>> = list
            .iter()
            .map(|name| AString::try_from(*name).expect("field name"))
            .collect();
        Vec1::try_from(list).expect("a field name")
    }

    fn section(raw: &[u8], section: Section<'_>) -> String {
        lossy(&Parsed::new(raw).section(Some(&section)))
    }

    const PLAIN: &[u8] = b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n\
From: Fred Foobar <foobar@Blurdybloop.COM>\r\n\
Subject: afternoon meeting\r\n\
To: mooch@owatagu.siam.edu\r\n\
Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\
\r\n\
Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n\
\r\n\
Fred\r\n";

    const ALTERNATIVE: &[u8] = b"From: a@example.org\r\n\
Subject: alt\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
\r\n\
preamble\r\n\
--b1\r\n\
\r\n\
plain text\r\n\
--b1\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
<p>caf=C3=A9 <b>menu</b></p>\r\n\
--b1--\r\n\
epilogue\r\n";

    const MIXED: &[u8] = b"From: a@example.org\r\n\
To: b@example.org\r\n\
Subject: report\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: text/plain; charset=\"iso-8859-1\"\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Voil=E0 le rapport.\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-ID: <part2@example.org>\r\n\
Content-Description: The report\r\n\
Content-Language: en, fr\r\n\
Content-Location: http://example.org/report.pdf\r\n\
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\
\r\n\
JVBERi0xLjQKc2VjcmV0IHdvcmQ6IHp5enp5dmE=\r\n\
--outer--\r\n";

    const NESTED: &[u8] = b"From: outer@example.org\r\n\
Subject: fwd\r\n\
Content-Type: multipart/mixed; boundary=\"x\"\r\n\
\r\n\
--x\r\n\
Content-Type: text/plain\r\n\
\r\n\
see attached\r\n\
--x\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>\r\n\
Subject: inner\r\n\
Date: Tue, 8 Feb 1994 10:00:00 +0100\r\n\
Content-Type: multipart/alternative; boundary=\"y\"\r\n\
\r\n\
--y\r\n\
Content-Type: text/plain\r\n\
\r\n\
inner plain\r\n\
--y\r\n\
Content-Type: text/html\r\n\
\r\n\
<i>inner html</i>\r\n\
--y--\r\n\
\r\n\
--x--\r\n";

    #[test]
    fn simple_text_plain() {
        let parsed = Parsed::new(PLAIN);
        let text = parsed.text();
        assert_eq!(
            text,
            b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n\r\nFred\r\n"
        );
        assert_eq!(parsed.header().len() + text.len(), PLAIN.len());
        assert!(parsed.header().ends_with(b"US-ASCII\r\n\r\n"));
        assert_eq!(
            body(PLAIN),
            format!(
                r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" {} 3)"#,
                text.len()
            )
        );
        assert_eq!(
            bodystructure(PLAIN),
            format!(
                r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" {} 3 NIL NIL NIL NIL)"#,
                text.len()
            )
        );
        assert_eq!(
            envelope(PLAIN),
            concat!(
                r#"("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "afternoon meeting" "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) "#,
                r#"(("Fred Foobar" NIL "foobar" "Blurdybloop.COM")) "#,
                r#"((NIL NIL "mooch" "owatagu.siam.edu")) NIL NIL NIL "#,
                r#""<B27397-0100000@Blurdybloop.COM>")"#
            )
        );
        assert_eq!(parsed.sent_date(), Some((1994, 2, 7)));
        assert_eq!(parsed.header_values("subject"), vec!["afternoon meeting"]);
        assert_eq!(
            parsed.header_values("FROM"),
            vec!["Fred Foobar <foobar@Blurdybloop.COM>"]
        );
        assert_eq!(
            parsed.header_values("message-id"),
            vec!["<B27397-0100000@Blurdybloop.COM>"]
        );
        assert!(parsed.header_values("cc").is_empty());
        // Part 1 of a single-part message is its body; its MIME header is the header.
        assert_eq!(section(PLAIN, Section::Part(part(&[1]))).as_bytes(), text);
        assert_eq!(
            section(PLAIN, Section::Mime(part(&[1]))).as_bytes(),
            parsed.header()
        );
        assert_eq!(section(PLAIN, Section::Part(part(&[2]))), "");
        assert_eq!(section(PLAIN, Section::Part(part(&[1, 1]))), "");
        assert_eq!(Parsed::new(PLAIN).section(None), PLAIN);
        assert!(parsed.contains_text("MEET AT", false));
        assert!(!parsed.contains_text("afternoon", false));
        assert!(parsed.contains_text("afternoon", true));
        assert!(parsed.contains_text("", false));
    }

    #[test]
    fn rfc3501_example_sizes() {
        // RFC 3501's example, a 3028-octet body of 92 lines.
        let mut raw = b"Subject: x\r\n\r\n".to_vec();
        for line in 0..92 {
            let mut text = format!("line {line:02} ");
            while text.len() < if line == 91 { 23 } else { 31 } {
                text.push('.');
            }
            raw.extend_from_slice(text.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        assert_eq!(Parsed::new(&raw).text().len(), 3028);
        assert_eq!(
            body(&raw),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)"#
        );
    }

    #[test]
    fn multipart_alternative() {
        assert_eq!(
            body(ALTERNATIVE),
            concat!(
                r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1)"#,
                r#"("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 28 1)"#,
                r#" "ALTERNATIVE")"#
            )
        );
        assert_eq!(
            bodystructure(ALTERNATIVE),
            concat!(
                r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)"#,
                r#"("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 28 1"#,
                r#" NIL NIL NIL NIL) "ALTERNATIVE" ("BOUNDARY" "b1") NIL NIL NIL)"#
            )
        );
        assert_eq!(
            section(ALTERNATIVE, Section::Part(part(&[1]))),
            "plain text"
        );
        assert_eq!(section(ALTERNATIVE, Section::Mime(part(&[1]))), "\r\n");
        assert_eq!(
            section(ALTERNATIVE, Section::Part(part(&[2]))),
            "<p>caf=C3=A9 <b>menu</b></p>"
        );
        assert_eq!(
            section(ALTERNATIVE, Section::Mime(part(&[2]))),
            "Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        );
        assert_eq!(section(ALTERNATIVE, Section::Part(part(&[3]))), "");
        assert!(section(ALTERNATIVE, Section::Text(None)).starts_with("preamble\r\n--b1"));
        let parsed = Parsed::new(ALTERNATIVE);
        // Quoted-printable and UTF-8 decoded, tags optional.
        assert!(parsed.contains_text("CAFÉ", false));
        assert!(parsed.contains_text("café menu", false));
        assert!(!parsed.contains_text("alt", false));
        assert!(parsed.contains_text("alt", true));
    }

    #[test]
    fn multipart_mixed_with_attachment() {
        assert_eq!(
            bodystructure(MIXED),
            concat!(
                r#"(("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL "QUOTED-PRINTABLE" 19 1"#,
                r#" NIL NIL NIL NIL)"#,
                r#"("APPLICATION" "PDF" ("NAME" "report.pdf") "<part2@example.org>" "The report""#,
                r#" "BASE64" 40 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT" ("FILENAME" "report.pdf"))"#,
                r#" ("en" "fr") "http://example.org/report.pdf")"#,
                r#" "MIXED" ("BOUNDARY" "outer") NIL NIL NIL)"#
            )
        );
        assert_eq!(
            body(MIXED),
            concat!(
                r#"(("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL "QUOTED-PRINTABLE" 19 1)"#,
                r#"("APPLICATION" "PDF" ("NAME" "report.pdf") "<part2@example.org>" "The report""#,
                r#" "BASE64" 40) "MIXED")"#
            )
        );
        assert_eq!(
            section(MIXED, Section::Part(part(&[2]))),
            "JVBERi0xLjQKc2VjcmV0IHdvcmQ6IHp5enp5dmE="
        );
        let mime = section(MIXED, Section::Mime(part(&[2])));
        assert!(mime.starts_with("Content-Type: application/pdf; name=\"report.pdf\"\r\n"));
        assert!(mime.ends_with("Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n\r\n"));
        assert_eq!(
            section(
                MIXED,
                Section::HeaderFields(None, names(&["SUBJECT", "from"]))
            ),
            "From: a@example.org\r\nSubject: report\r\n\r\n"
        );
        assert_eq!(
            section(
                MIXED,
                Section::HeaderFieldsNot(None, names(&["content-type", "TO"]))
            ),
            "From: a@example.org\r\nSubject: report\r\n\r\n"
        );
        assert_eq!(
            section(MIXED, Section::HeaderFields(None, names(&["X-None"]))),
            "\r\n"
        );
        // HEADER of a part that is not message/rfc822 does not exist.
        assert_eq!(section(MIXED, Section::Header(Some(part(&[2])))), "");
        assert_eq!(section(MIXED, Section::Part(part(&[2, 1]))), "");
        assert_eq!(section(MIXED, Section::Part(part(&[9]))), "");
        assert_eq!(section(MIXED, Section::Mime(part(&[3]))), "");
        let parsed = Parsed::new(MIXED);
        // The text part is decoded from quoted-printable and ISO-8859-1; the base64
        // attachment is not text and is not searched.
        assert!(parsed.contains_text("voilà", false));
        assert!(!parsed.contains_text("zyzzyva", true));
        assert_eq!(lossy(parsed.header()) + &lossy(parsed.text()), lossy(MIXED));
    }

    #[test]
    fn nested_message_rfc822() {
        let inner_body = "--y\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n--y\r\n\
Content-Type: text/html\r\n\r\n<i>inner html</i>\r\n--y--\r\n";
        let inner_header = "From: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>\r\nSubject: inner\r\n\
Date: Tue, 8 Feb 1994 10:00:00 +0100\r\n\
Content-Type: multipart/alternative; boundary=\"y\"\r\n\r\n";
        let inner = format!("{inner_header}{inner_body}");
        assert_eq!(section(NESTED, Section::Part(part(&[2]))), inner);
        assert_eq!(
            section(NESTED, Section::Header(Some(part(&[2])))),
            inner_header
        );
        assert_eq!(section(NESTED, Section::Text(Some(part(&[2])))), inner_body);
        assert_eq!(
            section(NESTED, Section::Mime(part(&[2]))),
            "Content-Type: message/rfc822\r\n\r\n"
        );
        assert_eq!(section(NESTED, Section::Part(part(&[2, 1]))), "inner plain");
        assert_eq!(
            section(NESTED, Section::Part(part(&[2, 2]))),
            "<i>inner html</i>"
        );
        assert_eq!(
            section(NESTED, Section::Mime(part(&[2, 2]))),
            "Content-Type: text/html\r\n\r\n"
        );
        assert_eq!(section(NESTED, Section::Part(part(&[2, 3]))), "");
        assert_eq!(
            section(
                NESTED,
                Section::HeaderFields(Some(part(&[2])), names(&["subject"]))
            ),
            "Subject: inner\r\n\r\n"
        );
        assert_eq!(section(NESTED, Section::Text(Some(part(&[1])))), "");
        let lines = inner.matches('\n').count();
        let inner_envelope = concat!(
            r#"("Tue, 8 Feb 1994 10:00:00 +0100" "inner""#,
            r#" (("=?utf-8?b?SsO2cmc=?=" NIL "jorg" "example.de"))"#,
            r#" (("=?utf-8?b?SsO2cmc=?=" NIL "jorg" "example.de"))"#,
            r#" (("=?utf-8?b?SsO2cmc=?=" NIL "jorg" "example.de")) NIL NIL NIL NIL NIL)"#
        );
        assert_eq!(
            body(NESTED),
            format!(
                concat!(
                    r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 12 1)"#,
                    r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" {size} {envelope} "#,
                    r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1)"#,
                    r#"("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 17 1) "ALTERNATIVE")"#,
                    r#" {lines}) "MIXED")"#
                ),
                size = inner.len(),
                envelope = inner_envelope,
                lines = lines
            )
        );
        let structure = bodystructure(NESTED);
        assert!(structure.contains(&format!(
            r#""ALTERNATIVE" ("BOUNDARY" "y") NIL NIL NIL) {lines} NIL NIL NIL NIL)"#
        )));
        assert!(structure.ends_with(r#" "MIXED" ("BOUNDARY" "x") NIL NIL NIL)"#));
        let parsed = Parsed::new(NESTED);
        // The encapsulated header is part of the outer body.
        assert!(parsed.contains_text("INNER HTML", false));
        assert!(parsed.contains_text("jörg", false));
        assert!(!parsed.contains_text("fwd", false));
        assert!(parsed.contains_text("fwd", true));
    }

    #[test]
    fn envelope_non_ascii_and_groups() {
        let raw = "From: \"Jörg Müller\" <joerg@example.de>\r\n\
Sender: =?iso-8859-1?q?Ren=E9?= <rene@example.fr>\r\n\
To: Friends: a@example.org, Bee <b@example.org>;, c@example.org\r\n\
Cc: undisclosed-recipients:;\r\n\
Subject: =?utf-8?q?caf=C3=A9?= and\r\n more\r\n\
In-Reply-To: <parent@example.org>\r\n\
Message-ID: <me@example.org>\r\n\
\r\n\
body\r\n";
        let parsed = Parsed::new(raw.as_bytes());
        let envelope = parsed.envelope();
        let from = &envelope.from[0];
        assert_eq!(
            from.name,
            NString::try_from("=?utf-8?b?SsO2cmcgTcO8bGxlcg==?=").unwrap()
        );
        assert_eq!(
            self::envelope(raw.as_bytes()),
            concat!(
                r#"(NIL "=?utf-8?q?caf=C3=A9?= and more" "#,
                r#"(("=?utf-8?b?SsO2cmcgTcO8bGxlcg==?=" NIL "joerg" "example.de")) "#,
                r#"(("=?utf-8?b?UmVuw6k=?=" NIL "rene" "example.fr")) "#,
                r#"(("=?utf-8?b?SsO2cmcgTcO8bGxlcg==?=" NIL "joerg" "example.de")) "#,
                r#"((NIL NIL "Friends" NIL)(NIL NIL "a" "example.org")("Bee" NIL "b" "example.org")"#,
                r#"(NIL NIL NIL NIL)(NIL NIL "c" "example.org")) "#,
                r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL "#,
                r#""<parent@example.org>" "<me@example.org>")"#
            )
        );
        assert_eq!(parsed.header_values("Subject"), vec!["café and more"]);
        assert_eq!(
            parsed.header_values("sender"),
            vec!["René <rene@example.fr>"]
        );
        assert_eq!(
            parsed.header_values("to"),
            vec!["Friends: a@example.org, Bee <b@example.org>;, c@example.org"]
        );
        assert_eq!(parsed.sent_date(), None);
        // Long names are split into words that each stay within RFC 2047's limit.
        let long = "Ünïcödé ".repeat(20);
        let words = encoded_words(&long);
        assert!(words
            .split(' ')
            .all(|word| word.len() <= 75 && word.starts_with("=?utf-8?b?")));
        assert!(words.is_ascii());
        let decoded: Vec<u8> = words
            .split(' ')
            .flat_map(|word| {
                let inner = &word["=?utf-8?b?".len()..word.len() - 2];
                base64::engine::general_purpose::STANDARD
                    .decode(inner)
                    .unwrap()
            })
            .collect();
        assert_eq!(String::from_utf8(decoded).unwrap(), long);
    }

    #[test]
    fn eight_bit_header_values_are_encoded() {
        let raw = "Subject: Grüße\r\nFrom: Zoë <zoe@example.org>\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n";
        let text = envelope(raw.as_bytes());
        assert!(text
            .starts_with(r#"(NIL "=?utf-8?b?R3LDvMOfZQ==?=" (("=?utf-8?b?Wm/Dqw==?=" NIL "zoe""#));
        assert!(text.is_ascii());
        assert_eq!(
            Parsed::new(raw.as_bytes()).header_values("subject"),
            vec!["Grüße"]
        );
        // A non-ASCII parameter goes out the RFC 2231 way.
        let raw = "Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename*=utf-8''%C3%A9t%C3%A9.pdf\r\n\r\nxx";
        assert_eq!(
            bodystructure(raw.as_bytes()),
            concat!(
                r#"("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 2 NIL"#,
                r#" ("ATTACHMENT" ("FILENAME*" "utf-8''%C3%A9t%C3%A9.pdf")) NIL NIL)"#
            )
        );
    }

    #[test]
    fn no_header_separator() {
        let raw = b"From: a@example.org\r\nSubject: only a header\r\n";
        let parsed = Parsed::new(raw);
        assert_eq!(parsed.header(), raw);
        assert_eq!(parsed.text(), b"");
        assert_eq!(
            body(raw),
            r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)"#
        );
        assert_eq!(section(raw, Section::Part(part(&[1]))), "");
        assert_eq!(
            section(raw, Section::HeaderFields(None, names(&["subject"]))),
            "Subject: only a header\r\n\r\n"
        );
        assert_eq!(parsed.header_values("subject"), vec!["only a header"]);

        // The last field without its line break still comes out as a whole line.
        let raw = b"Subject: cut";
        let parsed = Parsed::new(raw);
        assert_eq!(parsed.header(), raw);
        assert_eq!(
            section(raw, Section::HeaderFields(None, names(&["subject"]))),
            "Subject: cut\r\n\r\n"
        );
        assert_eq!(parsed.header_values("subject"), vec!["cut"]);
        assert!(parsed.contains_text("CUT", true));
    }

    #[test]
    fn garbage_is_one_text_part() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"\x00\xff\xfe\r\n\r\n\x00",
            b"::::\n\n--",
            b"\n\n\n",
        ] {
            let parsed = Parsed::new(raw);
            assert_eq!(parsed.header().len() + parsed.text().len(), raw.len());
            let structure = body(raw);
            assert!(
                structure.starts_with(r#"("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" "#)
            );
            bodystructure(raw);
            envelope(raw);
        }
        let parsed = Parsed::new(b"");
        assert_eq!(parsed.section(None), b"");
        assert_eq!(parsed.section(Some(&Section::Part(part(&[1])))), b"");
        assert_eq!(parsed.section(Some(&Section::Header(None))), b"");
        assert_eq!(
            parsed.section(Some(&Section::HeaderFields(None, names(&["a"])))),
            b"\r\n"
        );
        assert_eq!(parsed.sent_date(), None);
        assert!(parsed.header_values("subject").is_empty());
        assert!(!parsed.contains_text("x", true));
    }

    #[test]
    fn broken_multiparts() {
        // No boundary parameter: Dovecot's empty text/plain child.
        let raw = b"Content-Type: multipart/mixed\r\n\r\nno parts here\r\n";
        assert_eq!(
            body(raw),
            r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "MIXED")"#
        );
        assert_eq!(section(raw, Section::Part(part(&[1]))), "");
        // Truncated inside a part: what is there is still found.
        let raw = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\
Content-Type: text/plain\r\n\r\ntrunc";
        assert_eq!(
            body(raw),
            r#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1) "MIXED")"#
        );
        assert_eq!(section(raw, Section::Part(part(&[1]))), "trunc");
        // An empty message/rfc822 part still has the message form.
        let raw = b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n\
Content-Type: message/rfc822\r\n\r\n\r\n--q--\r\n";
        let structure = body(raw);
        assert!(
            structure.starts_with(r#"(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" "#),
            "{structure}"
        );
    }

    #[test]
    fn every_prefix_and_mutation_is_handled() {
        let mut rng = crate::testing::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut random = move || rng.next();
        for fixture in [PLAIN, ALTERNATIVE, MIXED, NESTED] {
            let mut inputs: Vec<Vec<u8>> =
                (0..=fixture.len()).map(|n| fixture[..n].to_vec()).collect();
            for _ in 0..200 {
                let mut mutated = fixture.to_vec();
                for _ in 0..1 + random() % 8 {
                    let at = (random() as usize) % mutated.len();
                    let bytes = b"\r\n-:;\"=\x00\xc3\xa9 ";
                    mutated[at] = bytes[(random() as usize) % bytes.len()];
                }
                inputs.push(mutated);
            }
            for raw in inputs {
                exercise(&raw);
            }
        }
        for _ in 0..300 {
            let len = (random() % 400) as usize;
            let raw: Vec<u8> = (0..len).map(|_| random() as u8).collect();
            exercise(&raw);
        }
    }

    /// Every entry point, checking only what must always hold.
    fn exercise(raw: &[u8]) {
        let parsed = Parsed::new(raw);
        assert_eq!(parsed.header().len() + parsed.text().len(), raw.len());
        wire(MessageDataItem::BodyStructure(parsed.body_structure(true)));
        wire(MessageDataItem::Body(parsed.body_structure(false)));
        let envelope = wire(MessageDataItem::Envelope(parsed.envelope()));
        assert!(envelope.is_ascii() || envelope.contains('{'), "{envelope}");
        let sections = [
            Section::Part(part(&[1])),
            Section::Part(part(&[2, 1])),
            Section::Mime(part(&[2])),
            Section::Header(None),
            Section::Header(Some(part(&[2]))),
            Section::Text(Some(part(&[2]))),
            Section::HeaderFields(Some(part(&[2])), names(&["subject", "from"])),
            Section::HeaderFieldsNot(None, names(&["subject"])),
        ];
        for section in &sections {
            let bytes = parsed.section(Some(section));
            assert!(
                bytes.len() <= 3 * raw.len() + 2,
                "{section:?} of {:?} gave {:?}",
                lossy(raw),
                lossy(&bytes)
            );
        }
        for name in ["from", "to", "subject", "date", "x"] {
            parsed.header_values(name);
        }
        parsed.sent_date();
        parsed.contains_text("é", true);
        parsed.contains_text("a", false);
    }

    #[test]
    fn deep_nesting_is_capped() {
        // Enough levels to overflow a small stack if anything recursed once per level.
        let levels = 20_000;
        let mut raw = Vec::new();
        for _ in 0..levels {
            raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        raw.extend_from_slice(b"Subject: deepest\r\n\r\nbody\r\n");
        let mut multi = Vec::new();
        for level in 0..2_000 {
            multi.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n")
                    .as_bytes(),
            );
        }
        multi.extend_from_slice(b"\r\ndeep text\r\n");
        let worker = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                for raw in [raw, multi] {
                    let parsed = Parsed::new(&raw);
                    let structure = parsed.body_structure(true);
                    let mut depth = 0;
                    let mut at = &structure;
                    loop {
                        at = match at {
                            BodyStructure::Multi { bodies, .. } => &bodies.as_ref()[0],
                            BodyStructure::Single {
                                body:
                                    Body {
                                        specific: SpecificFields::Message { body_structure, .. },
                                        ..
                                    },
                                ..
                            } => body_structure,
                            BodyStructure::Single { .. } => break,
                        };
                        depth += 1;
                    }
                    assert!(depth <= MAX_DEPTH, "{depth}");
                    let deep: Vec<u32> = vec![1; 5_000];
                    assert_eq!(parsed.section(Some(&Section::Part(part(&deep)))), b"");
                    parsed.section(Some(&Section::Text(Some(part(&[1; MAX_DEPTH])))));
                    parsed.contains_text("deep", true);
                    parsed.envelope();
                }
            })
            .expect("thread");
        worker.join().expect("no stack overflow");
    }

    #[test]
    fn message_variants() {
        // A whole message that is one message/rfc822: its part 1 is the inner message.
        let raw = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n";
        assert_eq!(
            body(raw),
            concat!(
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1) 3)"#
            )
        );
        assert_eq!(
            section(raw, Section::Header(Some(part(&[1])))),
            "Subject: in\r\n\r\n"
        );
        assert_eq!(section(raw, Section::Part(part(&[1, 1]))), "body\r\n");
        assert_eq!(
            section(raw, Section::Mime(part(&[1, 1]))),
            "Subject: in\r\n\r\n"
        );

        // multipart/digest: parts without a Content-Type are messages.
        let raw = b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n\
Subject: one\r\n\r\nfirst\r\n--d\r\n\r\nSubject: two\r\n\r\nsecond\r\n--d--\r\n";
        assert_eq!(
            body(raw),
            concat!(
                r#"(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1) 3)"#,
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 22 (NIL "two" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1) 3) "DIGEST")"#
            )
        );
        assert_eq!(section(raw, Section::Part(part(&[2, 1]))), "second");
        assert!(Parsed::new(raw).contains_text("FIRST", false));

        // A base64 message/rfc822 (RFC 2046 forbids it, but it is seen): the size is
        // the encoded body's, the parts inside are the decoded message's.
        // message/global has no message form in IMAP4rev1, so it is a plain part.
        let raw = b"Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n\
Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n\
U3ViamVjdDogZW5jb2RlZA0KDQpoaWRkZW4gdGV4dA0K\r\n--m\r\n\
Content-Type: message/global\r\n\r\nSubject: g\r\n\r\nglobal\r\n--m--\r\n";
        assert_eq!(
            body(raw),
            concat!(
                r#"(("MESSAGE" "RFC822" NIL NIL NIL "BASE64" 44"#,
                r#" (NIL "encoded" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1) 1)"#,
                r#"("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 20) "MIXED")"#
            )
        );
        assert_eq!(
            section(raw, Section::Text(Some(part(&[1])))),
            "hidden text\r\n"
        );
        assert_eq!(
            section(raw, Section::Part(part(&[2]))),
            "Subject: g\r\n\r\nglobal"
        );
        assert_eq!(section(raw, Section::Part(part(&[2, 1]))), "");
        assert!(Parsed::new(raw).contains_text("hidden", false));

        // RFC 2047 in a parameter is decoded by mail-parser, then re-encoded per RFC 2231.
        let raw =
            b"Content-Type: application/octet-stream; name=\"=?utf-8?B?w6kucGRm?=\"\r\n\r\nxx";
        assert_eq!(
            body(raw),
            r#"("APPLICATION" "OCTET-STREAM" ("NAME*" "utf-8''%C3%A9.pdf") NIL NIL "7BIT" 2)"#
        );
    }
}
