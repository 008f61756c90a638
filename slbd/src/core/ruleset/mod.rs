//! The nftables rules slbd wants, as a plain value built from the config. Pure: the `nft`
//! shell turns it into netlink messages; tests and logs read it as nft syntax.
//!
//! Why the rules look as they do:
//! - Requests (client → VIP:port) are queued in `prerouting` at raw priority (-300), before
//!   routing, so the rewritten destination is routed to the real server, and before conntrack
//!   (-200).
//! - Replies (real server → client) are queued in `postrouting`, after routing: a reply rewritten
//!   to come from the VIP before routing would be dropped as a martian, the VIP being local.
//! - Both directions are `notrack`ed in raw prerouting. slbd keeps its own flow table, and
//!   conntrack would otherwise track each direction as a separate half-flow (client → VIP before
//!   the DNAT, server → client before the SNAT), mark mid-stream packets INVALID, fill its table
//!   for nothing, and let any NAT rule in another table bind to flows it cannot see whole.
//! - Queue rules never use `bypass`: with no slbd reading the queue the kernel drops the packets,
//!   so a crashed slbd fails closed. The VIP's other TCP/UDP ports are dropped for the same
//!   reason: nothing sent to the VIP reaches the balancer's own sockets.
//! - A queue slbd reads but cannot keep up with (a SYN flood) fails open: the kernel passes
//!   what does not fit on unchanged, to the chains after the queueing one. An offload flow's
//!   first packet then gets a server from the kernel itself (`offload_nat` spreads it by a
//!   hash of the client's address over the servers in rotation, by weight; direct routing's
//!   `dr` chain does the same for a SYN or a datagram), which is what
//!   keeps real clients connecting while the queue is full; a packet-mode packet reaches a
//!   drop (`guard` for requests, `reply_guard` for replies), as it did when the queue
//!   dropped it.
//!
//! Offload services (`"mode": "offload"`) are the other way round: conntrack must see them.
//! - Their requests pass raw prerouting untouched; in `offload` (mangle priority, after
//!   conntrack) only a flow's first packet (`ct state new`) is queued. slbd answers with the
//!   chosen server's mark ([`offload_mark`]), and `offload_nat` (the dstnat hook) turns the mark
//!   into the flow's DNAT binding and copies it to the conntrack mark, by which slbd knows its
//!   flows in conntrack events. Every later packet, both ways, is conntrack's.
//! - `refuse` runs after `offload`, so it answers refusals of both modes.
//! - `guard` (input hook) drops any TCP/UDP still addressed to the VIP: an offload packet that
//!   got no binding (slbd gone, a conntrack INVALID packet) must not reach local sockets.

use std::net::Ipv4Addr;

use crate::core::icmp;
use crate::core::model::{Config, Forwarding, Mode, Service};
use crate::core::net::{Ipv4Net, Protocol};

mod dr;
mod dr_flows;
mod offload;
pub use dr::{dr_mark, IfName, DR_CHAIN};
pub use dr_flows::{
    dr_flows, needing_netdev_egress, phase_of, DrFlow, DrFlows, DrServer, DR_CLOSING, DR_FLOWS,
    DR_IN_CHAIN, DR_OUT_CHAIN,
};
pub mod syn_budget;
mod syntax;

/// slbd's table (family `ip`), and the name of its `netdev` table (offload direct routing's
/// flows, [`dr_flows`]). It never touches any other.
pub const TABLE: &str = "slb";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Postrouting,
    /// The netdev family's: a device's packets as they arrive, before the IP stack.
    Ingress,
    /// The netdev family's: a device's packets as they leave.
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainKind,
}

pub const REQUEST_CHAIN: Chain = Chain {
    name: "prerouting",
    hook: Hook::Prerouting,
    priority: -300,
    kind: ChainKind::Filter,
};

pub const REPLY_CHAIN: Chain = Chain {
    name: "postrouting",
    hook: Hook::Postrouting,
    priority: 100,
    kind: ChainKind::Filter,
};

