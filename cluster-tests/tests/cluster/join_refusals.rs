//! Joins that must be refused: a revoked token, a used-up token, an expired token, a
//! token with a forged secret, and a token pinning another cluster's CA. Each attempt
//! exits non-zero, says why on stderr, and leaves the membership as it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{wait_until, TestCluster};

const SUBNET: u8 = 15;

/// Voters, learners and members as node 1 and every node it reaches see them.
fn membership(c: &TestCluster) -> (Vec<u64>, Vec<u64>, Vec<(u64, String)>) {
    let view = c.status(1).expect("status through node 1");
    assert!(view.down.is_empty(), "every member answers: {view:?}");
    let first = &view.up[0];
    for n in &view.up {
        assert_eq!(
            (&n.voters, &n.learners),
            (&first.voters, &first.learners),
            "node {} agrees on the membership",
            n.id
        );
    }
    let mut members = first.members.clone();
    members.sort();
    (first.voters.clone(), first.learners.clone(), members)
}

/// The parts of `PA1.<id>.<secret>.<fingerprint>`.
fn parts(token: &str) -> (String, String, String) {
    let p: Vec<&str> = token.split('.').collect();
    assert_eq!(p.len(), 4, "a token has four parts: {token}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

/// Unix seconds of a Generalized Time `YYYYMMDDHHMMSSZ`.
fn unix_of_generalized(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { t[r].parse().expect("a Generalized Time") };
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(8..10) * 3600 + n(10..12) * 60 + n(12..14)
}

/// The `EXPIRES` and `USES` columns of `pigeonair token list` for token `id`.
fn listed(c: &TestCluster, id: &str) -> Option<(String, u32)> {
    let out = c.cli_ok(1, &["token", "list"]);
    out.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.first() == Some(&id)).then(|| (cols[1].to_string(), cols[2].parse().unwrap()))
    })
}

#[track_caller]
fn assert_refused(
    c: &mut TestCluster,
    token: &str,
    reason: &str,
    before: &(Vec<u64>, Vec<u64>, Vec<(u64, String)>),
) {
    let peer = c.cluster_addr(1);
    let r = c.try_join(token, &peer);
    assert!(
        !r.success,
        "join must fail ({reason}): {}\n{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(reason),
        "stderr names the reason {reason:?}: {}",
        r.stderr
    );
    eprintln!("join_refusals: {}", r.stderr.trim());
    assert_eq!(
        &membership(c),
        before,
        "membership unchanged after a refused join ({reason})"
    );
}

#[test]
fn bad_tokens_are_refused_and_membership_is_unchanged() {
    let mut c = TestCluster::new(SUBNET);
    c.init();
    c.start(1);
    let once = c.token(1, &["--uses", "1"]);
    c.join(2, &once);
    c.wait_voters(&[1, 2], Duration::from_secs(30));
    c.wait_converged(&[1, 2], Duration::from_secs(30));
    let before = membership(&c);
    assert_eq!(before.2.len(), 2, "two members: {before:?}");

    // (a) revoked
    let revoked = c.token(1, &[]);
    let (id, _, _) = parts(&revoked);
    c.cli_ok(1, &["token", "revoke", &id]);
    assert_refused(&mut c, &revoked, "unknown or revoked join token", &before);

    // (b) used up: its one use went to node 2
    assert_eq!(listed(&c, &parts(&once).0).map(|l| l.1), Some(0));
    assert_refused(&mut c, &once, "used up", &before);

    // (c) expired: ask the cluster for the token's expiry until the clock has passed it
    let short = c.token(1, &["--ttl", "1s"]);
    let (id, _, _) = parts(&short);
    wait_until(
        "the token's expiry has passed",
        Duration::from_secs(10),
        || {
            let (expires, _) = listed(&c, &id).expect("the token is listed");
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            (now > unix_of_generalized(&expires)).then_some(())
        },
    );
    assert_refused(&mut c, &short, "expired", &before);

    // (d) forged secret; the refused attempt does not spend the token
    let good = c.token(1, &[]);
    let (id, secret, fp) = parts(&good);
    let forged_secret: String = secret.chars().rev().chain("x".chars()).collect();
    assert_refused(
        &mut c,
        &format!("PA1.{id}.{forged_secret}.{fp}"),
        "secret is wrong",
        &before,
    );
    assert_eq!(
        listed(&c, &id).map(|l| l.1),
        Some(1),
        "a forged attempt uses nothing"
    );

    // (e) another cluster's CA: its own token, and this cluster's id and secret pinned
    // to the other CA (the joiner must not hand the secret to a server it cannot verify)
    let mut other = TestCluster::new(SUBNET).with_host_base(100);
    other.init();
    other.start(1);
    let foreign = other.token(1, &[]);
    let (_, _, foreign_fp) = parts(&foreign);
    assert_ne!(foreign_fp, fp, "two clusters have two CAs");
    assert_refused(&mut c, &foreign, "CA", &before);
    assert_refused(
        &mut c,
        &format!("PA1.{id}.{secret}.{foreign_fp}"),
        "CA",
        &before,
    );
    assert_eq!(
        listed(&c, &id).map(|l| l.1),
        Some(1),
        "the pinned-away attempt used nothing"
    );

    // The good token still admits a node: the refusals above were about the tokens.
    c.join(3, &good);
    c.wait_voters(&[1, 2, 3], Duration::from_secs(30));
}
