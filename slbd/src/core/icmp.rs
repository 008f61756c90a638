//! ICMP destination-unreachable errors as they come out of the queue: [`parse_unreachable`]
//! reads the outer IPv4 header, the ICMP type and code, and the flow of the packet the error is
//! about (the embedded IPv4 header and the first 8 bytes of its TCP or UDP header, RFC 792).
//! Which codes say a server is not there is decided here too. Pure, and never panics on any
//! input.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::core::net::Protocol;
use crate::core::packet::{self, Malformed};

const ICMP: u8 = 1;
const DEST_UNREACHABLE: u8 = 3;
const IP_MIN: usize = 20;
const ICMP_HEADER: usize = 8;

/// A destination-unreachable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// Who sent the error.
    pub from: Ipv4Addr,
    /// The unreachable code (RFC 792, RFC 1812).
    pub code: u8,
    /// The flow of the packet that could not be delivered, as that packet carried it.
    pub protocol: Protocol,
    /// Its source (a client, in the errors slbd acts on).
    pub src: SocketAddrV4,
    /// Its destination (a real server).
    pub dst: SocketAddrV4,
}

impl Unreachable {
    /// Whether the code says nothing is there to serve the flow: host or port unreachable, or
    /// administratively prohibited (a firewall's reject). Not "fragmentation needed" (path
    /// MTU discovery at work) nor network or protocol unreachable (not a server's word).
    pub fn server_gone(&self) -> bool {
        matches!(self.code, 1 | 3 | 10 | 13)
    }
}

/// Whether `buf` is an IPv4 packet carrying ICMP (checked enough to read its protocol byte).
pub fn is_icmp(buf: &[u8]) -> bool {
    buf.len() >= IP_MIN && buf[0] >> 4 == 4 && buf[9] == ICMP
}

/// Reads an ICMP destination-unreachable error about a TCP or UDP packet.
pub fn parse_unreachable(buf: &[u8]) -> Result<Unreachable, Malformed> {
    let (outer, icmp) = ipv4_payload(buf)?;
    if outer.protocol != ICMP {
        return Err(Malformed::Protocol);
    }
    if icmp.len() < ICMP_HEADER || icmp[0] != DEST_UNREACHABLE {
        return Err(Malformed::Protocol);
    }
    let code = icmp[1];
    // The embedded header: its total length says what the original packet was, not what the
    // error carries of it, so only the header itself and 8 bytes after it are required.
    let inner = &icmp[ICMP_HEADER..];
    if inner.len() < IP_MIN || inner[0] >> 4 != 4 {
        return Err(Malformed::L4TooShort);
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    if ihl < IP_MIN || inner.len() < ihl + 8 {
        return Err(Malformed::L4TooShort);
    }
    // A later fragment carries no ports where the first 8 bytes would be.
    if u16::from_be_bytes([inner[6], inner[7]]) & 0x1fff != 0 {
        return Err(Malformed::Fragment);
    }
    let protocol = Protocol::from_ip_proto(inner[9]).ok_or(Malformed::Protocol)?;
    let ports = &inner[ihl..ihl + 8];
    let addr = |at: usize| Ipv4Addr::new(inner[at], inner[at + 1], inner[at + 2], inner[at + 3]);
    Ok(Unreachable {
        from: outer.src,
        code,
        protocol,
        src: SocketAddrV4::new(addr(12), u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddrV4::new(addr(16), u16::from_be_bytes([ports[2], ports[3]])),
    })
}

struct Outer {
    protocol: u8,
    src: Ipv4Addr,
}

fn ipv4_payload(buf: &[u8]) -> Result<(Outer, &[u8]), Malformed> {
    let (ihl, total) = packet::ipv4_bounds(buf)?;
    Ok((
        Outer {
            protocol: buf[9],
            src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        },
        &buf[ihl..total],
    ))
}

#[cfg(test)]
pub mod fixtures {
    use super::*;

    /// An ICMP unreachable `code` from `from` about `original` (a whole IPv4 packet, of which
    /// the error carries the header and 8 bytes, as routers do).
    pub fn unreachable(from: Ipv4Addr, to: Ipv4Addr, code: u8, original: &[u8]) -> Vec<u8> {
        let quoted = &original[..original.len().min(28)];
        let total = 20 + 8 + quoted.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = ICMP;
        p[12..16].copy_from_slice(&from.octets());
        p[16..20].copy_from_slice(&to.octets());
        p[20] = DEST_UNREACHABLE;
        p[21] = code;
        p[28..].copy_from_slice(quoted);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::unreachable;
    use super::*;
    use crate::core::packet::fixtures::{tcp, udp};
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn reads_the_flow_an_error_is_about() {
        let original = udp(sa("10.0.0.5:4000"), sa("172.16.0.2:53"), b"question");
        let icmp = unreachable(
            "172.16.0.2".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            3,
            &original,
        );
        assert!(is_icmp(&icmp));
        let u = parse_unreachable(&icmp).unwrap();
        assert_eq!(
            u,
            Unreachable {
                from: "172.16.0.2".parse().unwrap(),
                code: 3,
                protocol: Protocol::Udp,
                src: sa("10.0.0.5:4000"),
                dst: sa("172.16.0.2:53"),
            }
        );
        assert!(u.server_gone());
        let syn = tcp(sa("10.0.0.5:4000"), sa("172.16.0.2:80"), 0x02, b"", &[]);
        let u = parse_unreachable(&unreachable(u.from, u.src.ip().to_owned(), 1, &syn)).unwrap();
        assert_eq!((u.protocol, u.code), (Protocol::Tcp, 1));
    }

    #[test]
    fn only_errors_that_say_nothing_is_there_count() {
        let original = udp(sa("10.0.0.5:4000"), sa("172.16.0.2:53"), b"q");
        let code = |c| {
            parse_unreachable(&unreachable(
                "172.16.0.1".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                c,
                &original,
            ))
            .unwrap()
            .server_gone()
        };
        for gone in [1, 3, 10, 13] {
            assert!(code(gone), "code {gone}");
        }
        for not in [0, 2, 4, 5, 9] {
            assert!(!code(not), "code {not}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_unreachable_about_tcp_or_udp() {
        let original = udp(sa("10.0.0.5:4000"), sa("172.16.0.2:53"), b"q");
        let good = unreachable(
            "172.16.0.2".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            3,
            &original,
        );
        let mut echo = good.clone();
        echo[20] = 8;
        assert_eq!(parse_unreachable(&echo), Err(Malformed::Protocol));
        let mut short = good.clone();
        short.truncate(40);
        short[3] = 40;
        assert_eq!(parse_unreachable(&short), Err(Malformed::L4TooShort));
        assert_eq!(parse_unreachable(&original), Err(Malformed::Protocol));
        let mut later_fragment = good.clone();
        later_fragment[28 + 7] = 0x10;
        assert_eq!(parse_unreachable(&later_fragment), Err(Malformed::Fragment));
        assert!(!is_icmp(&original));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_unreachable(&bytes);
            let _ = is_icmp(&bytes);
        }
    }
}
