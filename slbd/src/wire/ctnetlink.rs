//! ctnetlink conntrack messages as bytes (include/uapi/linux/netfilter/nfnetlink_conntrack.h,
//! nf_conntrack_common.h, nf_conntrack_tcp.h): parsing the entries the kernel sends (events and
//! dump answers) and emitting the requests offload mode sends (create a NAT'd entry, delete one
//! entry by its original tuple, delete or dump every entry under a mark). IPv4 TCP and UDP only.
//! Pure: no sockets; every parse is bounds-checked and never panics.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::core::balancer::{KernelReport, Traffic};
use crate::core::flow::Phase;
use crate::core::net::Protocol;
use crate::wire::netlink::{
    attrs, BadAttr, Header, TooLong, Writer, NFGEN_HDRLEN, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST,
};

/// `NFNL_SUBSYS_CTNETLINK << 8 | msg` (enum cntl_msg_types).
const SUBSYS_CTNETLINK: u16 = 1 << 8;
pub const MSG_CT_NEW: u16 = SUBSYS_CTNETLINK;
pub const MSG_CT_GET: u16 = SUBSYS_CTNETLINK | 1;
pub const MSG_CT_DELETE: u16 = SUBSYS_CTNETLINK | 2;

const AF_INET: u8 = 2;
const NFNETLINK_V0: u8 = 0;
/// On a delete without a tuple, ctnetlink_del_conntrack hands the message's family to the flush
/// filter only when the nfgenmsg version is non-zero; with version 0 it flushes every family.
const NFNETLINK_V1: u8 = 1;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_NAT_DST: u16 = 13;
const CTA_MARK_MASK: u16 = 21;
// enum ctattr_tuple, ctattr_ip, ctattr_l4proto
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_protoinfo, ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
// enum ctattr_counters (the 64-bit ones; the 32-bit ones are unused since 2.6.x)
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
// enum ctattr_nat (CTA_NAT_MINIP/MAXIP are aliases of the V4 names), ctattr_protonat
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

/// IP_CT_TCP_FLAG_BE_LIBERAL: skip the window checks for this direction.
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

// enum ip_conntrack_status
pub const IPS_EXPECTED: u32 = 1 << 0;
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
pub const IPS_ASSURED: u32 = 1 << 2;
pub const IPS_CONFIRMED: u32 = 1 << 3;
pub const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;
pub const IPS_SRC_NAT_DONE: u32 = 1 << 7;
pub const IPS_DST_NAT_DONE: u32 = 1 << 8;
pub const IPS_DYING: u32 = 1 << 9;
pub const IPS_FIXED_TIMEOUT: u32 = 1 << 10;
pub const IPS_OFFLOAD: u32 = 1 << 14;

/// The kernel's `enum tcp_conntrack`, as CTA_PROTOINFO_TCP_STATE carries it.
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    /// TCP_CONNTRACK_SYN_SENT2 (once LISTEN): a simultaneous open.
    pub const SYN_SENT2: u8 = 9;
}

/// What happened to an entry, from the message type and flags (ctnetlink_conntrack_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// IPCTNL_MSG_CT_NEW with NLM_F_CREATE (an event), or an entry of a dump answer.
    New,
    /// IPCTNL_MSG_CT_NEW without NLM_F_CREATE: status, protocol state or mark changed.
    Update,
    /// IPCTNL_MSG_CT_DELETE.
    Destroy,
}

/// Per-direction packet and byte counts; the kernel sends them when nf_conntrack_acct=1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// One conntrack entry as an event or a dump answer describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    pub kind: EventKind,
    pub protocol: Protocol,
    /// CTA_TUPLE_ORIG: client -> VIP:port.
    pub orig_src: SocketAddrV4,
    pub orig_dst: SocketAddrV4,
    /// CTA_TUPLE_REPLY: real server -> client once DNAT is set up.
    pub reply_src: SocketAddrV4,
    pub reply_dst: SocketAddrV4,
    /// CTA_MARK; 0 when absent (events leave it out while the mark is 0).
    pub mark: u32,
    /// CTA_PROTOINFO_TCP_STATE ([`tcp_state`]); update events carry it only when it changed.
    pub tcp_state: Option<u8>,
    /// CTA_STATUS (`IPS_*`); 0 when absent.
    pub status: u32,
    /// CTA_COUNTERS_ORIG/REPLY, when either is present.
    pub counters: Option<Counters>,
}

/// Why a message that claims to be a conntrack entry could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("netlink or nfgenmsg header cut short, or its length disagrees with the message")]
    Header,
    #[error("attribute shorter than its header or running past its container")]
    Attribute,
    #[error("attribute of the wrong size for its type")]
    FieldSize,
    #[error("original or reply tuple missing or incomplete")]
    Tuple,
}

impl From<BadAttr> for Malformed {
    fn from(_: BadAttr) -> Malformed {
        Malformed::Attribute
    }
}

