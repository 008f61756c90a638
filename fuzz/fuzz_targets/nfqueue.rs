//! The kernel's nfnetlink_queue messages as slbd reads them from its socket: every message of
//! a datagram is split and read without a panic, a packet's payload range lies inside the
//! datagram (the shell slices and rewrites it in place), and the packet parser takes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slbd::core::packet;
use slbd::wire::{netlink, nfqueue};

fuzz_target!(|data: &[u8]| {
    for m in netlink::messages(data) {
        let bytes = m.bytes(data);
        assert!(
            !bytes.is_empty(),
            "a split message lies inside its datagram"
        );
        let _ = netlink::status(bytes);
        if let Some(p) = nfqueue::packet(data, &m) {
            let (from, to) = p.payload;
            assert!(
                from <= to && to <= data.len(),
                "payload {from}..{to} of {}",
                data.len()
            );
            let _ = packet::parse(&data[from..to]);
        }
    }
});
