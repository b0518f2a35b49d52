//! LDAP over TLS: StartTLS (`ldapsearch -ZZ`) and LDAPS with the self-signed certificate
//! quickstart generates, and refusing simple binds on unencrypted connections.

use std::process::Command;

use crate::harness::{start_configured, Node};

fn ldapsearch(cacert: Option<&std::path::Path>, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("ldapsearch");
    cmd.args(args).env_remove("LDAPTLS_REQCERT");
    match cacert {
        Some(p) => cmd.env("LDAPTLS_CACERT", p),
        None => cmd.env("LDAPTLS_CACERT", "/nonexistent-ca.pem"),
    };
    cmd.output()
        .expect("ldapsearch not runnable: install ldap-utils (.ci/install-deps does)")
}

#[test]
fn start_tls_and_ldaps_with_the_quickstart_certificate() {
    let node = Node::start();
    let cert = node.data_dir().join("tls/ldap-cert.pem");
    assert!(
        cert.exists(),
        "quickstart wrote its certificate at {}",
        cert.display()
    );
    assert!(
        node.ldaps_url.starts_with("ldaps://"),
        "quickstart printed an ldaps URL"
    );
    let pw = node.admin_pw.clone();
    let common = [
        "-x",
        "-LLL",
        "-D",
        &node.admin_dn,
        "-w",
        &pw,
        "-b",
        "dc=pigeonair",
        "(mail=alice@example.org)",
        "mail",
    ];

    let mut args = vec!["-ZZ", "-H", &node.url];
    args.extend_from_slice(&common);
    let out = ldapsearch(Some(&cert), &args);
    assert!(
        out.status.success(),
        "StartTLS search: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mail: alice@example.org"));

    let mut args = vec!["-H", &node.ldaps_url];
    args.extend_from_slice(&common);
    let out = ldapsearch(Some(&cert), &args);
    assert!(
        out.status.success(),
        "LDAPS search: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mail: alice@example.org"));

    // Without trusting the certificate, the client refuses the server.
    let mut args = vec!["-H", &node.ldaps_url];
    args.extend_from_slice(&common);
    let out = ldapsearch(None, &args);
    assert!(
        !out.status.success(),
        "an untrusted certificate must fail the handshake"
    );
}

#[test]
fn simple_bind_needs_tls_when_configured() {
    let quick = Node::start();
    let cert = quick.data_dir().join("tls/ldap-cert.pem");
    let key = quick.data_dir().join("tls/ldap-key.pem");
    let node = start_configured(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls_for_bind = true",
        cert.display(),
        key.display()
    ));
    let admin = "cn=admin,ou=system,dc=pigeonair";
    let pw = node.admin_pw.clone();
    let plain = ldapsearch(
        Some(&cert),
        &[
            "-x", "-H", &node.url, "-D", admin, "-w", &pw, "-b", "", "-s", "base",
        ],
    );
    let text = String::from_utf8_lossy(&plain.stderr).to_string();
    assert_eq!(
        plain.status.code(),
        Some(13),
        "confidentialityRequired on a clear connection: {text}"
    );
    let secured = ldapsearch(
        Some(&cert),
        &[
            "-x", "-ZZ", "-H", &node.url, "-D", admin, "-w", &pw, "-b", "", "-s", "base",
        ],
    );
    assert!(
        secured.status.success(),
        "the same bind after StartTLS works: {}",
        String::from_utf8_lossy(&secured.stderr)
    );
}

#[test]
fn sasl_plain_over_start_tls_by_mail_or_uid() {
    let node = Node::start();
    let cert = node.data_dir().join("tls/ldap-cert.pem");
    let alice = node.alice().clone();
    for user in ["alice@example.org", "alice", &format!("dn:{}", alice.dn)] {
        let out = Command::new("ldapwhoami")
            .args(["-H", &node.url, "-ZZ", "-Y", "PLAIN", "-U", user, "-w", &alice.password])
            .env("LDAPTLS_CACERT", &cert)
            .output()
            .expect("ldapwhoami not runnable: install ldap-utils and libsasl2-modules (.ci/install-deps does)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "SASL PLAIN as {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("dn:{}", alice.dn)),
            "bound as alice: {text}"
        );
    }
    let out = Command::new("ldapwhoami")
        .args([
            "-H", &node.url, "-ZZ", "-Y", "PLAIN", "-U", "alice", "-w", "wrong",
        ])
        .env("LDAPTLS_CACERT", &cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid credentials (49)"),
        "{out:?}"
    );
    let root = ldapsearch(
        Some(&cert),
        &[
            "-x",
            "-LLL",
            "-H",
            &node.url,
            "-b",
            "",
            "-s",
            "base",
            "supportedSASLMechanisms",
        ],
    );
    assert!(String::from_utf8_lossy(&root.stdout).contains("supportedSASLMechanisms: PLAIN"));
}
