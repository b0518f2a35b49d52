//! The mail software operators run today, against a PigeonAir node: Postfix's LDAP
//! tables (`postmap -q`) and Dovecot's LDAP passdb, both with `auth_bind = yes` and with
//! password lookups (`doveadm auth test`). They look up through a read-only service
//! identity.

use std::process::{Command, Output, Stdio};

use std::time::Duration;

use crate::harness::{run_with_input, start_configured, wait_until, ConfiguredNode};

const ADMIN: &str = "cn=admin,ou=system,dc=pigeonair";
const SERVICE: &str = "cn=mailservice,ou=system,dc=pigeonair";
const SERVICE_PW: &str = "service-secret";

/// A node with a service identity and one domain with alice.
fn mail_node(extra: &str) -> ConfiguredNode {
    let node = start_configured(&format!("service_dns = [\"{SERVICE}\"]\n{extra}"));
    let ldif = format!(
        "dn: {SERVICE}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: mailservice\nuserPassword: {SERVICE_PW}\n\n\
         dn: dc=example.org,ou=domains,dc=pigeonair\nobjectClass: domain\ndc: example.org\n\n\
         dn: ou=people,dc=example.org,ou=domains,dc=pigeonair\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n\
         uid: alice\ncn: Alice\nsn: Liddell\nmail: alice@example.org\nmailHost: node7.example.net\nuserPassword: alice-secret\n"
    );
    run_with_input(
        "ldapadd",
        &["-x", "-H", &node.url, "-D", ADMIN, "-w", &node.admin_pw],
        Some(&ldif),
    )
    .assert_ok();
    node
}

fn tool(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} not runnable ({e}): install postfix-ldap and dovecot-ldap (.ci/install-deps does)"))
}

#[test]
fn postfix_ldap_table_answers_the_mail_host() {
    let node = mail_node("");
    let dir = tempfile::tempdir().unwrap();
    let cf = dir.path().join("mailhost.cf");
    let host = node.url.trim_start_matches("ldap://");
    std::fs::write(
        &cf,
        format!(
            "server_host = ldap://{host}\nversion = 3\nbind = yes\nbind_dn = {SERVICE}\nbind_pw = {SERVICE_PW}\n\
             search_base = ou=domains,dc=pigeonair\nquery_filter = (|(mail=%s)(mailLocalAddress=%s))\nresult_attribute = mailHost\n"
        ),
    )
    .unwrap();
    let table = format!("ldap:{}", cf.display());
    let out = tool("postmap", &["-q", "alice@example.org", &table]);
    assert!(
        out.status.success(),
        "postmap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "node7.example.net"
    );
    let out = tool("postmap", &["-q", "nobody@example.org", &table]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unknown address answers nothing: {out:?}"
    );
    assert!(out.stdout.is_empty());
}

/// Run dovecot with an LDAP passdb whose settings end with `passdb_settings`, and check
/// `doveadm auth test` with alice's right and a wrong password.
fn dovecot_auth_test(node: &ConfiguredNode, passdb_settings: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = node.url.trim_start_matches("ldap://");
    let ldap_conf = d.join("dovecot-ldap.conf.ext");
    std::fs::write(
        &ldap_conf,
        format!(
            "uris = ldap://{host}\nldap_version = 3\ndn = {SERVICE}\ndnpass = {SERVICE_PW}\n\
             base = ou=domains,dc=pigeonair\npass_filter = (mail=%u)\n{passdb_settings}\n"
        ),
    )
    .unwrap();
    let conf = d.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {base}/run\nstate_dir = {base}/state\nlog_path = {base}/dovecot.log\ninfo_log_path = {base}/dovecot.log\n\
             protocols =\nssl = no\nauth_mechanisms = plain\ndefault_internal_user = root\ndefault_login_user = root\n\
             passdb {{\n  driver = ldap\n  args = {ldap}\n}}\nuserdb {{\n  driver = static\n  args = uid=root gid=root home={base}/home/%u\n}}\n",
            base = d.display(),
            ldap = ldap_conf.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let conf_s = conf.to_str().unwrap().to_string();
    // dovecot daemonizes; its children would hold captured pipes open, so none are used.
    let started = Command::new("dovecot")
        .args(["-c", &conf_s])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let started = started.unwrap_or_else(|e| panic!("dovecot not runnable ({e}): install dovecot-core and dovecot-ldap (.ci/install-deps does)"));
    assert!(
        started.success(),
        "dovecot did not start; see {}",
        d.join("dovecot.log").display()
    );
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("doveadm")
                .args(["-c", &self.0, "stop"])
                .output();
        }
    }
    let _stop = Stop(conf_s.clone());
    // The auth socket appears once dovecot is up.
    let auth = || {
        tool(
            "doveadm",
            &[
                "-c",
                &conf_s,
                "auth",
                "test",
                "alice@example.org",
                "alice-secret",
            ],
        )
    };
    let up = wait_until(Duration::from_secs(20), || auth().status.success());
    let ok = auth();
    assert!(
        up && ok.status.success(),
        "doveadm auth test never succeeded: {} {}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("auth succeeded"),
        "{ok:?}"
    );
    let bad = tool(
        "doveadm",
        &["-c", &conf_s, "auth", "test", "alice@example.org", "wrong"],
    );
    assert!(!bad.status.success(), "a wrong password fails: {bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("auth failed"),
        "{bad:?}"
    );
}

#[test]
fn dovecot_passdb_with_auth_bind() {
    let node = mail_node("");
    dovecot_auth_test(&node, "auth_bind = yes\npass_attrs = mail=user");
}

#[test]
fn dovecot_passdb_with_password_lookups() {
    // The service identity may read passwords; it sees argon2id hashes under the scheme
    // name Dovecot knows.
    let node = mail_node("service_reads_passwords = true");
    dovecot_auth_test(
        &node,
        "auth_bind = no\npass_attrs = mail=user,userPassword=password",
    );
}
