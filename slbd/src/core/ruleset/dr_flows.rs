//! Offload mode's direct routing: slbd places a flow's first packet (and every SYN) through
//! the `ip` table, and the kernel carries the rest in slbd's `netdev` table of the same name,
//! without the IP stack. Pure, as the rest of [`super::plan`].
//!
//! - `dr_out` (the egress hook of the server-side device) sees each request on its way to a
//!   server with its server's mark ([`dr_mark`]), whether slbd placed it or `dr_in` sent it,
//!   and puts its flow in the map
//!   [`DR_FLOWS`] (client address, protocol, client port, VIP port → the mark), with a
//!   timeout by its TCP flags: the closing one after a FIN or reset (which also put the flow
//!   in [`DR_CLOSING`], so the ACKs that end a connection keep the closing timeout), the
//!   established one otherwise; UDP's own. A SYN deletes its key's entries instead: the
//!   handshake's next segment is placed by slbd too (two packets a connection reach slbd),
//!   and enters the map with the server slbd chose, a port reused after a close included.
//!   A first packet the kernel placed itself (the queue was full: the `dr` chain's spread
//!   flags it with [`super::dr::SPREAD_PRIORITY`]) enters the map at once: nothing else will
//!   place its flow.
//! - `dr_in` (the ingress hook of the client-side device) gives a packet whose flow the map
//!   holds its mark and forwards it to that server's MAC (`fwd`, by the neighbour table):
//!   the IP stack, the queue and slbd never see it. A SYN and a flow the map does not hold go
//!   on to the `ip` table, where slbd places them.
//!
//! Conntrack cannot carry these flows: it sees one direction only, and marks every packet
//! after a SYN whose SYN-ACK it never saw INVALID. The timeout an entry was last given says
//! the TCP phase slbd reads from the map once a second ([`phase_of`]).

use std::time::Duration;

use super::*;
use crate::core::flow::Phase;
use crate::core::model::FlowLimits;
use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// The map of offload direct-routing flows, in slbd's netdev table.
pub const DR_FLOWS: &str = "dr_flows";

/// The set of the map's TCP flows that saw a FIN or a reset.
pub const DR_CLOSING: &str = "dr_closing";

/// The client side's packets, before the IP stack.
pub const DR_IN_CHAIN: Chain = Chain {
    name: "dr_in",
    hook: Hook::Ingress,
    priority: 0,
    kind: ChainKind::Filter,
};

/// The server side's packets, as they leave.
pub const DR_OUT_CHAIN: Chain = Chain {
    name: "dr_out",
    hook: Hook::Egress,
    priority: 0,
    kind: ChainKind::Filter,
};

/// The netdev table: its two chains' devices, the flow map (at most `size` entries) and the
/// set of closing flows, whose entries time out after `closing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrFlows {
    /// `dr_in`'s device: the VIP's (`address_dev`).
    pub ingress: IfName,
    /// `dr_out`'s device: the server network's (`gateway_dev`).
    pub egress: IfName,
    pub size: u32,
    pub closing: Duration,
}

/// The netdev table the rules need: one when a service is offload direct routing.
pub fn dr_flows(config: &Config) -> Option<DrFlows> {
    config
        .services
        .iter()
        .any(Service::dr_offload)
        .then_some(())?;
    Some(DrFlows {
        ingress: IfName::new(&config.vip_dev)?,
        egress: IfName::new(&config.gateway_dev)?,
        size: config.flows.max,
        closing: config.flows.tcp_closing_timeout,
    })
}

/// The services `config` runs in offload direct routing, which a kernel without the netdev
/// egress hook (before Linux 5.16) cannot carry: `dr_out` is an egress chain.
pub fn needing_netdev_egress(config: &Config) -> Vec<String> {
    config
        .services
        .iter()
        .filter(|s| s.dr_offload())
        .map(Service::name)
        .collect()
}

/// A flow the map holds: what its entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrFlow {
    pub protocol: Protocol,
    pub client: std::net::SocketAddrV4,
    pub vip_port: u16,
    /// The server's address, as the mark holds it ([`dr_mark`]).
    pub server: Ipv4Addr,
    /// The timeout the entry was last given.
    pub timeout: Duration,
}

