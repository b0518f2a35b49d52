//! Search (RFC 4511 section 4.5) with Simple Paged Results (RFC 2696).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rasn::types::{OctetString, SetOf};
use rasn_ldap::{
    Control, PartialAttribute, ProtocolOp, ResultCode, SearchRequest, SearchRequestScope,
    SearchResultDone, SearchResultEntry,
};

use super::controls;
use super::error::result_of;
use super::filter_wire;
use super::rootdse;
use super::session::{Reply, SessionState};
use super::{codec, Identity, LdapContext};
use crate::auth::access::Checker;
use crate::directory::acl::{Acl, AclContext, Requester};
use crate::directory::entry::StoredEntry;
use crate::directory::filter::Filter;
use crate::directory::schema::{AttributeType, Schema};
use crate::directory::{self, DirError, Scope};

/// Which attributes a search returns.
#[derive(Debug, Clone)]
pub struct Selection {
    all_user: bool,
    all_operational: bool,
    named: Vec<String>,
    types_only: bool,
}

impl Selection {
    /// From the request's attribute list (RFC 4511 section 4.5.1.8).
    pub fn new(schema: &Schema, attrs: &[String], types_only: bool) -> Selection {
        let mut s = Selection {
            all_user: attrs.is_empty(),
            all_operational: false,
            named: Vec::new(),
            types_only,
        };
        for a in attrs {
            match a.as_str() {
                "*" => s.all_user = true,
                "+" => s.all_operational = true,
                "1.1" => {}
                name => {
                    if let Some(at) = schema.attr(name) {
                        s.named.push(at.oid.clone());
                    }
                }
            }
        }
        s
    }

    fn wants(&self, schema: &Schema, name: &str) -> bool {
        schema
            .attr(name)
            .is_some_and(|at| self.wants_type(schema, at))
    }

    fn wants_type(&self, schema: &Schema, at: &AttributeType) -> bool {
        if at.is_operational() {
            if self.all_operational {
                return true;
            }
        } else if self.all_user {
            return true;
        }
        self.named.iter().any(|oid| schema.is_subtype_of(at, oid))
    }
}

/// Render an entry for a client: the selected attributes of what the requester may
/// read (the caller passes the readable view of the entry).
pub fn render(schema: &Schema, e: &StoredEntry, sel: &Selection) -> SearchResultEntry {
    let mut attrs = Vec::new();
    for a in &e.attrs {
        if !sel.wants(schema, &a.name) {
            continue;
        }
        let vals: Vec<OctetString> = if sel.types_only {
            Vec::new()
        } else {
            a.values
                .iter()
                .map(|v| OctetString::from(v.clone()))
                .collect()
        };
        attrs.push(PartialAttribute::new(
            a.name.as_str().into(),
            SetOf::from_vec(vals),
        ));
    }
    SearchResultEntry::new(e.dn.as_str().into(), attrs)
}

/// What a service identity reads of an entry: argon2id password hashes carry the
/// scheme name its software knows (`ldap.service_argon2_prefix`, Dovecot's `ARGON2ID`
/// by default) instead of OpenLDAP's `{ARGON2}`; the hash itself is the same.
fn for_service(
    ctx: &LdapContext,
    who: &crate::directory::acl::Requester,
    mut e: StoredEntry,
) -> StoredEntry {
    let Some(prefix) = ctx
        .config
        .service_argon2_prefix
        .as_deref()
        .filter(|p| who.service && !p.is_empty())
    else {
        return e;
    };
    if let Some(pw) = e.get_mut("userPassword") {
        for v in pw.values.iter_mut() {
            if let Some(rest) = v.strip_prefix(b"{ARGON2}$argon2id$".as_slice()) {
                let mut renamed = format!("{{{prefix}}}$argon2id$").into_bytes();
                renamed.extend_from_slice(rest);
                *v = renamed;
            }
        }
    }
    e
}

/// A paged search in progress: the ids still to send.
pub struct PagedSearch {
    base: String,
    filter: Filter,
    scope: Scope,
    remaining: VecDeque<u64>,
    total: usize,
}

fn done(code: ResultCode, message: &str) -> ProtocolOp {
    ProtocolOp::SearchResDone(SearchResultDone(codec::result(code, "", message)))
}

/// Handle a search request.
pub async fn handle(
    ctx: &Arc<LdapContext>,
    who: &Identity,
    state: &Arc<SessionState>,
    reply: &Reply,
    req: SearchRequest,
    ctrls: &[Control],
) {
    match start(ctx, who, reply, req, ctrls) {
        Started::Answered(bytes) => reply.send_bytes(bytes).await,
        Started::Pending(pending) => pending.run(ctx, who, state, reply).await,
    }
}

