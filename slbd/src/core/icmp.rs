//! ICMP errors about TCP and UDP packets as they come out of the queue: [`parse_error`] reads
//! the outer IPv4 header, the ICMP type and code, and the flow of the packet the error is about
//! (the embedded IPv4 header and the first 8 bytes of its TCP or UDP header, RFC 792), and
//! [`translate`] rewrites one end of the error and of the packet it quotes, so an error about
//! a balanced flow reaches the side that sent the packet as that side knows the flow. Which
//! codes say a server is not there is decided here too. Pure, and never panics on any input.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::core::checksum::{fold, replace2, replace4, sum};
use crate::core::net::Protocol;
use crate::core::packet::{self, Endpoint, Malformed};

const ICMP: u8 = 1;
pub const DEST_UNREACHABLE: u8 = 3;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;
/// The error types translated for balanced flows (RFC 792, RFC 1812 §4.3.2.3): source quench
/// is deprecated (RFC 6633) and redirects are about routes, not flows.
pub const ERROR_TYPES: [u8; 3] = [DEST_UNREACHABLE, TIME_EXCEEDED, PARAMETER_PROBLEM];
/// Destination unreachable, fragmentation needed and DF set: path-MTU discovery's signal.
pub const FRAG_NEEDED: u8 = 4;
const IP_MIN: usize = 20;
const ICMP_HEADER: usize = 8;

/// An ICMP error about a TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// Who sent the error.
    pub from: Ipv4Addr,
    /// Whom it is addressed to.
    pub to: Ipv4Addr,
    /// The ICMP type (one of [`ERROR_TYPES`]).
    pub kind: u8,
    /// The code (RFC 792, RFC 1812).
    pub code: u8,
    /// The flow of the packet the error is about, as that packet carried it.
    pub protocol: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// Where the ICMP message starts and ends in the buffer, and the embedded header's length.
    icmp_at: usize,
    icmp_end: usize,
    inner_ihl: usize,
}

/// A destination-unreachable error, as passive detection reads it.
pub type Unreachable = IcmpError;

impl IcmpError {
    /// Whether the error says nothing is there to serve the flow: host or port unreachable, or
    /// administratively prohibited (a firewall's reject). Not "fragmentation needed" (path
    /// MTU discovery at work) nor network or protocol unreachable (not a server's word).
    pub fn server_gone(&self) -> bool {
        self.kind == DEST_UNREACHABLE && matches!(self.code, 1 | 3 | 10 | 13)
    }
}

/// Whether `buf` is an IPv4 packet carrying ICMP (checked enough to read its protocol byte).
pub fn is_icmp(buf: &[u8]) -> bool {
    buf.len() >= IP_MIN && buf[0] >> 4 == 4 && buf[9] == ICMP
}

/// Reads an ICMP destination-unreachable error about a TCP or UDP packet.
pub fn parse_unreachable(buf: &[u8]) -> Result<Unreachable, Malformed> {
    parse_error(buf).and_then(|e| {
        if e.kind == DEST_UNREACHABLE {
            Ok(e)
        } else {
            Err(Malformed::Protocol)
        }
    })
}

/// Reads an ICMP error (one of [`ERROR_TYPES`]) about a TCP or UDP packet.
pub fn parse_error(buf: &[u8]) -> Result<IcmpError, Malformed> {
    let (ihl, total) = packet::ipv4_bounds(buf)?;
    if buf[9] != ICMP {
        return Err(Malformed::Protocol);
    }
    let icmp = &buf[ihl..total];
    if icmp.len() < ICMP_HEADER || !ERROR_TYPES.contains(&icmp[0]) {
        return Err(Malformed::Protocol);
    }
    // The embedded header: its total length says what the original packet was, not what the
    // error carries of it, so only the header itself and 8 bytes after it are required.
    let inner = &icmp[ICMP_HEADER..];
    if inner.len() < IP_MIN || inner[0] >> 4 != 4 {
        return Err(Malformed::L4TooShort);
    }
    let inner_ihl = usize::from(inner[0] & 0x0f) * 4;
    if inner_ihl < IP_MIN || inner.len() < inner_ihl + 8 {
        return Err(Malformed::L4TooShort);
    }
    // A later fragment carries no ports where the first 8 bytes would be.
    if u16::from_be_bytes([inner[6], inner[7]]) & 0x1fff != 0 {
        return Err(Malformed::Fragment);
    }
    let protocol = Protocol::from_ip_proto(inner[9]).ok_or(Malformed::Protocol)?;
    let ports = &inner[inner_ihl..inner_ihl + 8];
    let addr = |b: &[u8], at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    Ok(IcmpError {
        from: addr(buf, 12),
        to: addr(buf, 16),
        kind: icmp[0],
        code: icmp[1],
        protocol,
        src: SocketAddrV4::new(addr(inner, 12), u16::from_be_bytes([ports[0], ports[1]])),
        dst: SocketAddrV4::new(addr(inner, 16), u16::from_be_bytes([ports[2], ports[3]])),
        icmp_at: ihl,
        icmp_end: total,
        inner_ihl,
    })
}

