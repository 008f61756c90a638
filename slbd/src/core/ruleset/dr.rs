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

/// One rule per direct-routing service, in the `dr` chain.
pub(super) fn rules(config: &Config) -> Vec<Rule> {
    let Some(dev) = IfName::new(&config.gateway_dev) else {
        return Vec::new();
    };
    config
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
        })
        .collect()
}
