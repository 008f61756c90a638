//! ctnetlink conntrack events and dump answers as slbd reads them: every message of a
//! datagram parses to an entry, to "not ours", or to an error, never a panic; an entry read
//! twice reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slbd::wire::{ctnetlink, netlink};

fuzz_target!(|data: &[u8]| {
    let _ = ctnetlink::parse(data);
    for m in netlink::messages(data) {
        let bytes = m.bytes(data);
        let first = ctnetlink::parse(bytes);
        assert_eq!(first, ctnetlink::parse(bytes));
    }
});
