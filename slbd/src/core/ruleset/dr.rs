//! The rules of direct-routing services (`forwarding: dr`): a request slbd's verdict marked
//! with its server's address goes to that server's MAC unchanged, and the original is
//! dropped. Pure, as the rest of [`super::plan`], which places them after the request rules.
//!
//! In offload mode the kernel carries a flow after its first packet, in the map
//! [`DR_FLOWS`] (client address, protocol, client port, VIP port → the server's mark): the
//! request chain gives a packet the mark its flow holds there and skips the queue, and the
//! `dr` chain adds every flow it sends to a server, renewing its timeout with each packet.
//! Conntrack cannot carry these flows: it sees one direction only, and marks every packet
//! after a SYN whose SYN-ACK it never saw INVALID. The timeout an entry was last given says
//! the TCP phase slbd reads from the map ([`phase_of`]): the SYN's, a FIN's or a reset's
//! (closing), or the established one. A FIN or reset also puts the flow in the set
//! [`DR_CLOSING`] for the closing timeout, so the ACKs that end the connection keep the
//! closing timeout instead of the established one. A SYN always goes to slbd, which places
//! it (a retransmission on its flow's server, a port reused after a close afresh), and its
//! flow replaces any entry of the same key (a map's update keeps the value it has).

use std::time::Duration;

use super::*;
use crate::core::flow::Phase;
use crate::core::model::FlowLimits;
use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// Direct routing, after the refusals: a request slbd's verdict marked with its server's
/// address ([`dr_mark`]) is sent to that server's MAC unchanged (`dup`, which routes the copy
/// to the address as a gateway and keeps it out of conntrack) and the original dropped.
/// Marked after routing it would be too late: the VIP is local, so routing delivers it here.
pub const DR_CHAIN: Chain = Chain {
    name: "dr",
    hook: Hook::Prerouting,
    priority: -130,
    kind: ChainKind::Filter,
};

// A verdict's mark is read by the chains after the queue's, and a refusal ends before `dr`.
const _: () = assert!(
    REQUEST_CHAIN.priority < REFUSE_CHAIN.priority && REFUSE_CHAIN.priority < DR_CHAIN.priority
);

/// The mark that sends a direct-routing request to `server`: its address, laid out in the
/// mark's register as the `dup` statement reads an address (network order in memory).
pub fn dr_mark(server: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(server.octets())
}

/// A network interface's name, at most 15 bytes (IFNAMSIZ with its NUL), kept in a `Copy`
/// value as rules are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IfName([u8; 16]);

impl IfName {
    /// `None` for a name the kernel would refuse (empty, 16 bytes or more, a NUL).
    pub fn new(name: &str) -> Option<IfName> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 15 || b.contains(&0) {
            return None;
        }
        let mut a = [0u8; 16];
        a[..b.len()].copy_from_slice(b);
        Some(IfName(a))
    }

    pub fn as_str(&self) -> &str {
        let n = self.0.iter().position(|&c| c == 0).unwrap_or(16);
        std::str::from_utf8(&self.0[..n]).unwrap_or("")
    }
}

impl std::fmt::Debug for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The map of offload direct-routing flows in slbd's table.
pub const DR_FLOWS: &str = "dr_flows";

/// The set of the map's TCP flows that saw a FIN or a reset.
pub const DR_CLOSING: &str = "dr_closing";

/// The flow map: (ipv4_addr . inet_proto . inet_service . inet_service) → mark, entries timing
/// out, at most `size`; and the set of closing flows, with the same key, whose entries time
/// out after `closing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrFlows {
    pub size: u32,
    pub closing: Duration,
}

/// The flow map the rules need: one when a service is offload direct routing.
pub fn dr_flows(config: &Config) -> Option<DrFlows> {
    config
        .services
        .iter()
        .any(Service::dr_offload)
        .then_some(DrFlows {
            size: config.flows.max,
            closing: config.flows.tcp_closing_timeout,
        })
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
}

/// The TCP phase an entry's timeout tells (`None` for UDP, whose flows are established): a
/// SYN's timeout, the closing one (a FIN or reset), or otherwise established.
pub fn phase_of(f: &DrFlow, limits: &FlowLimits) -> Option<Phase> {
    if f.protocol == Protocol::Udp {
        return None;
    }
    Some(if f.timeout == limits.tcp_timeout {
        Phase::Established
    } else if f.timeout == limits.syn_timeout {
        Phase::Opening
    } else {
        Phase::Closing
    })
}

/// The request chain's rules of an offload direct-routing service: a SYN is queued, a flow
/// the map holds takes its mark there and skips the queue, and any other packet is queued
/// (slbd places it).
pub(super) fn offload_request_rules(config: &Config, s: &Service, queues: QueueRange) -> Vec<Rule> {
    let mut syn = service_matches(config, s);
    syn.push(Match::TcpFlags {
        mask: SYN | ACK,
        value: SYN,
    });
    let syn = Rule {
        chain: REQUEST_CHAIN,
        matches: syn,
        actions: vec![Action::Notrack, Action::Queue(queues)],
        comment: format!("dr offload {}: a SYN, placed by slbd", s.name()),
    };
    let syns = (s.protocol == Protocol::Tcp).then_some(syn);
    syns.into_iter()
        .chain([
            Rule {
                chain: REQUEST_CHAIN,
                matches: service_matches(config, s),
                actions: vec![Action::Notrack, Action::MarkFromFlows, Action::Accept],
                comment: format!("dr offload {}: a flow the kernel carries", s.name()),
            },
            Rule {
                chain: REQUEST_CHAIN,
                matches: service_matches(config, s),
                actions: vec![Action::Queue(queues)],
                comment: format!("dr offload {}: a flow's first packet", s.name()),
            },
        ])
        .collect()
}

