//! rtnetlink messages for links, IPv4 addresses and host routes as bytes
//! (include/uapi/linux/rtnetlink.h, if_link.h, if_addr.h): emitting the requests `addr` and
//! `announce` send (a link looked up by name or set up; an address added, dumped per
//! interface, deleted; a host route added or deleted in a table) and parsing the kernel's
//! answers (a link's index and MAC, an address's prefix, interface and IFA_LOCAL, ACKs and
//! errors). Pure: no sockets; every parse is bounds-checked and never panics.
use std::net::Ipv4Addr;

use crate::wire::netlink::{
    attrs, status, BadAttr, Header, Status, TooLong, Writer, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;

// enum ifla (if_link.h)
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
// enum ifa (if_addr.h)
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

// enum rtattr_type_t (rtnetlink.h)
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
/// RTPROT_STATIC: a route an administrator put there, which a BGP daemon's kernel protocol
/// learns (it skips the kernel's own, RTPROT_KERNEL, and its own).
const RTPROT_STATIC: u8 = 4;
/// RT_SCOPE_LINK: the destination is on the device itself, no gateway.
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
/// RT_TABLE_UNSPEC in rtmsg's 8-bit table field: the table is RTA_TABLE's, which has 32 bits.
const RT_TABLE_UNSPEC: u8 = 0;
/// IFF_UP (if.h).
const IFF_UP: u32 = 1;
/// struct rtmsg: `{family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags u32}`.
const RTMSG_LEN: usize = 12;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
/// RT_SCOPE_UNIVERSE, the scope `ip addr add` gives an address unless told otherwise.
const RT_SCOPE_UNIVERSE: u8 = 0;
/// ENODEV (include/uapi/asm-generic/errno-base.h): the kernel's answer for an interface name or
/// index it does not know.
pub const ENODEV: i32 = 19;

/// struct ifinfomsg: `{family u8, pad u8, type u16, index i32, flags u32, change u32}`.
const IFINFOMSG_LEN: usize = 16;
/// struct ifaddrmsg: `{family u8, prefixlen u8, flags u8, scope u8, index u32}`.
const IFADDRMSG_LEN: usize = 8;

/// An interface as an RTM_NEWLINK answer describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// IFLA_ADDRESS when it is a 6-byte (Ethernet) hardware address.
    pub mac: Option<[u8; 6]>,
}

/// An IPv4 address as an RTM_NEWADDR answer describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub prefix: u8,
    /// IFA_LOCAL: the interface's own address.
    pub local: Option<Ipv4Addr>,
    /// IFA_ADDRESS: the same as IFA_LOCAL, or the peer's on a point-to-point address.
    pub address: Option<Ipv4Addr>,
}

/// What one message from the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Link(Link),
    Addr(Addr),
    /// The request succeeded.
    Ack,
    /// A dump is complete.
    Done,
    /// ENODEV: no such interface.
    NoDevice,
    /// Any other error, as a positive errno.
    Errno(i32),
    /// Anything else: other message types, other address families.
    Other,
}

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("netlink header, or the family header after it, cut short")]
    Header,
    #[error("attribute shorter than its header or running past its message")]
    Attribute,
    #[error("attribute of the wrong size for its type")]
    FieldSize,
}

impl From<BadAttr> for Malformed {
    fn from(_: BadAttr) -> Malformed {
        Malformed::Attribute
    }
}

/// RTM_GETLINK of the interface named `name` (IFLA_IFNAME, NUL-terminated as the kernel's
/// NLA_STRING policy allows); the kernel answers one RTM_NEWLINK or ENODEV.
pub fn emit_get_link(seq: u32, name: &str) -> Result<Vec<u8>, TooLong> {
    let mut w = Writer::new(RTM_GETLINK, NLM_F_REQUEST, seq);
    w.fixed(&[AF_UNSPEC; IFINFOMSG_LEN]);
    let mut z = Vec::with_capacity(name.len() + 1);
    z.extend_from_slice(name.as_bytes());
    z.push(0);
    w.attr(IFLA_IFNAME, &z);
    w.finish()
}

