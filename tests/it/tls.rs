//! LDAP over TLS: StartTLS (`ldapsearch -ZZ`) and LDAPS with the self-signed certificate
//! quickstart generates, and refusing simple binds on unencrypted connections.

use std::path::{Path, PathBuf};
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
    let mechanisms = String::from_utf8_lossy(&root.stdout);
    assert!(
        mechanisms.contains("supportedSASLMechanisms: PLAIN"),
        "{mechanisms}"
    );
    assert!(
        mechanisms.contains("supportedSASLMechanisms: EXTERNAL"),
        "{mechanisms}"
    );
}

/// `pigeonair cert issue` into `dir`; the (certificate, key) paths.
fn issue_cert(config: &Path, dir: &Path, name: &str, dn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pigeonair"))
        .arg("cert")
        .arg("issue")
        .arg("--config")
        .arg(config)
        .args(["--dn", dn, "--days", "2"])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("running pigeonair cert issue");
    assert!(
        out.status.success(),
        "cert issue for {dn}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// An LDAP tool run with a client certificate (`LDAPTLS_CERT`/`LDAPTLS_KEY`).
fn with_client_cert(
    tool: &str,
    server_ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("LDAPTLS_CACERT", server_ca)
        .env_remove("LDAPTLS_REQCERT")
        .env_remove("LDAPTLS_CERT")
        .env_remove("LDAPTLS_KEY");
    if let Some((cert, key)) = client {
        cmd.env("LDAPTLS_CERT", cert).env("LDAPTLS_KEY", key);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!("{tool} not runnable ({e}): install ldap-utils and libsasl2-modules (.ci/install-deps does)")
    })
}

#[test]
fn sasl_external_with_client_certificates() {
    let node = Node::start();
    let server_ca = node.data_dir().join("tls/ldap-cert.pem");
    let config = node.data_dir().join("pigeonair.toml");
    let certs = tempfile::tempdir().unwrap();
    let alice = node.alice().clone();
    let bob = node.bob().clone();
    let alice_cert = issue_cert(&config, certs.path(), "alice", &alice.dn);
    let admin_cert = issue_cert(&config, certs.path(), "admin", &node.admin_dn);

    // LDAPS and StartTLS: the certificate binds as the entry it names.
    for args in [
        vec!["-H", node.ldaps_url.as_str(), "-Y", "EXTERNAL", "-Q"],
        vec!["-H", node.url.as_str(), "-ZZ", "-Y", "EXTERNAL", "-Q"],
    ] {
        let out = with_client_cert("ldapwhoami", &server_ca, Some(&alice_cert), &args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("dn:{}", alice.dn)),
            "EXTERNAL as alice ({args:?}): {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Alice reads her own entry, but not bob's password; the administrator's
    // certificate reads it.
    let search = |cert: &(PathBuf, PathBuf), base: &str| {
        let out = with_client_cert(
            "ldapsearch",
            &server_ca,
            Some(cert),
            &[
                "-H",
                &node.url,
                "-ZZ",
                "-Y",
                "EXTERNAL",
                "-Q",
                "-LLL",
                "-b",
                base,
                "-s",
                "base",
                "(objectClass=*)",
                "mail",
                "userPassword",
            ],
        );
        assert!(
            out.status.success(),
            "EXTERNAL search of {base}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(search(&alice_cert, &alice.dn).contains(&format!("mail: {}", alice.mail)));
    assert!(!search(&alice_cert, &bob.dn).contains("userPassword"));
    assert!(search(&admin_cert, &bob.dn).contains("userPassword"));

    // An authorization id other than the certificate's own entry is refused.
    let authz = format!("dn:{}", bob.dn);
    let out = with_client_cert(
        "ldapwhoami",
        &server_ca,
        Some(&alice_cert),
        &["-H", &node.ldaps_url, "-Y", "EXTERNAL", "-Q", "-X", &authz],
    );
    assert!(
        !out.status.success(),
        "alice's certificate cannot assume bob"
    );

    // A certificate for a DN with no entry binds as nobody.
    let ghost = issue_cert(
        &config,
        certs.path(),
        "ghost",
        "uid=ghost,ou=people,dc=example.org,ou=domains,dc=pigeonair",
    );
    let out = with_client_cert(
        "ldapwhoami",
        &server_ca,
        Some(&ghost),
        &["-H", &node.ldaps_url, "-Y", "EXTERNAL", "-Q"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid credentials (49)"),
        "{out:?}"
    );

    // EXTERNAL without a client certificate is inappropriate (libldap will not even
    // offer EXTERNAL without one, so the ldap3 crate asks on a plain connection).
    let mut plain = crate::harness::ldap_conn(&node);
    let res = plain.sasl_external_bind().unwrap();
    assert_eq!(res.rc, 48, "inappropriateAuthentication: {res:?}");
    assert!(res.text.contains("client certificate"), "{res:?}");

    // A certificate from another cluster's CA does not get through the handshake, and
    // the node keeps serving.
    let other = tempfile::tempdir().unwrap();
    let other_config = other.path().join("pigeonair.toml");
    std::fs::write(
        &other_config,
        format!(
            "[node]\ndata_dir = \"{}\"\n[ldap]\nlisten = []\n[cluster]\nlisten = \"127.0.0.1:0\"\n",
            other.path().join("data").display()
        ),
    )
    .unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_pigeonair"))
        .arg("init")
        .arg("--config")
        .arg(&other_config)
        .args(["--admin-password", "other-cluster-pw"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let foreign = issue_cert(&other_config, certs.path(), "foreign", &alice.dn);
    let out = with_client_cert(
        "ldapwhoami",
        &server_ca,
        Some(&foreign),
        &["-H", &node.ldaps_url, "-Y", "EXTERNAL", "-Q"],
    );
    assert!(
        !out.status.success(),
        "a foreign certificate is refused: {out:?}"
    );
    let out = with_client_cert(
        "ldapwhoami",
        &server_ca,
        Some(&alice_cert),
        &["-H", &node.ldaps_url, "-Y", "EXTERNAL", "-Q"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