/// Parses one netlink message (the bytes of one nlmsghdr and its payload). `Ok(None)` for
/// messages that are not a ctnetlink conntrack entry of IPv4 TCP or UDP (other protocols, IPv6,
/// NLMSG_DONE, ACKs ...). Never panics on any input.
pub fn parse(msg: &[u8]) -> Result<Option<CtEntry>, Malformed> {
    let h = Header::parse(msg).ok_or(Malformed::Header)?;
    let kind = match h.kind {
        MSG_CT_DELETE => EventKind::Destroy,
        // Dump answers carry NLM_F_MULTI (ctnetlink_fill_info), new-entry events NLM_F_CREATE.
        MSG_CT_NEW if h.flags & (NLM_F_CREATE | NLM_F_MULTI) != 0 => EventKind::New,
        MSG_CT_NEW => EventKind::Update,
        _ => return Ok(None),
    };
    let body = msg.get(NLMSG_HDRLEN..h.len).ok_or(Malformed::Header)?;
    let (Some(nfgen), Some(attrs_bytes)) = (body.get(..NFGEN_HDRLEN), body.get(NFGEN_HDRLEN..))
    else {
        return Err(Malformed::Header);
    };
    if nfgen[0] != AF_INET {
        return Ok(None);
    }
    let (mut orig, mut reply, mut tcp_state, mut counters) = (None, None, None, None);
    let (mut mark, mut status) = (0, 0);
    for a in attrs(attrs_bytes) {
        let a = a?;
        let (kind, data) = (a.kind, a.data);
        match kind {
            CTA_TUPLE_ORIG => orig = Some(tuple(data)?),
            CTA_TUPLE_REPLY => reply = Some(tuple(data)?),
            CTA_STATUS => status = be32(data)?,
            CTA_MARK => mark = be32(data)?,
            CTA_PROTOINFO => tcp_state = protoinfo_tcp_state(data)?.or(tcp_state),
            CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                let (packets, bytes) = packets_bytes(data)?;
                let c: &mut Counters = counters.get_or_insert_with(Counters::default);
                if kind == CTA_COUNTERS_ORIG {
                    (c.orig_packets, c.orig_bytes) = (packets, bytes);
                } else {
                    (c.reply_packets, c.reply_bytes) = (packets, bytes);
                }
            }
            _ => {}
        }
    }
    let (orig, reply) = (
        orig.ok_or(Malformed::Tuple)?,
        reply.ok_or(Malformed::Tuple)?,
    );
    // Other protocols (ICMP, SCTP ...) have no ports: not ours, not malformed.
    let Some(protocol) = orig.proto.and_then(Protocol::from_ip_proto) else {
        return Ok(None);
    };
    if reply.proto != orig.proto {
        return Err(Malformed::Tuple);
    }
    let (orig_src, orig_dst) = orig.endpoints()?;
    let (reply_src, reply_dst) = reply.endpoints()?;
    Ok(Some(CtEntry {
        kind,
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        reply_dst,
        mark,
        tcp_state,
        status,
        counters,
    }))
}

fn fixed<const N: usize>(data: &[u8]) -> Result<[u8; N], Malformed> {
    data.try_into().map_err(|_| Malformed::FieldSize)
}

fn be16(data: &[u8]) -> Result<u16, Malformed> {
    Ok(u16::from_be_bytes(fixed(data)?))
}

fn be32(data: &[u8]) -> Result<u32, Malformed> {
    Ok(u32::from_be_bytes(fixed(data)?))
}

fn be64(data: &[u8]) -> Result<u64, Malformed> {
    Ok(u64::from_be_bytes(fixed(data)?))
}

