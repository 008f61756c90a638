//! The rules of direct-routing services (`forwarding: dr`): a request slbd's verdict marked
//! with its server's address goes to that server's MAC unchanged, and the original is
//! dropped. Pure, as the rest of [`super::plan`], which places them after the request rules.
//! Offload mode's flows are carried past their first packet by the netdev table
//! ([`super::dr_flows`]); what reaches this table's `dr` chain is what slbd placed.

use super::*;

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

/// The request chain's rule of an offload direct-routing service: what reaches it (a SYN, or a
/// flow the netdev table does not carry yet) is queued, and slbd places it.
pub(super) fn offload_request_rule(config: &Config, s: &Service, queues: QueueRange) -> Rule {
    Rule {
        chain: REQUEST_CHAIN,
        matches: service_matches(config, s),
        actions: vec![Action::Notrack, Action::Queue(queues)],
        comment: format!("dr offload {}: a SYN, or a flow not carried yet", s.name()),
    }
}

/// The priority a first packet the kernel placed itself ([`rules`]' spread) carries to the
/// netdev table's `dr_out`, which records its flow (instead of forgetting it, as a SYN slbd
/// placed) and sets the priority back to 0 before the device's queueing discipline reads it.
pub const SPREAD_PRIORITY: u32 = 0x5b1d_0003;

/// The `dr` chain: per offload direct-routing service, the kernel's own choice for a first
/// packet the full queue passed on (fail-open; see [`super::offload::spread`]), then per
/// direct-routing service the rule that sends what is marked to its server.
///
/// A spread TCP packet is a SYN only: any other segment of a flow slbd placed would go to a
/// server the hash names, not the flow's, so it goes on to `guard`'s drop as in packet mode.
/// The SYN's flow enters the flow map as it leaves ([`SPREAD_PRIORITY`]): the rest of the
/// handshake and the flow are the kernel's, and slbd adopts it from the map.
pub(super) fn rules(config: &Config, targets: &[OffloadTarget]) -> Vec<Rule> {
    let Some(dev) = IfName::new(&config.gateway_dev) else {
        return Vec::new();
    };
    let spread = config
        .services
        .iter()
        .filter(|s| s.dr_offload())
        .flat_map(|s| {
            let syn: &[Match] = match s.protocol {
                Protocol::Tcp => &[super::dr_flows::SYN_ONLY],
                Protocol::Udp => &[],
            };
            offload::spread(
                config,
                s,
                targets,
                DR_CHAIN,
                syn,
                &[Action::SetPriority(SPREAD_PRIORITY)],
            )
        });
    let sent = config
        .services
        .iter()
        .filter(|s| s.forwarding == Forwarding::Dr)
        .map(|s| {
            let mut matches = service_matches(config, s);
            matches.push(Match::MarkAddressIn(config.cluster_network));
            Rule {
                chain: DR_CHAIN,
                matches,
                actions: vec![Action::DupToMarkAddress(dev), Action::Drop],
                comment: format!("dr {}: to the server the mark names", s.name()),
            }
        });
    spread.chain(sent).collect()
}