/// Offload services' first packets, after conntrack (-200) and before NAT (-100).
pub const OFFLOAD_CHAIN: Chain = Chain {
    name: "offload",
    hook: Hook::Prerouting,
    priority: -150,
    kind: ChainKind::Filter,
};

/// After both queueing chains: turns the requests slbd refused (no server of the service is
/// up) into a TCP reset or an ICMP port unreachable from the VIP, so the client hears at once
/// instead of retrying into silence.
pub const REFUSE_CHAIN: Chain = Chain {
    name: "refuse",
    hook: Hook::Prerouting,
    priority: -140,
    kind: ChainKind::Filter,
};

/// Offload: the mark slbd's verdict set becomes the flow's DNAT binding.
pub const NAT_CHAIN: Chain = Chain {
    name: "offload_nat",
    hook: Hook::Prerouting,
    priority: -100,
    kind: ChainKind::Nat,
};

/// Offload: a flow taken from the dual by one of its server's packets (see [`adopt_mark`])
/// comes from the VIP, both ways.
pub const SNAT_CHAIN: Chain = Chain {
    name: "offload_snat",
    hook: Hook::Postrouting,
    priority: 100,
    kind: ChainKind::Nat,
};

/// After slbd's reply rules: a packet-mode reply the full queue passed on unrewritten
/// (fail-open) must not reach a client with a real server's address, whose stack would reset
/// the server's connection.
pub const REPLY_GUARD_CHAIN: Chain = Chain {
    name: "reply_guard",
    hook: Hook::Postrouting,
    priority: 200,
    kind: ChainKind::Filter,
};

/// Nothing addressed to the VIP reaches the balancer's own sockets.
pub const GUARD_CHAIN: Chain = Chain {
    name: "guard",
    hook: Hook::Input,
    priority: 0,
    kind: ChainKind::Filter,
};

/// The packet mark slbd's verdict sets on a request it refuses.
pub const REFUSE_MARK: u32 = 0x5b1d_0001;

/// The packet mark the offload chain sets on a request conntrack found INVALID before
/// queueing it: slbd tells it from a first packet by this ([`Direction::Untracked`]).
///
/// [`Direction::Untracked`]: crate::core::balancer::Direction::Untracked
pub const UNTRACKED_MARK: u32 = 0x5b1d_0002;

/// Offload marks: this prefix, and a real server's dataplane id in the low 16 bits. The
/// conntrack mark of every flow slbd placed in offload mode carries it.
pub const OFFLOAD_MARK_BASE: u32 = 0x5b1f_0000;
pub const OFFLOAD_MARK_MASK: u32 = 0xffff_0000;

/// Taken flows: this prefix, and the service's VIP port in the low 16 bits; the packet mark
/// of a server's packet that opens a taken flow's conntrack entry, and that entry's mark.
pub const ADOPT_MARK_BASE: u32 = 0x5b1c_0000;

pub fn adopt_mark(vip_port: u16) -> u32 {
    ADOPT_MARK_BASE | u32::from(vip_port)
}

/// A taken flow's SYN-ACK or FIN, which conntrack binds no NAT to: queued again after routing
/// (`postrouting`), where slbd rewrites it to come from the VIP as it does packet-mode replies.
/// Rewritten before routing, a packet from a local address arriving from outside would be
/// dropped as a martian.
pub const ADOPT_REWRITE_MARK: u32 = ADOPT_MARK_BASE;

/// The mark that sends a first packet to server `id`; none for ids past 16 bits.
pub fn offload_mark(id: u32) -> Option<u32> {
    (id <= 0xffff).then_some(OFFLOAD_MARK_BASE | id)
}

/// The server id an offload mark names, if it is one of slbd's.
pub fn offload_id(mark: u32) -> Option<u32> {
    (mark & OFFLOAD_MARK_MASK == OFFLOAD_MARK_BASE).then_some(mark & !OFFLOAD_MARK_MASK)
}

