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

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::Config;
use crate::net::{Ipv4Net, Protocol};

/// The one table slbd owns (family `ip`). It never touches any other.
pub const TABLE: &str = "slb";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

pub const REQUEST_CHAIN: Chain = Chain {
    name: "prerouting",
    hook: Hook::Prerouting,
    priority: -300,
};

pub const REPLY_CHAIN: Chain = Chain {
    name: "postrouting",
    hook: Hook::Postrouting,
    priority: 100,
};

/// Right after the request chain: turns the requests slbd refused (no server of the service
/// is up) into a TCP reset or an ICMP port unreachable from the VIP, so the client hears at
/// once instead of retrying into silence.
pub const REFUSE_CHAIN: Chain = Chain {
    name: "refuse",
    hook: Hook::Prerouting,
    priority: -299,
};

/// The packet mark slbd's verdict sets on a request it refuses.
pub const REFUSE_MARK: u32 = 0x5b1d_0001;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Notrack,
    Queue(QueueRange),
    Drop,
    RejectTcpReset,
    RejectPortUnreachable,
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
}

impl Ruleset {
    pub const CHAINS: [Chain; 3] = [REQUEST_CHAIN, REFUSE_CHAIN, REPLY_CHAIN];

    /// How many rules go in `chain`, for checking what the kernel reports back.
    pub fn count_in(&self, chain: &str) -> usize {
        self.rules.iter().filter(|r| r.chain.name == chain).count()
    }
}

/// The ruleset for `config`, queueing to `queues`; `draining` adds reply rules for server
/// ports no longer configured whose flows still run.
pub fn plan(config: &Config, queues: QueueRange, draining: &[(Protocol, u16)]) -> Ruleset {
    let net = config.cluster_network;
    let mut rules = Vec::new();
    for s in &config.services {
        rules.push(Rule {
            chain: REQUEST_CHAIN,
            matches: vec![
                Match::DaddrIs(config.vip),
                Match::L4Proto(s.protocol),
                Match::Dport(s.protocol, s.port),
            ],
            actions: vec![Action::Notrack, Action::Queue(queues)],
            comment: format!("request {}", s.name()),
        });
    }
    let mut reply_ports: Vec<(Protocol, u16)> = config
        .services
        .iter()
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
    for &(p, port) in &reply_ports {
        rules.push(Rule {
            chain: REPLY_CHAIN,
            matches: reply_matches(p, port),
            actions: vec![Action::Queue(queues)],
            comment: format!("reply {p}/{port}"),
        });
    }
    Ruleset { rules }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::DaddrIs(a) => write!(f, "ip daddr {a}"),
            Match::SaddrIn(n) => write!(f, "ip saddr {n}"),
            Match::DaddrNotIn(n) => write!(f, "ip daddr != {n}"),
            Match::L4Proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport(p, port) => write!(f, "{p} dport {port}"),
            Match::Sport(p, port) => write!(f, "{p} sport {port}"),
            Match::Mark(m) => write!(f, "meta mark {m:#x}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Notrack => f.write_str("notrack"),
            Action::Drop => f.write_str("drop"),
            Action::RejectTcpReset => f.write_str("reject with tcp reset"),
            Action::RejectPortUnreachable => f.write_str("reject with icmp port-unreachable"),
            Action::Queue(q) if q.count > 1 => {
                write!(
                    f,
                    "queue num {}-{} fanout",
                    q.first,
                    q.first + (q.count - 1)
                )
            }
            Action::Queue(q) => write!(f, "queue num {}", q.first),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .matches
            .iter()
            .map(|m| m.to_string())
            .chain(self.actions.iter().map(|a| a.to_string()))
            .collect();
        write!(f, "{} comment \"{}\"", parts.join(" "), self.comment)
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
                "services": [
                  {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:8080"]},
                  {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53"]},
                  {"protocol": "tcp", "port": 8080, "servers": ["172.16.0.2:8080"]}
                ]}"#,
        )
        .unwrap();
        let rs = plan(&config, QueueRange { first: 0, count: 2 }, &[]);
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
            ]
        );
        assert_eq!(rs.count_in("prerouting"), 8);
        assert_eq!(rs.count_in("refuse"), 2);
        assert_eq!(rs.count_in("postrouting"), 3);
        let single = plan(
            &config,
            QueueRange { first: 5, count: 1 },
            &[(Protocol::Udp, 99)],
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
}
