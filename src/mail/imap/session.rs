//! One IMAP session over the Maildir store, without sockets: the states of RFC 3501
//! §3 (not authenticated, authenticated, selected), and every command but the four
//! the I/O layer runs itself because they wait on something (LOGIN and AUTHENTICATE
//! on the directory, STARTTLS on the TLS handshake, IDLE on the client). Commands come
//! parsed by `imap-codec`; answers go back as `imap-types` responses for it to encode.
//!
//! # The selected folder
//!
//! The session keeps the folder's messages in sequence order with their UIDs (from
//! the folder's UID index, [`crate::mail::store::UidMap`]) and the flags their file
//! names carry. [`Session::refresh`] compares that view with the folder as it is now
//! and reports the difference, as RFC 3501 §7 asks: expunges first (each sequence
//! number as it is at that moment), then flag changes, then the new `EXISTS`. It runs
//! on NOOP, CHECK, IDLE wake-ups and after commands that add messages; never inside
//! FETCH, STORE or SEARCH, where an expunge must not be reported (§7.4.1).
//!
//! `\Recent` follows the Maildir rule: a message in new/ has not been seen by any
//! session. A read-write session moves new/ to cur/ when it selects or refreshes, and
//! the messages it moved are recent in it and in no other session; a read-only
//! (EXAMINE) session moves nothing and sees what is still in new/ as recent.
//!
//! # Names
//!
//! Folder names on disk are the IMAP names as the client sends them (modified UTF-7,
//! printable ASCII), Maildir++ style with `.` as the hierarchy delimiter, as Dovecot
//! keeps them: a Maildir can be moved between the two servers. The personal namespace
//! is the only one, with an empty prefix.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use imap_next::imap_types::{
    command::{Command, CommandBody},
    core::{AString, Atom, Charset, IString, Literal, NString, QuotedChar, Tag, Text, Vec1},
    datetime::DateTime,
    extensions::{
        binary::LiteralOrLiteral8,
        namespace::Namespace,
        quota::{QuotaGet, Resource},
        uidplus::{UidElement, UidSet},
    },
    fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName},
    flag::{Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreResponse, StoreType},
    mailbox::{ListMailbox, Mailbox as ImapName},
    response::{Capability, Code, CodeOther, Data, Response, Status},
    search::SearchKey,
    sequence::{SeqOrUid, Sequence, SequenceSet},
    status::{StatusDataItem, StatusDataItemName},
};

use super::mime::Parsed;
use crate::mail::store::{
    Flags, Folder, FolderName, MailStore, Mailbox, MessageDir, MessageEntry, Quota, StoreError,
};

/// The hierarchy delimiter.
pub const DELIMITER: char = '.';

/// The special-use folders (RFC 6154) every account has, created at its first login.
pub const SPECIAL_USE: [(&str, &str); 5] = [
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

/// What a session is started with.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The client's address (the LOGIN-after-TLS rule spares loopback).
    pub peer: IpAddr,
    /// The connection is encrypted.
    pub tls: bool,
    /// STARTTLS can be offered (the listener has a certificate).
    pub starttls: bool,
}

/// The account a session logged in as, its Maildir open.
#[derive(Debug, Clone)]
pub struct User {
    /// The login's primary address.
    pub address: String,
    /// Its Maildir on this node.
    pub mailbox: Mailbox,
    /// Its quota, from the directory.
    pub quota: Quota,
}

impl User {
    /// Open `address`'s Maildir in `store` and make sure INBOX and the special-use
    /// folders exist.
    pub fn open(
        store: &MailStore,
        address: &str,
        domain: &str,
        local: &str,
        quota: Quota,
    ) -> Result<User, StoreError> {
        let mailbox = store.mailbox(domain, local)?;
        mailbox.ensure_folder(&FolderName::inbox())?;
        for (name, _) in SPECIAL_USE {
            let folder = FolderName::new(name)?;
            if mailbox.open_folder(&folder).is_err() {
                mailbox.ensure_folder(&folder)?;
            }
        }
        Ok(User {
            address: address.to_owned(),
            mailbox,
            quota,
        })
    }
}

/// One message of the selected folder.
#[derive(Debug, Clone)]
struct Msg {
    uid: u32,
    entry: MessageEntry,
}

/// The selected folder as this session sees it.
#[derive(Debug)]
struct Selected {
    folder: Folder,
    read_only: bool,
    validity: u32,
    next: u32,
    messages: Vec<Msg>,
    /// Ids of the messages recent in this session.
    recent: HashSet<String>,
}

impl Selected {
    fn is_recent(&self, m: &Msg) -> bool {
        self.recent.contains(&m.entry.id) || (self.read_only && m.entry.dir == MessageDir::New)
    }

    fn recent_count(&self) -> u32 {
        self.messages.iter().filter(|m| self.is_recent(m)).count() as u32
    }

    /// Expunge the messages `pick` chooses (by index and message) and return the
    /// EXPUNGE responses, each numbered as the sequence is when it is sent. A message
    /// the store cannot remove stays, and the failure is logged.
    fn remove(&mut self, pick: impl Fn(usize, &Msg) -> bool) -> Responses {
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(self.messages.len());
        for (i, m) in std::mem::take(&mut self.messages).into_iter().enumerate() {
            if pick(i, &m) {
                match self.folder.expunge_entry(&m.entry) {
                    Ok(()) | Err(StoreError::NoSuchMessage) => {
                        out.push(Response::Data(Data::Expunge(nz(kept.len() as u32 + 1))));
                        self.recent.remove(&m.entry.id);
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "expunge failed"),
                }
            }
            kept.push(m);
        }
        self.messages = kept;
        out
    }

    fn highest_uid(&self) -> u32 {
        self.messages.last().map_or(0, |m| m.uid)
    }

    /// The indexes of the messages `set` names, ascending. UIDs that do not exist
    /// are ignored (RFC 3501 §6.4.8); a message sequence number past the last
    /// message is an error (`Err`), as no client that follows the EXISTS responses
    /// sends one. `*` is the last message (or the highest UID); in an empty folder a
    /// set with `*` names nothing.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, ()> {
        let n = self.messages.len();
        if !uid {
            let past_end = set.0.as_ref().iter().any(|seq| {
                let beyond = |v: &SeqOrUid| matches!(v, SeqOrUid::Value(v) if v.get() as usize > n);
                match seq {
                    Sequence::Single(v) => beyond(v),
                    // `n:*` reaches the last message whatever n is.
                    Sequence::Range(a, b) => {
                        let starred =
                            matches!(a, SeqOrUid::Asterisk) || matches!(b, SeqOrUid::Asterisk);
                        !starred && (beyond(a) || beyond(b))
                    }
                }
            });
            if past_end {
                return Err(());
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut hit = vec![false; n];
        let star = if uid { self.highest_uid() } else { n as u32 };
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => star,
        };
        for seq in set.0.as_ref() {
            let (lo, hi) = match seq {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(a, b) => {
                    let (a, b) = (value(a), value(b));
                    (a.min(b), a.max(b))
                }
            };
            if uid {
                let start = self.messages.partition_point(|m| m.uid < lo);
                for (i, m) in self.messages.iter().enumerate().skip(start) {
                    if m.uid > hi {
                        break;
                    }
                    hit[i] = true;
                }
            } else {
                let lo = lo.max(1) as usize;
                let hi = (hi as usize).min(n);
                for h in hit.iter_mut().take(hi).skip(lo - 1) {
                    *h = true;
                }
            }
        }
        Ok((0..n).filter(|&i| hit[i]).collect())
    }
}

/// One IMAP session's state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    user: Option<User>,
    selected: Option<Selected>,
}

type Responses = Vec<Response<'static>>;

