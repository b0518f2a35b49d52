//! Arbitrary bytes through the IMAP command path: imap-next's server flow and the
//! imap-codec parser into a logged-in session on a throw-away Maildir.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pigeonair::mail::imap::fuzz::session_bytes(data);
});