/// A server offload flows can be bound to: its mark and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadTarget {
    pub mark: u32,
    pub protocol: Protocol,
    /// The service's port on the VIP.
    pub port: u16,
    pub server: std::net::SocketAddrV4,
    /// The weight it takes new flows with; 0 when out of rotation. The kernel spreads the
    /// flows a full queue passes on by these ([`SPREAD_SEED`]).
    pub weight: u32,
    /// Nat: a flow's mark becomes its DNAT binding; direct routing: the mark holds the
    /// server's address ([`dr_mark`]) and the packet goes to it unchanged.
    pub forwarding: Forwarding,
    /// Its flows report every TCP state change (LEAST_CONNECTIONS counts open connections,
    /// so it must see each close). Otherwise conntrack reports only a flow's assurance
    /// (established) and its end: each event costs the kernel and slbd work on the
    /// new-connection path.
    pub every_state: bool,
}

/// Conntrack event bits (`enum ip_conntrack_events`) that flows reporting only their
/// assurance and end keep.
pub const EVENTS_ASSURED_AND_DESTROY: u32 = 1 << 2 | 1 << 4;

/// The queues packets are spread over: `first .. first + count`, by CPU when more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRange {
    pub first: u16,
    pub count: u16,
}

impl QueueRange {
    pub fn fanout(&self) -> bool {
        self.count > 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    DaddrIs(Ipv4Addr),
    SaddrIn(Ipv4Net),
    DaddrNotIn(Ipv4Net),
    L4Proto(Protocol),
    Dport(Protocol, u16),
    Sport(Protocol, u16),
    Mark(u32),
    /// The packet's conntrack entry is new: the flow's first packet.
    CtStateNew,
    /// The packet's conntrack entry is new, or conntrack found the packet INVALID (a SYN-ACK
    /// or FIN it never saw the flow of).
    CtStateNewOrInvalid,
    CtStateInvalid,
    /// The TCP header's RST flag is set.
    TcpRst,
    /// conntrack has not seen the flow's handshake complete (`ct status & assured == 0`).
    CtNotAssured,
    /// An ICMP message of this type (`icmp type destination-unreachable`, ...).
    IcmpType(u8),
    /// conntrack relates the packet to one of its entries (an ICMP error about a flow).
    CtStateRelated,
    /// The packet is kept out of conntrack (`ct state untracked`).
    CtStateUntracked,
    /// The TCP flags under `mask` are `value` (`tcp flags & (syn | ack) == syn`).
    TcpFlags {
        mask: u8,
        value: u8,
    },
    /// The source address is not in this set of slbd's table.
    SaddrNotInSet(&'static str),
    /// More than `per_second` packets a second (with a burst of `burst`) have matched the
    /// rule's earlier conditions: the ones over the rate match.
    RateOver {
        per_second: u32,
        burst: u32,
    },
    /// The Jenkins hash of the source address, with [`SPREAD_SEED`], modulo `modulus`, is
    /// `value`.
    SourceHash {
        modulus: u32,
        value: u32,
    },
    /// The packet mark, read as an address ([`dr_mark`]), is inside this network.
    MarkAddressIn(Ipv4Net),
    /// The packet's flow is in the set of closing flows ([`DR_CLOSING`]).
    FlowClosing,
    /// An IPv4 packet (`meta protocol ip`): the netdev family sees every protocol.
    Ipv4,
    /// The packet's priority (`meta priority`) is this.
    Priority(u32),
}

/// The seed of [`Match::SourceHash`]: fixed, so a client's overflow server is the same
/// after every replan.
pub const SPREAD_SEED: u32 = 0x5b1d;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Notrack,
    Queue(QueueRange),
    Accept,
    Drop,
    RejectTcpReset,
    RejectPortUnreachable,
    /// `ct mark set meta mark`.
    CtMarkFromMark,
    /// `meta mark set` this.
    SetMark(u32),
    /// `ct event set` these event bits: which conntrack reports for the flow.
    CtEvents(u32),
    Dnat(std::net::SocketAddrV4),
    Snat(std::net::SocketAddrV4),
    /// Adds the source address to this set of slbd's table, or renews its timeout.
    UpdateSetWithSaddr(&'static str),
    /// `dup to meta mark device DEV`: a copy, unchanged, to the address the mark holds as a
    /// gateway on DEV (untracked).
    DupToMarkAddress(IfName),
    /// `meta mark set ip saddr . meta l4proto . th sport . th dport map @dr_flows`: the mark
    /// of the packet's flow in the flow map; the rule ends here for a flow it does not hold.
    MarkFromFlows,
    /// `fwd ip to meta mark device DEV` (netdev): the packet, its TTL lowered, straight out of
    /// DEV to the MAC of the address the mark holds.
    FwdToMarkAddress(IfName),
    /// `update @dr_flows { ip saddr . meta l4proto . th sport . th dport timeout T : meta
    /// mark }`: the flow enters the map with the packet's mark, or keeps the one it has and
    /// renews its timeout.
    RecordFlow {
        timeout: std::time::Duration,
    },
    /// `update @dr_closing { KEY }`: the flow is closing, for the set's timeout from now.
    MarkClosing,
    /// `delete @dr_flows { KEY : meta mark } delete @dr_closing { KEY }`: the flow's entries
    /// go, so the ones this packet makes hold its mark.
    ForgetFlow,
    /// `meta priority set` this.
    SetPriority(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub rules: Vec<Rule>,
    /// The set of known clients the SYN budget's rules read and fill, when there is one.
    pub known_clients: Option<syn_budget::KnownClients>,
    /// The netdev table of offload direct-routing flows, when there is one; its rules are
    /// the ones in [`Ruleset::NETDEV_CHAINS`].
    pub dr_flows: Option<DrFlows>,
}

impl Ruleset {
    pub const CHAINS: [Chain; 9] = [
        REQUEST_CHAIN,
        OFFLOAD_CHAIN,
        REFUSE_CHAIN,
        DR_CHAIN,
        NAT_CHAIN,
        GUARD_CHAIN,
        REPLY_CHAIN,
        SNAT_CHAIN,
        REPLY_GUARD_CHAIN,
    ];

    /// The netdev table's chains.
    pub const NETDEV_CHAINS: [Chain; 2] = [DR_IN_CHAIN, DR_OUT_CHAIN];

    /// How many rules go in `chain`, for checking what the kernel reports back.
    pub fn count_in(&self, chain: &str) -> usize {
        self.rules.iter().filter(|r| r.chain.name == chain).count()
    }
}

/// What a request to `s` matches: the VIP, the protocol and the service's port.
fn service_matches(config: &Config, s: &Service) -> Vec<Match> {
    vec![
        Match::DaddrIs(config.vip),
        Match::L4Proto(s.protocol),
        Match::Dport(s.protocol, s.port),
    ]
}

/// The ruleset for `config`, queueing to `queues`; `draining` adds reply rules for packet-mode
/// server ports no longer configured whose flows still run; `targets` are the servers offload
/// flows can be bound to.
pub fn plan(
    config: &Config,
    queues: QueueRange,
    draining: &[(Protocol, u16)],
    targets: &[OffloadTarget],
) -> Ruleset {
    let net = config.cluster_network;
    let mut rules = Vec::new();
    let service_matches = |s: &Service| service_matches(config, s);
    rules.extend(syn_budget::rules(config));
    for s in &config.services {
        let (actions, comment) = match s.mode {
            Mode::Packet => (
                vec![Action::Notrack, Action::Queue(queues)],
                format!("request {}", s.name()),
            ),
            Mode::Offload if s.forwarding == Forwarding::Dr => {
                rules.push(dr::offload_request_rule(config, s, queues));
                continue;
            }
            Mode::Offload => (
                vec![Action::Accept],
                format!("offload {}: conntrack sees it", s.name()),
            ),
        };
        rules.push(Rule {
            chain: REQUEST_CHAIN,
            matches: service_matches(s),
            actions,
            comment,
        });
    }
    // An ICMP error to the VIP about a packet-mode reply (a client-side router's
    // "fragmentation needed"): translated for the server (about server → client, to the
    // server) before routing, so it is routed there. Not untracked: an offload flow's error
    // passes slbd unchanged and conntrack translates it.
    if config.services.iter().any(|s| s.mode == Mode::Packet) {
        for kind in icmp::ERROR_TYPES {
            rules.push(Rule {
                chain: REQUEST_CHAIN,
                matches: vec![Match::DaddrIs(config.vip), Match::IcmpType(kind)],
                actions: vec![Action::Queue(queues)],
                comment: "an ICMP error about a reply".into(),
            });
        }
    }
    rules.extend(offload::rules(config, queues, targets));
    for p in [Protocol::Tcp, Protocol::Udp] {
        rules.push(Rule {
            chain: GUARD_CHAIN,
            matches: vec![Match::DaddrIs(config.vip), Match::L4Proto(p)],
            actions: vec![Action::Drop],
            comment: format!("VIP {p}: never to local sockets"),
        });
    }
    rules.extend(dr::rules(config, targets));
    rules.extend(dr_flows::rules(config));
    // Direct routing's servers answer clients themselves: no reply of theirs is slbd's.
    let mut reply_ports: Vec<(Protocol, u16)> = config
        .services
        .iter()
        .filter(|s| s.mode == Mode::Packet && s.forwarding == Forwarding::Nat)
        .flat_map(|s| s.servers.iter().map(|r| (s.protocol, r.addr.port())))
        .chain(draining.iter().copied())
        .collect();
    reply_ports.sort();
    reply_ports.dedup();
    let reply_matches = |p: Protocol, port: u16| {
        vec![
            Match::SaddrIn(net),
            Match::DaddrNotIn(net),
            Match::L4Proto(p),
            Match::Sport(p, port),
        ]
    };
    for &(p, port) in &reply_ports {
        rules.push(Rule {
            chain: REQUEST_CHAIN,
            matches: reply_matches(p, port),
            actions: vec![Action::Notrack],
            comment: format!("reply {p}/{port} untracked"),
        });
    }
    for p in [Protocol::Tcp, Protocol::Udp] {
        rules.push(Rule {
            chain: REQUEST_CHAIN,
            matches: vec![Match::DaddrIs(config.vip), Match::L4Proto(p)],
            actions: vec![Action::Drop],
            comment: format!("VIP {p}: no other port reaches local sockets"),
        });
    }
    rules.push(Rule {
        chain: REFUSE_CHAIN,
        matches: vec![Match::Mark(REFUSE_MARK), Match::L4Proto(Protocol::Tcp)],
        actions: vec![Action::RejectTcpReset],
        comment: "refused: no server up".into(),
    });
    rules.push(Rule {
        chain: REFUSE_CHAIN,
        matches: vec![Match::Mark(REFUSE_MARK)],
        actions: vec![Action::RejectPortUnreachable],
        comment: "refused: no server up".into(),
    });
    if config
        .services
        .iter()
        .any(|s| s.mode == Mode::Offload && s.protocol == Protocol::Tcp)
    {
        rules.push(Rule {
            chain: REPLY_CHAIN,
            matches: vec![Match::Mark(ADOPT_REWRITE_MARK)],
            actions: vec![Action::Queue(queues)],
            comment: "offload: a taken flow's packet conntrack does not translate".into(),
        });
    }
    for &(p, port) in &reply_ports {
        rules.push(Rule {
            chain: REPLY_CHAIN,
            matches: reply_matches(p, port),
            actions: vec![Action::Queue(queues)],
            comment: format!("reply {p}/{port}"),
        });
    }
    // An ICMP error on its way to a client about a packet-mode request, from the server
    // network or from this node (a TTL that ran out here): translated for the client (about
    // client → VIP, from the VIP); an unreachable from a server a flow's handshake never
    // reached may instead be kept from it (passive detection).
    let packet_mode = config.services.iter().any(|s| s.mode == Mode::Packet);
    for kind in icmp::ERROR_TYPES.into_iter().filter(|_| packet_mode) {
        rules.push(Rule {
            chain: REPLY_CHAIN,
            matches: vec![Match::DaddrNotIn(net), Match::IcmpType(kind)],
            actions: vec![Action::Queue(queues)],
            comment: "an ICMP error about a request".into(),
        });
    }
    // A rule that reads conntrack state has the kernel run conntrack, and with it IPv4
    // defragmentation (before every hook of slbd's), in this namespace: a balanced flow's
    // fragments then reach slbd as one packet, are rewritten whole and fragmented again on
    // the way out. Packet mode's own packets stay untracked (`notrack` above). The rule
    // itself decides nothing: it is the last of a chain whose policy is accept.
    rules.push(Rule {
        chain: REPLY_CHAIN,
        matches: vec![Match::CtStateUntracked],
        actions: vec![Action::Accept],
        comment: "defragmentation on: fragments reach slbd whole".into(),
    });
    for &(p, port) in &reply_ports {
        let mut matches = reply_matches(p, port);
        matches.push(Match::CtStateUntracked);
        rules.push(Rule {
            chain: REPLY_GUARD_CHAIN,
            matches,
            actions: vec![Action::Drop],
            comment: format!("reply {p}/{port}: not rewritten (queue full)"),
        });
    }
    Ruleset {
        rules,
        known_clients: syn_budget::known_clients(config),
        dr_flows: dr_flows(config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_request_reply_and_fail_closed_rules() {
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "syn_flood": {"budget": 0},
                "services": [
                  {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:8080"]},
                  {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53"]},
                  {"protocol": "tcp", "port": 8080, "servers": ["172.16.0.2:8080"]}
                ]}"#,
        )
        .unwrap();
        let rs = plan(&config, QueueRange { first: 0, count: 2 }, &[], &[]);
        let text: Vec<String> = rs
            .rules
            .iter()
            .map(|r| format!("{}: {r}", r.chain.name))
            .collect();
        assert_eq!(
            text,
            vec![
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 notrack queue num 0-1 fanout comment "request tcp/80""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto udp udp dport 53 notrack queue num 0-1 fanout comment "request udp/53""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 8080 notrack queue num 0-1 fanout comment "request tcp/8080""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type destination-unreachable queue num 0-1 fanout comment "an ICMP error about a reply""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type time-exceeded queue num 0-1 fanout comment "an ICMP error about a reply""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type parameter-problem queue num 0-1 fanout comment "an ICMP error about a reply""#,
                r#"guard: ip daddr 10.0.0.100 meta l4proto tcp drop comment "VIP tcp: never to local sockets""#,
                r#"guard: ip daddr 10.0.0.100 meta l4proto udp drop comment "VIP udp: never to local sockets""#,
                r#"prerouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 80 notrack comment "reply tcp/80 untracked""#,
                r#"prerouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 8080 notrack comment "reply tcp/8080 untracked""#,
                r#"prerouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 notrack comment "reply udp/53 untracked""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp drop comment "VIP tcp: no other port reaches local sockets""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto udp drop comment "VIP udp: no other port reaches local sockets""#,
                r#"refuse: meta mark 0x5b1d0001 meta l4proto tcp reject with tcp reset comment "refused: no server up""#,
                r#"refuse: meta mark 0x5b1d0001 reject with icmp port-unreachable comment "refused: no server up""#,
                r#"postrouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 80 queue num 0-1 fanout comment "reply tcp/80""#,
                r#"postrouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 8080 queue num 0-1 fanout comment "reply tcp/8080""#,
                r#"postrouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 queue num 0-1 fanout comment "reply udp/53""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type destination-unreachable queue num 0-1 fanout comment "an ICMP error about a request""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type time-exceeded queue num 0-1 fanout comment "an ICMP error about a request""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type parameter-problem queue num 0-1 fanout comment "an ICMP error about a request""#,
                r#"postrouting: ct state untracked accept comment "defragmentation on: fragments reach slbd whole""#,
                r#"reply_guard: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 80 ct state untracked drop comment "reply tcp/80: not rewritten (queue full)""#,
                r#"reply_guard: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 8080 ct state untracked drop comment "reply tcp/8080: not rewritten (queue full)""#,
                r#"reply_guard: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 ct state untracked drop comment "reply udp/53: not rewritten (queue full)""#,
            ]
        );
        assert_eq!(rs.count_in("prerouting"), 11);
        assert_eq!(rs.count_in("reply_guard"), 3);
        assert_eq!(rs.count_in("refuse"), 2);
        assert_eq!(rs.count_in("postrouting"), 7);
        assert_eq!(rs.count_in("guard"), 2);
        let single = plan(
            &config,
            QueueRange { first: 5, count: 1 },
            &[(Protocol::Udp, 99)],
            &[],
        );
        assert!(single.rules[0].to_string().contains("queue num 5 comment"));
        assert!(
            single
                .rules
                .iter()
                .any(|r| r.chain == REPLY_CHAIN && r.to_string().contains("udp sport 99 queue")),
            "draining ports keep their reply rule"
        );
    }

    #[test]
    fn direct_routing_dups_the_marked_request_to_its_server_and_leaves_its_replies_alone() {
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "syn_flood": {"budget": 0},
                "services": [
                  {"protocol": "tcp", "port": 80, "forwarding": "dr",
                   "servers": ["172.16.0.2:80", "172.16.0.3:80"]}
                ]}"#,
        )
        .unwrap();
        let rs = plan(&config, QueueRange { first: 0, count: 1 }, &[], &[]);
        let in_chain = |name: &str| -> Vec<String> {
            rs.rules
                .iter()
                .filter(|r| r.chain.name == name)
                .map(|r| r.to_string())
                .collect()
        };
        assert_eq!(
            in_chain("dr"),
            vec![
                r#"ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 meta mark (as an address) 172.16.0.0/24 dup to meta mark device "eth1" drop comment "dr tcp/80: to the server the mark names""#
            ]
        );
        assert!(
            in_chain("prerouting")[0].contains("tcp dport 80 notrack queue num 0"),
            "requests are queued as in NAT mode: {:?}",
            in_chain("prerouting")
        );
        let replies: Vec<String> = rs
            .rules
            .iter()
            .filter(|r| r.comment.starts_with("reply "))
            .map(|r| r.to_string())
            .collect();
        assert!(replies.is_empty(), "no reply rule: {replies:?}");
        // The mark holds the address as the `dup` reads it, and the match finds it.
        let m = dr_mark("172.16.0.3".parse().unwrap());
        assert_eq!(m.to_ne_bytes(), [172, 16, 0, 3]);
    }

    #[test]
    fn offload_services_are_tracked_queued_on_their_first_packet_and_natted_by_mark() {
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "syn_flood": {"budget": 0},
                "services": [
                  {"protocol": "tcp", "port": 80, "mode": "offload", "servers": ["172.16.0.2:80"]},
                  {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53"]}
                ]}"#,
        )
        .unwrap();
        let target = |id, server: &str, weight| OffloadTarget {
            mark: offload_mark(id).unwrap(),
            forwarding: Forwarding::Nat,
            protocol: Protocol::Tcp,
            port: 80,
            server: server.parse().unwrap(),
            weight,
            every_state: false,
        };
        // 172.16.0.4 is out of rotation: the kernel's spread leaves it out.
        let targets = [
            target(7, "172.16.0.2:80", 1),
            target(8, "172.16.0.3:80", 2),
            target(9, "172.16.0.4:80", 0),
        ];
        let rs = plan(&config, QueueRange { first: 0, count: 1 }, &[], &targets);
        let text: Vec<String> = rs
            .rules
            .iter()
            .map(|r| format!("{}: {r}", r.chain.name))
            .collect();
        assert_eq!(
            text,
            vec![
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 accept comment "offload tcp/80: conntrack sees it""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto udp udp dport 53 notrack queue num 0 comment "request udp/53""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type destination-unreachable queue num 0 comment "an ICMP error about a reply""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type time-exceeded queue num 0 comment "an ICMP error about a reply""#,
                r#"prerouting: ip daddr 10.0.0.100 icmp type parameter-problem queue num 0 comment "an ICMP error about a reply""#,
                r#"offload: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 ct state new queue num 0 comment "offload tcp/80: first packet""#,
                r#"offload: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 ct state invalid meta mark set 0x5b1d0002 queue num 0 comment "offload tcp/80: a packet conntrack does not translate""#,
                r#"offload: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 80 ct state invalid,new queue num 0 comment "offload tcp/80: a server's packet no flow here knows""#,
                r#"offload: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto tcp tcp sport 80 tcp flags & rst == rst ct status & assured == 0 queue num 0 comment "offload tcp/80: a server refusing a handshake""#,
                r#"offload: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 icmp type destination-unreachable ct state related queue num 0 comment "offload: a server's unreachable about a flow""#,
                r#"offload_snat: meta mark 0x5b1c0050 meta l4proto tcp ct mark set meta mark snat to 10.0.0.100:80 comment "offload tcp/80: a flow taken from the dual""#,
                r#"offload_nat: meta mark 0x0 ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 jhash ip saddr mod 3 seed 0x5b1d == 0 meta mark set 0x5b1f0007 comment "offload tcp/80: queue full, to 172.16.0.2:80""#,
                r#"offload_nat: meta mark 0x0 ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 jhash ip saddr mod 3 seed 0x5b1d == 1 meta mark set 0x5b1f0008 comment "offload tcp/80: queue full, to 172.16.0.3:80""#,
                r#"offload_nat: meta mark 0x0 ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 jhash ip saddr mod 3 seed 0x5b1d == 2 meta mark set 0x5b1f0008 comment "offload tcp/80: queue full, to 172.16.0.3:80""#,
                r#"offload_nat: meta mark 0x5b1f0007 meta l4proto tcp ct mark set meta mark ct event set destroy,assured dnat to 172.16.0.2:80 comment "offload to tcp/172.16.0.2:80""#,
                r#"offload_nat: meta mark 0x5b1f0008 meta l4proto tcp ct mark set meta mark ct event set destroy,assured dnat to 172.16.0.3:80 comment "offload to tcp/172.16.0.3:80""#,
                r#"offload_nat: meta mark 0x5b1f0009 meta l4proto tcp ct mark set meta mark ct event set destroy,assured dnat to 172.16.0.4:80 comment "offload to tcp/172.16.0.4:80""#,
                r#"guard: ip daddr 10.0.0.100 meta l4proto tcp drop comment "VIP tcp: never to local sockets""#,
                r#"guard: ip daddr 10.0.0.100 meta l4proto udp drop comment "VIP udp: never to local sockets""#,
                r#"prerouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 notrack comment "reply udp/53 untracked""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp drop comment "VIP tcp: no other port reaches local sockets""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto udp drop comment "VIP udp: no other port reaches local sockets""#,
                r#"refuse: meta mark 0x5b1d0001 meta l4proto tcp reject with tcp reset comment "refused: no server up""#,
                r#"refuse: meta mark 0x5b1d0001 reject with icmp port-unreachable comment "refused: no server up""#,
                r#"postrouting: meta mark 0x5b1c0000 queue num 0 comment "offload: a taken flow's packet conntrack does not translate""#,
                r#"postrouting: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 queue num 0 comment "reply udp/53""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type destination-unreachable queue num 0 comment "an ICMP error about a request""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type time-exceeded queue num 0 comment "an ICMP error about a request""#,
                r#"postrouting: ip daddr != 172.16.0.0/24 icmp type parameter-problem queue num 0 comment "an ICMP error about a request""#,
                r#"postrouting: ct state untracked accept comment "defragmentation on: fragments reach slbd whole""#,
                r#"reply_guard: ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 meta l4proto udp udp sport 53 ct state untracked drop comment "reply udp/53: not rewritten (queue full)""#,
            ]
        );
        assert_eq!(offload_id(0x5b1f_0007), Some(7));
        assert_eq!(offload_id(REFUSE_MARK), None);
        assert_eq!(offload_mark(0x1_0000), None);
    }
}
