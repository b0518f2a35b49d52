//! `pigeonair ldif import` and `pigeonair ldif export` on a stopped node's data, then the
//! restarted node serves what was imported.

use crate::harness::{parse_ldif, run, Node};

const PIGEONAIR: &str = env!("CARGO_BIN_EXE_pigeonair");

fn import_ldif() -> String {
    let mut s = String::from("version: 1\n\n");
    s.push_str("dn: dc=import.example,ou=domains,dc=pigeonair\nobjectClass: top\nobjectClass: domain\ndc: import.example\n\n");
    s.push_str("dn: ou=people,dc=import.example,ou=domains,dc=pigeonair\nobjectClass: organizationalUnit\nou: people\n\n");
    for i in 0..50 {
        s.push_str(&format!(
            "dn: uid=user{i},ou=people,dc=import.example,ou=domains,dc=pigeonair\nobjectClass: inetOrgPerson\nuid: user{i}\ncn: User {i}\nsn: Number{i}\nmail: user{i}@import.example\n\n"
        ));
    }
    // One account with a clear password (hashed on import) and a folded, base64 value.
    s.push_str("dn: uid=zoe,ou=people,dc=import.example,ou=domains,dc=pigeonair\nobjectClass: inetOrgPerson\nuid: zoe\ncn:: WsO2ZSBaZXBoeXI=\nsn: Zephyr\nmail: zoe@import.example\nuserPassword: zoe-secret\n\n");
    // A change record after the entries.
    s.push_str("dn: uid=user7,ou=people,dc=import.example,ou=domains,dc=pigeonair\nchangetype: modify\nreplace: cn\ncn: Seventh User\n-\n\n");
    s
}

#[test]
fn import_export_and_serve() {
    let mut node = Node::start();
    node.kill9();
    let config = node.data_dir().join("pigeonair.toml");
    let config = config.to_str().unwrap();
    let file = node.data_dir().join("import.ldif");
    std::fs::write(&file, import_ldif()).unwrap();

    let out = run(
        PIGEONAIR,
        &[
            "ldif",
            "import",
            file.to_str().unwrap(),
            "--config",
            config,
            "--batch",
            "7",
        ],
    );
    out.assert_ok();
    assert!(out.stdout.contains("imported 54 records"), "{}", out.all());

    let export = node.data_dir().join("export.ldif");
    run(
        PIGEONAIR,
        &[
            "ldif",
            "export",
            "--config",
            config,
            "--base",
            "dc=import.example,ou=domains,dc=pigeonair",
            "-o",
            export.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let text = std::fs::read_to_string(&export).unwrap();
    let entries = parse_ldif(&text);
    assert_eq!(entries.len(), 53, "domain, ou and 51 accounts:\n{text}");
    let zoe = entries
        .iter()
        .find(|e| e.dn.starts_with("uid=zoe,"))
        .expect("zoe exported");
    assert!(
        zoe.one("userPassword")
            .starts_with("{ARGON2}$argon2id$v=19$"),
        "the clear password was hashed on import"
    );
    assert_eq!(zoe.one("cn"), "Zöe Zephyr");
    let seventh = entries
        .iter()
        .find(|e| e.dn.starts_with("uid=user7,"))
        .unwrap();
    assert_eq!(
        seventh.one("cn"),
        "Seventh User",
        "the change record was applied"
    );
    assert!(
        !zoe.has("entryUUID"),
        "operational attributes only with --operational"
    );

    // A broken file: the error names the line, and what came before it stays imported.
    let broken = node.data_dir().join("broken.ldif");
    std::fs::write(&broken, "dn: ou=ok,dc=pigeonair\nobjectClass: organizationalUnit\nou: ok\n\ndn: ou=bad,dc=pigeonair\nthis line has no colon\n").unwrap();
    let out = run(
        PIGEONAIR,
        &[
            "ldif",
            "import",
            broken.to_str().unwrap(),
            "--config",
            config,
        ],
    );
    assert_ne!(out.code(), 0, "a malformed LDIF must fail: {}", out.all());
    assert!(
        out.stderr.contains("line 6"),
        "the error names the line: {}",
        out.all()
    );

    node.restart();
    let out = run(
        "ldapsearch",
        &[
            "-x",
            "-LLL",
            "-H",
            &node.url,
            "-D",
            "uid=zoe,ou=people,dc=import.example,ou=domains,dc=pigeonair",
            "-w",
            "zoe-secret",
            "-b",
            "dc=pigeonair",
            "(mail=user42@import.example)",
            "uid",
        ],
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("uid: user42"),
        "imported entries are served, and zoe binds with her imported password: {}",
        out.all()
    );
    let out = run(
        "ldapsearch",
        &[
            "-x",
            "-LLL",
            "-H",
            &node.url,
            "-D",
            &node.admin_dn,
            "-w",
            &node.admin_pw,
            "-b",
            "dc=pigeonair",
            "(ou=ok)",
            "dn",
        ],
    );
    assert!(
        out.stdout.contains("dn: ou=ok,dc=pigeonair"),
        "{}",
        out.all()
    );
}
