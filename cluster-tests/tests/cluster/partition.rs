//! Network partition: three nodes in network namespaces this test creates (veth pairs
//! on a bridge inside a hub namespace, addresses only inside those namespaces). The
//! leader is cut off; the majority elects a new leader and takes writes; the cut-off
//! node refuses writes with result 52 within its write timeout and still answers reads;
//! after healing, every replica converges. Needs root (CI runs as root); every
//! namespace is removed when the test ends, also when it fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "cn=admin,ou=system,dc=pigeonair";
const PW: &str = "partition-pw";

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and processes of one test; removed on drop.
struct Net {
    hub: String,
    nodes: Vec<String>,
    veths: Vec<String>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for v in &self.veths {
            let _ = sh(&["ip", "link", "del", v]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Net {
    fn new(n: usize) -> Net {
        assert!(
            sh(&["id", "-u"]).stdout.starts_with(b"0"),
            "the partition test needs root to create network namespaces (CI runs as root)"
        );
        let tag = std::process::id() % 100_000;
        let dir = std::env::temp_dir().join(format!("pigeonair-partition-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut net = Net {
            hub: format!("pa{tag}h"),
            nodes: Vec::new(),
            veths: Vec::new(),
            children: Vec::new(),
            dir,
        };
        must(&["ip", "netns", "add", &net.hub]);
        must(&["ip", "-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &net.hub, "link", "set", "br0", "up"]);
        for i in 1..=n {
            let ns = format!("pa{tag}n{i}");
            must(&["ip", "netns", "add", &ns]);
            net.nodes.push(ns.clone());
            let (hub_end, node_end) = (format!("pa{tag}v{i}"), format!("pa{tag}p{i}"));
            must(&[
                "ip", "link", "add", &hub_end, "type", "veth", "peer", "name", &node_end,
            ]);
            net.veths.push(hub_end.clone());
            must(&["ip", "link", "set", &hub_end, "netns", &net.hub]);
            must(&["ip", "link", "set", &node_end, "netns", &ns]);
            must(&[
                "ip", "-n", &net.hub, "link", "set", &hub_end, "master", "br0",
            ]);
            must(&["ip", "-n", &net.hub, "link", "set", &hub_end, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "dev",
                &node_end,
            ]);
            must(&["ip", "-n", &ns, "link", "set", &node_end, "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            net.children.push(None);
        }
        net
    }

    fn ip(i: usize) -> String {
        format!("10.77.0.{i}")
    }

    fn exec(&self, i: usize, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.nodes[i - 1]];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn config(&self, i: usize) -> PathBuf {
        let path = self.dir.join(format!("n{i}.toml"));
        if !path.exists() {
            let text = format!(
                "[node]\nname = \"n{i}\"\ndata_dir = \"{}\"\n\n[ldap]\nlisten = [\"{ip}:3389\"]\nrequire_tls_for_bind = false\n\n[cluster]\nlisten = \"{ip}:7400\"\nwrite_timeout_ms = 2000\n",
                self.dir.join(format!("data{i}")).display(),
                ip = Net::ip(i)
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// Start `pigeonair <args>` inside node i's namespace and wait for `ready`.
    fn spawn(&mut self, i: usize, bin: &Path, args: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i - 1]])
            .arg(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("node printed `ready` in time");
            if line == "ready" {
                break;
            }
        }
        self.children[i - 1] = Some(child);
    }

    fn status(&self, i: usize, bin: &Path) -> Option<Vec<NodeView>> {
        let cfg = self.config(i);
        let out = self.exec(
            i,
            &[
                bin.to_str().unwrap(),
                "status",
                "--json",
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        if !out.status.success() {
            return None;
        }
        parse_status(&String::from_utf8_lossy(&out.stdout))
    }
}

/// A node as `pigeonair status --json` reports it.
#[derive(Debug, Clone)]
struct NodeView {
    id: u64,
    role: String,
    leader: Option<u64>,
    term: u64,
    digest: String,
    voters: usize,
    error: bool,
}

fn parse_status(text: &str) -> Option<Vec<NodeView>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let nodes = v.get("nodes")?.as_array()?;
    Some(
        nodes
            .iter()
            .map(|n| NodeView {
                id: n["id"].as_u64().unwrap_or(0),
                role: n["role"].as_str().unwrap_or("").to_string(),
                leader: n["leader"].as_u64(),
                term: n["term"].as_u64().unwrap_or(0),
                digest: n["digest"].as_str().unwrap_or("").to_string(),
                voters: n["voters"].as_array().map(|a| a.len()).unwrap_or(0),
                error: n.get("error").is_some(),
            })
            .collect(),
    )
}

fn ldif_for(cn: &str) -> String {
    format!("dn: cn={cn},ou=system,dc=pigeonair\nobjectClass: applicationProcess\ncn: {cn}\n")
}

#[test]
fn leader_cut_off_majority_goes_on_and_heals() {
    let bin = crate::harness::binary().to_path_buf();
    let mut net = Net::new(3);
    let bin_s = bin.to_str().unwrap().to_string();
    let c1 = net.config(1);
    let out = net.exec(
        1,
        &[
            &bin_s,
            "init",
            "--admin-password",
            PW,
            "--config",
            c1.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.spawn(1, &bin, &["run", "--config", c1.to_str().unwrap()]);
    for i in 2..=3 {
        let out = net.exec(
            1,
            &[&bin_s, "token", "create", "--config", c1.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ci = net.config(i);
        net.spawn(
            i,
            &bin,
            &[
                "join",
                "--config",
                ci.to_str().unwrap(),
                "--token",
                &token,
                "--peer",
                "10.77.0.1:7400",
            ],
        );
    }
    let leader =
        crate::harness::wait_until("three voters and a leader", Duration::from_secs(60), || {
            let s = net.status(1, &bin)?;
            let ok = s.len() == 3 && s.iter().all(|n| !n.error && n.voters == 3);
            let leader = s.iter().find(|n| n.role == "leader")?.id as usize;
            ok.then_some(leader)
        });
    let old_term = net
        .status(leader, &bin)
        .map(|s| s.iter().map(|n| n.term).max().unwrap_or(0))
        .unwrap_or(0);

    // Cut the leader off: take its port on the bridge down.
    let hub_end = format!("{}", net.veths[leader - 1]);
    must(&["ip", "-n", &net.hub, "link", "set", &hub_end, "down"]);
    let majority: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
    let m = majority[0];
    let new_leader = crate::harness::wait_until(
        "a new leader among the majority",
        Duration::from_secs(30),
        || {
            let s = net.status(m, &bin)?;
            let me = s.iter().find(|n| n.id as usize == m && !n.error)?;
            (me.term > old_term && me.leader.is_some_and(|l| l as usize != leader))
                .then(|| me.leader.unwrap_or(0))
        },
    );
    assert_ne!(new_leader as usize, leader);

    // The majority takes writes (through a follower or the new leader alike).
    let url = |i: usize| format!("ldap://{}:3389", Net::ip(i));
    for (k, &i) in majority.iter().enumerate() {
        let file = net.dir.join(format!("maj{k}.ldif"));
        std::fs::write(&file, ldif_for(&format!("majority-{k}"))).unwrap();
        let out = net.exec(
            i,
            &[
                "ldapadd",
                "-x",
                "-H",
                &url(i),
                "-D",
                ADMIN,
                "-w",
                PW,
                "-f",
                file.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "write on majority node {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The cut-off node refuses writes with 52 within its bound, and still reads.
    let file = net.dir.join("cut.ldif");
    std::fs::write(&file, ldif_for("cut-off")).unwrap();
    let started = Instant::now();
    let out = net.exec(
        leader,
        &[
            "ldapadd",
            "-x",
            "-H",
            &url(leader),
            "-D",
            ADMIN,
            "-w",
            PW,
            "-f",
            file.to_str().unwrap(),
        ],
    );
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(52),
        "the cut-off node answers unavailable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(10),
        "refused within the bound (write_timeout_ms = 2000), took {took:?}"
    );
    let out = net.exec(
        leader,
        &[
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            &url(leader),
            "-D",
            ADMIN,
            "-w",
            PW,
            "-b",
            "dc=pigeonair",
            "(ou=people)",
            "dn",
        ],
    );
    assert!(
        out.status.success(),
        "the cut-off node still serves reads: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Heal: every replica converges, with the majority's writes and without the refused one.
    must(&["ip", "-n", &net.hub, "link", "set", &hub_end, "up"]);
    crate::harness::wait_until(
        "all digests equal after healing",
        Duration::from_secs(60),
        || {
            let s = net.status(m, &bin)?;
            let digests: Vec<&str> = s
                .iter()
                .filter(|n| !n.error)
                .map(|n| n.digest.as_str())
                .collect();
            (digests.len() == 3 && digests.windows(2).all(|w| w[0] == w[1])).then_some(())
        },
    );
    let out = net.exec(
        leader,
        &[
            "ldapsearch",
            "-x",
            "-LLL",
            "-H",
            &url(leader),
            "-D",
            ADMIN,
            "-w",
            PW,
            "-b",
            "ou=system,dc=pigeonair",
            "(|(cn=majority-*)(cn=cut-off))",
            "cn",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cn: majority-0") && text.contains("cn: majority-1"),
        "the healed node has the majority's writes: {text}"
    );
    assert!(
        !text.contains("cn: cut-off"),
        "the refused write was never applied: {text}"
    );
}