/// The `dr` chain's rules of each direct-routing service: to the server the mark names. An
/// offload service's flow enters the map or has its timeout renewed first, by its packet's
/// TCP flags.
pub(super) fn rules(config: &Config) -> Vec<Rule> {
    let Some(dev) = IfName::new(&config.gateway_dev) else {
        return Vec::new();
    };
    let limits = &config.flows;
    let mut rules = Vec::new();
    for s in config
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Dr)
    {
        let mut matches = service_matches(config, s);
        matches.push(Match::MarkAddressIn(config.cluster_network));
        let to_server = |m: Option<Match>, first: &[Action], timeout: Option<Duration>, what| {
            let m: Vec<Match> = matches.iter().copied().chain(m).collect();
            let mut actions = first.to_vec();
            if let Some(timeout) = timeout {
                actions.push(Action::RecordFlow { timeout });
            }
            actions.extend([Action::DupToMarkAddress(dev), Action::Drop]);
            Rule {
                chain: DR_CHAIN,
                matches: m,
                actions,
                comment: format!("dr {}: {what}to the server the mark names", s.name()),
            }
        };
        let flags = |mask, value| Some(Match::TcpFlags { mask, value });
        let closing = Some(limits.tcp_closing_timeout);
        if !s.dr_offload() {
            rules.push(to_server(None, &[], None, ""));
        } else if s.protocol == Protocol::Udp {
            rules.push(to_server(None, &[], Some(limits.udp_timeout), "kept, "));
        } else {
            rules.extend([
                to_server(
                    flags(SYN | ACK, SYN),
                    &[Action::ForgetFlow],
                    Some(limits.syn_timeout),
                    "a SYN, kept anew, ",
                ),
                to_server(
                    flags(RST, RST),
                    &[Action::MarkClosing],
                    closing,
                    "a reset, kept, ",
                ),
                to_server(
                    flags(FIN, FIN),
                    &[Action::MarkClosing],
                    closing,
                    "a FIN, kept, ",
                ),
                to_server(Some(Match::FlowClosing), &[], closing, "closing, kept, "),
                to_server(None, &[], Some(limits.tcp_timeout), "kept, "),
            ]);
        }
    }
    rules
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
    fn offload_dr_flows_skip_the_queue_by_the_flow_map_and_enter_it_with_their_phase_timeout() {
        let rs = plan(
            &offload_config(),
            QueueRange { first: 0, count: 1 },
            &[],
            &[],
        );
        assert_eq!(
            rs.dr_flows,
            Some(DrFlows {
                size: 1 << 20,
                closing: Duration::from_secs(30)
            })
        );
        let key = "ip saddr . meta l4proto . th sport . th dport";
        let prerouting = in_chain(&rs, "prerouting");
        assert_eq!(
            prerouting[..5],
            [
                r#"ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 tcp flags & (syn | ack) == syn notrack queue num 0 comment "dr offload tcp/80: a SYN, placed by slbd""#.to_string(),
                format!(
                    r#"ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 notrack meta mark set {key} map @dr_flows accept comment "dr offload tcp/80: a flow the kernel carries""#
                ),
                r#"ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 queue num 0 comment "dr offload tcp/80: a flow's first packet""#.to_string(),
                format!(
                    r#"ip daddr 10.0.0.100 meta l4proto udp udp dport 53 notrack meta mark set {key} map @dr_flows accept comment "dr offload udp/53: a flow the kernel carries""#
                ),
                r#"ip daddr 10.0.0.100 meta l4proto udp udp dport 53 queue num 0 comment "dr offload udp/53: a flow's first packet""#.to_string(),
            ]
        );
        let to = r#"dup to meta mark device "eth1" drop"#;
        let tcp = "ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 meta mark (as an address) 172.16.0.0/24";
        let udp = "ip daddr 10.0.0.100 meta l4proto udp udp dport 53 meta mark (as an address) 172.16.0.0/24";
        assert_eq!(
            in_chain(&rs, "dr"),
            vec![
                format!(
                    r#"{tcp} tcp flags & (syn | ack) == syn delete @dr_flows {{ {key} : meta mark }} delete @dr_closing {{ {key} }} update @dr_flows {{ {key} timeout 5000ms : meta mark }} {to} comment "dr tcp/80: a SYN, kept anew, to the server the mark names""#
                ),
                format!(
                    r#"{tcp} tcp flags & rst == rst update @dr_closing {{ {key} }} update @dr_flows {{ {key} timeout 30000ms : meta mark }} {to} comment "dr tcp/80: a reset, kept, to the server the mark names""#
                ),
                format!(
                    r#"{tcp} tcp flags & fin == fin update @dr_closing {{ {key} }} update @dr_flows {{ {key} timeout 30000ms : meta mark }} {to} comment "dr tcp/80: a FIN, kept, to the server the mark names""#
                ),
                format!(
                    r#"{tcp} {key} @dr_closing update @dr_flows {{ {key} timeout 30000ms : meta mark }} {to} comment "dr tcp/80: closing, kept, to the server the mark names""#
                ),
                format!(
                    r#"{tcp} update @dr_flows {{ {key} timeout 900000ms : meta mark }} {to} comment "dr tcp/80: kept, to the server the mark names""#
                ),
                format!(
                    r#"{udp} update @dr_flows {{ {key} timeout 60000ms : meta mark }} {to} comment "dr udp/53: kept, to the server the mark names""#
                ),
            ]
        );
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
        assert_eq!(phase_of(&at(5), &limits), Some(Phase::Opening));
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
}