/// RTM_NEWADDR of `ip/prefix` on interface `index`, replacing an identical address instead of
/// failing with EEXIST. IFA_LOCAL and IFA_ADDRESS are both `ip`, as `ip addr add` sends them
/// without a peer; IFA_BROADCAST is the prefix's all-ones address for a prefix under 31, as
/// `ip addr add ... brd +` computes it (a /31 or /32 has no broadcast address, RFC 3021).
pub fn emit_new_addr(seq: u32, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<Vec<u8>, TooLong> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut w = Writer::new(RTM_NEWADDR, flags, seq);
    w.fixed(&ifaddrmsg(prefix, index));
    w.attr(IFA_ADDRESS, &ip.octets());
    w.attr(IFA_LOCAL, &ip.octets());
    if prefix < 31 {
        let broadcast = u32::from(ip) | (u32::MAX >> prefix);
        w.attr(IFA_BROADCAST, &broadcast.to_be_bytes());
    }
    w.finish()
}

/// RTM_GETADDR dump of the IPv4 addresses of interface `index`. The kernel filters by index
/// only on a socket with NETLINK_GET_STRICT_CHK (Linux 4.20); older ones send every
/// interface's, so readers check [`Addr::index`] too.
pub fn emit_get_addrs(seq: u32, index: u32) -> Result<Vec<u8>, TooLong> {
    let mut w = Writer::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq);
    // A strict dump request must leave prefix, flags and scope 0 (inet_valid_dump_ifaddr_req).
    w.fixed(&ifaddrmsg(0, index));
    w.finish()
}

/// RTM_DELADDR of the address a dump answered with. inet_rtm_deladdr deletes the interface's
/// first address whose IFA_LOCAL, and IFA_ADDRESS under the prefix, match the ones given.
pub fn emit_del_addr(seq: u32, a: &Addr) -> Result<Vec<u8>, TooLong> {
    let mut w = Writer::new(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq);
    w.fixed(&ifaddrmsg(a.prefix, a.index));
    if let Some(address) = a.address {
        w.attr(IFA_ADDRESS, &address.octets());
    }
    if let Some(local) = a.local {
        w.attr(IFA_LOCAL, &local.octets());
    }
    w.finish()
}

