//! Packet parse and rewrite, as the queue hands slbd outside bytes: any packet `parse`
//! accepts can be rewritten either way without a panic, the result parses again as the same
//! flow with only the rewritten endpoint changed, checksums that were right stay right (and a
//! partial checksum is left complete); an ICMP error about a flow translates either way into
//! one that parses as translated, with a right ICMP checksum.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use slbd::core::checksum::{fold, pseudo_header, sum};
use slbd::core::icmp;
use slbd::core::net::Protocol;
use slbd::core::packet::{parse, rewrite, ChecksumState, Endpoint};

fn ihl(b: &[u8]) -> usize {
    usize::from(b[0] & 0x0f) * 4
}

fn ip_ok(b: &[u8]) -> bool {
    fold(sum(&b[..ihl(b)], 0)) == 0xffff
}

/// The layer-4 checksum verifies as a receiver checks it (a UDP zero is "none").
fn l4_ok(b: &[u8], protocol: Protocol) -> bool {
    let at = ihl(b);
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let (len, field_at, proto) = match protocol {
        Protocol::Tcp => (total - at, 16, 6u8),
        Protocol::Udp => (
            usize::from(u16::from_be_bytes([b[at + 4], b[at + 5]])),
            6,
            17u8,
        ),
    };
    let seg = &b[at..at + len];
    if proto == 17 && seg[field_at] == 0 && seg[field_at + 1] == 0 {
        return true;
    }
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    fold(sum(seg, pseudo_header(src, dst, proto, len as u16))) == 0xffff
}

/// An ICMP error about a flow translates either way into one that parses as translated.
fn icmp_error(data: &[u8]) {
    let Ok(e) = icmp::parse_error(data) else {
        return;
    };
    let to = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    for (outer, inner) in [
        (Endpoint::Source, Endpoint::Destination),
        (Endpoint::Destination, Endpoint::Source),
    ] {
        let mut buf = data.to_vec();
        if icmp::translate(&mut buf, &e, outer, *to.ip(), inner, to).is_err() {
            assert_eq!(buf, data, "a refused error is left as it came");
            continue;
        }
        let t = icmp::parse_error(&buf).expect("a translated error parses again");
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        assert_eq!(fold(sum(&buf[ihl..total], 0)), 0xffff, "the ICMP checksum");
        match inner {
            Endpoint::Destination => assert_eq!((t.from, t.src, t.dst), (*to.ip(), e.src, to)),
            Endpoint::Source => assert_eq!((t.to, t.src, t.dst), (*to.ip(), to, e.dst)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = icmp::is_icmp(data);
    let _ = icmp::parse_unreachable(data);
    icmp_error(data);
    let Ok(h) = parse(data) else { return };
    let was_ok = ip_ok(data) && l4_ok(data, h.protocol);
    let tail = &data[data.len().saturating_sub(6)..];
    let derived = if tail.len() == 6 {
        SocketAddrV4::new(
            Ipv4Addr::new(tail[0], tail[1], tail[2], tail[3]),
            u16::from_be_bytes([tail[4], tail[5]]),
        )
    } else {
        SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 8000)
    };
    for to in [
        derived,
        SocketAddrV4::new(Ipv4Addr::new(255, 255, 255, 255), 0),
    ] {
        for which in [Endpoint::Destination, Endpoint::Source] {
            for state in [
                ChecksumState::Complete,
                ChecksumState::Partial,
                ChecksumState::PartialGso,
            ] {
                let mut buf = data.to_vec();
                rewrite(&mut buf, &h, which, to, state);
                let again = parse(&buf).expect("a rewritten packet parses again");
                assert_eq!(again.protocol, h.protocol);
                match which {
                    Endpoint::Destination => assert_eq!((again.src, again.dst), (h.src, to)),
                    Endpoint::Source => assert_eq!((again.src, again.dst), (to, h.dst)),
                }
                if state == ChecksumState::Complete && was_ok {
                    assert!(
                        ip_ok(&buf) && l4_ok(&buf, h.protocol),
                        "checksums broken by the rewrite"
                    );
                }
                if state == ChecksumState::Partial {
                    assert!(
                        l4_ok(&buf, h.protocol),
                        "a partial checksum left incomplete"
                    );
                }
            }
        }
    }
});
