//! An entry point for fuzzing: arbitrary bytes through a real LDAP session (framing,
//! decoding, dispatch, every operation) against a throw-away directory.
//!
//! `fuzz/fuzz_targets/ldap_session.rs` calls [`session_bytes`]; the unit tests below run
//! it over seeded random and mutated inputs on every `cargo test`.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{session, LdapContext};
use crate::config::{Config, LdapConfig};

struct Fixture {
    rt: tokio::runtime::Runtime,
    ctx: Arc<LdapContext>,
    _dir: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pigeonair-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.node.data_dir = dir.clone();
        let directory =
            Arc::new(crate::node::open_directory(&config).expect("a fuzz directory opens"));
        let writes = Arc::new(crate::directory::LocalWrites(directory.clone()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let suffix = directory.suffix().clone();
        rt.block_on(crate::node::bootstrap(
            &*writes,
            &suffix,
            "fuzz",
            &config.admin_dn(),
            "fuzz",
            true,
        ))
        .expect("the fuzz directory bootstraps");
        let ldap = LdapConfig {
            max_pdu_bytes: 64 * 1024,
            ..LdapConfig::default()
        };
        let auth = crate::auth::Authority::new(
            directory.clone(),
            &[config.admin_dn()],
            &[],
            crate::directory::acl::AclOptions::default(),
            std::time::Duration::from_millis(ldap.bind_delay_max_ms),
        )
        .expect("the fuzz identities are valid");
        let ctx = Arc::new(LdapContext::new(directory, writes, ldap, Arc::new(auth)));
        Fixture { rt, ctx, _dir: dir }
    })
}

/// Feed `data` to a fresh session as one client would, then close the client's side;
/// returns the bytes the server answered. Never panics on any input.
pub fn session_bytes(data: &[u8]) -> Vec<u8> {
    let f = fixture();
    f.rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(session::run(
            f.ctx.clone(),
            server,
            crate::ldap::session::ConnInfo {
                peer: "127.0.0.1:1".parse().expect("an address"),
                secure: true,
                start_tls: false,
                require_tls_for_bind: false,
                client_cert: None,
            },
            crate::ldap::Identity::default(),
            rx,
        ));
        let mut out = Vec::new();
        let (mut rd, mut wr) = tokio::io::split(client);
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&data).await;
            let _ = wr.shutdown().await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), rd.read_to_end(&mut out))
            .await;
        let _ = writer.await;
        let _ = task.await;
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rasn_ldap::{LdapMessage, ProtocolOp};

    fn search_pdu() -> Vec<u8> {
        let filter = crate::ldap::filter_wire::to_wire(
            &crate::directory::filter::Filter::parse("(&(objectClass=*)(uid=al*))").unwrap(),
        );
        let req = rasn_ldap::SearchRequest::new(
            "dc=pigeonair".into(),
            rasn_ldap::SearchRequestScope::WholeSubtree,
            rasn_ldap::SearchRequestDerefAliases::NeverDerefAliases,
            0,
            0,
            false,
            filter,
            vec!["*".into(), "+".into()],
        );
        // Bound as the administrator, so the access rules show the demo accounts.
        let bind = rasn_ldap::BindRequest::new(
            3,
            "cn=admin,ou=system,dc=pigeonair".into(),
            rasn_ldap::AuthenticationChoice::Simple(b"fuzz".to_vec().into()),
        );
        let mut pdus =
            rasn::ber::encode(&LdapMessage::new(1, ProtocolOp::BindRequest(bind))).unwrap();
        pdus.extend(
            rasn::ber::encode(&LdapMessage::new(2, ProtocolOp::SearchRequest(req))).unwrap(),
        );
        pdus
    }

    #[test]
    fn a_valid_search_answers() {
        let out = session_bytes(&search_pdu());
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("uid=alice,ou=people") && out.len() > 300,
            "the search returned alice and a done message: {text}"
        );
    }

    #[test]
    fn mutated_and_random_input_never_panics() {
        let base = search_pdu();
        let mut rng = crate::testing::XorShift::new(0x2545F4914F6CDD1D);
        let mut next = || rng.next();
        for round in 0..300 {
            let mut input = base.clone();
            for _ in 0..1 + round % 8 {
                let i = (next() as usize) % input.len();
                input[i] = next() as u8;
            }
            if round % 3 == 0 {
                input.truncate((next() as usize) % input.len());
            }
            session_bytes(&input);
        }
        for len in [0usize, 1, 2, 7, 100, 5000] {
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            session_bytes(&input);
        }
    }
}