impl Session {
    /// A session in the not-authenticated state.
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            user: None,
            selected: None,
        }
    }

    /// The connection is now encrypted (STARTTLS done).
    pub fn tls_started(&mut self) {
        self.config.tls = true;
        self.config.starttls = false;
    }

    /// Whether the connection is encrypted.
    pub fn tls(&self) -> bool {
        self.config.tls
    }

    /// Whether LOGIN and AUTHENTICATE are allowed: after TLS, or from loopback.
    pub fn login_allowed(&self) -> bool {
        self.config.tls || self.config.peer.is_loopback()
    }

    /// Whether a user is logged in.
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// The logged-in user.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Whether a folder is selected.
    pub fn selected(&self) -> bool {
        self.selected.is_some()
    }

    /// Enter the authenticated state as `user`.
    pub fn logged_in(&mut self, user: User) {
        self.user = Some(user);
    }

    /// What CAPABILITY says now: the same list before and after a login except for
    /// the login-related items, so a client that cached it is not misled.
    pub fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1, Capability::SaslIr];
        caps.push(Capability::LiteralPlus);
        caps.push(Capability::Id);
        caps.push(Capability::Enable);
        caps.push(Capability::Idle);
        if self.user.is_none() {
            if self.config.starttls && !self.config.tls {
                caps.push(Capability::StartTls);
            }
            if self.login_allowed() {
                caps.push(Capability::Auth(
                    imap_next::imap_types::auth::AuthMechanism::Plain,
                ));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        } else {
            caps.extend([
                Capability::Namespace,
                Capability::UidPlus,
                Capability::Move,
                Capability::Unselect,
                Capability::Quota,
                Capability::QuotaRes(Resource::Storage),
                Capability::QuotaRes(Resource::Message),
            ]);
            for other in ["SPECIAL-USE", "CHILDREN"] {
                if let Ok(atom) = Atom::try_from(other) {
                    caps.push(Capability::from(atom));
                }
            }
        }
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    /// Run one command (not LOGIN, AUTHENTICATE, STARTTLS, LOGOUT or IDLE, which the
    /// I/O layer runs) and return its responses, the tagged one last. A `BYE` among
    /// them means the session must end once they are sent.
    pub fn execute(&mut self, command: Command<'static>) -> Responses {
        let tag = command.tag;
        let result = match command.body {
            CommandBody::Capability => Ok(vec![
                Response::Data(Data::Capability(self.capabilities())),
                ok(&tag, None, "CAPABILITY completed"),
            ]),
            CommandBody::Noop | CommandBody::Check => self.with_refresh(&tag, Vec::new()),
            CommandBody::Id { .. } => Ok(vec![
                Response::Data(Data::Id {
                    parameters: Some(
                        [("name", "PigeonAir"), ("vendor", "PigeonAir")]
                            .into_iter()
                            .chain([("version", env!("CARGO_PKG_VERSION"))])
                            .filter_map(|(k, v)| {
                                Some((IString::try_from(k).ok()?, nstring(v.as_bytes())))
                            })
                            .collect(),
                    ),
                }),
                ok(&tag, None, "ID completed"),
            ]),
            CommandBody::Enable { .. } if self.user.is_some() => Ok(vec![
                Response::Data(Data::Enabled {
                    capabilities: Vec::new(),
                }),
                ok(&tag, None, "ENABLE completed"),
            ]),
            body if self.user.is_none() => Ok(vec![bad(
                &tag,
                &format!("{} needs a login first", command_name(&body)),
            )]),
            body => self.authenticated_command(&tag, body),
        };
        result.unwrap_or_else(|e| vec![store_failure(&tag, &e)])
    }

    fn authenticated_command(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
    ) -> Result<Responses, StoreError> {
        match body {
            CommandBody::Select { mailbox, .. } => self.select(tag, &mailbox, false),
            CommandBody::Examine { mailbox, .. } => self.select(tag, &mailbox, true),
            CommandBody::Create { mailbox } => self.create(tag, &mailbox),
            CommandBody::Delete { mailbox } => self.delete(tag, &mailbox),
            CommandBody::Rename { from, to } => self.rename(tag, &from, &to),
            CommandBody::Subscribe { mailbox } => self.subscribe(tag, &mailbox, true),
            CommandBody::Unsubscribe { mailbox } => self.subscribe(tag, &mailbox, false),
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(tag, &reference, &mailbox_wildcard, false),
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(tag, &reference, &mailbox_wildcard, true),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(tag, &mailbox, &item_names),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(tag, &mailbox, &flags, date.as_ref(), &message),
            CommandBody::Namespace => Ok(vec![
                Response::Data(Data::Namespace {
                    personal: vec![Namespace {
                        prefix: IString::try_from("").expect("an empty quoted string"),
                        delimiter: QuotedChar::try_from(DELIMITER).ok(),
                        extensions: Vec::new(),
                    }],
                    other: Vec::new(),
                    shared: Vec::new(),
                }),
                ok(tag, None, "NAMESPACE completed"),
            ]),
            CommandBody::GetQuotaRoot { mailbox } => self.quota_root(tag, &mailbox),
            CommandBody::GetQuota { root } => self.quota(tag, root.as_ref()),
            CommandBody::SetQuota { .. } => Ok(vec![no(
                tag,
                Some(other_code("NOPERM")),
                "quotas are set in the directory (mailQuotaSize, mailQuotaCount)",
            )]),
            body if self.selected.is_none() => Ok(vec![bad(
                tag,
                &format!("{} needs a selected folder", command_name(&body)),
            )]),
            body => self.selected_command(tag, body),
        }
    }

    fn selected_command(
        &mut self,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
    ) -> Result<Responses, StoreError> {
        match body {
            CommandBody::Close => {
                if let Some(sel) = self.selected.take() {
                    if !sel.read_only {
                        for m in sel
                            .messages
                            .iter()
                            .filter(|m| m.entry.flags.contains(Flags::TRASHED))
                        {
                            if let Err(e) = sel.folder.expunge_entry(&m.entry) {
                                if !matches!(e, StoreError::NoSuchMessage) {
                                    return Err(e);
                                }
                            }
                        }
                    }
                }
                Ok(vec![ok(tag, None, "CLOSE completed")])
            }
            CommandBody::Unselect => {
                self.selected = None;
                Ok(vec![ok(tag, None, "UNSELECT completed")])
            }
            CommandBody::Expunge => self.expunge(tag, None),
            CommandBody::ExpungeUid { sequence_set } => self.expunge(tag, Some(&sequence_set)),
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(tag, charset.as_ref(), criteria.as_ref(), uid),
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => self.fetch(tag, &sequence_set, &macro_or_item_names, uid),
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => self.store(tag, &sequence_set, &kind, &response, &flags, uid),
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox, uid, false),
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, &sequence_set, &mailbox, uid, true),
            body => Ok(vec![bad(
                tag,
                &format!("{} is not supported", command_name(&body)),
            )]),
        }
    }

    fn user_ref(&self) -> &User {
        self.user.as_ref().expect("checked by the caller")
    }

    /// Responses to a command followed by what changed in the selected folder, then
    /// the tagged OK.
    fn with_refresh(
        &mut self,
        tag: &Tag<'static>,
        mut out: Responses,
    ) -> Result<Responses, StoreError> {
        out.extend(self.refresh()?);
        out.push(ok(tag, None, "completed"));
        Ok(out)
    }

    /// What changed in the selected folder since the session last looked (see the
    /// module documentation); a `BYE` when the folder was replaced (its UIDVALIDITY
    /// changed). Nothing when no folder is selected.
    pub fn refresh(&mut self) -> Result<Responses, StoreError> {
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Vec::new());
        };
        if !sel.read_only {
            for e in sel.folder.take_new()? {
                sel.recent.insert(e.id);
            }
        }
        let map = match sel.folder.uids() {
            Ok(map) => map,
            Err(StoreError::NoSuchFolder) => {
                self.selected = None;
                return Ok(vec![Response::Status(bye(
                    "the selected folder was deleted",
                ))]);
            }
            Err(e) => return Err(e),
        };
        if map.validity != sel.validity {
            self.selected = None;
            return Ok(vec![Response::Status(bye(
                "the selected folder's UIDVALIDITY changed; select it again",
            ))]);
        }
        let mut out = Vec::new();
        let mut fresh = map.messages.into_iter().peekable();
        let mut kept: Vec<Msg> = Vec::with_capacity(sel.messages.len());
        let mut changed = Vec::new();
        for old in sel.messages.drain(..) {
            while fresh.peek().is_some_and(|(uid, _)| *uid < old.uid) {
                fresh.next();
            }
            match fresh.peek() {
                Some((uid, _)) if *uid == old.uid => {
                    let (uid, entry) = fresh.next().expect("peeked");
                    if entry.flags != old.entry.flags {
                        changed.push(kept.len());
                    }
                    kept.push(Msg { uid, entry });
                }
                _ => {
                    out.push(Response::Data(Data::Expunge(nz(kept.len() as u32 + 1))));
                    sel.recent.remove(&old.entry.id);
                }
            }
        }
        let before = kept.len();
        let last = kept.last().map_or(0, |m| m.uid);
        kept.extend(
            fresh
                .filter(|(uid, _)| *uid > last)
                .map(|(uid, entry)| Msg { uid, entry }),
        );
        sel.messages = kept;
        sel.next = map.next;
        for i in changed {
            let m = &sel.messages[i];
            out.push(fetch_response(
                i,
                vec![
                    MessageDataItem::Flags(fetch_flags(m.entry.flags, sel.is_recent(m))),
                    MessageDataItem::Uid(nz(m.uid)),
                ],
            ));
        }
        if sel.messages.len() != before {
            out.push(Response::Data(Data::Exists(sel.messages.len() as u32)));
            out.push(Response::Data(Data::Recent(sel.recent_count())));
        }
        Ok(out)
    }

    fn select(
        &mut self,
        tag: &Tag<'static>,
        name: &ImapName<'_>,
        read_only: bool,
    ) -> Result<Responses, StoreError> {
        self.selected = None;
        let folder_name = match folder_name(name) {
            Ok(f) => f,
            Err(refusal) => return Ok(vec![no(tag, Some(other_code("NONEXISTENT")), refusal)]),
        };
        let folder = match self.user_ref().mailbox.open_folder(&folder_name) {
            Ok(f) => f,
            Err(StoreError::NoSuchFolder) => {
                return Ok(vec![no(
                    tag,
                    Some(other_code("NONEXISTENT")),
                    "no such folder",
                )])
            }
            Err(e) => return Err(e),
        };
        let recent: HashSet<String> = if read_only {
            HashSet::new()
        } else {
            folder.take_new()?.into_iter().map(|e| e.id).collect()
        };
        let map = folder.uids()?;
        let sel = Selected {
            folder,
            read_only,
            validity: map.validity,
            next: map.next,
            messages: map
                .messages
                .into_iter()
                .map(|(uid, entry)| Msg { uid, entry })
                .collect(),
            recent,
        };
        let mut out = vec![
            Response::Data(Data::Flags(flag_list())),
            Response::Data(Data::Exists(sel.messages.len() as u32)),
            Response::Data(Data::Recent(sel.recent_count())),
        ];
        if let Some(i) = sel
            .messages
            .iter()
            .position(|m| !m.entry.flags.contains(Flags::SEEN))
        {
            out.push(untagged_ok(
                Some(Code::Unseen(nz(i as u32 + 1))),
                "first unseen",
            ));
        }
        let permanent = if read_only {
            Vec::new()
        } else {
            flag_list().into_iter().map(FlagPerm::Flag).collect()
        };
        out.push(untagged_ok(
            Some(Code::PermanentFlags(permanent)),
            "flags kept",
        ));
        out.push(untagged_ok(
            Some(Code::UidValidity(nz(sel.validity))),
            "UIDs valid",
        ));
        out.push(untagged_ok(
            Some(Code::UidNext(nz(sel.next))),
            "predicted next UID",
        ));
        let (code, text) = if read_only {
            (Code::ReadOnly, "EXAMINE completed")
        } else {
            (Code::ReadWrite, "SELECT completed")
        };
        out.push(ok(tag, Some(code), text));
        self.selected = Some(sel);
        Ok(out)
    }

    fn create(&mut self, tag: &Tag<'static>, name: &ImapName<'_>) -> Result<Responses, StoreError> {
        let folder = match folder_name(name) {
            Ok(f) => f,
            Err(refusal) => return Ok(vec![no(tag, Some(other_code("CANNOT")), refusal)]),
        };
        self.user_ref().mailbox.create_folder(&folder)?;
        Ok(vec![ok(tag, None, "CREATE completed")])
    }

    fn delete(&mut self, tag: &Tag<'static>, name: &ImapName<'_>) -> Result<Responses, StoreError> {
        let folder = match folder_name(name) {
            Ok(f) => f,
            Err(refusal) => return Ok(vec![no(tag, Some(other_code("NONEXISTENT")), refusal)]),
        };
        if folder.is_inbox() {
            return Ok(vec![no(
                tag,
                Some(other_code("CANNOT")),
                "INBOX cannot be deleted",
            )]);
        }
        self.user_ref().mailbox.delete_folder(&folder)?;
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.folder.name() == &folder)
        {
            self.selected = None;
        }
        Ok(vec![ok(tag, None, "DELETE completed")])
    }

    fn rename(
        &mut self,
        tag: &Tag<'static>,
        from: &ImapName<'_>,
        to: &ImapName<'_>,
    ) -> Result<Responses, StoreError> {
        let (from, to) = match (folder_name(from), folder_name(to)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(r), _) | (_, Err(r)) => return Ok(vec![no(tag, Some(other_code("CANNOT")), r)]),
        };
        if from.is_inbox() {
            return self.rename_inbox(tag, &to);
        }
        self.user_ref().mailbox.rename_folder(&from, &to)?;
        Ok(vec![ok(tag, None, "RENAME completed")])
    }

    /// RFC 3501 §6.3.5: renaming INBOX moves its messages into a new folder of that
    /// name and leaves INBOX, empty, in place.
    fn rename_inbox(
        &mut self,
        tag: &Tag<'static>,
        to: &FolderName,
    ) -> Result<Responses, StoreError> {
        let user = self.user_ref().clone();
        user.mailbox.create_folder(to)?;
        let inbox = user.mailbox.open_folder(&FolderName::inbox())?;
        let target = user.mailbox.open_folder(to)?;
        // Moving within one mailbox changes no usage, so no quota applies.
        let unlimited = Quota::UNLIMITED;
        for entry in inbox.scan()? {
            match inbox.copy_known_to(&entry, &target, &unlimited) {
                Ok(_) => inbox.expunge_entry(&entry)?,
                Err(StoreError::NoSuchMessage) => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = Vec::new();
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.folder.name().is_inbox())
        {
            out.extend(self.refresh()?);
        }
        out.push(ok(tag, None, "RENAME completed"));
        Ok(out)
    }

    fn subscriptions_path(&self) -> PathBuf {
        self.user_ref().mailbox.path().join("subscriptions")
    }

    fn subscriptions(&self) -> Result<Vec<String>, StoreError> {
        match std::fs::read_to_string(self.subscriptions_path()) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn subscribe(
        &mut self,
        tag: &Tag<'static>,
        name: &ImapName<'_>,
        on: bool,
    ) -> Result<Responses, StoreError> {
        let folder = match folder_name(name) {
            Ok(f) => f,
            Err(refusal) => return Ok(vec![no(tag, Some(other_code("CANNOT")), refusal)]),
        };
        let mut subs = self.subscriptions()?;
        let had = subs.iter().any(|s| s == folder.as_str());
        if on && !had {
            subs.push(folder.as_str().to_owned());
        } else if !on && had {
            subs.retain(|s| s != folder.as_str());
        } else {
            return Ok(vec![ok(tag, None, "completed")]);
        }
        let mut text = subs.join("\n");
        text.push('\n');
        crate::durable::write_atomic(
            &self.subscriptions_path(),
            text.as_bytes(),
            crate::durable::Access::Private,
        )?;
        Ok(vec![ok(tag, None, "completed")])
    }

    fn list(
        &mut self,
        tag: &Tag<'static>,
        reference: &ImapName<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> Result<Responses, StoreError> {
        let pattern: Vec<u8> = match pattern {
            ListMailbox::Token(t) => t.as_ref().to_vec(),
            ListMailbox::String(s) => s.as_ref().to_vec(),
        };
        let reference = name_bytes(reference);
        let delimiter = QuotedChar::try_from(DELIMITER).ok();
        let done = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        if pattern.is_empty() && !lsub {
            return Ok(vec![
                Response::Data(Data::List {
                    items: vec![FlagNameAttribute::Noselect],
                    delimiter,
                    mailbox: ImapName::from(AString::try_from("").expect("empty quoted")),
                }),
                ok(tag, None, done),
            ]);
        }
        let mut full = reference;
        full.extend_from_slice(&pattern);
        let full = String::from_utf8_lossy(&full).into_owned();
        let folders: Vec<String> = self
            .user_ref()
            .mailbox
            .folders()?
            .iter()
            .map(|f| f.as_str().to_owned())
            .collect();
        let exists: HashSet<&str> = folders.iter().map(String::as_str).collect();
        // Every name with the levels above it, which exist as \Noselect when they
        // are not folders themselves.
        let mut names: Vec<String> = Vec::new();
        let candidates: Vec<String> = if lsub {
            self.subscriptions()?
        } else {
            folders.clone()
        };
        for name in &candidates {
            let mut level = String::new();
            for (i, part) in name.split(DELIMITER).enumerate() {
                if i > 0 {
                    level.push(DELIMITER);
                }
                level.push_str(part);
                if !names.contains(&level) {
                    names.push(level.clone());
                }
            }
        }
        let mut out = Vec::new();
        for name in &names {
            let is_inbox = name.eq_ignore_ascii_case("INBOX");
            if !wildcard_match(full.as_bytes(), name.as_bytes(), is_inbox) {
                continue;
            }
            let mut items = Vec::new();
            let real = exists.contains(name.as_str()) || is_inbox;
            if !real {
                items.push(FlagNameAttribute::Noselect);
            }
            if !lsub || real {
                let prefix = format!("{name}{DELIMITER}");
                let children = folders.iter().any(|f| f.starts_with(&prefix));
                items.push(attribute(if children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }));
                if let Some((_, special)) = SPECIAL_USE.iter().find(|(n, _)| n == name) {
                    items.push(attribute(special));
                }
            }
            let Ok(mailbox) = imap_name(name) else {
                continue;
            };
            let data = if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            };
            out.push(Response::Data(data));
        }
        out.push(ok(tag, None, done));
        Ok(out)
    }

    fn status(
        &mut self,
        tag: &Tag<'static>,
        name: &ImapName<'static>,
        items: &[StatusDataItemName],
    ) -> Result<Responses, StoreError> {
        let folder = match folder_name(name).map(|f| self.user_ref().mailbox.open_folder(&f)) {
            Ok(Ok(f)) => f,
            Ok(Err(StoreError::NoSuchFolder)) | Err(_) => {
                return Ok(vec![no(
                    tag,
                    Some(other_code("NONEXISTENT")),
                    "no such folder",
                )])
            }
            Ok(Err(e)) => return Err(e),
        };
        let map = folder.uids()?;
        let count = map.messages.len() as u32;
        let unseen = map
            .messages
            .iter()
            .filter(|(_, e)| !e.flags.contains(Flags::SEEN))
            .count() as u32;
        let deleted = map
            .messages
            .iter()
            .filter(|(_, e)| e.flags.contains(Flags::TRASHED))
            .count() as u32;
        let recent = match &self.selected {
            Some(sel) if sel.folder.name() == folder.name() => sel.recent_count(),
            _ => map
                .messages
                .iter()
                .filter(|(_, e)| e.dir == MessageDir::New)
                .count() as u32,
        };
        let items: Vec<StatusDataItem> = items
            .iter()
            .map(|item| match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(count),
                StatusDataItemName::Recent => StatusDataItem::Recent(recent),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(map.next)),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(nz(map.validity)),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(unseen),
                StatusDataItemName::Deleted => StatusDataItem::Deleted(deleted),
                StatusDataItemName::DeletedStorage => StatusDataItem::DeletedStorage(0),
            })
            .collect();
        Ok(vec![
            Response::Data(Data::Status {
                mailbox: name.clone(),
                items: Cow::Owned(items),
            }),
            ok(tag, None, "STATUS completed"),
        ])
    }

    fn append(
        &mut self,
        tag: &Tag<'static>,
        name: &ImapName<'_>,
        flags: &[Flag<'_>],
        date: Option<&DateTime>,
        message: &LiteralOrLiteral8<'_>,
    ) -> Result<Responses, StoreError> {
        let folder_name = match folder_name(name) {
            Ok(f) => f,
            Err(refusal) => return Ok(vec![no(tag, Some(Code::TryCreate), refusal)]),
        };
        let bytes: &[u8] = match message {
            LiteralOrLiteral8::Literal(l) => l.data(),
            LiteralOrLiteral8::Literal8(l) => &l.data,
        };
        let user = self.user_ref().clone();
        let folder = match user.mailbox.open_folder(&folder_name) {
            Ok(f) => f,
            Err(StoreError::NoSuchFolder) => {
                return Ok(vec![no(tag, Some(Code::TryCreate), "no such folder")])
            }
            Err(e) => return Err(e),
        };
        let delivered = match user.mailbox.deliver(&folder_name, bytes, &user.quota) {
            Ok(d) => d,
            Err(StoreError::OverQuota) => {
                return Ok(vec![no(
                    tag,
                    Some(Code::OverQuota),
                    "the mailbox is over its quota",
                )])
            }
            Err(e) => return Err(e),
        };
        let flags = store_flags(flags);
        let entry = if flags.is_empty() {
            folder.entry(&delivered.file_name)?
        } else {
            folder.set_flags(&delivered.file_name, flags)?
        };
        if let Some(date) = date {
            let when = date.as_ref().timestamp();
            if let (Ok(file), Ok(secs)) = (
                std::fs::File::options().write(true).open(&entry.path),
                u64::try_from(when),
            ) {
                let _ =
                    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
            }
        }
        let map = folder.uids()?;
        let uid = map
            .messages
            .iter()
            .find(|(_, e)| e.id == entry.id)
            .map(|(u, _)| *u);
        let mut out = Vec::new();
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.folder.name() == &folder_name)
        {
            out.extend(self.refresh()?);
        }
        let code = uid.map(|uid| Code::AppendUid {
            uid_validity: nz(map.validity),
            uid: nz(uid),
        });
        out.push(ok(tag, code, "APPEND completed"));
        Ok(out)
    }

    fn quota_data(&self) -> Result<Option<Vec1<QuotaGet<'static>>>, StoreError> {
        let user = self.user_ref();
        let usage = user.mailbox.usage()?;
        let mut quotas = Vec::new();
        if let Some(max) = user.quota.max_bytes {
            quotas.push(QuotaGet {
                resource: Resource::Storage,
                usage: usage.bytes.div_ceil(1024),
                limit: max / 1024,
            });
        }
        if let Some(max) = user.quota.max_count {
            quotas.push(QuotaGet {
                resource: Resource::Message,
                usage: usage.count,
                limit: max,
            });
        }
        Ok(Vec1::try_from(quotas).ok())
    }

    fn quota_root(
        &mut self,
        tag: &Tag<'static>,
        name: &ImapName<'static>,
    ) -> Result<Responses, StoreError> {
        if !matches!(
            folder_name(name).map(|f| self.user_ref().mailbox.open_folder(&f)),
            Ok(Ok(_))
        ) {
            return Ok(vec![no(
                tag,
                Some(other_code("NONEXISTENT")),
                "no such folder",
            )]);
        }
        let quotas = self.quota_data()?;
        let root = AString::try_from("").expect("empty quoted");
        let mut out = vec![Response::Data(Data::QuotaRoot {
            mailbox: name.clone(),
            roots: if quotas.is_some() {
                vec![root.clone()]
            } else {
                Vec::new()
            },
        })];
        if let Some(quotas) = quotas {
            out.push(Response::Data(Data::Quota { root, quotas }));
        }
        out.push(ok(tag, None, "GETQUOTAROOT completed"));
        Ok(out)
    }

    fn quota(&mut self, tag: &Tag<'static>, root: &[u8]) -> Result<Responses, StoreError> {
        match (root.is_empty(), self.quota_data()?) {
            (true, Some(quotas)) => Ok(vec![
                Response::Data(Data::Quota {
                    root: AString::try_from("").expect("empty quoted"),
                    quotas,
                }),
                ok(tag, None, "GETQUOTA completed"),
            ]),
            _ => Ok(vec![no(
                tag,
                Some(other_code("NONEXISTENT")),
                "no such quota root",
            )]),
        }
    }

    fn expunge(
        &mut self,
        tag: &Tag<'static>,
        only: Option<&SequenceSet>,
    ) -> Result<Responses, StoreError> {
        let sel = self.selected.as_mut().expect("checked by the caller");
        if sel.read_only {
            return Ok(vec![no(
                tag,
                Some(other_code("READ-ONLY")),
                "the folder is read-only",
            )]);
        }
        let chosen: HashSet<usize> = match only {
            Some(set) => sel
                .resolve(set, true)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            None => (0..sel.messages.len()).collect(),
        };
        let mut out =
            sel.remove(|i, m| chosen.contains(&i) && m.entry.flags.contains(Flags::TRASHED));
        out.extend(self.refresh()?);
        out.push(ok(tag, None, "EXPUNGE completed"));
        Ok(out)
    }

    fn search(
        &mut self,
        tag: &Tag<'static>,
        charset: Option<&Charset<'_>>,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Result<Responses, StoreError> {
        if let Some(charset) = charset {
            let name = charset.as_ref();
            if !(name.eq_ignore_ascii_case("UTF-8") || name.eq_ignore_ascii_case("US-ASCII")) {
                let allowed = ["UTF-8", "US-ASCII"]
                    .into_iter()
                    .filter_map(|c| Charset::try_from(c).ok())
                    .collect();
                return Ok(vec![no(
                    tag,
                    Some(Code::BadCharset { allowed }),
                    "unsupported charset",
                )]);
            }
        }
        let sel = self.selected.as_ref().expect("checked by the caller");
        let needs_content = criteria.iter().any(needs_content);
        let mut hits = Vec::new();
        for (i, m) in sel.messages.iter().enumerate() {
            let raw = if needs_content {
                match sel.folder.read_entry(&m.entry) {
                    Ok(raw) => Some(raw),
                    Err(StoreError::NoSuchMessage) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let parsed = raw.as_deref().map(Parsed::new);
            let ctx = SearchContext {
                sel,
                index: i,
                msg: m,
                parsed: parsed.as_ref(),
            };
            if criteria.iter().all(|k| ctx.matches(k)) {
                hits.push(nz(if uid { m.uid } else { i as u32 + 1 }));
            }
        }
        Ok(vec![
            Response::Data(Data::Search(hits)),
            ok(tag, None, "SEARCH completed"),
        ])
    }

    fn fetch(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        what: &MacroOrMessageDataItemNames<'_>,
        uid: bool,
    ) -> Result<Responses, StoreError> {
        let mut names: Vec<MessageDataItemName<'_>> = match what {
            MacroOrMessageDataItemNames::Macro(m) => {
                let mut v = vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ];
                match m {
                    Macro::All => v.push(MessageDataItemName::Envelope),
                    Macro::Full => {
                        v.extend([MessageDataItemName::Envelope, MessageDataItemName::Body])
                    }
                    _ => {}
                }
                v
            }
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v.clone(),
        };
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        if names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            return Ok(vec![bad(tag, "BINARY is not supported")]);
        }
        let needs_summary = names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::Body
                    | MessageDataItemName::BodyStructure
                    | MessageDataItemName::Envelope
            )
        });
        let needs_parse = names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::BodyExt {
                    section: Some(_),
                    ..
                } | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
            )
        });
        let needs_content = needs_parse
            || names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { section: None, .. }
                        | MessageDataItemName::Rfc822
                )
            });
        let sets_seen = names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            )
        });
        let sel = self.selected.as_mut().expect("checked by the caller");
        let Ok(indexes) = sel.resolve(set, uid) else {
            return Ok(vec![bad(tag, "no such message sequence number")]);
        };
        let mut out = Vec::with_capacity(indexes.len() + 1);
        for i in indexes {
            let summary = if needs_summary {
                match summary_of(&sel.folder, &sel.messages[i].entry) {
                    Ok(s) => Some(s),
                    Err(StoreError::NoSuchMessage) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let raw = if needs_content {
                match sel.folder.read_entry(&sel.messages[i].entry) {
                    Ok(raw) => Some(raw),
                    // Expunged by another session: nothing to send now; the
                    // EXPUNGE follows at the next refresh.
                    Err(StoreError::NoSuchMessage) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let mut flags_changed = false;
            if sets_seen && !sel.read_only && !sel.messages[i].entry.flags.contains(Flags::SEEN) {
                match sel
                    .folder
                    .update_flags(&sel.messages[i].entry, |f| f | Flags::SEEN)
                {
                    Ok(entry) => {
                        sel.messages[i].entry = entry;
                        flags_changed = true;
                    }
                    Err(StoreError::NoSuchMessage) => {}
                    Err(e) => return Err(e),
                }
            }
            let parsed = raw.as_deref().filter(|_| needs_parse).map(Parsed::new);
            let m = &sel.messages[i];
            let recent = sel.is_recent(m);
            let mut items = Vec::with_capacity(names.len() + 1);
            for name in &names {
                items.push(match name {
                    MessageDataItemName::Flags => {
                        MessageDataItem::Flags(fetch_flags(m.entry.flags, recent))
                    }
                    MessageDataItemName::Uid => MessageDataItem::Uid(nz(m.uid)),
                    MessageDataItemName::Rfc822Size => {
                        MessageDataItem::Rfc822Size(m.entry.size as u32)
                    }
                    MessageDataItemName::InternalDate => {
                        MessageDataItem::InternalDate(internal_date(&m.entry))
                    }
                    MessageDataItemName::Envelope => MessageDataItem::Envelope(
                        summary.as_ref().expect("made above").envelope.clone(),
                    ),
                    MessageDataItemName::BodyStructure => MessageDataItem::BodyStructure(
                        summary.as_ref().expect("made above").structure.clone(),
                    ),
                    MessageDataItemName::Body => {
                        MessageDataItem::Body(summary.as_ref().expect("made above").body.clone())
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let data = match section {
                            None => raw.clone().expect("read above"),
                            Some(_) => parsed
                                .as_ref()
                                .expect("parsed above")
                                .section(section.as_ref()),
                        };
                        let (data, origin) = match partial {
                            Some((start, len)) => {
                                // The origin named is the one asked for, even
                                // past the end (RFC 3501 §6.4.5: then the data is
                                // empty).
                                let from = (*start as usize).min(data.len());
                                let end = from.saturating_add(len.get() as usize).min(data.len());
                                (data[from..end].to_vec(), Some(*start))
                            }
                            None => (data, None),
                        };
                        MessageDataItem::BodyExt {
                            section: section
                                .clone()
                                .map(|s| imap_next::imap_types::ToStatic::to_static(&s)),
                            origin,
                            data: literal(data),
                        }
                    }
                    MessageDataItemName::Rfc822 => {
                        MessageDataItem::Rfc822(literal(raw.clone().expect("read above")))
                    }
                    MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(literal(
                        parsed.as_ref().expect("read above").header().to_vec(),
                    )),
                    MessageDataItemName::Rfc822Text => MessageDataItem::Rfc822Text(literal(
                        parsed.as_ref().expect("read above").text().to_vec(),
                    )),
                    MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {
                        unreachable!("refused above")
                    }
                });
            }
            if flags_changed && !names.contains(&MessageDataItemName::Flags) {
                items.push(MessageDataItem::Flags(fetch_flags(m.entry.flags, recent)));
            }
            out.push(fetch_response(i, items));
        }
        out.push(ok(tag, None, "FETCH completed"));
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        kind: &StoreType,
        response: &StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Result<Responses, StoreError> {
        let sel = self.selected.as_mut().expect("checked by the caller");
        if sel.read_only {
            return Ok(vec![no(
                tag,
                Some(other_code("READ-ONLY")),
                "the folder is read-only",
            )]);
        }
        let given = store_flags(flags);
        let change = |old: Flags| match kind {
            StoreType::Replace => given,
            StoreType::Add => old | given,
            StoreType::Remove => old.without(given),
        };

        let Ok(indexes) = sel.resolve(set, uid) else {
            return Ok(vec![bad(tag, "no such message sequence number")]);
        };
        let mut out = Vec::new();
        for i in indexes {
            match sel.folder.update_flags(&sel.messages[i].entry, change) {
                Ok(entry) => sel.messages[i].entry = entry,
                Err(StoreError::NoSuchMessage) => continue,
                Err(e) => return Err(e),
            }
            if matches!(response, StoreResponse::Answer) {
                let m = &sel.messages[i];
                let mut items = vec![MessageDataItem::Flags(fetch_flags(
                    m.entry.flags,
                    sel.is_recent(m),
                ))];
                if uid {
                    items.push(MessageDataItem::Uid(nz(m.uid)));
                }
                out.push(fetch_response(i, items));
            }
        }
        out.push(ok(tag, None, "STORE completed"));
        Ok(out)
    }

    fn copy(
        &mut self,
        tag: &Tag<'static>,
        set: &SequenceSet,
        target: &ImapName<'_>,
        uid: bool,
        remove: bool,
    ) -> Result<Responses, StoreError> {
        let user = self.user_ref().clone();
        let target = match folder_name(target).map(|f| user.mailbox.open_folder(&f)) {
            Ok(Ok(f)) => f,
            Ok(Err(StoreError::NoSuchFolder)) | Err(_) => {
                return Ok(vec![no(tag, Some(Code::TryCreate), "no such folder")])
            }
            Ok(Err(e)) => return Err(e),
        };
        let sel = self.selected.as_mut().expect("checked by the caller");
        if remove && sel.read_only {
            return Ok(vec![no(
                tag,
                Some(other_code("READ-ONLY")),
                "the folder is read-only",
            )]);
        }
        let Ok(indexes) = sel.resolve(set, uid) else {
            return Ok(vec![bad(tag, "no such message sequence number")]);
        };
        let mut copies: Vec<(usize, MessageEntry)> = Vec::new();
        for &i in &indexes {
            match sel
                .folder
                .copy_known_to(&sel.messages[i].entry, &target, &user.quota)
            {
                Ok(copy) => copies.push((i, copy)),
                Err(StoreError::NoSuchMessage) => {}
                Err(e) => {
                    // All or nothing (RFC 3501 §6.4.7): take back what was copied.
                    for (_, copy) in &copies {
                        let _ = target.expunge_entry(copy);
                    }
                    if matches!(e, StoreError::OverQuota) {
                        return Ok(vec![no(
                            tag,
                            Some(Code::OverQuota),
                            "the mailbox is over its quota",
                        )]);
                    }
                    return Err(e);
                }
            }
        }
        let map = target.uids()?;
        let uid_of = |id: &str| {
            map.messages
                .iter()
                .find(|(_, e)| e.id == id)
                .map(|(u, _)| *u)
        };
        let pairs: Vec<(u32, u32)> = copies
            .iter()
            .filter_map(|(i, copy)| Some((sel.messages[*i].uid, uid_of(&copy.id)?)))
            .collect();
        let code = copy_uid(map.validity, &pairs);
        let mut out = Vec::new();
        if remove {
            if let Some(code) = code.clone() {
                out.push(untagged_ok(Some(code), "moved"));
            }
            let moved: HashSet<usize> = copies.iter().map(|(i, _)| *i).collect();
            out.extend(sel.remove(|i, _| moved.contains(&i)));
        }
        if sel.folder.name() == target.name() || remove {
            out.extend(self.refresh()?);
        }
        if remove {
            out.push(ok(tag, None, "MOVE completed"));
        } else {
            out.push(ok(tag, code, "COPY completed"));
        }
        Ok(out)
    }
}

/// What FETCH ENVELOPE, BODY and BODYSTRUCTURE return for one message. A message's
/// content never changes under its id, so once made it stays right for the life of
/// the message; [`summary_of`] keeps the most recent ones in memory, as Dovecot keeps
/// them in its index cache, so a client that asks again (a folder opened again, a
/// second device) costs no read and no parse.
#[derive(Debug)]
struct Summary {
    envelope: imap_next::imap_types::envelope::Envelope<'static>,
    structure: imap_next::imap_types::body::BodyStructure<'static>,
    body: imap_next::imap_types::body::BodyStructure<'static>,
}

/// How many summaries one generation of the cache holds; two generations are kept,
/// so at most twice this many (about 1 KiB each for simple messages).
const SUMMARY_GENERATION: usize = 20_000;

type SummaryMap = std::collections::HashMap<PathBuf, std::sync::Arc<Summary>>;

/// The cache: the current generation and the one before; a hit in the old one moves
/// the entry to the current one, a full current generation becomes the old one.
static SUMMARIES: std::sync::LazyLock<std::sync::Mutex<(SummaryMap, SummaryMap)>> =
    std::sync::LazyLock::new(Default::default);

fn summary_of(
    folder: &Folder,
    entry: &MessageEntry,
) -> Result<std::sync::Arc<Summary>, StoreError> {
    // The key: the message's directory-independent identity, its folder's path and id.
    let key = entry
        .path
        .parent()
        .and_then(|dir| dir.parent())
        .map(|folder_dir| folder_dir.join(&entry.id))
        .unwrap_or_else(|| PathBuf::from(&entry.id));
    {
        let mut cache = SUMMARIES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.0.get(&key) {
            return Ok(hit.clone());
        }
        if let Some(hit) = cache.1.remove(&key) {
            cache.0.insert(key, hit.clone());
            return Ok(hit);
        }
    }
    let raw = folder.read_entry(entry)?;
    let parsed = Parsed::new(&raw);
    let summary = std::sync::Arc::new(Summary {
        envelope: parsed.envelope(),
        structure: parsed.body_structure(true),
        body: parsed.body_structure(false),
    });
    let mut cache = SUMMARIES.lock().unwrap_or_else(|p| p.into_inner());
    if cache.0.len() >= SUMMARY_GENERATION {
        let full = std::mem::take(&mut cache.0);
        cache.1 = full;
    }
    cache.0.insert(key, summary.clone());
    Ok(summary)
}

/// The folder `name` names; a text for the NO when it names none.
fn folder_name(name: &ImapName<'_>) -> Result<FolderName, &'static str> {
    let bytes = name_bytes(name);
    let mut text = std::str::from_utf8(&bytes).map_err(|_| "folder names are modified UTF-7")?;
    if text.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err("folder names are modified UTF-7 (printable ASCII)");
    }
    // "CREATE a." asks for a folder under which others will be made.
    while let Some(shorter) = text.strip_suffix(DELIMITER) {
        text = shorter;
    }
    FolderName::new(text).map_err(|e| match e {
        StoreError::InvalidName(why) => why,
        _ => "invalid folder name",
    })
}

fn name_bytes(name: &ImapName<'_>) -> Vec<u8> {
    match name {
        ImapName::Inbox => b"INBOX".to_vec(),
        ImapName::Other(other) => other.inner().as_ref().to_vec(),
    }
}

fn imap_name(name: &str) -> Result<ImapName<'static>, ()> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok(ImapName::Inbox);
    }
    AString::try_from(name.to_owned())
        .map(ImapName::from)
        .map_err(|_| ())
}

fn attribute(name: &str) -> FlagNameAttribute<'static> {
    match Atom::try_from(name.trim_start_matches('\\').to_owned()) {
        Ok(atom) => FlagNameAttribute::from(atom),
        Err(_) => FlagNameAttribute::Noselect,
    }
}