impl DrFlow {
    /// A map entry as the kernel lists it: the 16-byte key (the client's address, then the
    /// protocol, the client's port and the VIP's port, each in a 4-byte register of its own,
    /// network order), the 4-byte mark and the timeout. `None` for an entry slbd's rules
    /// cannot have made.
    pub fn from_entry(key: &[u8], data: &[u8], timeout: Duration) -> Option<DrFlow> {
        let (key, data): (&[u8; 16], &[u8; 4]) = (key.try_into().ok()?, data.try_into().ok()?);
        let protocol = match key[4] {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return None,
        };
        let port = |at: usize| u16::from_be_bytes([key[at], key[at + 1]]);
        let client = Ipv4Addr::new(key[0], key[1], key[2], key[3]);
        Some(DrFlow {
            protocol,
            client: std::net::SocketAddrV4::new(client, port(8)),
            vip_port: port(12),
            // `dr_mark` lays the address out in the mark's bytes as it is in memory.
            server: Ipv4Addr::from(*data),
            timeout,
        })
    }

    /// The entry's key, as [`Self::from_entry`] reads it (a cut deletes entries by key).
    pub fn key(&self) -> [u8; 16] {
        let mut key = [0; 16];
        key[..4].copy_from_slice(&self.client.ip().octets());
        key[4] = match self.protocol {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        };
        key[8..10].copy_from_slice(&self.client.port().to_be_bytes());
        key[12..14].copy_from_slice(&self.vip_port.to_be_bytes());
        key
    }

    /// Whether the entry is a flow of `server`.
    pub fn is_on(&self, server: &DrServer) -> bool {
        (self.protocol, self.vip_port, self.server)
            == (server.protocol, server.vip_port, server.server)
    }
}

/// A real server of an offload direct-routing service, whose flows the map may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrServer {
    pub protocol: Protocol,
    /// The service's port (a DR server listens on the VIP's).
    pub vip_port: u16,
    pub server: Ipv4Addr,
}

/// The TCP phase an entry's timeout tells (`None` for UDP, whose flows are established): the
/// closing timeout (a FIN or a reset made it), or established (a handshake's SYN never
/// enters the map, so an entry is a segment after one).
pub fn phase_of(f: &DrFlow, limits: &FlowLimits) -> Option<Phase> {
    if f.protocol == Protocol::Udp {
        return None;
    }
    Some(
        if f.timeout == limits.tcp_closing_timeout && f.timeout != limits.tcp_timeout {
            Phase::Closing
        } else {
            Phase::Established
        },
    )
}

/// The netdev table's rules: per offload direct-routing service, `dr_in`'s fast path and
/// `dr_out`'s record of the flows.
pub(super) fn rules(config: &Config) -> Vec<Rule> {
    let Some(t) = dr_flows(config) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for s in config.services.iter().filter(|s| s.dr_offload()) {
        let mut matches = vec![Match::Ipv4];
        matches.extend(service_matches(config, s));
        if s.protocol == Protocol::Tcp {
            rules.push(Rule {
                chain: DR_IN_CHAIN,
                matches: matches.iter().copied().chain([SYN_ONLY]).collect(),
                actions: vec![Action::Accept],
                comment: format!("dr offload {}: a SYN, placed by slbd", s.name()),
            });
        }
        rules.push(Rule {
            chain: DR_IN_CHAIN,
            matches: matches.clone(),
            actions: vec![Action::MarkFromFlows, Action::FwdToMarkAddress(t.egress)],
            comment: format!("dr offload {}: a flow the kernel carries", s.name()),
        });
        matches.push(Match::MarkAddressIn(config.cluster_network));
        // The first rule a packet matches is the one that keeps its flow.
        for k in kept(s.protocol, &config.flows) {
            rules.push(Rule {
                chain: DR_OUT_CHAIN,
                matches: matches.iter().copied().chain(k.flags).collect(),
                actions: k.actions.into_iter().chain([Action::Accept]).collect(),
                comment: format!("dr offload {}: {}", s.name(), k.what),
            });
        }
    }
    rules
}

pub(super) const SYN_ONLY: Match = Match::TcpFlags {
    mask: SYN | ACK,
    value: SYN,
};

/// How one kind of packet keeps its flow in the map.
struct Kept {
    flags: Option<Match>,
    actions: Vec<Action>,
    what: &'static str,
}

