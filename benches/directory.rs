//! Micro benchmarks of the directory: DN normalisation, filter parsing and evaluation,
//! LDAP PDU encoding/decoding, indexed searches over 100,000 entries, and the mail
//! routing API (`resolve_recipient`) on the same 100,000 accounts.
//!
//! Run with `cargo bench --bench directory` (add `-- --quick` for a fast pass, or a
//! name filter such as `-- search/` to run one group). See benches/README.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use rasn::types::{OctetString, SetOf};
use rasn_ldap::{
    LdapMessage, LdapString, PartialAttribute, ProtocolOp, SearchRequestDerefAliases,
    SearchRequestScope, SearchResultEntry,
};

use pigeonair::directory::dn::Dn;
use pigeonair::directory::entry::{Attribute, StoredEntry};
use pigeonair::directory::eval;
use pigeonair::directory::filter::Filter;
use pigeonair::directory::routing::{self, Resolution};
use pigeonair::directory::schema::Schema;
use pigeonair::directory::{
    Directory, DirectoryCommand, DirectorySettings, Scope, SearchRequest, WriteMeta,
};
use pigeonair::ldap::filter_wire;

/// Number of accounts in the search benchmarks' directory.
const ACCOUNTS: usize = 100_000;
/// Accounts when the binary only checks that the benchmarks run (`cargo test --benches`,
/// `-- --test`, `-- --list`): that build is unoptimised and runs every benchmark once.
const TEST_ACCOUNTS: usize = 2_000;

/// How many accounts to load: `PIGEONAIR_BENCH_ACCOUNTS` if set, else [`ACCOUNTS`] when
/// benchmarking and [`TEST_ACCOUNTS`] in criterion's test or list mode (it uses test mode
/// unless given `--bench`, which `cargo bench` passes).
fn accounts() -> usize {
    if let Some(n) = std::env::var("PIGEONAIR_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--bench") && !has("--test") && !has("--list") {
        ACCOUNTS
    } else {
        TEST_ACCOUNTS
    }
}

const SIMPLE_DN: &str = "uid=Alice,ou=People,dc=Example.org,ou=domains,dc=pigeonair";
/// A multi-valued RDN, escaped specials (`\,` `\+` `\"`), a hex-escaped UTF-8 value
/// (`\C3\A9` = é), a leading `\#` and a trailing escaped space, and spaces around the
/// separators, all of which normalisation has to deal with.
const COMPLEX_DN: &str = "CN=Smith\\, John \\\"JJ\\\"+UID=J\\C3\\A9rome + mail=JSmith@Example.ORG,\
                          OU=Sales \\+ Marketing\\ ,ou=\\#People , dc=Example.org,ou=domains,dc=PigeonAir";

const MAIL_FILTER: &str = "(&(objectClass=inetOrgPerson)(|(mail=alice@example.org)(mailAlternateAddress=alice@example.org)))";
const COMPLEX_FILTER: &str = "(&(|(objectClass=inetOrgPerson)(objectClass=qmailUser))\
                              (!(accountStatus=disabled))\
                              (|(mail=*alice*@example.org)(mailAlternateAddress=alice@example.org)(uid=al\\2a))\
                              (mailHost=node1)(cn~=alyce)(createTimestamp>=20260101000000Z)\
                              (mailQuota<=1048576)(employeeNumber=*)(cn:caseExactMatch:=Alice Example))";

fn dn_benches(c: &mut Criterion) {
    let schema = Schema::builtin();
    let mut g = c.benchmark_group("dn");
    for (name, s) in [("simple", SIMPLE_DN), ("multi_valued_escaped", COMPLEX_DN)] {
        let dn = Dn::parse(s).unwrap_or_else(|e| panic!("{name}: {e}"));
        schema.dn_key(&dn).unwrap_or_else(|e| panic!("{name}: {e}"));
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Dn::parse(black_box(s)).unwrap())
        });
        g.bench_function(format!("dn_key/{name}"), |b| {
            b.iter(|| schema.dn_key(black_box(&dn)).unwrap())
        });
        g.bench_function(format!("parse+dn_key/{name}"), |b| {
            b.iter(|| schema.dn_key(&Dn::parse(black_box(s)).unwrap()).unwrap())
        });
    }
    g.finish();
}