/// RFC 3501 §6.3.8: `*` matches any run of characters, `%` any run without the
/// delimiter. INBOX matches case-insensitively.
fn wildcard_match(pattern: &[u8], name: &[u8], fold_case: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if fold_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    // Iterative matcher with backtracking points for each wildcard.
    fn go(p: &[u8], n: &[u8], eq: &dyn Fn(u8, u8) -> bool, depth: usize) -> bool {
        if depth > 64 {
            return false;
        }
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|k| go(&p[1..], &n[k..], eq, depth + 1)),
            Some(b'%') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != DELIMITER as u8)
                .any(|k| go(&p[1..], &n[k..], eq, depth + 1)),
            Some(&c) => n.first().is_some_and(|&d| eq(c, d)) && go(&p[1..], &n[1..], eq, depth),
        }
    }
    go(pattern, name, &eq, 0)
}

/// The flags a session can set and keep: the system flags and `$Forwarded`, each
/// one letter of the Maildir name.
fn flag_list() -> Vec<Flag<'static>> {
    let mut flags = vec![
        Flag::Answered,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Seen,
        Flag::Draft,
    ];
    if let Ok(atom) = Atom::try_from("$Forwarded") {
        flags.push(Flag::Keyword(atom));
    }
    flags
}

fn fetch_flags(flags: Flags, recent: bool) -> Vec<FlagFetch<'static>> {
    let mut out = Vec::new();
    for (letter, flag) in [
        (Flags::REPLIED, Flag::Answered),
        (Flags::FLAGGED, Flag::Flagged),
        (Flags::TRASHED, Flag::Deleted),
        (Flags::SEEN, Flag::Seen),
        (Flags::DRAFT, Flag::Draft),
    ] {
        if flags.contains(letter) {
            out.push(FlagFetch::Flag(flag));
        }
    }
    if flags.contains(Flags::PASSED) {
        if let Ok(atom) = Atom::try_from("$Forwarded") {
            out.push(FlagFetch::Flag(Flag::Keyword(atom)));
        }
    }
    if recent {
        out.push(FlagFetch::Recent);
    }
    out
}

