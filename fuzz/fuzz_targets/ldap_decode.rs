//! Arbitrary bytes through the LDAP framing and PDU decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = pigeonair::ldap::codec::frame_len(data, 1 << 20) {
        if let Ok(msg) = pigeonair::ldap::codec::decode(&data[..n]) {
            let _ = pigeonair::ldap::codec::encode(&msg);
        }
    }
});
