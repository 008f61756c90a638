//! The SYN budget of packet-mode services: in raw prerouting, before anything is queued, new
//! TCP connections to a packet-mode service from clients that are not known share a kernel
//! rate limit, so a flood of spoofed SYNs cannot fill the queue ahead of the clients the site
//! serves. A client becomes known when a packet of its after a handshake (an ACK) reaches the
//! VIP, which a spoofed source never sends, and stays known for `syn_flood.known_for` after
//! its last one. Pure, as the rest of [`super::plan`], which places these rules first.
//!
//! Offload services have none: what their full queue cannot hold goes on to the kernel, which
//! places it (see `offload.rs`), so every client of theirs, new or known, gets a server; a
//! budget would only turn new clients away. A packet-mode flow is slbd's alone, so there the
//! queue must be kept from filling.
//!
//! What it does not do: tell a new client from the flood. A client seen for the first time
//! during a flood gets through at the budget's share of the SYNs (one try in ten at ten
//! times the budget), and a flood of spoofed ACKs can make sources known (the set is bounded,
//! and its entries expire).

use std::time::Duration;

use super::*;
use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// The set of known clients in slbd's table.
pub const KNOWN_CLIENTS: &str = "known_clients";

/// The known clients' set: `ipv4_addr`, entries timing out, at most `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownClients {
    pub timeout: Duration,
    pub size: u32,
}

/// The services held to the budget: packet-mode TCP ones, when there is a budget.
fn budgeted(config: &Config) -> impl Iterator<Item = &Service> {
    config.services.iter().filter(move |s| {
        config.syn_flood.budget > 0 && s.protocol == Protocol::Tcp && s.mode == Mode::Packet
    })
}

/// The set the rules need, if any.
pub fn known_clients(config: &Config) -> Option<KnownClients> {
    budgeted(config).next().is_some().then_some(KnownClients {
        timeout: config.syn_flood.known_for,
        size: config.syn_flood.known_max,
    })
}

/// The rule that makes clients known, then each budgeted service's budget (a token bucket
/// each).
pub(super) fn rules(config: &Config) -> Vec<Rule> {
    let mut rules = Vec::new();
    for s in budgeted(config) {
        if rules.is_empty() {
            rules.push(Rule {
                chain: REQUEST_CHAIN,
                matches: vec![
                    Match::DaddrIs(config.vip),
                    Match::L4Proto(Protocol::Tcp),
                    Match::TcpFlags {
                        mask: FIN | SYN | RST | ACK,
                        value: ACK,
                    },
                ],
                actions: vec![Action::UpdateSetWithSaddr(KNOWN_CLIENTS)],
                comment: "a client past its handshake is known".into(),
            });
        }
        let mut matches = service_matches(config, s);
        matches.extend([
            Match::TcpFlags {
                mask: SYN | ACK,
                value: SYN,
            },
            Match::SaddrNotInSet(KNOWN_CLIENTS),
            Match::RateOver {
                per_second: config.syn_flood.budget,
                burst: (config.syn_flood.budget / 10).max(1),
            },
        ]);
        rules.push(Rule {
            chain: REQUEST_CHAIN,
            matches,
            actions: vec![Action::Drop],
            comment: format!("{}: SYN budget for clients not known", s.name()),
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_json(&format!(
            r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24", {extra}
                "services": [{{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80"]}}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn known_clients_skip_a_budget_every_other_syn_to_the_vip_shares_ahead_of_the_queue() {
        let rs = plan(&config(""), QueueRange { first: 0, count: 1 }, &[], &[]);
        let text: Vec<String> = rs
            .rules
            .iter()
            .take(3)
            .map(|r| format!("{}: {r}", r.chain.name))
            .collect();
        assert_eq!(
            text,
            vec![
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp flags & (fin | syn | rst | ack) == ack update @known_clients { ip saddr } comment "a client past its handshake is known""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 tcp flags & (syn | ack) == syn ip saddr != @known_clients limit rate over 20000/second burst 2000 packets drop comment "tcp/80: SYN budget for clients not known""#,
                r#"prerouting: ip daddr 10.0.0.100 meta l4proto tcp tcp dport 80 notrack queue num 0 comment "request tcp/80""#,
            ]
        );
        assert_eq!(
            rs.known_clients,
            Some(KnownClients {
                timeout: Duration::from_secs(600),
                size: 65_536
            })
        );
    }

    #[test]
    fn a_budget_of_zero_or_no_packet_mode_tcp_service_plans_neither_the_rules_nor_the_set() {
        let off = config(r#""syn_flood": {"budget": 0},"#);
        let rs = plan(&off, QueueRange { first: 0, count: 1 }, &[], &[]);
        assert!(rs.known_clients.is_none());
        assert!(!rs.rules.iter().any(|r| r.comment.contains("SYN budget")));
        let mut udp = config("");
        udp.services[0].protocol = Protocol::Udp;
        assert!(rules(&udp).is_empty() && known_clients(&udp).is_none());
        let mut offload = config("");
        offload.services[0].mode = Mode::Offload;
        assert!(rules(&offload).is_empty() && known_clients(&offload).is_none());
    }
}