/// The store's flags for an IMAP flag list; keywords other than `$Forwarded` are not
/// kept (PERMANENTFLAGS does not offer `\*`).
fn store_flags(list: &[Flag<'_>]) -> Flags {
    let mut flags = Flags::NONE;
    for flag in list {
        flags |= match flag {
            Flag::Answered => Flags::REPLIED,
            Flag::Flagged => Flags::FLAGGED,
            Flag::Deleted => Flags::TRASHED,
            Flag::Seen => Flags::SEEN,
            Flag::Draft => Flags::DRAFT,
            Flag::Keyword(k) if k.as_ref().eq_ignore_ascii_case("$Forwarded") => Flags::PASSED,
            _ => Flags::NONE,
        };
    }
    flags
}

/// INTERNALDATE: when the message arrived, which is its file's modification time
/// (APPEND sets it to the date the client gives).
fn internal_date(entry: &MessageEntry) -> DateTime {
    let secs = std::fs::metadata(&entry.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    let utc = chrono::FixedOffset::east_opt(0).expect("UTC is a valid offset");
    let when = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .with_timezone(&utc);
    DateTime::try_from(when).unwrap_or_else(|_| {
        DateTime::try_from(chrono::DateTime::<chrono::Utc>::default().with_timezone(&utc))
            .expect("the epoch is a valid IMAP date")
    })
}

fn internal_day(entry: &MessageEntry) -> chrono::NaiveDate {
    internal_date(entry).as_ref().date_naive()
}

/// `bytes` as a literal (NUL, which IMAP literals cannot carry, becomes 0x80, as
/// Dovecot does).
fn literal(mut bytes: Vec<u8>) -> NString<'static> {
    for b in bytes.iter_mut().filter(|b| **b == 0) {
        *b = 0x80;
    }
    match Literal::try_from(bytes) {
        Ok(l) => NString(Some(IString::Literal(l))),
        Err(_) => NString(None),
    }
}

fn nstring(bytes: &[u8]) -> NString<'static> {
    match IString::try_from(bytes.to_vec()) {
        Ok(s) => NString(Some(s)),
        Err(_) => NString(None),
    }
}

