//! Arbitrary bytes through a POP3 session, its questions answered for a maildrop of
//! three messages.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pigeonair::mail::pop3::fuzz::session_bytes(data);
});