/// RTM_NEWLINK setting interface `index` up (IFF_UP in both flags and change, so no other flag
/// is touched), as `ip link set DEV up` sends it.
pub fn emit_link_up(seq: u32, index: u32) -> Result<Vec<u8>, TooLong> {
    let mut w = Writer::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    let mut m = [0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
    m[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
    w.fixed(&m);
    w.finish()
}

/// What to do with a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// Add it, replacing the same route.
    Add,
    /// Add it only if it is not there (EEXIST otherwise, and no change the daemon would see).
    Ensure,
    Delete,
}

/// RTM_NEWROUTE or RTM_DELROUTE of `ip/32 dev index table table proto static scope link`: the
/// host route a BGP daemon learns from `table`.
pub fn emit_host_route(
    seq: u32,
    op: RouteOp,
    table: u32,
    ip: Ipv4Addr,
    index: u32,
) -> Result<Vec<u8>, TooLong> {
    let (kind, flags) = match op {
        RouteOp::Add => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        RouteOp::Ensure => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ),
        RouteOp::Delete => (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut w = Writer::new(kind, flags, seq);
    let mut m = [0u8; RTMSG_LEN];
    m[0] = AF_INET;
    m[1] = 32;
    m[4] = RT_TABLE_UNSPEC;
    m[5] = RTPROT_STATIC;
    m[6] = RT_SCOPE_LINK;
    m[7] = RTN_UNICAST;
    w.fixed(&m);
    w.attr(RTA_DST, &ip.octets());
    w.attr(RTA_OIF, &index.to_ne_bytes());
    w.attr(RTA_TABLE, &table.to_ne_bytes());
    w.finish()
}

fn ifaddrmsg(prefix: u8, index: u32) -> [u8; IFADDRMSG_LEN] {
    let mut m = [0u8; IFADDRMSG_LEN];
    m[0] = AF_INET;
    m[1] = prefix;
    m[3] = RT_SCOPE_UNIVERSE;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

/// Reads one message from the kernel (the bytes of one nlmsghdr and its payload).
pub fn parse(msg: &[u8]) -> Result<Answer, Malformed> {
    let h = Header::parse(msg).ok_or(Malformed::Header)?;
    match status(msg) {
        Some(Status::Ack) => return Ok(Answer::Ack),
        Some(Status::Done) => return Ok(Answer::Done),
        Some(Status::Errno(ENODEV)) => return Ok(Answer::NoDevice),
        Some(Status::Errno(e)) => return Ok(Answer::Errno(e)),
        Some(Status::Truncated) => return Err(Malformed::Header),
        None => {}
    }
    let body = msg.get(NLMSG_HDRLEN..h.len).ok_or(Malformed::Header)?;
    match h.kind {
        RTM_NEWLINK => parse_link(body).map(Answer::Link),
        RTM_NEWADDR => parse_addr(body),
        _ => Ok(Answer::Other),
    }
}

fn parse_link(body: &[u8]) -> Result<Link, Malformed> {
    let ifi = body.get(..IFINFOMSG_LEN).ok_or(Malformed::Header)?;
    let index = u32::from_ne_bytes([ifi[4], ifi[5], ifi[6], ifi[7]]);
    let mut mac = None;
    for a in attrs(&body[IFINFOMSG_LEN..]) {
        let a = a?;
        if a.kind == IFLA_ADDRESS {
            mac = a.data.try_into().ok();
        }
    }
    Ok(Link { index, mac })
}

fn parse_addr(body: &[u8]) -> Result<Answer, Malformed> {
    let ifa = body.get(..IFADDRMSG_LEN).ok_or(Malformed::Header)?;
    if ifa[0] != AF_INET {
        return Ok(Answer::Other);
    }
    let mut a = Addr {
        index: u32::from_ne_bytes([ifa[4], ifa[5], ifa[6], ifa[7]]),
        prefix: ifa[1],
        local: None,
        address: None,
    };
    for attr in attrs(&body[IFADDRMSG_LEN..]) {
        let attr = attr?;
        let ip = || {
            <[u8; 4]>::try_from(attr.data)
                .map(Ipv4Addr::from)
                .map_err(|_| Malformed::FieldSize)
        };
        match attr.kind {
            IFA_LOCAL => a.local = Some(ip()?),
            IFA_ADDRESS => a.address = Some(ip()?),
            _ => {}
        }
    }
    Ok(Answer::Addr(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::netlink::{NLMSG_DONE, NLMSG_ERROR, NLM_F_MULTI};
    use proptest::prelude::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// A message from its parts, each field spelled out as the kernel lays it out.
    fn bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn get_link_names_the_interface() {
        let msg = emit_get_link(7, "veth0").unwrap();
        let want = bytes(&[
            &ne32(16 + 16 + 12),
            &ne16(RTM_GETLINK),
            &ne16(NLM_F_REQUEST),
            &ne32(7),
            &ne32(0),
            &[0; 16], // ifinfomsg: AF_UNSPEC, index 0
            &ne16(10),
            &ne16(IFLA_IFNAME),
            b"veth0\0\0\0",
        ]);
        assert_eq!(msg, want);
    }

    #[test]
    fn new_addr_is_what_ip_addr_add_brd_plus_sends() {
        let gw = emit_new_addr(8, 3, Ipv4Addr::new(172, 16, 0, 1), 24).unwrap();
        let want = bytes(&[
            &ne32(16 + 8 + 3 * 8),
            &ne16(RTM_NEWADDR),
            &ne16(0x0505), // REQUEST | ACK | REPLACE | CREATE
            &ne32(8),
            &ne32(0),
            &[AF_INET, 24, 0, RT_SCOPE_UNIVERSE],
            &ne32(3),
            &ne16(8),
            &ne16(IFA_ADDRESS),
            &[172, 16, 0, 1],
            &ne16(8),
            &ne16(IFA_LOCAL),
            &[172, 16, 0, 1],
            &ne16(8),
            &ne16(IFA_BROADCAST),
            &[172, 16, 0, 255],
        ]);
        assert_eq!(gw, want);
        // A /32 VIP, and a /31, have no broadcast address.
        for prefix in [31, 32] {
            let vip = emit_new_addr(9, 3, Ipv4Addr::new(10, 0, 0, 100), prefix).unwrap();
            assert_eq!(vip.len(), 16 + 8 + 2 * 8);
            assert_eq!(vip[17], prefix);
        }
        let wide = emit_new_addr(1, 3, Ipv4Addr::new(10, 1, 2, 3), 8).unwrap();
        assert_eq!(&wide[44..48], &[10, 255, 255, 255]);
        let all = emit_new_addr(1, 3, Ipv4Addr::new(10, 1, 2, 3), 0).unwrap();
        assert_eq!(&all[44..48], &[255; 4]);
    }

    #[test]
    fn address_dump_and_delete_name_the_interface() {
        let dump = emit_get_addrs(4, 3).unwrap();
        let want = bytes(&[
            &ne32(24),
            &ne16(RTM_GETADDR),
            &ne16(NLM_F_REQUEST | NLM_F_DUMP),
            &ne32(4),
            &ne32(0),
            &[AF_INET, 0, 0, 0],
            &ne32(3),
        ]);
        assert_eq!(dump, want);
        let a = Addr {
            index: 3,
            prefix: 32,
            local: Some(Ipv4Addr::new(10, 0, 0, 100)),
            address: Some(Ipv4Addr::new(10, 0, 0, 100)),
        };
        let del = emit_del_addr(5, &a).unwrap();
        let want = bytes(&[
            &ne32(40),
            &ne16(RTM_DELADDR),
            &ne16(NLM_F_REQUEST | NLM_F_ACK),
            &ne32(5),
            &ne32(0),
            &[AF_INET, 32, 0, 0],
            &ne32(3),
            &ne16(8),
            &ne16(IFA_ADDRESS),
            &[10, 0, 0, 100],
            &ne16(8),
            &ne16(IFA_LOCAL),
            &[10, 0, 0, 100],
        ]);
        assert_eq!(del, want);
    }

    /// An RTM_NEWLINK answer as rtnl_fill_ifinfo lays it out (attributes abridged).
    fn kernel_link(index: u32, mac: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(RTM_NEWLINK, 0, 7);
        w.fixed(&[AF_UNSPEC, 0]);
        w.fixed(&ne16(1)); // ARPHRD_ETHER
        w.fixed(&ne32(index));
        w.fixed(&ne32(0x1043)); // IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST
        w.fixed(&ne32(0));
        w.attr(IFLA_IFNAME, b"veth0\0");
        w.attr(4 /* IFLA_MTU */, &ne32(1500));
        w.attr(IFLA_ADDRESS, mac);
        w.attr(2 /* IFLA_BROADCAST */, &[0xff; 6]);
        w.nest(26 /* IFLA_AF_SPEC */, |w| w.attr(2, &[0; 12]));
        w.finish().unwrap()
    }

    /// An RTM_NEWADDR dump answer as inet_fill_ifaddr lays it out.
    fn kernel_addr(family: u8, index: u32, prefix: u8, local: [u8; 4]) -> Vec<u8> {
        let mut w = Writer::new(RTM_NEWADDR, NLM_F_MULTI, 4);
        w.fixed(&[family, prefix, 0x80 /* IFA_F_PERMANENT */, 0]);
        w.fixed(&ne32(index));
        w.attr(IFA_ADDRESS, &local);
        w.attr(IFA_LOCAL, &local);
        w.attr(IFA_BROADCAST, &[172, 16, 0, 255]);
        w.attr(3 /* IFA_LABEL */, b"veth0\0");
        w.attr(8 /* IFA_FLAGS */, &ne32(0x80));
        w.attr(6 /* IFA_CACHEINFO */, &[0xff; 16]);
        w.finish().unwrap()
    }

    #[test]
    fn reads_a_link_answer() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        assert_eq!(
            parse(&kernel_link(3, &mac)),
            Ok(Answer::Link(Link {
                index: 3,
                mac: Some(mac)
            }))
        );
        // lo's hardware address is 6 zero bytes; a tunnel's is 4 bytes, no MAC for ARP.
        assert_eq!(
            parse(&kernel_link(9, &[1, 2, 3, 4])),
            Ok(Answer::Link(Link {
                index: 9,
                mac: None
            }))
        );
    }

    #[test]
    fn reads_an_address_answer() {
        assert_eq!(
            parse(&kernel_addr(AF_INET, 3, 24, [172, 16, 0, 1])),
            Ok(Answer::Addr(Addr {
                index: 3,
                prefix: 24,
                local: Some(Ipv4Addr::new(172, 16, 0, 1)),
                address: Some(Ipv4Addr::new(172, 16, 0, 1)),
            }))
        );
        assert_eq!(
            parse(&kernel_addr(10 /* AF_INET6 */, 3, 64, [0; 4])),
            Ok(Answer::Other)
        );
    }

    fn error(code: i32) -> Vec<u8> {
        let mut w = Writer::new(NLMSG_ERROR, 0, 4);
        w.fixed(&code.to_ne_bytes());
        w.fixed(&[0; 16]); // the request's header (NETLINK_CAP_ACK)
        w.finish().unwrap()
    }

    #[test]
    fn reads_acks_errors_and_dump_ends() {
        assert_eq!(parse(&error(0)), Ok(Answer::Ack));
        assert_eq!(parse(&error(-ENODEV)), Ok(Answer::NoDevice));
        assert_eq!(parse(&error(-17)), Ok(Answer::Errno(17)));
        assert_eq!(parse(&error(0)[..18]), Err(Malformed::Header));
        let mut done = Writer::new(NLMSG_DONE, NLM_F_MULTI, 4);
        done.fixed(&ne32(0));
        assert_eq!(parse(&done.finish().unwrap()), Ok(Answer::Done));
        let get = emit_get_link(1, "x").unwrap();
        assert_eq!(parse(&get), Ok(Answer::Other));
    }

    #[test]
    fn malformed_answers_say_why() {
        let mut link = kernel_link(3, &[0; 6]);
        link[0..4].copy_from_slice(&ne32(16 + 8));
        assert_eq!(parse(&link), Err(Malformed::Header), "ifinfomsg cut");
        let mut addr = kernel_addr(AF_INET, 3, 24, [1, 2, 3, 4]);
        addr[24..26].copy_from_slice(&ne16(900));
        assert_eq!(parse(&addr), Err(Malformed::Attribute));
        let mut short_ip = Writer::new(RTM_NEWADDR, NLM_F_MULTI, 4);
        short_ip.fixed(&ifaddrmsg(24, 3));
        short_ip.attr(IFA_LOCAL, &[1, 2, 3]);
        assert_eq!(
            parse(&short_ip.finish().unwrap()),
            Err(Malformed::FieldSize)
        );
        assert_eq!(parse(&[0; 10]), Err(Malformed::Header));
        for good in [kernel_link(3, &[0; 6]), kernel_addr(AF_INET, 3, 24, [1; 4])] {
            for cut in 0..good.len() {
                let mut b = good[..cut].to_vec();
                if cut >= 4 {
                    b[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
                }
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn names_too_long_for_an_attribute_are_refused() {
        assert_eq!(emit_get_link(1, &"x".repeat(70_000)), Err(TooLong));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_attributes_never_panic(
            attrs in proptest::collection::vec(any::<u8>(), 0..300),
            link in any::<bool>(),
        ) {
            let (kind, fixed) = if link { (RTM_NEWLINK, 16) } else { (RTM_NEWADDR, 8) };
            let mut w = Writer::new(kind, 0, 0);
            w.fixed(&vec![AF_INET; fixed]);
            w.fixed(&attrs);
            let _ = parse(&w.finish().unwrap());
        }

        #[test]
        fn emitted_addresses_parse_back(
            ip in any::<[u8; 4]>(), prefix in 0u8..=32, index in 1u32.., seq in any::<u32>(),
        ) {
            let ip = Ipv4Addr::from(ip);
            let msg = emit_new_addr(seq, index, ip, prefix).unwrap();
            let want = Addr { index, prefix, local: Some(ip), address: Some(ip) };
            prop_assert_eq!(parse(&msg), Ok(Answer::Addr(want)));
            let h = Header::parse(&msg).unwrap();
            prop_assert_eq!((h.len, h.seq), (msg.len(), seq));
            // The delete of what a dump answers carries the same address back.
            let mut del = emit_del_addr(seq, &want).unwrap();
            del[4..6].copy_from_slice(&ne16(RTM_NEWADDR));
            prop_assert_eq!(parse(&del), Ok(Answer::Addr(want)));
        }

        #[test]
        fn emitted_routes_name_the_host_its_device_and_its_table(
            op in prop_oneof![Just(RouteOp::Add), Just(RouteOp::Ensure), Just(RouteOp::Delete)],
            table: u32, ip: u32, index: u32
        ) {
            let ip = Ipv4Addr::from(ip);
            let msg = emit_host_route(7, op, table, ip, index).unwrap();
            let h = Header::parse(&msg).unwrap();
            let (kind, create_flags) = match op {
                RouteOp::Add => (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE),
                RouteOp::Ensure => (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL),
                RouteOp::Delete => (RTM_DELROUTE, 0),
            };
            prop_assert_eq!(h.kind, kind);
            prop_assert_eq!(h.flags, NLM_F_REQUEST | NLM_F_ACK | create_flags);
            prop_assert_eq!(h.seq, 7);
            let rtm = &msg[NLMSG_HDRLEN..NLMSG_HDRLEN + RTMSG_LEN];
            prop_assert_eq!(&rtm[..8], &[AF_INET, 32, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST]);
            let a: Vec<_> = attrs(&msg[NLMSG_HDRLEN + RTMSG_LEN..])
                .collect::<Result<_, _>>()
                .unwrap();
            let kinds: Vec<u16> = a.iter().map(|a| a.kind).collect();
            prop_assert_eq!(kinds, vec![RTA_DST, RTA_OIF, RTA_TABLE]);
            prop_assert_eq!(a[0].data, &ip.octets()[..]);
            prop_assert_eq!(a[1].data, &index.to_ne_bytes()[..]);
            prop_assert_eq!(a[2].data, &table.to_ne_bytes()[..]);
        }

        #[test]
        fn link_up_sets_only_iff_up(index: u32) {
            let msg = emit_link_up(3, index).unwrap();
            prop_assert_eq!(Header::parse(&msg).unwrap().kind, RTM_NEWLINK);
            let ifi = &msg[NLMSG_HDRLEN..NLMSG_HDRLEN + IFINFOMSG_LEN];
            prop_assert_eq!(&ifi[4..8], &index.to_ne_bytes()[..]);
            prop_assert_eq!(&ifi[8..16], &[1u8, 0, 0, 0, 1, 0, 0, 0][..]);
            prop_assert_eq!(msg.len(), NLMSG_HDRLEN + IFINFOMSG_LEN);
        }

        #[test]
        fn emitted_link_requests_carry_the_name(name in "[a-z0-9@._-]{1,15}") {
            let msg = emit_get_link(1, &name).unwrap();
            let a: Vec<_> = attrs(&msg[NLMSG_HDRLEN + IFINFOMSG_LEN..])
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(a.len(), 1);
            prop_assert_eq!(a[0].kind, IFLA_IFNAME);
            prop_assert_eq!(&a[0].data[..name.len()], name.as_bytes());
            prop_assert_eq!(a[0].data[name.len()], 0);
        }
    }
}