fn copy_uid(validity: u32, pairs: &[(u32, u32)]) -> Option<Code<'static>> {
    let set = |v: Vec<u32>| -> Option<UidSet> {
        let elements: Vec<UidElement> = v.into_iter().map(|u| UidElement::Single(nz(u))).collect();
        Vec1::try_from(elements).ok().map(UidSet)
    };
    Some(Code::CopyUid {
        uid_validity: nz(validity),
        source: set(pairs.iter().map(|p| p.0).collect())?,
        destination: set(pairs.iter().map(|p| p.1).collect())?,
    })
}

fn needs_content(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_content),
        SearchKey::Not(k) => needs_content(k),
        SearchKey::Or(a, b) => needs_content(a) || needs_content(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        _ => false,
    }
}

struct SearchContext<'a> {
    sel: &'a Selected,
    index: usize,
    msg: &'a Msg,
    parsed: Option<&'a Parsed<'a>>,
}

impl SearchContext<'_> {
    fn header_has(&self, field: &str, needle: &[u8]) -> bool {
        let needle = String::from_utf8_lossy(needle).to_lowercase();
        let Some(parsed) = self.parsed else {
            return false;
        };
        let values = parsed.header_values(field);
        if needle.is_empty() {
            return !values.is_empty();
        }
        values.iter().any(|v| v.to_lowercase().contains(&needle))
    }

    fn sent_day(&self) -> Option<chrono::NaiveDate> {
        let (y, m, d) = self.parsed?.sent_date()?;
        chrono::NaiveDate::from_ymd_opt(y, m, d)
    }

    fn in_set(&self, set: &SequenceSet, value: u32, star: u32) -> bool {
        let v = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => star,
        };
        set.0.as_ref().iter().any(|seq| match seq {
            Sequence::Single(s) => v(s) == value,
            Sequence::Range(a, b) => {
                let (a, b) = (v(a), v(b));
                (a.min(b)..=a.max(b)).contains(&value)
            }
        })
    }

    fn matches(&self, key: &SearchKey<'_>) -> bool {
        let flags = self.msg.entry.flags;
        let recent = self.sel.is_recent(self.msg);
        match key {
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::Not(k) => !self.matches(k),
            SearchKey::SequenceSet(set) => {
                self.in_set(set, self.index as u32 + 1, self.sel.messages.len() as u32)
            }
            SearchKey::Uid(set) => self.in_set(set, self.msg.uid, self.sel.highest_uid()),
            SearchKey::All => true,
            SearchKey::Answered => flags.contains(Flags::REPLIED),
            SearchKey::Unanswered => !flags.contains(Flags::REPLIED),
            SearchKey::Deleted => flags.contains(Flags::TRASHED),
            SearchKey::Undeleted => !flags.contains(Flags::TRASHED),
            SearchKey::Draft => flags.contains(Flags::DRAFT),
            SearchKey::Undraft => !flags.contains(Flags::DRAFT),
            SearchKey::Flagged => flags.contains(Flags::FLAGGED),
            SearchKey::Unflagged => !flags.contains(Flags::FLAGGED),
            SearchKey::Seen => flags.contains(Flags::SEEN),
            SearchKey::Unseen => !flags.contains(Flags::SEEN),
            SearchKey::Recent => recent,
            SearchKey::New => recent && !flags.contains(Flags::SEEN),
            SearchKey::Old => !recent,
            SearchKey::Keyword(k) => {
                k.as_ref().eq_ignore_ascii_case("$Forwarded") && flags.contains(Flags::PASSED)
            }
            SearchKey::Unkeyword(k) => {
                !(k.as_ref().eq_ignore_ascii_case("$Forwarded") && flags.contains(Flags::PASSED))
            }
            SearchKey::Larger(n) => self.msg.entry.size > u64::from(*n),
            SearchKey::Smaller(n) => self.msg.entry.size < u64::from(*n),
            SearchKey::Before(d) => internal_day(&self.msg.entry) < *d.as_ref(),
            SearchKey::On(d) => internal_day(&self.msg.entry) == *d.as_ref(),
            SearchKey::Since(d) => internal_day(&self.msg.entry) >= *d.as_ref(),
            SearchKey::SentBefore(d) => self.sent_day().is_some_and(|s| s < *d.as_ref()),
            SearchKey::SentOn(d) => self.sent_day().is_some_and(|s| s == *d.as_ref()),
            SearchKey::SentSince(d) => self.sent_day().is_some_and(|s| s >= *d.as_ref()),
            SearchKey::From(s) => self.header_has("from", s.as_ref()),
            SearchKey::To(s) => self.header_has("to", s.as_ref()),
            SearchKey::Cc(s) => self.header_has("cc", s.as_ref()),
            SearchKey::Bcc(s) => self.header_has("bcc", s.as_ref()),
            SearchKey::Subject(s) => self.header_has("subject", s.as_ref()),
            SearchKey::Header(field, value) => {
                self.header_has(&String::from_utf8_lossy(field.as_ref()), value.as_ref())
            }
            SearchKey::Body(s) => self
                .parsed
                .is_some_and(|p| p.contains_text(&String::from_utf8_lossy(s.as_ref()), false)),
            SearchKey::Text(s) => self
                .parsed
                .is_some_and(|p| p.contains_text(&String::from_utf8_lossy(s.as_ref()), true)),
        }
    }
}