/// An account entry as the store holds it (canonical attribute names).
fn alice(schema: &Schema) -> StoredEntry {
    let dn = "uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair";
    let key = schema.dn_key(&Dn::parse(dn).unwrap()).unwrap();
    StoredEntry {
        dn: dn.into(),
        key,
        attrs: vec![
            Attribute::new(
                "objectClass",
                ["top", "inetOrgPerson", "inetLocalMailRecipient"],
            ),
            Attribute::new("uid", ["alice"]),
            Attribute::new("cn", ["Alice Example"]),
            Attribute::new("sn", ["Example"]),
            Attribute::new("givenName", ["Alice"]),
            Attribute::new("mail", ["Alice@Example.org"]),
            Attribute::new(
                "mailLocalAddress",
                ["alice@example.org", "a.example@example.org"],
            ),
            Attribute::new("mailHost", ["node1"]),
            Attribute::new("entryUUID", ["00000000-0000-4000-8000-000000000001"]),
            Attribute::new("creatorsName", ["cn=admin"]),
            Attribute::new("createTimestamp", ["20260101000000Z"]),
        ],
    }
}

fn filter_benches(c: &mut Criterion) {
    let schema = Schema::builtin();
    let entry = alice(&schema);
    let mut g = c.benchmark_group("filter");
    g.bench_function("parse/and_or", |b| {
        b.iter(|| Filter::parse(black_box(MAIL_FILTER)).unwrap())
    });
    g.bench_function("parse/complex", |b| {
        b.iter(|| Filter::parse(black_box(COMPLEX_FILTER)).unwrap())
    });
    for (name, text, expect) in [
        ("and_or_eq", MAIL_FILTER, true),
        ("substring_final", "(mail=*@example.org)", true),
        ("substring_miss", "(mail=bob*@example.net)", false),
        ("complex", COMPLEX_FILTER, false),
    ] {
        let f = Filter::parse(text).unwrap();
        assert_eq!(eval::matches(&schema, &f, &entry), expect, "{text}");
        g.bench_function(format!("matches/{name}"), |b| {
            b.iter(|| eval::matches(&schema, black_box(&f), black_box(&entry)))
        });
    }
    g.finish();
}

fn search_request_pdu() -> LdapMessage {
    let f = Filter::parse(MAIL_FILTER).unwrap();
    let req = rasn_ldap::SearchRequest::new(
        LdapString::from("ou=people,dc=example.org,ou=domains,dc=pigeonair"),
        SearchRequestScope::WholeSubtree,
        SearchRequestDerefAliases::NeverDerefAliases,
        0,
        30,
        false,
        filter_wire::to_wire(&f),
        ["uid", "cn", "mail", "mailHost", "mailLocalAddress"]
            .map(LdapString::from)
            .to_vec(),
    );
    LdapMessage::new(7, ProtocolOp::SearchRequest(req))
}

fn search_entry_pdu() -> LdapMessage {
    let attr = |name: &str, vals: &[&str]| {
        PartialAttribute::new(
            LdapString::from(name),
            SetOf::from_vec(
                vals.iter()
                    .map(|v| OctetString::from(v.as_bytes().to_vec()))
                    .collect(),
            ),
        )
    };
    let attrs = vec![
        attr(
            "objectClass",
            &["top", "inetOrgPerson", "inetLocalMailRecipient"],
        ),
        attr("uid", &["alice"]),
        attr("cn", &["Alice Example"]),
        attr("sn", &["Example"]),
        attr("givenName", &["Alice"]),
        attr("mail", &["alice@example.org"]),
        attr(
            "mailLocalAddress",
            &["alice@example.org", "a.example@example.org"],
        ),
        attr("mailHost", &["node1"]),
        attr("entryUUID", &["00000000-0000-4000-8000-000000000001"]),
        attr("createTimestamp", &["20260101000000Z"]),
    ];
    let e = SearchResultEntry::new(
        LdapString::from("uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair"),
        attrs,
    );
    LdapMessage::new(7, ProtocolOp::SearchResEntry(e))
}

