//! The heartbeat datagram, as amgr reads it from any sender on a heartbeat link: the bytes
//! as they come (stopped at the MAC), and the same bytes under a valid MAC, so the fields and
//! application list behind the MAC are read too; whatever parses re-emits to the same bytes,
//! and the link's receiver accepts each heartbeat at most once.
#![no_main]

use heartbeat::msg::{emit, parse, Receiver};
use libfuzzer_sys::fuzz_target;
use slb_common::auth;

/// The heartbeat unit tests' key and receiving boot, so their fixtures are the seeds.
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const OURS: u64 = 4242;

fuzz_target!(|data: &[u8]| {
    let mut rx = Receiver::new(1, OURS, 0);
    let _ = rx.accept(data, KEY);
    let body = data
        .get(..data.len().saturating_sub(auth::TAG_LEN))
        .unwrap_or(&[]);
    let mut signed = body.to_vec();
    signed.extend_from_slice(&auth::tag(KEY, &[body]));
    if let Ok(hb) = parse(&signed, KEY) {
        assert_eq!(emit(&hb, KEY), signed, "parse and emit disagree");
        let mut rx = Receiver::new(1, OURS, hb.link);
        if rx.accept(&signed, KEY).is_ok() {
            assert!(rx.accept(&signed, KEY).is_err(), "accepted twice");
        }
    }
});
