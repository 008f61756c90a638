//! IPv4 TCP/UDP packets as they come out of the queue: [`parse`] checks a byte slice once and
//! reads the flow's addresses and ports; [`rewrite`] changes one endpoint and fixes the
//! checksums. Pure, and never panics on any input.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::core::checksum;
use crate::core::net::Protocol;

/// Why a packet could not be balanced. Small and `Copy` so the hot path never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than an IPv4 header.
    TooShort,
    NotIpv4,
    /// IHL below 5 or past the end of the packet.
    BadHeaderLength,
    /// Total length below the header length or past the end of the packet.
    BadTotalLength,
    /// A fragment: only the first carries ports, so none can be balanced on its own.
    Fragment,
    /// Neither TCP nor UDP.
    Protocol,
    /// The TCP or UDP header does not fit in the packet.
    L4TooShort,
    /// A UDP length field that disagrees with the IP payload.
    BadUdpLength,
    /// An ICMP error whose own checksum is wrong: translated, it would leave with a right one.
    BadChecksum,
}

impl Malformed {
    pub const ALL: [Malformed; 9] = [
        Malformed::TooShort,
        Malformed::NotIpv4,
        Malformed::BadHeaderLength,
        Malformed::BadTotalLength,
        Malformed::Fragment,
        Malformed::Protocol,
        Malformed::L4TooShort,
        Malformed::BadUdpLength,
        Malformed::BadChecksum,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Malformed::TooShort => "too_short",
            Malformed::NotIpv4 => "not_ipv4",
            Malformed::BadHeaderLength => "bad_header_length",
            Malformed::BadTotalLength => "bad_total_length",
            Malformed::Fragment => "fragment",
            Malformed::Protocol => "protocol",
            Malformed::L4TooShort => "l4_too_short",
            Malformed::BadUdpLength => "bad_udp_length",
            Malformed::BadChecksum => "bad_checksum",
        }
    }
}

/// TCP flag bits (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// What [`parse`] read from a packet, and where its layer-4 header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub protocol: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
    l4_at: usize,
    /// Bytes of layer-4 header and payload the checksum covers.
    l4_len: usize,
}

/// How the checksum field of a queued packet is to be treated, from the kernel's skb info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumState {
    /// The field holds a complete checksum: update it incrementally (RFC 1624).
    Complete,
    /// CHECKSUM_PARTIAL and not segmentation-offloaded: the field holds only the pseudo-header
    /// seed, and since a packet written back is marked CHECKSUM_NONE it leaves with exactly what
    /// we write, so the full checksum must be computed.
    Partial,
    /// CHECKSUM_PARTIAL on a GSO packet: the kernel re-seeds the pseudo-header checksum when it
    /// segments it; keeping the seed right costs nothing and holds either way.
    PartialGso,
}

const IP_MIN: usize = 20;
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;