fn pdu_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu");
    for (name, msg) in [
        ("search_request", search_request_pdu()),
        ("search_result_entry", search_entry_pdu()),
    ] {
        let bytes = rasn::ber::encode(&msg).unwrap();
        let back = rasn::ber::decode::<LdapMessage>(&bytes).unwrap();
        assert_eq!(back.message_id, 7);
        assert_eq!(
            rasn::ber::encode(&back).unwrap(),
            bytes,
            "{name}: re-encoding differs"
        );
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| rasn::ber::encode(black_box(&msg)).unwrap())
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| rasn::ber::decode::<LdapMessage>(black_box(&bytes)).unwrap())
        });
    }
    g.bench_function("wire_filter/to_wire", |b| {
        let f = Filter::parse(COMPLEX_FILTER).unwrap();
        b.iter(|| filter_wire::to_wire(black_box(&f)))
    });
    g.bench_function("wire_filter/from_wire", |b| {
        let w = filter_wire::to_wire(&Filter::parse(COMPLEX_FILTER).unwrap());
        b.iter(|| filter_wire::from_wire(black_box(&w)).unwrap())
    });
    g.finish();
}

fn meta(n: usize) -> WriteMeta {
    WriteMeta {
        actor: "cn=admin".into(),
        time: "20260101000000Z".into(),
        entry_uuid: Some(format!("00000000-0000-4000-8000-{n:012x}")),
    }
}

fn add(n: usize, dn: String, attrs: Vec<Attribute>) -> DirectoryCommand {
    DirectoryCommand::Add {
        dn,
        attrs,
        meta: meta(n),
    }
}

/// The directory tree of the search benchmarks: the suffix, one mail domain and
/// `accounts` accounts `uid=userN` below `ou=people` of that domain.
fn commands(accounts: usize) -> impl Iterator<Item = DirectoryCommand> {
    let domain = "dc=example.org,ou=domains,dc=pigeonair";
    let people = format!("ou=people,{domain}");
    let top = [
        add(
            1,
            "dc=pigeonair".into(),
            vec![
                Attribute::new("objectClass", ["top", "domain"]),
                Attribute::new("dc", ["pigeonair"]),
            ],
        ),
        add(
            2,
            "ou=domains,dc=pigeonair".into(),
            vec![
                Attribute::new("objectClass", ["top", "organizationalUnit"]),
                Attribute::new("ou", ["domains"]),
            ],
        ),
        add(
            3,
            domain.into(),
            vec![
                Attribute::new("objectClass", ["top", "domain"]),
                Attribute::new("dc", ["example.org"]),
            ],
        ),
        add(
            4,
            people.clone(),
            vec![
                Attribute::new("objectClass", ["top", "organizationalUnit"]),
                Attribute::new("ou", ["people"]),
            ],
        ),
    ];
    let accounts = (0..accounts).map(move |n| {
        let uid = format!("user{n}");
        add(
            16 + n,
            format!("uid={uid},{people}"),
            vec![
                Attribute::new(
                    "objectClass",
                    ["top", "inetOrgPerson", "inetLocalMailRecipient"],
                ),
                Attribute::new("cn", [format!("User {n}")]),
                Attribute::new("sn", [format!("{n}")]),
                Attribute::new("mail", [format!("{uid}@example.org")]),
                Attribute::new("mailHost", ["node1"]),
                Attribute::new("uid", [uid]),
            ],
        )
    });
    top.into_iter().chain(accounts)
}

