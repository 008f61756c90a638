//! The rules of offload services: their first packets queued after conntrack, the packets of
//! theirs conntrack cannot translate, a server's packets no flow here knows, a server's refusal
//! of a handshake, and the marks that become a flow's NAT binding. Pure, as the rest of
//! [`super::plan`], which places them between the request rules and the guard.

use super::*;

/// The offload services' rules, in chain order; `targets` are the servers flows can be bound to.
pub(super) fn rules(config: &Config, queues: QueueRange, targets: &[OffloadTarget]) -> Vec<Rule> {
    let net = config.cluster_network;
    let mut rules = Vec::new();
    for s in config.services.iter().filter(|s| s.mode == Mode::Offload) {
        let mut matches = service_matches(config, s);
        matches.push(Match::CtStateNew);
        rules.push(Rule {
            chain: OFFLOAD_CHAIN,
            matches,
            actions: vec![Action::Queue(queues)],
            comment: format!("offload {}: first packet", s.name()),
        });
    }
    // A client's packet conntrack finds INVALID, which it does not translate: in a planned
    // switch, the ACK of a handshake whose SYN-ACK the servers already sent the new ACTIVE's
    // way (so this node's conntrack never saw it), still reaching this node. slbd sends it
    // on to the flow's server itself in the hand-over's grace period, and drops it otherwise.
    for s in config
        .services
        .iter()
        .filter(|s| s.mode == Mode::Offload && s.protocol == Protocol::Tcp)
    {
        let mut matches = service_matches(config, s);
        matches.push(Match::CtStateInvalid);
        rules.push(Rule {
            chain: OFFLOAD_CHAIN,
            matches,
            actions: vec![Action::SetMark(UNTRACKED_MARK), Action::Queue(queues)],
            comment: format!(
                "offload {}: a packet conntrack does not translate",
                s.name()
            ),
        });
    }
    // A server's packet no conntrack entry of this node knows: in a planned switch, one of a
    // flow the dual placed just before letting go, reaching this node first (its servers
    // answer here from the gratuitous ARP on). slbd takes the flow: a SYN-ACK or FIN, which
    // conntrack marks INVALID, gets [`ADOPT_REWRITE_MARK`] and is rewritten after routing to
    // come from the VIP; any other gets the
    // [`adopt_mark`] of its service, and `offload_snat` binds its new conntrack entry to
    // come from the VIP, both ways, for the flow's life. Anything else passes unchanged.
    let mut offload_ports: Vec<u16> = config
        .services
        .iter()
        .filter(|s| s.mode == Mode::Offload && s.protocol == Protocol::Tcp)
        .flat_map(|s| s.servers.iter().map(|r| r.addr.port()))
        .collect();
    offload_ports.sort();
    offload_ports.dedup();
    for port in offload_ports {
        rules.push(Rule {
            chain: OFFLOAD_CHAIN,
            matches: vec![
                Match::SaddrIn(net),
                Match::DaddrNotIn(net),
                Match::L4Proto(Protocol::Tcp),
                Match::Sport(Protocol::Tcp, port),
                Match::CtStateNewOrInvalid,
            ],
            actions: vec![Action::Queue(queues)],
            comment: format!("offload tcp/{port}: a server's packet no flow here knows"),
        });
    }
    // A server's reset of a handshake (conntrack has not seen it complete) of an offload
    // flow: slbd keeps it from the client, deletes the flow's conntrack entry and places the
    // client's retransmitted SYN on another server (passive detection counts the refusal).
    let mut refusing_ports: Vec<u16> = config
        .services
        .iter()
        .filter(|s| {
            s.mode == Mode::Offload && s.protocol == Protocol::Tcp && s.health.passive.enabled
        })
        .flat_map(|s| s.servers.iter().map(|r| r.addr.port()))
        .collect();
    refusing_ports.sort();
    refusing_ports.dedup();
    for port in refusing_ports {
        rules.push(Rule {
            chain: OFFLOAD_CHAIN,
            matches: vec![
                Match::SaddrIn(net),
                Match::DaddrNotIn(net),
                Match::L4Proto(Protocol::Tcp),
                Match::Sport(Protocol::Tcp, port),
                Match::TcpRst,
                Match::CtNotAssured,
            ],
            actions: vec![Action::Queue(queues)],
            comment: format!("offload tcp/{port}: a server refusing a handshake"),
        });
    }
    // An ICMP unreachable from the server network about an offload flow: a server that is not
    // there (passive detection; the flow is retried elsewhere).
    if config
        .services
        .iter()
        .any(|s| s.mode == Mode::Offload && s.health.passive.enabled)
    {
        rules.push(Rule {
            chain: OFFLOAD_CHAIN,
            matches: vec![
                Match::SaddrIn(net),
                Match::DaddrNotIn(net),
                Match::IcmpType(icmp::DEST_UNREACHABLE),
                Match::CtStateRelated,
            ],
            actions: vec![Action::Queue(queues)],
            comment: "offload: a server's unreachable about a flow".into(),
        });
    }
    for s in config
        .services
        .iter()
        .filter(|s| s.mode == Mode::Offload && s.protocol == Protocol::Tcp)
    {
        rules.push(Rule {
            chain: SNAT_CHAIN,
            matches: vec![
                Match::Mark(adopt_mark(s.port)),
                Match::L4Proto(Protocol::Tcp),
            ],
            actions: vec![
                Action::CtMarkFromMark,
                Action::Snat(std::net::SocketAddrV4::new(config.vip, s.port)),
            ],
            comment: format!("offload {}: a flow taken from the dual", s.name()),
        });
    }
    for t in targets {
        let mut actions = vec![Action::CtMarkFromMark];
        if !t.every_state {
            actions.push(Action::CtEvents(EVENTS_ASSURED_AND_DESTROY));
        }
        actions.push(Action::Dnat(t.server));
        rules.push(Rule {
            chain: NAT_CHAIN,
            matches: vec![Match::Mark(t.mark), Match::L4Proto(t.protocol)],
            actions,
            comment: format!("offload to {}/{}", t.protocol, t.server),
        });
    }
    rules
}