/// How far [`start`] got.
pub enum Started {
    /// The whole answer, encoded: the request failed early, named the Root DSE or the
    /// subschema, or was small enough to run at once.
    Answered(Vec<u8>),
    /// The rest runs in its own task ([`Pending::run`]).
    Pending(Pending),
}

/// A search that [`start`] left for later: paged, or larger than [`INLINE_MAX`].
pub struct Pending {
    job: Job,
    paged: Option<(usize, Vec<u8>)>,
}

/// Begin a search without blocking: answer it entirely when that is cheap (the
/// connection then needs no task for it), otherwise say what is left to do.
pub fn start(
    ctx: &Arc<LdapContext>,
    who: &Identity,
    reply: &Reply,
    req: SearchRequest,
    ctrls: &[Control],
) -> Started {
    crate::metrics::inc(&crate::metrics::LDAP_SEARCHES);
    let filter = match filter_wire::from_wire(&req.filter) {
        Ok(f) => f,
        Err(e) => {
            return Started::Answered(reply.encode(done(ResultCode::ProtocolError, &e.to_string())))
        }
    };
    let schema = ctx.dir.schema();
    let attrs: Vec<String> = req.attributes.iter().map(|a| a.0.clone()).collect();
    let sel = Selection::new(schema, &attrs, req.types_only);
    let scope = match req.scope {
        SearchRequestScope::BaseObject => Scope::Base,
        SearchRequestScope::SingleLevel => Scope::One,
        _ => Scope::Subtree,
    };
    let base = req.base_object.0;

    // The Root DSE and the subschema subentry are served from memory.
    if let Some(entry) = rootdse::special_entry(ctx, &base, scope) {
        let mut out = Vec::new();
        if crate::directory::eval::matches(schema, &filter, &entry) {
            out = reply.encode(ProtocolOp::SearchResEntry(render(schema, &entry, &sel)));
        }
        out.extend_from_slice(&reply.encode(done(ResultCode::Success, "")));
        return Started::Answered(out);
    }

    let live = ctx.live();
    let mut size_limit = req.size_limit as usize;
    if !who.admin && live.size_limit > 0 && (size_limit == 0 || size_limit > live.size_limit) {
        size_limit = live.size_limit;
    }
    let mut time_limit = Duration::from_secs(req.time_limit as u64);
    let server_limit = Duration::from_secs(live.time_limit_secs);
    if !server_limit.is_zero() && (time_limit.is_zero() || time_limit > server_limit) {
        time_limit = server_limit;
    }
    let deadline = (!time_limit.is_zero()).then(|| Instant::now() + time_limit);
    let subordinates = sel.wants(schema, "hasSubordinates")
        || filter.mentions("hasSubordinates")
        || (!who.admin && ctx.auth.rules().filters_mention("hasSubordinates"));
    let job = Job {
        base,
        scope,
        filter,
        sel,
        size_limit,
        deadline,
        subordinates,
    };

    match controls::paged_request(ctrls) {
        Some(Ok(paged)) => Started::Pending(Pending {
            job,
            paged: Some(paged),
        }),
        Some(Err(msg)) => Started::Answered(reply.encode(done(ResultCode::ProtocolError, &msg))),
        None => {
            // A small search (the base alone, or a few index candidates) runs right
            // here: handing it to a blocking thread and back costs more than the search.
            let mut out = Vec::new();
            let inline = job.execute(ctx, who, reply, Some(INLINE_MAX), &mut |bytes| {
                out.extend_from_slice(&bytes);
                true
            });
            match inline {
                Some(outcome) => {
                    out.extend_from_slice(&reply.encode(ProtocolOp::SearchResDone(
                        SearchResultDone(outcome_result(outcome)),
                    )));
                    Started::Answered(out)
                }
                None => Started::Pending(Pending { job, paged: None }),
            }
        }
    }
}

impl Pending {
    /// Finish the search: a paged one page by page, a large one on a blocking thread.
    pub async fn run(
        self,
        ctx: &Arc<LdapContext>,
        who: &Identity,
        state: &Arc<SessionState>,
        reply: &Reply,
    ) {
        let job = self.job;
        if let Some((page, cookie)) = self.paged {
            return paged(ctx, who, state, reply, job, page, cookie).await;
        }
        let (ctx2, who, r) = (ctx.clone(), who.clone(), reply.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            job.execute(&ctx2, &who, &r, None, &mut |bytes| {
                r.send_bytes_blocking(bytes)
            })
            .unwrap_or(Ok(directory::SearchEnd::Complete))
        })
        .await;
        finish(reply, outcome, None).await;
    }
}