/// The kinds of a `protocol` flow's packets, each with what it does to the flow's entries. A
/// SYN deletes them, so the next segment misses the map, is placed by slbd and enters it anew
/// with its server. A reset or a FIN makes the flow closing: its entry is made again with the
/// closing timeout (an update keeps the timeout an entry was made with, by which slbd reads
/// the phase). A closing flow's segment renews the closing timeout; any other the
/// established one.
fn kept(protocol: Protocol, limits: &FlowLimits) -> Vec<Kept> {
    let record = |flags, first: &[Action], timeout, what| Kept {
        flags,
        actions: first
            .iter()
            .copied()
            .chain([Action::RecordFlow { timeout }])
            .collect(),
        what,
    };
    // A first packet the kernel placed (the queue was full) enters the map: nothing else
    // will place its flow. Its priority, a flag between the two tables, goes back to 0.
    let spread = |timeout| {
        record(
            Some(Match::Priority(super::dr::SPREAD_PRIORITY)),
            &[Action::SetPriority(0)],
            timeout,
            "placed by the kernel (queue full)",
        )
    };
    if protocol == Protocol::Udp {
        return vec![
            spread(limits.udp_timeout),
            record(None, &[], limits.udp_timeout, "a datagram"),
        ];
    }
    let flags = |mask, value| Some(Match::TcpFlags { mask, value });
    let closing = limits.tcp_closing_timeout;
    let syn = Kept {
        flags: Some(SYN_ONLY),
        actions: vec![Action::ForgetFlow],
        what: "a SYN",
    };
    let closes = [Action::ForgetFlow, Action::MarkClosing];
    [spread(limits.syn_timeout), syn]
        .into_iter()
        .chain([
            record(flags(RST, RST), &closes, closing, "a reset"),
            record(flags(FIN, FIN), &closes, closing, "a FIN"),
            record(Some(Match::FlowClosing), &[], closing, "closing"),
            record(None, &[], limits.tcp_timeout, "a segment"),
        ])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offload_config() -> Config {
        Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "syn_flood": {"budget": 0},
                "flows": {"tcp_timeout": 900, "tcp_closing_timeout": 30, "syn_timeout": 5,
                          "udp_timeout": 60},
                "services": [
                  {"protocol": "tcp", "port": 80, "forwarding": "dr", "mode": "offload",
                   "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                  {"protocol": "udp", "port": 53, "forwarding": "dr", "mode": "offload",
                   "servers": ["172.16.0.2:53"]}
                ]}"#,
        )
        .unwrap()
    }

    fn in_chain(rs: &Ruleset, name: &str) -> Vec<String> {
        rs.rules
            .iter()
            .filter(|r| r.chain.name == name)
            .map(|r| r.to_string())
            .collect()
    }

    #[test]
    fn offload_dr_flows_are_forwarded_before_the_ip_stack_by_the_flow_map_and_recorded_as_they_leave(
    ) {
        let rs = plan(
            &offload_config(),
            QueueRange { first: 0, count: 1 },
            &[],
            &[],
        );
        assert_eq!(
            rs.dr_flows,
            Some(DrFlows {
                ingress: IfName::new("eth0").unwrap(),
                egress: IfName::new("eth1").unwrap(),
                size: 1 << 20,
                closing: Duration::from_secs(30)
            })
        );
        let key = "ip saddr . meta l4proto . th sport . th dport";
        let tcp = "meta protocol ip ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80";
        let udp = "meta protocol ip ip daddr 10.0.0.100 meta l4proto udp udp dport 53";
        let fwd = r#"fwd ip to meta mark device "eth1""#;
        let lookup = format!("meta mark set {key} map @dr_flows");
        let forget =
            format!("delete @dr_flows {{ {key} : meta mark }} delete @dr_closing {{ {key} }}");
        let closes = format!("{forget} update @dr_closing {{ {key} }}");
        let record = |t: u64| format!("update @dr_flows {{ {key} timeout {t}ms : meta mark }}");
        let (rec_close, rec_tcp, rec_udp) = (record(30000), record(900000), record(60000));
        let closing = format!("{key} @dr_closing");
        assert_eq!(
            in_chain(&rs, "dr_in"),
            vec![
                format!(
                    r#"{tcp} tcp flags & (syn | ack) == syn accept comment "dr offload tcp/80: a SYN, placed by slbd""#
                ),
                format!(
                    r#"{tcp} {lookup} {fwd} comment "dr offload tcp/80: a flow the kernel carries""#
                ),
                format!(
                    r#"{udp} {lookup} {fwd} comment "dr offload udp/53: a flow the kernel carries""#
                ),
            ]
        );
        let (tcp, udp) = (
            format!("{tcp} meta mark (as an address) 172.16.0.0/24"),
            format!("{udp} meta mark (as an address) 172.16.0.0/24"),
        );
        let spread = "meta priority 0x5b1d0003 meta priority set 0x00000000";
        assert_eq!(
            in_chain(&rs, "dr_out"),
            vec![
                format!(
                    r#"{tcp} {spread} {} accept comment "dr offload tcp/80: placed by the kernel (queue full)""#,
                    record(5000)
                ),
                format!(
                    r#"{tcp} tcp flags & (syn | ack) == syn {forget} accept comment "dr offload tcp/80: a SYN""#
                ),
                format!(
                    r#"{tcp} tcp flags & rst == rst {closes} {rec_close} accept comment "dr offload tcp/80: a reset""#
                ),
                format!(
                    r#"{tcp} tcp flags & fin == fin {closes} {rec_close} accept comment "dr offload tcp/80: a FIN""#
                ),
                format!(
                    r#"{tcp} {closing} {rec_close} accept comment "dr offload tcp/80: closing""#
                ),
                format!(r#"{tcp} {rec_tcp} accept comment "dr offload tcp/80: a segment""#),
                format!(
                    r#"{udp} {spread} {rec_udp} accept comment "dr offload udp/53: placed by the kernel (queue full)""#
                ),
                format!(r#"{udp} {rec_udp} accept comment "dr offload udp/53: a datagram""#),
            ]
        );
        // What reaches the ip table (a SYN, a flow not carried yet) is queued and, placed,
        // sent to its server as in packet mode.
        let prerouting = in_chain(&rs, "prerouting");
        assert_eq!(
            prerouting[..2],
            [
                r#"ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 notrack queue num 0 comment "dr offload tcp/80: a SYN, or a flow not carried yet""#.to_string(),
                r#"ip daddr 10.0.0.100 meta l4proto udp udp dport 53 notrack queue num 0 comment "dr offload udp/53: a SYN, or a flow not carried yet""#.to_string(),
            ]
        );
        assert_eq!(in_chain(&rs, "dr").len(), 2, "{:?}", in_chain(&rs, "dr"));
        // Conntrack's rules are for NAT offload: none of them names these services.
        for chain in ["offload", "offload_nat", "offload_snat"] {
            assert_eq!(in_chain(&rs, chain), Vec::<String>::new(), "{chain}");
        }
        assert!(
            !rs.rules.iter().any(|r| r.comment.starts_with("reply ")),
            "servers answer clients themselves"
        );
    }

    #[test]
    fn a_full_queues_first_packets_of_offload_dr_get_a_server_in_rotation_by_source_hash_and_a_flag_for_dr_out(
    ) {
        let config = offload_config();
        let target = |port, server: &str, weight| OffloadTarget {
            mark: dr_mark(server.parse().unwrap()),
            forwarding: Forwarding::Dr,
            protocol: if port == 80 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            port,
            server: format!("{server}:{port}").parse().unwrap(),
            weight,
            every_state: false,
        };
        let targets = [
            target(80, "172.16.0.2", 1000),
            target(80, "172.16.0.3", 0),
            target(53, "172.16.0.2", 1000),
        ];
        let rs = plan(&config, QueueRange { first: 0, count: 1 }, &[], &targets);
        let tcp = "ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80";
        let udp = "ip daddr 10.0.0.100 meta l4proto udp udp dport 53";
        let hash = "jhash ip saddr mod 1 seed 0x5b1d == 0";
        let to = |server: &str| {
            format!(
                "meta mark set {:#010x} meta priority set 0x5b1d0003",
                dr_mark(server.parse().unwrap())
            )
        };
        let dup = r#"meta mark (as an address) 172.16.0.0/24 dup to meta mark device "eth1" drop"#;
        assert_eq!(
            in_chain(&rs, "dr"),
            vec![
                format!(
                    r#"meta mark 0x0 {tcp} tcp flags & (syn | ack) == syn {hash} {} comment "offload tcp/80: queue full, to 172.16.0.2:80""#,
                    to("172.16.0.2")
                ),
                format!(
                    r#"meta mark 0x0 {udp} {hash} {} comment "offload udp/53: queue full, to 172.16.0.2:53""#,
                    to("172.16.0.2")
                ),
                format!(r#"{tcp} {dup} comment "dr tcp/80: to the server the mark names""#),
                format!(r#"{udp} {dup} comment "dr udp/53: to the server the mark names""#),
            ],
            "a SYN (never a later segment, whose flow slbd placed) or a datagram, on the server in rotation only"
        );
        let nat: Vec<String> = in_chain(&rs, "offload_nat");
        assert!(
            nat.iter().all(|r| !r.contains("dnat")),
            "a direct-routing target is no NAT binding: {nat:?}"
        );
    }

    #[test]
    fn only_offload_direct_routing_services_need_the_netdev_egress_hook() {
        let mut config = offload_config();
        assert_eq!(needing_netdev_egress(&config), ["tcp/80", "udp/53"]);
        config.services[1].mode = Mode::Packet;
        assert_eq!(needing_netdev_egress(&config), ["tcp/80"]);
        config.services[0].forwarding = Forwarding::Nat;
        assert!(
            needing_netdev_egress(&config).is_empty(),
            "NAT offload is conntrack's"
        );
    }

    #[test]
    fn packet_mode_dr_has_no_flow_map() {
        let mut config = offload_config();
        for s in &mut config.services {
            s.mode = Mode::Packet;
        }
        let rs = plan(&config, QueueRange { first: 0, count: 1 }, &[], &[]);
        assert_eq!(rs.dr_flows, None);
        let text: Vec<String> = rs.rules.iter().map(|r| r.to_string()).collect();
        assert!(
            !text.iter().any(|r| r.contains("@dr_")),
            "no rule names the map: {text:?}"
        );
    }

    #[test]
    fn a_map_entry_reads_back_as_its_flow_and_its_timeout_as_its_phase() {
        let limits = offload_config().flows;
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&[192, 0, 2, 7]);
        key[4] = 6;
        key[8..10].copy_from_slice(&40000u16.to_be_bytes());
        key[12..14].copy_from_slice(&80u16.to_be_bytes());
        let mark = dr_mark("172.16.0.3".parse().unwrap()).to_ne_bytes();
        let entry = |key: &[u8; 16], secs| {
            DrFlow::from_entry(key, &mark, Duration::from_secs(secs)).unwrap()
        };
        let at = |secs| entry(&key, secs);
        let f = at(900);
        assert_eq!(
            (f.protocol, f.client, f.vip_port, f.server),
            (
                Protocol::Tcp,
                "192.0.2.7:40000".parse().unwrap(),
                80,
                "172.16.0.3".parse().unwrap()
            )
        );
        assert_eq!(phase_of(&at(900), &limits), Some(Phase::Established));
        assert_eq!(phase_of(&at(30), &limits), Some(Phase::Closing));
        key[4] = 17;
        assert_eq!(
            phase_of(&entry(&key, 60), &limits),
            None,
            "UDP has no phase"
        );
        key[4] = 1;
        assert_eq!(
            DrFlow::from_entry(&key, &mark, Duration::ZERO),
            None,
            "ICMP is no flow of slbd's rules"
        );
        assert_eq!(DrFlow::from_entry(&key[..12], &mark, Duration::ZERO), None);
        assert_eq!(DrFlow::from_entry(&key, &mark[..2], Duration::ZERO), None);
    }

    #[test]
    fn a_server_cut_names_exactly_its_own_entries_by_the_keys_the_map_holds() {
        let flow = |client: &str, protocol, vip_port, server: &str| DrFlow {
            protocol,
            client: client.parse().unwrap(),
            vip_port,
            server: server.parse().unwrap(),
            timeout: Duration::from_secs(900),
        };
        let s1 = DrServer {
            protocol: Protocol::Tcp,
            vip_port: 80,
            server: "172.16.0.2".parse().unwrap(),
        };
        let flows = [
            flow("192.0.2.7:40000", Protocol::Tcp, 80, "172.16.0.2"),
            flow("192.0.2.8:40001", Protocol::Tcp, 80, "172.16.0.3"),
            flow("192.0.2.7:40002", Protocol::Tcp, 443, "172.16.0.2"),
            flow("192.0.2.7:40000", Protocol::Udp, 80, "172.16.0.2"),
        ];
        let cut: Vec<bool> = flows.iter().map(|f| f.is_on(&s1)).collect();
        assert_eq!(
            cut,
            [true, false, false, false],
            "another server, port or protocol stays"
        );
    }

    proptest::proptest! {
        #[test]
        fn a_flows_key_reads_back_as_the_same_flow(
            client in proptest::prelude::any::<[u8; 4]>(),
            port in proptest::prelude::any::<u16>(),
            vip_port in proptest::prelude::any::<u16>(),
            server in proptest::prelude::any::<[u8; 4]>(),
            udp in proptest::prelude::any::<bool>(),
            secs in 0u64..100_000,
        ) {
            let f = DrFlow {
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                client: std::net::SocketAddrV4::new(client.into(), port),
                vip_port,
                server: server.into(),
                timeout: Duration::from_secs(secs),
            };
            let mark = dr_mark(f.server).to_ne_bytes();
            proptest::prop_assert_eq!(DrFlow::from_entry(&f.key(), &mark, f.timeout), Some(f));
        }
    }
}