/// Checks `buf`'s IPv4 header (version, lengths, not a fragment) and returns the header's
/// length and the total length it declares, for every reader of queued IPv4 packets.
pub(crate) fn ipv4_bounds(buf: &[u8]) -> Result<(usize, usize), Malformed> {
    if buf.len() < IP_MIN {
        return Err(Malformed::TooShort);
    }
    if buf[0] >> 4 != 4 {
        return Err(Malformed::NotIpv4);
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if ihl < IP_MIN || ihl > buf.len() {
        return Err(Malformed::BadHeaderLength);
    }
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if total < ihl || total > buf.len() {
        return Err(Malformed::BadTotalLength);
    }
    let frag = u16::from_be_bytes([buf[6], buf[7]]);
    // More-fragments set, or a non-zero offset.
    if frag & 0x3fff != 0 {
        return Err(Malformed::Fragment);
    }
    Ok((ihl, total))
}

/// Checks `buf` as an IPv4 TCP or UDP packet and reads its flow.
pub fn parse(buf: &[u8]) -> Result<Headers, Malformed> {
    let (ihl, total) = ipv4_bounds(buf)?;
    let protocol = Protocol::from_ip_proto(buf[9]).ok_or(Malformed::Protocol)?;
    let src_ip = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    let dst_ip = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
    let l4 = &buf[ihl..total];
    let (flags, l4_len) = match protocol {
        Protocol::Tcp => {
            if l4.len() < TCP_MIN {
                return Err(Malformed::L4TooShort);
            }
            let data_offset = usize::from(l4[12] >> 4) * 4;
            if data_offset < TCP_MIN || data_offset > l4.len() {
                return Err(Malformed::L4TooShort);
            }
            (l4[13], l4.len())
        }
        Protocol::Udp => {
            if l4.len() < UDP_LEN {
                return Err(Malformed::L4TooShort);
            }
            let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if udp_len < UDP_LEN || udp_len > l4.len() {
                return Err(Malformed::BadUdpLength);
            }
            (0, udp_len)
        }
    };
    Ok(Headers {
        protocol,
        src: SocketAddrV4::new(src_ip, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddrV4::new(dst_ip, u16::from_be_bytes([l4[2], l4[3]])),
        flags,
        l4_at: ihl,
        l4_len,
    })
}

/// Which endpoint of the packet [`rewrite`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// DNAT: the request's VIP:port becomes the real server's.
    Destination,
    /// SNAT: the reply's real server becomes the VIP:port.
    Source,
}

/// Rewrites one endpoint of a packet that [`parse`] accepted as `h`, and fixes the IPv4 and
/// layer-4 checksums according to `state`.
pub fn rewrite(
    buf: &mut [u8],
    h: &Headers,
    which: Endpoint,
    to: SocketAddrV4,
    state: ChecksumState,
) {
    let (ip_at, port_at, from) = match which {
        Endpoint::Source => (12, h.l4_at, h.src),
        Endpoint::Destination => (16, h.l4_at + 2, h.dst),
    };
    let (old_ip, new_ip) = (from.ip().octets(), to.ip().octets());
    let (old_port, new_port) = (from.port(), to.port());
    buf[ip_at..ip_at + 4].copy_from_slice(&new_ip);
    buf[port_at..port_at + 2].copy_from_slice(&new_port.to_be_bytes());
    let ip_check = u16::from_be_bytes([buf[10], buf[11]]);
    buf[10..12].copy_from_slice(&checksum::replace4(ip_check, old_ip, new_ip).to_be_bytes());

    let check_at = h.l4_at + check_offset(h.protocol);
    let field = u16::from_be_bytes([buf[check_at], buf[check_at + 1]]);
    let new_field = match state {
        ChecksumState::Complete if h.protocol == Protocol::Udp && field == 0 => 0,
        ChecksumState::Complete => {
            let c = checksum::replace4(field, old_ip, new_ip);
            checksum::replace2(c, old_port, new_port)
        }
        ChecksumState::PartialGso => checksum::replace4_seed(field, old_ip, new_ip),
        ChecksumState::Partial => {
            let (src, dst) = match which {
                Endpoint::Source => (*to.ip(), *h.dst.ip()),
                Endpoint::Destination => (*h.src.ip(), *to.ip()),
            };
            let segment = &buf[h.l4_at..h.l4_at + h.l4_len];
            checksum::l4(
                src,
                dst,
                h.protocol as u8,
                segment,
                check_offset(h.protocol),
            )
        }
    };
    // RFC 768: a computed UDP checksum of zero is sent as all ones; zero means "none".
    let new_field = if h.protocol == Protocol::Udp && new_field == 0 && field != 0 {
        0xffff
    } else {
        new_field
    };
    buf[check_at..check_at + 2].copy_from_slice(&new_field.to_be_bytes());
}

/// Writes the full TCP/UDP checksum of a packet [`parse`] accepted as `h`, over its current
/// addresses: what a CHECKSUM_PARTIAL packet needs before it is written back.
pub fn complete_checksum(buf: &mut [u8], h: &Headers) {
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
    let check_at = h.l4_at + check_offset(h.protocol);
    let segment = &buf[h.l4_at..h.l4_at + h.l4_len];
    let mut c = checksum::l4(
        src,
        dst,
        h.protocol as u8,
        segment,
        check_offset(h.protocol),
    );
    if h.protocol == Protocol::Udp && c == 0 {
        c = 0xffff;
    }
    buf[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
}

fn check_offset(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 16,
        Protocol::Udp => 6,
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Packets built with pnet_packet, an implementation independent of ours, so its checksums
    //! are the reference the rewrite is checked against.
    use pnet_packet::ip::IpNextHeaderProtocols;
    use pnet_packet::ipv4::{self, MutableIpv4Packet};
    use pnet_packet::tcp::{self, MutableTcpPacket};
    use pnet_packet::udp::{self, MutableUdpPacket};
    use std::net::SocketAddrV4;

    pub fn tcp(
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
        payload: &[u8],
        options: &[u8],
    ) -> Vec<u8> {
        let ihl = 20 + options.len();
        let mut buf = vec![0u8; ihl + 20 + payload.len()];
        let total = buf.len();
        {
            let mut ip = MutableIpv4Packet::new(&mut buf).unwrap();
            ip.set_version(4);
            ip.set_header_length((ihl / 4) as u8);
            ip.set_total_length(total as u16);
            ip.set_ttl(64);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
            ip.set_source(*src.ip());
            ip.set_destination(*dst.ip());
        }
        buf[20..ihl].copy_from_slice(options);
        {
            let mut ip = MutableIpv4Packet::new(&mut buf).unwrap();
            let c = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(c);
        }
        {
            let mut t = MutableTcpPacket::new(&mut buf[ihl..]).unwrap();
            t.set_source(src.port());
            t.set_destination(dst.port());
            t.set_sequence(0x01020304);
            t.set_data_offset(5);
            t.set_flags(flags);
            t.set_window(64240);
            t.set_payload(payload);
            let c = tcp::ipv4_checksum(&t.to_immutable(), src.ip(), dst.ip());
            t.set_checksum(c);
        }
        buf
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 20 + 8 + payload.len()];
        let total = buf.len();
        {
            let mut ip = MutableIpv4Packet::new(&mut buf).unwrap();
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length(total as u16);
            ip.set_ttl(64);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
            ip.set_source(*src.ip());
            ip.set_destination(*dst.ip());
            let c = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(c);
        }
        {
            let mut u = MutableUdpPacket::new(&mut buf[20..]).unwrap();
            u.set_source(src.port());
            u.set_destination(dst.port());
            u.set_length((8 + payload.len()) as u16);
            u.set_payload(payload);
            let c = udp::ipv4_checksum(&u.to_immutable(), src.ip(), dst.ip());
            u.set_checksum(c);
        }
        buf
    }

    /// True when the IPv4 header checksum and the TCP/UDP checksum both verify.
    pub fn checksums_ok(buf: &[u8]) -> bool {
        let ip = pnet_packet::ipv4::Ipv4Packet::new(buf).unwrap();
        if ipv4::checksum(&ip) != ip.get_checksum() {
            return false;
        }
        let ihl = usize::from(ip.get_header_length()) * 4;
        let (s, d) = (ip.get_source(), ip.get_destination());
        match ip.get_next_level_protocol() {
            IpNextHeaderProtocols::Tcp => {
                let t = pnet_packet::tcp::TcpPacket::new(&buf[ihl..]).unwrap();
                tcp::ipv4_checksum(&t, &s, &d) == t.get_checksum()
            }
            IpNextHeaderProtocols::Udp => {
                let u = pnet_packet::udp::UdpPacket::new(&buf[ihl..]).unwrap();
                // pnet reports a computed zero as 0; RFC 768 sends it as 0xffff.
                let want = match udp::ipv4_checksum(&u, &s, &d) {
                    0 => 0xffff,
                    c => c,
                };
                u.get_checksum() == 0 || u.get_checksum() == want
            }
            _ => false,
        }
    }

    /// Replaces the TCP/UDP checksum with the pseudo-header seed, as a sender that offloads
    /// checksumming (CHECKSUM_PARTIAL) leaves it.
    pub fn make_partial(buf: &mut [u8]) {
        let ihl = usize::from(buf[0] & 0xf) * 4;
        let proto = buf[9];
        let at = ihl + if proto == 6 { 16 } else { 6 };
        let src = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let dst = std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
        let len = (buf.len() - ihl) as u16;
        let seed =
            crate::core::checksum::fold(crate::core::checksum::pseudo_header(src, dst, proto, len));
        buf[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_packet_fuzz_seeds_are_these_fixtures() {
        let (client, vip) = (sa("10.0.0.5:40000"), sa("10.0.0.100:80"));
        let syn = tcp(client, vip, tcp_flags::SYN, b"", &[]);
        let data = tcp(
            client,
            vip,
            tcp_flags::ACK | 0x08,
            b"GET / HTTP/1.0\r\n\r\n",
            &[],
        );
        let dns = udp(
            sa("10.0.0.5:5353"),
            sa("10.0.0.100:53"),
            b"\x12\x34\x01\x00\x00\x01",
        );
        let mut partial = data.clone();
        make_partial(&mut partial);
        for (name, bytes) in [
            ("tcp_syn", &syn),
            ("tcp_data", &data),
            ("udp", &dns),
            ("tcp_partial", &partial),
        ] {
            slb_common::fuzz_seed::check("packet", name, bytes).unwrap();
        }
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn parses_a_tcp_syn() {
        let p = tcp(
            sa("10.0.0.5:40000"),
            sa("10.0.0.100:80"),
            tcp_flags::SYN,
            b"",
            &[],
        );
        let h = parse(&p).unwrap();
        assert_eq!(h.protocol, Protocol::Tcp);
        assert_eq!(h.src, sa("10.0.0.5:40000"));
        assert_eq!(h.dst, sa("10.0.0.100:80"));
        assert_eq!(h.flags, tcp_flags::SYN);
    }

    #[test]
    fn dnat_tcp_with_ip_options_keeps_checksums_valid() {
        // A 4-byte options field (two NOPs and an end-of-options, padded).
        let mut p = tcp(
            sa("10.0.0.5:40000"),
            sa("10.0.0.100:80"),
            0x18,
            b"GET / HTTP/1.0\r\n\r\n",
            &[1, 1, 0, 0],
        );
        let h = parse(&p).unwrap();
        rewrite(
            &mut p,
            &h,
            Endpoint::Destination,
            sa("172.16.0.3:8080"),
            ChecksumState::Complete,
        );
        assert!(checksums_ok(&p));
        let after = parse(&p).unwrap();
        assert_eq!(after.dst, sa("172.16.0.3:8080"));
        assert_eq!(after.src, sa("10.0.0.5:40000"));
        assert_eq!(&p[p.len() - 18..], b"GET / HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn snat_udp_keeps_checksums_valid() {
        let mut p = udp(sa("172.16.0.3:53"), sa("10.0.0.5:5353"), b"answer");
        let h = parse(&p).unwrap();
        rewrite(
            &mut p,
            &h,
            Endpoint::Source,
            sa("10.0.0.100:53"),
            ChecksumState::Complete,
        );
        assert!(checksums_ok(&p));
        assert_eq!(parse(&p).unwrap().src, sa("10.0.0.100:53"));
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut p = udp(sa("10.0.0.5:5353"), sa("10.0.0.100:53"), b"q");
        p[26] = 0;
        p[27] = 0;
        let h = parse(&p).unwrap();
        rewrite(
            &mut p,
            &h,
            Endpoint::Destination,
            sa("172.16.0.3:53"),
            ChecksumState::Complete,
        );
        assert_eq!(&p[26..28], &[0, 0]);
        assert!(checksums_ok(&p));
    }

    #[test]
    fn partial_checksum_gets_a_full_checksum_written() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let (s, d) = (sa("10.0.0.5:40000"), sa("10.0.0.100:80"));
            let mut p = match proto {
                Protocol::Tcp => tcp(s, d, 0x18, b"hello there", &[]),
                Protocol::Udp => udp(s, d, b"hello there"),
            };
            make_partial(&mut p);
            assert!(!checksums_ok(&p));
            let h = parse(&p).unwrap();
            rewrite(
                &mut p,
                &h,
                Endpoint::Destination,
                sa("172.16.0.2:80"),
                ChecksumState::Partial,
            );
            assert!(checksums_ok(&p), "{proto}");
        }
    }

    #[test]
    fn partial_gso_keeps_a_correct_seed() {
        let mut p = tcp(
            sa("172.16.0.2:80"),
            sa("10.0.0.5:40000"),
            0x10,
            &[7u8; 3000],
            &[],
        );
        make_partial(&mut p);
        let h = parse(&p).unwrap();
        rewrite(
            &mut p,
            &h,
            Endpoint::Source,
            sa("10.0.0.100:80"),
            ChecksumState::PartialGso,
        );
        let mut expected = p.clone();
        make_partial(&mut expected);
        assert_eq!(p, expected);
    }

    #[test]
    fn refuses_malformed_packets() {
        let good = tcp(
            sa("10.0.0.5:1"),
            sa("10.0.0.100:80"),
            tcp_flags::SYN,
            b"",
            &[],
        );
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            (vec![], Malformed::TooShort),
            (good[..19].to_vec(), Malformed::TooShort),
            (
                {
                    let mut p = good.clone();
                    p[0] = 0x65;
                    p
                },
                Malformed::NotIpv4,
            ),
            (
                {
                    let mut p = good.clone();
                    p[0] = 0x44;
                    p
                },
                Malformed::BadHeaderLength,
            ),
            (
                {
                    let mut p = good.clone();
                    p[0] = 0x4f;
                    p
                },
                Malformed::BadHeaderLength,
            ),
            (
                {
                    let mut p = good.clone();
                    p[3] = 200;
                    p
                },
                Malformed::BadTotalLength,
            ),
            (
                {
                    let mut p = good.clone();
                    p[2] = 0;
                    p[3] = 10;
                    p
                },
                Malformed::BadTotalLength,
            ),
            (
                {
                    let mut p = good.clone();
                    p[6] = 0x20;
                    p
                },
                Malformed::Fragment,
            ),
            (
                {
                    let mut p = good.clone();
                    p[7] = 0x01;
                    p
                },
                Malformed::Fragment,
            ),
            (
                {
                    let mut p = good.clone();
                    p[9] = 1;
                    p
                },
                Malformed::Protocol,
            ),
            (
                {
                    let mut p = good.clone();
                    p.truncate(30);
                    p[3] = 30;
                    p
                },
                Malformed::L4TooShort,
            ),
            (
                {
                    let mut p = good.clone();
                    p[32] = 0xf0;
                    p
                },
                Malformed::L4TooShort,
            ),
            (
                {
                    let mut p = udp(sa("10.0.0.5:1"), sa("10.0.0.100:53"), b"x");
                    p[25] = 99;
                    p
                },
                Malformed::BadUdpLength,
            ),
        ];
        for (i, (p, want)) in cases.iter().enumerate() {
            assert_eq!(parse(p), Err(*want), "case {i}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn rewrite_round_trips_and_checksums_verify(
            c_ip in any::<[u8; 4]>(), c_port in 1u16.., s_ip in any::<[u8; 4]>(), s_port in 1u16..,
            payload in prop::collection::vec(any::<u8>(), 0..300), is_tcp in any::<bool>(),
        ) {
            let client = SocketAddrV4::new(c_ip.into(), c_port);
            let vip = sa("10.0.0.100:80");
            let server = SocketAddrV4::new(s_ip.into(), s_port);
            let orig = if is_tcp { tcp(client, vip, 0x18, &payload, &[]) } else { udp(client, vip, &payload) };
            let mut p = orig.clone();
            let h = parse(&p).unwrap();
            rewrite(&mut p, &h, Endpoint::Destination, server, ChecksumState::Complete);
            prop_assert!(checksums_ok(&p));
            let h2 = parse(&p).unwrap();
            prop_assert_eq!(h2.dst, server);
            rewrite(&mut p, &h2, Endpoint::Destination, vip, ChecksumState::Complete);
            prop_assert!(checksums_ok(&p));
            // Back where it started, except that a UDP checksum may flip between 0 and ffff.
            if is_tcp { prop_assert_eq!(p, orig); }
        }
    }
}
