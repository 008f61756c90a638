//! The rules of offload services: their first packets queued after conntrack, the packets of
//! theirs conntrack cannot translate, a server's packets no flow here knows, a server's refusal
//! of a handshake, the marks that become a flow's NAT binding, and the kernel's own choice for
//! the first packets a full queue passes on. Pure, as the rest of
//! [`super::plan`], which places them between the request rules and the guard.

use super::*;

/// The offload services' rules, in chain order; `targets` are the servers flows can be bound to.
pub(super) fn rules(config: &Config, queues: QueueRange, targets: &[OffloadTarget]) -> Vec<Rule> {
    let net = config.cluster_network;
    let mut rules = Vec::new();
    for s in config.services.iter().filter(|s| s.nat_offload()) {
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
        .filter(|s| s.nat_offload() && s.protocol == Protocol::Tcp)
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
        .filter(|s| s.nat_offload() && s.protocol == Protocol::Tcp)
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
        .filter(|s| s.nat_offload() && s.protocol == Protocol::Tcp && s.health.passive.enabled)
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
        .any(|s| s.nat_offload() && s.health.passive.enabled)
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
        .filter(|s| s.nat_offload() && s.protocol == Protocol::Tcp)
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
    rules.extend(overflow_spread(config, targets));
    for t in targets.iter().filter(|t| t.forwarding == Forwarding::Nat) {
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

/// Most rules one service's overflow spread takes: weights are scaled down to this many
/// slots, so a new flow's way through `offload_nat` stays short.
pub const MAX_SPREAD_SLOTS: usize = 32;

/// A first packet the full queue passed on (fail-open) carries no mark: it gets the mark of a
/// server in rotation by a hash of its source address, and the target rules after these bind
/// it as if slbd had chosen that server; slbd adopts the flow from its conntrack events.
fn overflow_spread(config: &Config, targets: &[OffloadTarget]) -> Vec<Rule> {
    config
        .services
        .iter()
        .filter(|s| s.nat_offload())
        .flat_map(|s| spread(config, s, targets, NAT_CHAIN, &[], &[]))
        .collect()
}

/// Service `s`'s share of a spread in `chain`: one rule per slot, matching packets without a
/// mark (and `also`) by a hash of the source address, each giving its server's mark (and
/// `then`).
pub(super) fn spread(
    config: &Config,
    s: &Service,
    targets: &[OffloadTarget],
    chain: Chain,
    also: &[Match],
    then: &[Action],
) -> Vec<Rule> {
    let up: Vec<&OffloadTarget> = targets
        .iter()
        .filter(|t| t.protocol == s.protocol && t.port == s.port && t.weight > 0)
        .collect();
    let weights: Vec<u32> = up.iter().map(|t| t.weight).collect();
    let slots = spread_slots(&weights);
    slots
        .iter()
        .enumerate()
        .map(|(value, &i)| {
            let mut matches = vec![Match::Mark(0)];
            matches.extend(service_matches(config, s));
            matches.extend_from_slice(also);
            matches.push(Match::SourceHash {
                modulus: slots.len() as u32,
                value: value as u32,
            });
            let mut actions = vec![Action::SetMark(up[i].mark)];
            actions.extend_from_slice(then);
            Rule {
                chain,
                matches,
                actions,
                comment: format!("offload {}: queue full, to {}", s.name(), up[i].server),
            }
        })
        .collect()
}

/// Which server (an index into `weights`) each slot of a spread names: each weight divided
/// by their greatest common divisor, scaled down to at most [`MAX_SPREAD_SLOTS`] with every
/// server keeping one (so more servers than that get one each). Servers of weight 0 get none.
pub fn spread_slots(weights: &[u32]) -> Vec<usize> {
    let g = weights_gcd(weights);
    if g == 0 {
        return Vec::new();
    }
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let total: u64 = reduced.iter().sum();
    let max = MAX_SPREAD_SLOTS as u64;
    let counts: Vec<u64> = if total <= max {
        reduced
    } else {
        let positive = reduced.iter().filter(|&&w| w > 0).count() as u64;
        // What is left after every server's one slot, shared by weight, rounded down.
        let rest = max.saturating_sub(positive);
        reduced
            .iter()
            .map(|&w| if w == 0 { 0 } else { 1 + w * rest / total })
            .collect()
    };
    counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| std::iter::repeat_n(i, n as usize))
        .collect()
}

fn weights_gcd(weights: &[u32]) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_weights_get_one_slot_each_and_ratios_reduce() {
        assert_eq!(spread_slots(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(spread_slots(&[100, 100]), vec![0, 1]);
        assert_eq!(spread_slots(&[2, 4]), vec![0, 1, 1]);
        assert_eq!(spread_slots(&[3, 0, 1]), vec![0, 0, 0, 2]);
        assert_eq!(spread_slots(&[0, 0]), Vec::<usize>::new());
        assert_eq!(spread_slots(&[]), Vec::<usize>::new());
    }

    proptest! {
        #[test]
        fn spreads_stay_short_keep_every_server_in_rotation_and_follow_the_weights(
            weights in proptest::collection::vec(0u32..=10_000, 1..40)
        ) {
            let slots = spread_slots(&weights);
            let positive = weights.iter().filter(|&&w| w > 0).count();
            prop_assert!(slots.len() <= MAX_SPREAD_SLOTS.max(positive));
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            let exact = total > 0 && total / weights_gcd(&weights) <= MAX_SPREAD_SLOTS as u64;
            let count = |i: usize| slots.iter().filter(|&&s| s == i).count() as u64;
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(count(i) == 0, w == 0, "server {} weight {}", i, w);
                if exact {
                    // Not scaled: exactly the weight's share.
                    prop_assert_eq!(count(i) * total, u64::from(w) * slots.len() as u64);
                }
                for (j, &v) in weights.iter().enumerate() {
                    if w > v {
                        prop_assert!(count(i) >= count(j), "weight {} got fewer slots than {}", w, v);
                    }
                }
            }
        }
    }
}