/// Rewrites the error `e` that [`parse_error`] read from `buf`: the outer header's `outer`
/// address becomes `outer_to`, and the quoted packet's `inner` endpoint (address and port)
/// becomes `inner_to`. The outer and quoted IPv4 header checksums and a TCP or UDP checksum
/// the error quotes are updated by RFC 1624 (the quoted packet is usually cut short, so its
/// transport checksum cannot be recomputed, only kept consistent); the ICMP checksum, which
/// covers all of that, is recomputed. An error whose ICMP checksum is already wrong is
/// refused: translated, it would leave with a right one.
pub fn translate(
    buf: &mut [u8],
    e: &IcmpError,
    outer: Endpoint,
    outer_to: Ipv4Addr,
    inner: Endpoint,
    inner_to: SocketAddrV4,
) -> Result<(), Malformed> {
    if fold(sum(&buf[e.icmp_at..e.icmp_end], 0)) != 0xffff {
        return Err(Malformed::BadChecksum);
    }
    let at = ip_field(outer);
    replace_ip(buf, at, 10, outer_to.octets());

    let base = e.icmp_at + ICMP_HEADER;
    let (old_ip, old_port) = match inner {
        Endpoint::Source => (e.src.ip().octets(), e.src.port()),
        Endpoint::Destination => (e.dst.ip().octets(), e.dst.port()),
    };
    let (new_ip, new_port) = (inner_to.ip().octets(), inner_to.port());
    replace_ip(buf, base + ip_field(inner), base + 10, new_ip);
    let l4 = base + e.inner_ihl;
    let port_at = l4 + if inner == Endpoint::Source { 0 } else { 2 };
    buf[port_at..port_at + 2].copy_from_slice(&new_port.to_be_bytes());
    let check_at = l4
        + match e.protocol {
            Protocol::Tcp => 16,
            Protocol::Udp => 6,
        };
    if check_at + 2 <= e.icmp_end {
        let old = u16::from_be_bytes([buf[check_at], buf[check_at + 1]]);
        // A UDP checksum of zero means none (RFC 768), and a computed zero is sent as ones.
        if !(e.protocol == Protocol::Udp && old == 0) {
            let mut c = replace2(replace4(old, old_ip, new_ip), old_port, new_port);
            if e.protocol == Protocol::Udp && c == 0 {
                c = 0xffff;
            }
            buf[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    buf[e.icmp_at + 2..e.icmp_at + 4].fill(0);
    let c = !fold(sum(&buf[e.icmp_at..e.icmp_end], 0));
    buf[e.icmp_at + 2..e.icmp_at + 4].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

fn ip_field(which: Endpoint) -> usize {
    match which {
        Endpoint::Source => 12,
        Endpoint::Destination => 16,
    }
}

/// Writes `new` over the address at `at` and updates the header checksum at `check_at`.
fn replace_ip(buf: &mut [u8], at: usize, check_at: usize, new: [u8; 4]) {
    let old: [u8; 4] = buf[at..at + 4].try_into().expect("a 4-byte address");
    buf[at..at + 4].copy_from_slice(&new);
    let check = u16::from_be_bytes([buf[check_at], buf[check_at + 1]]);
    buf[check_at..check_at + 2].copy_from_slice(&replace4(check, old, new).to_be_bytes());
}

#[cfg(test)]
pub mod fixtures {
    use super::*;

    /// An ICMP unreachable `code` from `from` about `original` (a whole IPv4 packet, of which
    /// the error carries the header and 8 bytes, as routers do).
    pub fn unreachable(from: Ipv4Addr, to: Ipv4Addr, code: u8, original: &[u8]) -> Vec<u8> {
        error(DEST_UNREACHABLE, code, from, to, original, 28)
    }

    /// An ICMP error of `kind` and `code` quoting the first `quote` bytes of `original`, with
    /// right checksums (Linux quotes as much as fits in 576 bytes; old routers 28).
    pub fn error(
        kind: u8,
        code: u8,
        from: Ipv4Addr,
        to: Ipv4Addr,
        original: &[u8],
        quote: usize,
    ) -> Vec<u8> {
        let quoted = &original[..original.len().min(quote)];
        let total = 20 + 8 + quoted.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = ICMP;
        p[12..16].copy_from_slice(&from.octets());
        p[16..20].copy_from_slice(&to.octets());
        p[20] = kind;
        p[21] = code;
        if kind == DEST_UNREACHABLE && code == FRAG_NEEDED {
            p[26..28].copy_from_slice(&1400u16.to_be_bytes());
        }
        p[28..].copy_from_slice(quoted);
        let ip = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let icmp = !fold(sum(&p[20..], 0));
        p[22..24].copy_from_slice(&icmp.to_be_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{error, unreachable};
    use super::*;
    use crate::core::packet::fixtures::{checksums_ok, tcp, udp};
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The outer IPv4 header and the ICMP message both verify.
    fn icmp_checksums_ok(b: &[u8]) -> bool {
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        fold(sum(&b[..20], 0)) == 0xffff && fold(sum(&b[20..total], 0)) == 0xffff
    }

    #[test]
    fn an_error_about_a_request_is_translated_for_the_client_with_every_checksum_right() {
        // A server-side router's "fragmentation needed" about client → server, quoting the
        // whole packet as Linux does: it must reach the client as about client → VIP, from
        // the VIP.
        let (client, server, vip) = (
            sa("10.0.0.5:40000"),
            sa("172.16.0.2:8080"),
            sa("10.0.0.100:80"),
        );
        for original in [
            tcp(client, server, 0x18, &[7u8; 300], &[]),
            udp(client, server, &[9u8; 300]),
            udp(client, server, b""),
        ] {
            for quote in [28, 576] {
                let mut b = error(
                    DEST_UNREACHABLE,
                    FRAG_NEEDED,
                    ip("172.16.0.1"),
                    *client.ip(),
                    &original,
                    quote,
                );
                let e = parse_error(&b).unwrap();
                translate(
                    &mut b,
                    &e,
                    Endpoint::Source,
                    *vip.ip(),
                    Endpoint::Destination,
                    vip,
                )
                .unwrap();
                let t = parse_error(&b).unwrap();
                assert_eq!(
                    (t.from, t.to, t.src, t.dst),
                    (*vip.ip(), *client.ip(), client, vip)
                );
                assert_eq!((t.kind, t.code), (DEST_UNREACHABLE, FRAG_NEEDED));
                assert_eq!(
                    &b[24..28],
                    &[0, 0, 0x05, 0x78],
                    "the MTU it reports is kept"
                );
                assert!(icmp_checksums_ok(&b));
                let inner = &b[28..];
                assert_eq!(
                    fold(sum(&inner[..20], 0)),
                    0xffff,
                    "quoted IPv4 header checksum"
                );
                if quote >= original.len() {
                    assert!(checksums_ok(inner), "the quoted packet's own checksums");
                }
            }
        }
    }

    #[test]
    fn an_error_about_a_reply_is_translated_for_the_server() {
        // A client-side router's "time exceeded" about VIP → client: it must reach the server
        // as about server → client; the router stays its sender.
        let (client, server, vip) = (
            sa("10.0.0.5:40000"),
            sa("172.16.0.2:8080"),
            sa("10.0.0.100:80"),
        );
        let original = udp(vip, client, &[1u8; 100]);
        let mut b = error(TIME_EXCEEDED, 0, ip("10.0.0.1"), *vip.ip(), &original, 576);
        let e = parse_error(&b).unwrap();
        translate(
            &mut b,
            &e,
            Endpoint::Destination,
            *server.ip(),
            Endpoint::Source,
            server,
        )
        .unwrap();
        let t = parse_error(&b).unwrap();
        assert_eq!(
            (t.from, t.to, t.src, t.dst),
            (ip("10.0.0.1"), *server.ip(), server, client)
        );
        assert!(icmp_checksums_ok(&b) && checksums_ok(&b[28..]));
    }

    #[test]
    fn an_error_with_a_wrong_icmp_checksum_is_not_translated() {
        let original = udp(sa("10.0.0.5:4000"), sa("172.16.0.2:53"), b"q");
        let mut b = unreachable(ip("172.16.0.2"), ip("10.0.0.5"), 3, &original);
        b[23] ^= 1;
        let e = parse_error(&b).unwrap();
        let before = b.clone();
        assert_eq!(
            translate(
                &mut b,
                &e,
                Endpoint::Source,
                ip("10.0.0.100"),
                Endpoint::Destination,
                sa("10.0.0.100:53")
            ),
            Err(Malformed::BadChecksum)
        );
        assert_eq!(b, before, "left as it came");
    }

    #[test]
    fn time_exceeded_and_parameter_problems_are_errors_redirects_and_echoes_are_not() {
        let original = udp(sa("10.0.0.5:4000"), sa("172.16.0.2:53"), b"q");
        for (kind, is_error) in [
            (3, true),
            (11, true),
            (12, true),
            (5, false),
            (8, false),
            (0, false),
            (4, false),
        ] {
            let b = error(kind, 0, ip("172.16.0.1"), ip("10.0.0.5"), &original, 28);
            assert_eq!(parse_error(&b).is_ok(), is_error, "type {kind}");
            assert_eq!(parse_unreachable(&b).is_ok(), kind == 3, "type {kind}");
        }
    }

    #[test]
    fn the_icmp_fuzz_seeds_are_these_fixtures() {
        let syn = tcp(sa("10.0.0.5:40000"), sa("172.16.0.2:80"), 0x02, b"", &[]);
        let dgram = udp(sa("10.0.0.5:5353"), sa("172.16.0.2:53"), b"query");
        let server = Ipv4Addr::new(172, 16, 0, 2);
        let client = Ipv4Addr::new(10, 0, 0, 5);
        for (name, bytes) in [
            (
                "icmp_host_unreachable",
                unreachable(server, client, 1, &syn),
            ),
            (
                "icmp_port_unreachable",
                unreachable(server, client, 3, &dgram),
            ),
            (
                "icmp_frag_needed_quoting_576",
                error(
                    DEST_UNREACHABLE,
                    FRAG_NEEDED,
                    server,
                    client,
                    &tcp(
                        sa("10.0.0.5:40000"),
                        sa("172.16.0.2:80"),
                        0x10,
                        &[5u8; 1400],
                        &[],
                    ),
                    548,
                ),
            ),
            (
                "icmp_time_exceeded_about_a_reply",
                error(
                    TIME_EXCEEDED,
                    0,
                    Ipv4Addr::new(10, 0, 0, 1),
                    Ipv4Addr::new(10, 0, 0, 100),
                    &udp(sa("10.0.0.100:53"), sa("10.0.0.5:5353"), b"answer"),
                    576,
                ),
            ),
        ] {
            slb_common::fuzz_seed::check("packet", name, &bytes).unwrap();
        }
    }

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
            (u.from, u.to, u.kind, u.code, u.protocol, u.src, u.dst),
            (
                "172.16.0.2".parse().unwrap(),
                "10.0.0.5".parse().unwrap(),
                DEST_UNREACHABLE,
                3,
                Protocol::Udp,
                sa("10.0.0.5:4000"),
                sa("172.16.0.2:53")
            )
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

        /// Any error that parses translates without a panic into one that parses as
        /// translated, with its ICMP checksum right when it was right before.
        #[test]
        fn any_parsed_error_translates_and_parses_back(
            payload in prop::collection::vec(any::<u8>(), 0..200),
            kind in prop::sample::select(ERROR_TYPES.to_vec()),
            quote in 28usize..600,
            ports in any::<(u16, u16)>(),
            to in any::<[u8; 6]>(),
            use_tcp in any::<bool>(),
        ) {
            let (src, dst) = (
                SocketAddrV4::new(ip("10.0.0.5"), ports.0),
                SocketAddrV4::new(ip("172.16.0.2"), ports.1),
            );
            let original = if use_tcp { tcp(src, dst, 0x10, &payload, &[]) } else { udp(src, dst, &payload) };
            let b = error(kind, 0, ip("172.16.0.1"), ip("10.0.0.5"), &original, quote);
            let e = parse_error(&b).unwrap();
            let target = SocketAddrV4::new(Ipv4Addr::new(to[0], to[1], to[2], to[3]), u16::from_be_bytes([to[4], to[5]]));
            let mut t = b.clone();
            translate(&mut t, &e, Endpoint::Source, *target.ip(), Endpoint::Destination, target).unwrap();
            let again = parse_error(&t).unwrap();
            prop_assert_eq!((again.from, again.dst, again.src), (*target.ip(), target, e.src));
            prop_assert!(icmp_checksums_ok(&t));
        }
    }
}