fn fetch_response(index: usize, items: Vec<MessageDataItem<'static>>) -> Response<'static> {
    match Vec1::try_from(items) {
        Ok(items) => Response::Data(Data::Fetch {
            seq: nz(index as u32 + 1),
            items,
        }),
        Err(_) => Response::Data(Data::Exists(0)),
    }
}

/// A non-zero number; 0 (which no caller should pass) becomes 1.
fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Text for a status line: CR and LF cannot be in it, and it cannot be empty.
pub fn text(s: &str) -> Text<'static> {
    let clean: String = s
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Text::try_from(clean).unwrap_or_else(|_| Text::unvalidated("-"))
}

/// A response code that imap-types has no variant for (RFC 5530's, mostly).
pub fn other_code(code: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(code.as_bytes()))
}

/// The tagged OK.
pub fn ok(tag: &Tag<'static>, code: Option<Code<'static>>, t: &str) -> Response<'static> {
    Response::Status(Status::Tagged(imap_next::imap_types::response::Tagged {
        tag: tag.clone(),
        body: imap_next::imap_types::response::StatusBody {
            kind: imap_next::imap_types::response::StatusKind::Ok,
            code,
            text: text(t),
        },
    }))
}

/// The tagged NO.
pub fn no(tag: &Tag<'static>, code: Option<Code<'static>>, t: &str) -> Response<'static> {
    Response::Status(Status::Tagged(imap_next::imap_types::response::Tagged {
        tag: tag.clone(),
        body: imap_next::imap_types::response::StatusBody {
            kind: imap_next::imap_types::response::StatusKind::No,
            code,
            text: text(t),
        },
    }))
}