/// At most this many candidate entries are searched on the connection's own task.
const INLINE_MAX: usize = 16;

/// A search with everything it needs to run on any thread.
struct Job {
    base: String,
    scope: Scope,
    filter: Filter,
    sel: Selection,
    size_limit: usize,
    deadline: Option<Instant>,
    subordinates: bool,
}

/// What a search hands each entry it found: the rules in force, who asks, the context
/// of the rules, the entry's id and the entry. Returns false to stop.
type EachEntry<'e> = dyn FnMut(&Acl, &Requester, &dyn AclContext, u64, StoredEntry) -> bool + 'e;

impl Job {
    /// Run the search in one snapshot, handing each encoded entry to `sink` (which
    /// returns false to stop). With `inline_max`, a search that would read more
    /// entries than that is not started: `None`.
    fn execute(
        &self,
        ctx: &Arc<LdapContext>,
        who: &Identity,
        reply: &Reply,
        inline_max: Option<usize>,
        sink: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Option<Result<directory::SearchEnd, DirError>> {
        let schema = ctx.dir.schema();
        self.search(ctx, who, inline_max, &mut |acl, req_who, actx, _, e| {
            let op = if req_who.admin {
                render(schema, &e, &self.sel)
            } else {
                match acl.readable_entry(schema, req_who, &e, actx) {
                    Some(readable) => {
                        render(schema, &for_service(ctx, req_who, readable), &self.sel)
                    }
                    None => return true,
                }
            };
            sink(reply.encode(ProtocolOp::SearchResEntry(op)))
        })
    }

    /// Run the search in one snapshot, handing `each` every entry that matches and
    /// that the client may see. With `inline_max`, as [`Job::execute`].
    fn search(
        &self,
        ctx: &Arc<LdapContext>,
        who: &Identity,
        inline_max: Option<usize>,
        each: &mut EachEntry<'_>,
    ) -> Option<Result<directory::SearchEnd, DirError>> {
        let dir = &ctx.dir;
        let checker = match Checker::new(&ctx.auth, who) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        // Administrators see every entry; for them a missing base is answered by the
        // search itself (noSuchObject with the matched DN).
        if !checker.who.admin {
            if let Err(e) = checker.visible(&self.base) {
                return Some(Err(e));
            }
        }
        let view = checker.view();
        let schema = dir.schema();
        checker.with(|acl, req_who, actx| {
            let see = |e: &StoredEntry| acl.searchable_entry(schema, req_who, e, actx);
            // Only the attributes the filter, the access rules' filters and the answer
            // can see are read from each entry.
            let looked_at = if self.filter.reads_every_attribute() {
                None
            } else if req_who.admin {
                Some(self.filter.attributes())
            } else {
                acl.filter_attributes().map(|mut names| {
                    names.extend(self.filter.attributes());
                    names
                })
            };
            let looked_at: Option<Vec<&str>> = looked_at.map(|names| {
                names
                    .iter()
                    .filter_map(|n| schema.attr(n))
                    .map(|at| at.oid.as_str())
                    .collect()
            });
            let keep = |name: &str| -> bool {
                let Some(at) = schema.attr(name) else {
                    return true;
                };
                self.sel.wants_type(schema, at)
                    || looked_at
                        .as_ref()
                        .is_some_and(|oids| oids.iter().any(|oid| schema.is_subtype_of(at, oid)))
            };
            let req = directory::SearchRequest {
                base: &self.base,
                scope: self.scope,
                filter: &self.filter,
                size_limit: self.size_limit,
                deadline: self.deadline,
                view: if req_who.admin { None } else { Some(&see) },
                subordinates: self.subordinates,
                keep: if looked_at.is_some() {
                    Some(&keep)
                } else {
                    None
                },
            };
            let plan = match view.plan_within(&req, inline_max) {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            Some(view.run(&req, plan, |id, e| each(acl, req_who, actx, id, e)))
        })
    }
}

async fn finish(
    reply: &Reply,
    outcome: Result<Result<directory::SearchEnd, DirError>, tokio::task::JoinError>,
    ctrls: Option<Vec<Control>>,
) {
    if reply.is_cancelled() {
        return;
    }
    let result = match outcome {
        Ok(outcome) => outcome_result(outcome),
        Err(_) => codec::result(ResultCode::Other, "", "search failed"),
    };
    reply
        .send(ProtocolOp::SearchResDone(SearchResultDone(result)), ctrls)
        .await;
}

/// The result of a search that ran (counting the limited ones).
fn outcome_result(outcome: Result<directory::SearchEnd, DirError>) -> rasn_ldap::LdapResult {
    match outcome {
        Ok(_) => codec::result(ResultCode::Success, "", ""),
        Err(e) => {
            if matches!(e, DirError::SizeLimit | DirError::TimeLimit) {
                crate::metrics::inc(&crate::metrics::LDAP_SEARCH_LIMITED);
            }
            result_of(&e)
        }
    }
}

/// The last, empty page of a paged search.
async fn empty_page(reply: &Reply) {
    reply
        .send(
            done(ResultCode::Success, ""),
            Some(vec![controls::paged_response(0, b"")]),
        )
        .await;
}

async fn paged(
    ctx: &Arc<LdapContext>,
    who: &Identity,
    state: &Arc<SessionState>,
    reply: &Reply,
    job: Job,
    page: usize,
    cookie: Vec<u8>,
) {
    const MAX_PAGED_PER_CONNECTION: usize = 16;
    let (job, mut search) = if cookie.is_empty() {
        if page == 0 {
            // Size 0 with no cookie: the client only wants the estimate; we give none.
            return empty_page(reply).await;
        }
        let (ctx2, who2) = (ctx.clone(), who.clone());
        let found = tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            let end = job.search(&ctx2, &who2, None, &mut |_, _, _, id, _| {
                ids.push(id);
                true
            });
            let ids = match end {
                None | Some(Ok(_)) | Some(Err(DirError::SizeLimit)) => Ok(ids),
                Some(Err(e)) => Err(e),
            };
            (job, ids)
        })
        .await;
        let (job, ids) = match found {
            Ok((job, Ok(ids))) => (job, ids),
            Ok((_, Err(e))) => return finish(reply, Ok(Err(e)), None).await,
            Err(e) => return finish(reply, Err(e), None).await,
        };
        let search = PagedSearch {
            base: job.base.clone(),
            filter: job.filter.clone(),
            scope: job.scope,
            total: ids.len(),
            remaining: ids.into(),
        };
        (job, search)
    } else {
        let key = u64::from_be_bytes(cookie.as_slice().try_into().unwrap_or([0; 8]));
        let found = state.paged.lock().ok().and_then(|mut p| p.remove(&key));
        match found {
            Some(s) if s.base == job.base && s.filter == job.filter && s.scope == job.scope => {
                (job, s)
            }
            _ => {
                reply
                    .send(
                        done(
                            ResultCode::UnwillingToPerform,
                            "unknown or stale paged results cookie",
                        ),
                        None,
                    )
                    .await;
                return;
            }
        }
    };
    if page == 0 {
        // Size 0 with a cookie abandons the paged search (its state is already removed).
        return empty_page(reply).await;
    }
    let take: Vec<u64> = (0..page)
        .map_while(|_| search.remaining.pop_front())
        .collect();
    let (ctx2, who2, r) = (ctx.clone(), who.clone(), reply.clone());
    let sent = tokio::task::spawn_blocking(move || {
        let dir = &ctx2.dir;
        let checker = Checker::new(&ctx2.auth, &who2)?;
        let view = checker.view();
        let schema = dir.schema();
        checker.with(|acl, req_who, actx| {
            for id in take {
                // Entries changed since the first page are checked again.
                let Some(e) = view.entry(id)? else { continue };
                let matches = acl
                    .searchable_entry(schema, req_who, &e, actx)
                    .is_some_and(|seen| {
                        crate::directory::eval::matches(schema, &job.filter, &seen)
                    });
                if !matches {
                    continue;
                }
                if let Some(readable) = acl.readable_entry(schema, req_who, &e, actx) {
                    let readable = for_service(&ctx2, req_who, readable);
                    let op = ProtocolOp::SearchResEntry(render(schema, &readable, &job.sel));
                    if !r.send_bytes_blocking(r.encode(op)) {
                        return Ok(directory::SearchEnd::Stopped);
                    }
                }
            }
            Ok::<_, DirError>(directory::SearchEnd::Complete)
        })
    })
    .await;
    let total = search.total;
    let next_cookie = if search.remaining.is_empty() {
        Vec::new()
    } else {
        let mut n = state.next_cookie.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        let key = *n;
        drop(n);
        if let Ok(mut p) = state.paged.lock() {
            if p.len() >= MAX_PAGED_PER_CONNECTION {
                if let Some(oldest) = p.keys().min().copied() {
                    p.remove(&oldest);
                }
            }
            p.insert(key, search);
        }
        key.to_be_bytes().to_vec()
    };
    finish(
        reply,
        sent,
        Some(vec![controls::paged_response(total, &next_cookie)]),
    )
    .await;
}
