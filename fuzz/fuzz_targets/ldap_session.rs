//! Arbitrary bytes through a whole LDAP session: framing, decoding and the dispatch of
//! every operation against a throw-away directory.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pigeonair::ldap::fuzz::session_bytes(data);
});