/// The tagged BAD.
pub fn bad(tag: &Tag<'static>, t: &str) -> Response<'static> {
    Response::Status(Status::Tagged(imap_next::imap_types::response::Tagged {
        tag: tag.clone(),
        body: imap_next::imap_types::response::StatusBody {
            kind: imap_next::imap_types::response::StatusKind::Bad,
            code: None,
            text: text(t),
        },
    }))
}

fn untagged_ok(code: Option<Code<'static>>, t: &str) -> Response<'static> {
    Response::Status(Status::Untagged(
        imap_next::imap_types::response::StatusBody {
            kind: imap_next::imap_types::response::StatusKind::Ok,
            code,
            text: text(t),
        },
    ))
}

/// An untagged BYE.
pub fn bye(t: &str) -> Status<'static> {
    Status::Bye(imap_next::imap_types::response::Bye {
        code: None,
        text: text(t),
    })
}

/// The tagged NO for a store error: a response code (RFC 5530) for the refusals a
/// client can act on, `[SERVERBUG]` (and a log line) for a failure.
fn store_failure(tag: &Tag<'static>, e: &StoreError) -> Response<'static> {
    match e {
        StoreError::OverQuota => no(tag, Some(Code::OverQuota), "the mailbox is over its quota"),
        StoreError::NoSuchFolder => no(tag, Some(other_code("NONEXISTENT")), "no such folder"),
        StoreError::FolderExists => no(tag, Some(other_code("ALREADYEXISTS")), "the folder exists"),
        StoreError::InvalidName(why) => no(tag, Some(other_code("CANNOT")), why),
        _ => {
            tracing::warn!(error = %e, "IMAP command failed in the store");
            no(
                tag,
                Some(other_code("SERVERBUG")),
                "the mail store failed; try again",
            )
        }
    }
}

/// The command's name for messages.
pub fn command_name(body: &CommandBody<'_>) -> &'static str {
    body.name()
}