fn search_benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let settings = DirectorySettings {
        suffix: "dc=pigeonair".into(),
        indexes: [
            ("objectClass", "eq"),
            ("mail", "eq,sub"),
            ("uid", "eq"),
            ("mailLocalAddress", "eq"),
            ("mailAlternateAddress", "eq"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into_iter()
        .collect(),
        cache_bytes: 256 << 20,
    };
    let dir = Directory::open(tmp.path(), Schema::builtin(), &settings).unwrap();
    let accounts = accounts();
    let started = Instant::now();
    let n = dir
        .apply_bulk(commands(accounts), 10_000, |_| {})
        .unwrap_or_else(|(i, e)| panic!("bulk load failed at command {i}: {e}"));
    eprintln!(
        "search: loaded {n} entries ({accounts} accounts) in {:.1?}",
        started.elapsed()
    );
    // 54321 of 100,000; scaled down with a smaller directory.
    let target = accounts * 54_321 / ACCOUNTS;
    let eq_mail = format!("(mail=user{target}@example.org)");
    let prefixed = (0..accounts)
        .filter(|n| n.to_string().starts_with("1234"))
        .count();

    let mut g = c.benchmark_group("search");
    // Flat sampling: the substring search takes milliseconds, and linear sampling would
    // need 465 iterations for 30 samples.
    g.sample_size(30)
        .measurement_time(Duration::from_secs(4))
        .sampling_mode(SamplingMode::Flat);
    for (name, text, expect) in [
        ("eq_mail", eq_mail.as_str(), 1),
        ("eq_uid", "(uid=user777)", usize::from(accounts > 777)),
        ("sub_mail_initial", "(mail=user1234*)", prefixed),
    ] {
        let filter = Filter::parse(text).unwrap();
        let req = SearchRequest {
            base: "dc=pigeonair",
            scope: Scope::Subtree,
            filter: &filter,
            size_limit: 0,
            deadline: None,
            view: None,
            subordinates: false,
            keep: None,
        };
        let count = || {
            let mut found = 0usize;
            dir.view()
                .unwrap()
                .search(&req, |_, _| {
                    found += 1;
                    true
                })
                .unwrap();
            found
        };
        assert_eq!(count(), expect, "{text}");
        g.bench_function(name, |b| b.iter(|| black_box(count())));
    }
    g.finish();

    // The typed API the SMTP server checks every RCPT TO with, on the same replica.
    let aliases = "ou=aliases,dc=example.org,ou=domains,dc=pigeonair";
    for (n, cmd) in [
        add(
            5,
            aliases.into(),
            vec![
                Attribute::new("objectClass", ["top", "organizationalUnit"]),
                Attribute::new("ou", ["aliases"]),
            ],
        ),
        add(
            6,
            format!("cn=team,{aliases}"),
            vec![
                Attribute::new("objectClass", ["top", "pigeonairMailAlias"]),
                Attribute::new("cn", ["team"]),
                Attribute::new("mail", ["team@example.org"]),
                Attribute::new(
                    "mailForwardingAddress",
                    [
                        "user1@example.org",
                        "user2@example.org",
                        "friend@elsewhere.test",
                    ],
                ),
            ],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        dir.apply(&cmd)
            .unwrap_or_else(|e| panic!("alias entry {n}: {e}"));
    }
    let mut g = c.benchmark_group("resolve_recipient");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let account = format!("user{target}@Example.ORG");
    let tagged = format!("user{target}+news@example.org");
    for (name, address, targets) in [
        ("account", account.as_str(), 1),
        ("subaddress", tagged.as_str(), 1),
        ("alias_of_three", "team@example.org", 3),
        ("unknown", "nobody@example.org", 0),
    ] {
        let resolve = || routing::resolve_recipient(&dir, address).unwrap();
        match resolve() {
            Resolution::Delivers(t) => assert_eq!(t.len(), targets, "{address}"),
            Resolution::Unknown => assert_eq!(targets, 0, "{address}"),
            Resolution::Foreign => panic!("{address} is local"),
        }
        g.bench_function(name, |b| b.iter(|| black_box(resolve())));
    }
    g.finish();
    drop(dir);
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = dn_benches, filter_benches, pdu_benches
}
criterion_group!(search, search_benches);
criterion_main!(micro, search);
