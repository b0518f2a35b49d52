//! `pigeonair init` + `pigeonair run` on a config file, as an operator would set up the
//! first node of a cluster, then an LDAP write survives a SIGKILL and restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(bin: &Path, config: &Path) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start pigeonair run");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut url = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("node printed `ready` in time");
        if let Some(u) = line.strip_prefix("ldap: ") {
            url = u.to_string();
        }
        if line == "ready" {
            break;
        }
    }
    (child, url)
}

fn ldap(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} not runnable ({e}): install ldap-utils (.ci/install-deps does)",
                args[0]
            )
        })
}

#[test]
fn init_run_write_kill_restart() {
    let bin = crate::harness::binary();
    let tmp = std::env::temp_dir().join(format!("pigeonair-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let config = tmp.join("node1.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"node1\"\ndata_dir = \"{}\"\n\n[ldap]\nlisten = [\"127.0.0.1:0\"]\n",
            tmp.join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["init", "--admin-password", "pw1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = Command::new(bin)
        .args(["init", "--admin-password", "pw1", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a second init must refuse to overwrite the data"
    );

    let (mut child, url) = start(bin, &config);
    let admin = "cn=admin,ou=system,dc=pigeonair";
    let ldif = tmp.join("add.ldif");
    std::fs::write(
        &ldif,
        "dn: ou=marker,dc=pigeonair\nobjectClass: organizationalUnit\nou: marker\n",
    )
    .unwrap();
    let add = ldap(&[
        "ldapadd",
        "-x",
        "-H",
        &url,
        "-D",
        admin,
        "-w",
        "pw1",
        "-f",
        ldif.to_str().unwrap(),
    ]);
    assert!(
        add.status.success(),
        "ldapadd: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, url) = start(bin, &config);
    let search = ldap(&[
        "ldapsearch",
        "-x",
        "-LLL",
        "-H",
        &url,
        "-D",
        admin,
        "-w",
        "pw1",
        "-b",
        "dc=pigeonair",
        "(ou=marker)",
        "dn",
    ]);
    let text = String::from_utf8_lossy(&search.stdout);
    assert!(
        text.contains("dn: ou=marker,dc=pigeonair"),
        "the acknowledged add survived SIGKILL: {text}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&tmp);
}