/// A tuple as read; parts may be missing until [`RawTuple::endpoints`] checks them.
#[derive(Debug, Default)]
struct RawTuple {
    proto: Option<u8>,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

impl RawTuple {
    fn endpoints(&self) -> Result<(SocketAddrV4, SocketAddrV4), Malformed> {
        match (self.src, self.sport, self.dst, self.dport) {
            (Some(s), Some(sp), Some(d), Some(dp)) => {
                Ok((SocketAddrV4::new(s, sp), SocketAddrV4::new(d, dp)))
            }
            _ => Err(Malformed::Tuple),
        }
    }
}

/// CTA_TUPLE_ORIG/REPLY: { CTA_TUPLE_IP { V4_SRC, V4_DST }, CTA_TUPLE_PROTO { NUM, ports } }.
fn tuple(data: &[u8]) -> Result<RawTuple, Malformed> {
    let mut t = RawTuple::default();
    for a in attrs(data) {
        let a = a?;
        match (a.kind, a.data) {
            (CTA_TUPLE_IP, ip) => {
                for a in attrs(ip) {
                    let a = a?;
                    match (a.kind, a.data) {
                        (CTA_IP_V4_SRC, v) => t.src = Some(Ipv4Addr::from(fixed::<4>(v)?)),
                        (CTA_IP_V4_DST, v) => t.dst = Some(Ipv4Addr::from(fixed::<4>(v)?)),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, proto) => {
                for a in attrs(proto) {
                    let a = a?;
                    match (a.kind, a.data) {
                        (CTA_PROTO_NUM, v) => t.proto = Some(fixed::<1>(v)?[0]),
                        (CTA_PROTO_SRC_PORT, v) => t.sport = Some(be16(v)?),
                        (CTA_PROTO_DST_PORT, v) => t.dport = Some(be16(v)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

/// CTA_PROTOINFO { CTA_PROTOINFO_TCP { CTA_PROTOINFO_TCP_STATE } }; None for other protocols.
fn protoinfo_tcp_state(data: &[u8]) -> Result<Option<u8>, Malformed> {
    let mut state = None;
    for a in attrs(data) {
        let a = a?;
        if let (CTA_PROTOINFO_TCP, tcp) = (a.kind, a.data) {
            for a in attrs(tcp) {
                let a = a?;
                if let (CTA_PROTOINFO_TCP_STATE, v) = (a.kind, a.data) {
                    state = Some(fixed::<1>(v)?[0]);
                }
            }
        }
    }
    Ok(state)
}

/// CTA_COUNTERS_ORIG/REPLY { PACKETS be64, BYTES be64 }.
fn packets_bytes(data: &[u8]) -> Result<(u64, u64), Malformed> {
    let (mut packets, mut bytes) = (0, 0);
    for a in attrs(data) {
        let a = a?;
        match (a.kind, a.data) {
            (CTA_COUNTERS_PACKETS, v) => packets = be64(v)?,
            (CTA_COUNTERS_BYTES, v) => bytes = be64(v)?,
            _ => {}
        }
    }
    Ok((packets, bytes))
}

impl CtEntry {
    /// What the entry says, in the balancer's terms: conntrack's TCP state folded into the
    /// phase slbd tracks (nf_conntrack_tcp.h's states: the handshake until ESTABLISHED, then
    /// FIN_WAIT through CLOSE as closing). Flows that ask conntrack only for assurance and end
    /// carry no TCP state: assured means established.
    pub fn report(&self) -> KernelReport {
        let phase = match (self.protocol, self.tcp_state) {
            (Protocol::Udp, _) => Some(Phase::Established),
            (Protocol::Tcp, None) if self.status & IPS_ASSURED != 0 => Some(Phase::Established),
            (Protocol::Tcp, None) => None,
            (Protocol::Tcp, Some(tcp_state::ESTABLISHED)) => Some(Phase::Established),
            (Protocol::Tcp, Some(s)) if (tcp_state::FIN_WAIT..=tcp_state::CLOSE).contains(&s) => {
                Some(Phase::Closing)
            }
            (Protocol::Tcp, Some(_)) => Some(Phase::Opening),
        };
        KernelReport {
            ended: self.kind == EventKind::Destroy,
            protocol: self.protocol,
            client: self.orig_src,
            vip: self.orig_dst,
            server: self.reply_src,
            mark: self.mark,
            phase,
            traffic: self.counters.map(|c| Traffic {
                packets_in: c.orig_packets,
                bytes_in: c.orig_bytes,
                packets_out: c.reply_packets,
                bytes_out: c.reply_bytes,
            }),
        }
    }
}

/// What to inject for one flow on takeover: the entry the peer's kernel held for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inject {
    pub protocol: Protocol,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub server: SocketAddrV4,
    pub mark: u32,
    /// Seen both ways already: created ASSURED (never early-dropped) and, for TCP, ESTABLISHED.
    pub established: bool,
    /// Seconds until the kernel expires it unless traffic refreshes it.
    pub timeout_s: u32,
}

/// IPCTNL_MSG_CT_NEW creating the DNAT'd entry of `f` (ctnetlink_create_conntrack). The reply
/// tuple is the plain inverse of the original one (VIP -> client): nf_nat_setup_info, run by
/// the CTA_NAT_DST range, rewrites it to server -> client and sets IPS_DST_NAT, exactly as for
/// a packet that met a `dnat to` rule. CTA_STATUS carries IPS_CONFIRMED, plus SEEN_REPLY and
/// ASSURED for an established flow. TCP entries get liberal window tracking both ways since
/// this node never saw the connection's sequence numbers. Fails with EEXIST if the original
/// tuple (or the NAT'd reply tuple) is taken.
pub fn emit_create(seq: u32, f: &Inject) -> Result<Vec<u8>, TooLong> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let mut w = begin(MSG_CT_NEW, flags, seq, NFNETLINK_V0);
    put_tuple(&mut w, CTA_TUPLE_ORIG, f.protocol, f.client, f.vip);
    put_tuple(&mut w, CTA_TUPLE_REPLY, f.protocol, f.vip, f.client);
    w.nest(CTA_NAT_DST, |w| {
        w.attr(CTA_NAT_V4_MINIP, &f.server.ip().octets());
        w.attr(CTA_NAT_V4_MAXIP, &f.server.ip().octets());
        w.nest(CTA_NAT_PROTO, |w| {
            w.attr(CTA_PROTONAT_PORT_MIN, &f.server.port().to_be_bytes());
            w.attr(CTA_PROTONAT_PORT_MAX, &f.server.port().to_be_bytes());
        });
    });
    w.attr(CTA_TIMEOUT, &f.timeout_s.to_be_bytes());
    w.attr(CTA_MARK, &f.mark.to_be_bytes());
    // ctnetlink_create_conntrack sets IPS_CONFIRMED before applying CTA_STATUS, and
    // nf_ct_change_status_common answers EBUSY to a status that would clear it.
    let status = if f.established {
        IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
    } else {
        IPS_CONFIRMED
    };
    w.attr(CTA_STATUS, &status.to_be_bytes());
    if f.protocol == Protocol::Tcp {
        let state = if f.established {
            tcp_state::ESTABLISHED
        } else {
            tcp_state::SYN_SENT
        };
        // struct nf_ct_tcp_flags { flags, mask }: set BE_LIBERAL, leave the other flags alone.
        let liberal = [TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL];
        w.nest(CTA_PROTOINFO, |w| {
            w.nest(CTA_PROTOINFO_TCP, |w| {
                w.attr(CTA_PROTOINFO_TCP_STATE, &[state]);
                w.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal);
                w.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal);
            });
        });
    }
    w.finish()
}

/// IPCTNL_MSG_CT_DELETE of the entry whose original tuple is `orig_src -> orig_dst`; the kernel
/// answers ENOENT when there is none.
pub fn emit_delete(
    seq: u32,
    protocol: Protocol,
    orig_src: SocketAddrV4,
    orig_dst: SocketAddrV4,
) -> Result<Vec<u8>, TooLong> {
    let mut w = begin(MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, NFNETLINK_V0);
    put_tuple(&mut w, CTA_TUPLE_ORIG, protocol, orig_src, orig_dst);
    w.finish()
}

/// IPCTNL_MSG_CT_DELETE of the entry whose reply tuple is `reply_src -> reply_dst` (after a
/// DNAT, the real server → the client: it names the server the entry is bound to).
pub fn emit_delete_reply(
    seq: u32,
    protocol: Protocol,
    reply_src: SocketAddrV4,
    reply_dst: SocketAddrV4,
) -> Result<Vec<u8>, TooLong> {
    let mut w = begin(MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, NFNETLINK_V0);
    put_tuple(&mut w, CTA_TUPLE_REPLY, protocol, reply_src, reply_dst);
    w.finish()
}

/// IPCTNL_MSG_CT_DELETE without a tuple: the kernel's filtered flush (ctnetlink_flush_conntrack)
/// of every IPv4 entry whose `mark & mask == mark & mask`. The mark is sent already masked
/// because the kernel compares `ct->mark & mask` with it unmasked. A `mask` of 0 matches every
/// entry, which flushes the whole IPv4 table.
pub fn emit_delete_marked(seq: u32, mark: u32, mask: u32) -> Result<Vec<u8>, TooLong> {
    let mut w = begin(MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, NFNETLINK_V1);
    w.attr(CTA_MARK, &(mark & mask).to_be_bytes());
    w.attr(CTA_MARK_MASK, &mask.to_be_bytes());
    w.finish()
}

/// IPCTNL_MSG_CT_GET dump of the IPv4 entries whose `mark & mask == mark & mask`
/// (ctnetlink_start's filter; the family filters dumps whatever the version).
pub fn emit_dump_marked(seq: u32, mark: u32, mask: u32) -> Result<Vec<u8>, TooLong> {
    let mut w = begin(MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, NFNETLINK_V0);
    w.attr(CTA_MARK, &(mark & mask).to_be_bytes());
    w.attr(CTA_MARK_MASK, &mask.to_be_bytes());
    w.finish()
}

/// A ctnetlink message: the netlink header and the nfgenmsg {AF_INET, version, res_id 0}.
fn begin(kind: u16, flags: u16, seq: u32, version: u8) -> Writer {
    Writer::nfgen(kind, flags, seq, AF_INET, version, 0)
}

/// A tuple as nested attributes. ctnetlink parses nests leniently, but the writer flags them
/// as the kernel flags its own.
fn put_tuple(w: &mut Writer, kind: u16, protocol: Protocol, src: SocketAddrV4, dst: SocketAddrV4) {
    w.nest(kind, |w| {
        w.nest(CTA_TUPLE_IP, |w| {
            w.attr(CTA_IP_V4_SRC, &src.ip().octets());
            w.attr(CTA_IP_V4_DST, &dst.ip().octets());
        });
        w.nest(CTA_TUPLE_PROTO, |w| {
            w.attr(CTA_PROTO_NUM, &[protocol as u8]);
            w.attr(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
            w.attr(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::netlink::{NLA_F_NESTED, NLMSG_DONE};
    use proptest::prelude::*;

    #[test]
    fn the_ctnetlink_fuzz_seeds_are_these_fixtures() {
        let update = kernel_entry(MSG_CT_NEW, 0, AF_INET, 6, |o| {
            o.attr(CTA_STATUS, &(IPS_SEEN_REPLY | IPS_CONFIRMED).to_be_bytes());
            tcp_protoinfo(o, tcp_state::ESTABLISHED);
        });
        let destroy = kernel_entry(MSG_CT_DELETE, 0, AF_INET, 17, |o| {
            counters(o, CTA_COUNTERS_ORIG, 3, 180);
            counters(o, CTA_COUNTERS_REPLY, 2, 120);
        });
        let mut two = new_event();
        two.extend(&destroy);
        for (name, bytes) in [
            ("new_event", new_event()),
            ("update", update),
            ("destroy", destroy),
            ("create_request", emit_create(1, &tcp_flow()).unwrap()),
            ("two_in_one_datagram", two),
        ] {
            slb_common::fuzz_seed::check("ctnetlink", name, &bytes).unwrap();
        }
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const CLIENT: &str = "10.0.0.5:40000";
    const VIP: &str = "10.0.0.100:80";
    const SERVER: &str = "172.16.0.3:8000";

    /// A conntrack entry message as ctnetlink_conntrack_event / ctnetlink_fill_info build it:
    /// both tuples first, then whatever `rest` adds.
    fn kernel_entry(
        kind: u16,
        flags: u16,
        family: u8,
        proto: u8,
        rest: impl FnOnce(&mut Writer),
    ) -> Vec<u8> {
        let mut out = Writer::nfgen(kind, flags, 0, family, NFNETLINK_V0, 0);
        for (attr, src, dst) in [
            (CTA_TUPLE_ORIG, sa(CLIENT), sa(VIP)),
            (CTA_TUPLE_REPLY, sa(SERVER), sa(CLIENT)),
        ] {
            out.nest(attr, |o| {
                o.nest(CTA_TUPLE_IP, |o| {
                    o.attr(CTA_IP_V4_SRC, &src.ip().octets());
                    o.attr(CTA_IP_V4_DST, &dst.ip().octets());
                });
                o.nest(CTA_TUPLE_PROTO, |o| {
                    o.attr(CTA_PROTO_NUM, &[proto]);
                    if proto == 6 || proto == 17 {
                        o.attr(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
                        o.attr(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
                    }
                });
            });
        }
        rest(&mut out);
        out.finish().unwrap()
    }

    fn tcp_protoinfo(o: &mut Writer, state: u8) {
        o.nest(CTA_PROTOINFO, |o| {
            o.nest(CTA_PROTOINFO_TCP, |o| {
                o.attr(CTA_PROTOINFO_TCP_STATE, &[state]);
                o.attr(2 /* WSCALE_ORIGINAL */, &[7]);
                o.attr(3 /* WSCALE_REPLY */, &[7]);
                o.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[0x23, 0]);
                o.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[0x23, 0]);
            });
        });
    }

    fn counters(o: &mut Writer, attr: u16, packets: u64, bytes: u64) {
        o.nest(attr, |o| {
            o.attr(CTA_COUNTERS_PACKETS, &packets.to_be_bytes());
            o.attr(CTA_COUNTERS_BYTES, &bytes.to_be_bytes());
        });
    }

    fn new_event() -> Vec<u8> {
        kernel_entry(MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL, AF_INET, 6, |o| {
            o.attr(12 /* CTA_ID */, &0xdead_beefu32.to_be_bytes());
            o.attr(CTA_STATUS, &(IPS_CONFIRMED | IPS_DST_NAT).to_be_bytes());
            o.attr(CTA_TIMEOUT, &120u32.to_be_bytes());
            tcp_protoinfo(o, tcp_state::SYN_SENT);
            o.attr(CTA_MARK, &0x5b1f_0003u32.to_be_bytes());
        })
    }

    #[test]
    fn reads_a_new_event() {
        let e = parse(&new_event()).unwrap().unwrap();
        assert_eq!(
            e,
            CtEntry {
                kind: EventKind::New,
                protocol: Protocol::Tcp,
                orig_src: sa(CLIENT),
                orig_dst: sa(VIP),
                reply_src: sa(SERVER),
                reply_dst: sa(CLIENT),
                mark: 0x5b1f_0003,
                tcp_state: Some(tcp_state::SYN_SENT),
                status: IPS_CONFIRMED | IPS_DST_NAT,
                counters: None,
            }
        );
    }

    #[test]
    fn reads_an_update_with_its_tcp_state() {
        let msg = kernel_entry(MSG_CT_NEW, 0, AF_INET, 6, |o| {
            o.attr(CTA_STATUS, &(IPS_SEEN_REPLY | IPS_CONFIRMED).to_be_bytes());
            tcp_protoinfo(o, tcp_state::ESTABLISHED);
        });
        let e = parse(&msg).unwrap().unwrap();
        assert_eq!(e.kind, EventKind::Update);
        assert_eq!(e.tcp_state, Some(tcp_state::ESTABLISHED));
        assert_eq!((e.mark, e.status), (0, IPS_SEEN_REPLY | IPS_CONFIRMED));
    }

    #[test]
    fn reads_a_destroy_with_counters() {
        let msg = kernel_entry(MSG_CT_DELETE, 0, AF_INET, 17, |o| {
            counters(o, CTA_COUNTERS_ORIG, 3, 180);
            counters(o, CTA_COUNTERS_REPLY, 2, 1500);
            o.attr(CTA_MARK, &7u32.to_be_bytes());
        });
        let e = parse(&msg).unwrap().unwrap();
        assert_eq!(
            (e.kind, e.protocol, e.mark),
            (EventKind::Destroy, Protocol::Udp, 7)
        );
        assert_eq!((e.tcp_state, e.status), (None, 0));
        assert_eq!(
            e.counters,
            Some(Counters {
                orig_packets: 3,
                orig_bytes: 180,
                reply_packets: 2,
                reply_bytes: 1500
            })
        );
    }

    #[test]
    fn dump_answers_are_new_entries() {
        let msg = kernel_entry(MSG_CT_NEW, NLM_F_MULTI, AF_INET, 17, |_| {});
        assert_eq!(parse(&msg).unwrap().unwrap().kind, EventKind::New);
    }

    #[test]
    fn other_messages_are_not_entries() {
        let icmp = kernel_entry(MSG_CT_NEW, NLM_F_CREATE, AF_INET, 1, |_| {});
        assert_eq!(parse(&icmp), Ok(None));
        let ipv6 = kernel_entry(MSG_CT_NEW, NLM_F_CREATE, 10 /* AF_INET6 */, 6, |_| {});
        assert_eq!(parse(&ipv6), Ok(None));
        let get = kernel_entry(MSG_CT_GET, 0, AF_INET, 6, |_| {});
        assert_eq!(parse(&get), Ok(None));
        let mut done = Writer::new(NLMSG_DONE, NLM_F_MULTI, 9);
        done.fixed(&0i32.to_ne_bytes());
        assert_eq!(parse(&done.finish().unwrap()), Ok(None));
    }

    #[test]
    fn malformed_entries_say_why() {
        let no_tuples = begin(MSG_CT_NEW, NLM_F_CREATE, 0, NFNETLINK_V0)
            .finish()
            .unwrap();
        assert_eq!(parse(&no_tuples), Err(Malformed::Tuple));
        let mut no_ports = begin(MSG_CT_NEW, NLM_F_CREATE, 0, NFNETLINK_V0);
        for attr in [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY] {
            no_ports.nest(attr, |o| {
                o.nest(CTA_TUPLE_IP, |o| {
                    o.attr(CTA_IP_V4_SRC, &[10, 0, 0, 5]);
                    o.attr(CTA_IP_V4_DST, &[10, 0, 0, 100]);
                });
                o.nest(CTA_TUPLE_PROTO, |o| o.attr(CTA_PROTO_NUM, &[6]));
            });
        }
        let no_ports = no_ports.finish().unwrap();
        assert_eq!(parse(&no_ports), Err(Malformed::Tuple));
        let short_mark = kernel_entry(MSG_CT_NEW, 0, AF_INET, 6, |o| o.attr(CTA_MARK, &[1, 2]));
        assert_eq!(parse(&short_mark), Err(Malformed::FieldSize));
        let mut overflow = new_event();
        overflow[20..22].copy_from_slice(&900u16.to_ne_bytes());
        assert_eq!(parse(&overflow), Err(Malformed::Attribute));
        let mut zero_len = new_event();
        zero_len[20..22].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse(&zero_len), Err(Malformed::Attribute));
        assert_eq!(parse(&new_event()[..10]), Err(Malformed::Header));
        let mut long = new_event();
        long[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(parse(&long), Err(Malformed::Header));
        let mut nfgen_cut = Writer::new(MSG_CT_NEW, 0, 0);
        nfgen_cut.fixed(&[AF_INET, 0]);
        let nfgen_cut = nfgen_cut.finish().unwrap();
        assert_eq!(parse(&nfgen_cut), Err(Malformed::Header));
    }

    #[test]
    fn a_cut_message_is_refused_or_reads_the_same_flow() {
        for good in [new_event(), emit_create(1, &tcp_flow()).unwrap()] {
            let whole = parse(&good).unwrap().unwrap();
            for cut in 0..good.len() {
                // The header still claims the whole length: the message is cut short.
                assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
                // The same cut with the header's length agreeing, so attributes get cut too:
                // refused, or (once both tuples are in) the same flow with fewer details.
                let mut b = good[..cut].to_vec();
                if cut >= 4 {
                    b[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
                }
                match parse(&b) {
                    Err(_) => {}
                    Ok(Some(e)) => assert_eq!(
                        (
                            e.kind,
                            e.protocol,
                            e.orig_src,
                            e.orig_dst,
                            e.reply_src,
                            e.reply_dst
                        ),
                        (
                            whole.kind,
                            whole.protocol,
                            whole.orig_src,
                            whole.orig_dst,
                            whole.reply_src,
                            whole.reply_dst
                        ),
                        "cut at {cut}"
                    ),
                    Ok(None) => panic!("cut at {cut}: a conntrack entry read as something else"),
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_attributes_never_panic(
            attrs in proptest::collection::vec(any::<u8>(), 0..400),
            kind in prop_oneof![Just(MSG_CT_NEW), Just(MSG_CT_DELETE)],
        ) {
            let mut msg = begin(kind, NLM_F_CREATE, 0, NFNETLINK_V0);
            msg.fixed(&attrs);
            let _ = parse(&msg.finish().unwrap());
        }

        #[test]
        fn emitted_entries_parse_back(
            client in any::<[u8; 4]>(), cport in any::<u16>(), vport in any::<u16>(),
            mark in any::<u32>(), tcp in any::<bool>(), established in any::<bool>(),
        ) {
            let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
            let f = Inject {
                protocol,
                client: SocketAddrV4::new(client.into(), cport),
                vip: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), vport),
                server: sa(SERVER),
                mark,
                established,
                timeout_s: 300,
            };
            let e = parse(&emit_create(5, &f).unwrap()).unwrap().unwrap();
            prop_assert_eq!((e.orig_src, e.orig_dst), (f.client, f.vip));
            prop_assert_eq!((e.reply_src, e.reply_dst), (f.vip, f.client));
            prop_assert_eq!((e.protocol, e.mark), (protocol, mark));
        }
    }

    fn tcp_flow() -> Inject {
        Inject {
            protocol: Protocol::Tcp,
            client: sa(CLIENT),
            vip: sa(VIP),
            server: sa(SERVER),
            mark: 0x5b1f_0003,
            established: true,
            timeout_s: 432_000,
        }
    }

    /// The top-level attributes of one emitted request, after checking its headers.
    fn top_attrs(msg: &[u8], kind: u16, flags: u16, seq: u32, version: u8) -> Vec<(u16, Vec<u8>)> {
        let h = Header::parse(msg).unwrap();
        assert_eq!(
            (h.len, h.kind, h.flags, h.seq),
            (msg.len(), kind, flags, seq)
        );
        assert_eq!(msg.len() % 4, 0, "netlink messages are 4-byte aligned");
        assert_eq!(&msg[16..20], &[AF_INET, version, 0, 0], "nfgenmsg");
        attrs(&msg[20..])
            .map(|a| a.map(|a| (a.kind, a.data.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn nested(data: &[u8]) -> Vec<(u16, Vec<u8>)> {
        attrs(data)
            .map(|a| a.map(|a| (a.kind, a.data.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn create_request_carries_the_nat_and_the_tcp_state() {
        let f = tcp_flow();
        let msg = emit_create(41, &f).unwrap();
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let top = top_attrs(&msg, MSG_CT_NEW, flags, 41, NFNETLINK_V0);
        let kinds: Vec<u16> = top.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                CTA_TUPLE_ORIG,
                CTA_TUPLE_REPLY,
                CTA_NAT_DST,
                CTA_TIMEOUT,
                CTA_MARK,
                CTA_STATUS,
                CTA_PROTOINFO
            ]
        );
        // Nests carry NLA_F_NESTED on the wire.
        assert_eq!(
            u16::from_ne_bytes([msg[22], msg[23]]),
            CTA_TUPLE_ORIG | NLA_F_NESTED
        );
        let orig = tuple(&top[0].1).unwrap();
        assert_eq!(orig.endpoints(), Ok((f.client, f.vip)));
        assert_eq!(orig.proto, Some(6));
        let reply = tuple(&top[1].1).unwrap();
        assert_eq!(reply.endpoints(), Ok((f.vip, f.client)));
        let nat = nested(&top[2].1);
        let ip = f.server.ip().octets().to_vec();
        assert_eq!(nat[0], (CTA_NAT_V4_MINIP, ip.clone()));
        assert_eq!(nat[1], (CTA_NAT_V4_MAXIP, ip));
        assert_eq!(nat[2].0, CTA_NAT_PROTO);
        let port = f.server.port().to_be_bytes().to_vec();
        assert_eq!(
            nested(&nat[2].1),
            [
                (CTA_PROTONAT_PORT_MIN, port.clone()),
                (CTA_PROTONAT_PORT_MAX, port)
            ]
        );
        assert_eq!(be32(&top[3].1), Ok(432_000));
        assert_eq!(be32(&top[4].1), Ok(0x5b1f_0003));
        assert_eq!(
            be32(&top[5].1),
            Ok(IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED)
        );
        let info = nested(&top[6].1);
        assert_eq!(info[0].0, CTA_PROTOINFO_TCP);
        assert_eq!(
            nested(&info[0].1),
            [
                (CTA_PROTOINFO_TCP_STATE, vec![tcp_state::ESTABLISHED]),
                (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, vec![0x08, 0x08]),
                (CTA_PROTOINFO_TCP_FLAGS_REPLY, vec![0x08, 0x08]),
            ]
        );
    }

    #[test]
    fn udp_and_unestablished_creates() {
        let f = Inject {
            protocol: Protocol::Udp,
            established: false,
            ..tcp_flow()
        };
        let msg = emit_create(1, &f).unwrap();
        let top = top_attrs(&msg, MSG_CT_NEW, 0x605, 1, NFNETLINK_V0);
        assert!(top.iter().all(|(k, _)| *k != CTA_PROTOINFO));
        let status = top.iter().find(|(k, _)| *k == CTA_STATUS).unwrap();
        assert_eq!(be32(&status.1), Ok(IPS_CONFIRMED));
        let tcp = emit_create(
            1,
            &Inject {
                established: false,
                ..tcp_flow()
            },
        )
        .unwrap();
        assert_eq!(
            parse(&tcp).unwrap().unwrap().tcp_state,
            Some(tcp_state::SYN_SENT)
        );
    }

    #[test]
    fn delete_by_reply_names_the_reply_tuple() {
        let msg = emit_delete_reply(8, Protocol::Tcp, sa(SERVER), sa(CLIENT)).unwrap();
        let top = top_attrs(
            &msg,
            MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            8,
            NFNETLINK_V0,
        );
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, CTA_TUPLE_REPLY);
        let t = tuple(&top[0].1).unwrap();
        assert_eq!(
            (t.proto, t.endpoints()),
            (Some(6), Ok((sa(SERVER), sa(CLIENT))))
        );
    }

    #[test]
    fn delete_request_names_the_original_tuple() {
        let msg = emit_delete(7, Protocol::Udp, sa(CLIENT), sa(VIP)).unwrap();
        let top = top_attrs(
            &msg,
            MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            NFNETLINK_V0,
        );
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, CTA_TUPLE_ORIG);
        let t = tuple(&top[0].1).unwrap();
        assert_eq!(
            (t.proto, t.endpoints()),
            (Some(17), Ok((sa(CLIENT), sa(VIP))))
        );
    }

    #[test]
    fn marked_requests_carry_only_the_mark_filter() {
        let msg = emit_delete_marked(8, 0x5b1f_0003, 0xffff_ffff).unwrap();
        let top = top_attrs(
            &msg,
            MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            8,
            NFNETLINK_V1,
        );
        assert_eq!(
            top,
            [
                (CTA_MARK, 0x5b1f_0003u32.to_be_bytes().to_vec()),
                (CTA_MARK_MASK, 0xffff_ffffu32.to_be_bytes().to_vec())
            ]
        );
        // Bits outside the mask are cleared: the kernel compares them unmasked.
        let msg = emit_dump_marked(9, 0x5b1f_0042, 0xffff_0000).unwrap();
        let top = top_attrs(
            &msg,
            MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            NFNETLINK_V0,
        );
        assert_eq!(
            top,
            [
                (CTA_MARK, 0x5b1f_0000u32.to_be_bytes().to_vec()),
                (CTA_MARK_MASK, 0xffff_0000u32.to_be_bytes().to_vec())
            ]
        );
    }

    #[test]
    fn conntrack_states_fold_into_the_phases_slbd_tracks() {
        let tcp = |state: Option<u8>, status: u32| CtEntry {
            tcp_state: state,
            status,
            ..parse(&new_event()).unwrap().unwrap()
        };
        let cases = [
            (Some(tcp_state::SYN_SENT), 0, Some(Phase::Opening)),
            (Some(tcp_state::SYN_RECV), 0, Some(Phase::Opening)),
            (Some(tcp_state::ESTABLISHED), 0, Some(Phase::Established)),
            (Some(tcp_state::FIN_WAIT), 0, Some(Phase::Closing)),
            (Some(tcp_state::CLOSE_WAIT), 0, Some(Phase::Closing)),
            (Some(tcp_state::LAST_ACK), 0, Some(Phase::Closing)),
            (Some(tcp_state::TIME_WAIT), 0, Some(Phase::Closing)),
            (Some(tcp_state::CLOSE), 0, Some(Phase::Closing)),
            (Some(tcp_state::SYN_SENT2), 0, Some(Phase::Opening)),
            (None, IPS_ASSURED, Some(Phase::Established)),
            (None, IPS_SEEN_REPLY, None),
        ];
        for (state, status, phase) in cases {
            assert_eq!(
                tcp(state, status).report().phase,
                phase,
                "{state:?} {status:#x}"
            );
        }
        let udp = CtEntry {
            protocol: Protocol::Udp,
            tcp_state: None,
            ..parse(&new_event()).unwrap().unwrap()
        };
        assert_eq!(udp.report().phase, Some(Phase::Established));
    }

    #[test]
    fn a_report_names_the_flow_its_server_and_its_end() {
        let destroy = CtEntry {
            kind: EventKind::Destroy,
            counters: Some(Counters {
                orig_packets: 1,
                orig_bytes: 2,
                reply_packets: 3,
                reply_bytes: 4,
            }),
            ..parse(&new_event()).unwrap().unwrap()
        };
        let r = destroy.report();
        assert!(r.ended);
        assert_eq!(
            (r.client, r.vip, r.server, r.mark),
            (sa(CLIENT), sa(VIP), sa(SERVER), 0x5b1f_0003)
        );
        assert_eq!(
            r.traffic,
            Some(Traffic {
                packets_in: 1,
                bytes_in: 2,
                packets_out: 3,
                bytes_out: 4
            })
        );
        assert!(!parse(&new_event()).unwrap().unwrap().report().ended);
    }
}
