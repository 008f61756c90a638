//! What the balancer tells the queue shell to do with a packet, and why it drops one. Small and
//! `Copy`: the packet path never allocates to explain itself. Pure.

use crate::core::packet::Malformed;

/// Which rule queued the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → VIP, queued before routing: gets DNAT.
    Request,
    /// Real server → client, queued after routing: gets SNAT.
    Reply,
    /// Client → VIP of an offload service, which conntrack found INVALID and so does not
    /// translate (queued before routing with [`crate::core::ruleset::UNTRACKED_MARK`]): in a
    /// hand-over, the handshake's ACK of a flow whose SYN-ACK went the dual's way. Gets DNAT
    /// here, as in packet mode, or is dropped.
    Untracked,
}

/// What to tell the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reinject the (rewritten) packet.
    Accept,
    /// Reinject the offload flow's first packet unchanged with this mark: the kernel's NAT
    /// rule for the mark binds the flow to its server.
    Offload(u32),
    /// A new flow with no server in rotation: the kernel answers it from the VIP (a TCP reset
    /// or an ICMP port unreachable, the `refuse` chain) instead of leaving the client to time
    /// out. Counted as dropped for `no_server`.
    Refuse,
    Drop(DropReason),
}

/// Why a packet was dropped; each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed(Malformed),
    /// A request for a protocol/port with no service (the rules should not queue it).
    NoService,
    /// A TCP packet other than a SYN for a flow slbd does not know, e.g. after a restart.
    /// A freshly chosen server would only answer it with a reset.
    MidStream,
    /// The same, within the grace period after this node took over from its dual: a flow the
    /// replication did not deliver. Counted apart so a takeover's losses are visible.
    AfterTakeover,
    /// A reply that matches no flow: sending it on would leak the real server's address.
    ReplyWithoutFlow,
    /// No real server of the service is in rotation.
    NoServer,
    /// The flow table is at `flows.max` and holds no flow that may be evicted (every one an
    /// answered TCP connection): the new flow is refused from the VIP.
    TableFull,
    /// The kernel handed over less than the whole packet; writing it back would truncate it.
    Truncated,
    /// An offload packet conntrack did not translate, outside a hand-over or of no flow this
    /// node placed: dropped, as it would be without slbd.
    Untracked,
    /// A server's reset of a new connection's SYN: kept from the client, whose retransmitted
    /// SYN goes to another server.
    HandshakeRefused,
    /// An offload client's retransmitted SYN its server never answered: conntrack binds it to
    /// that server, so it is dropped and the entry deleted; the next retransmission is a new
    /// flow, placed elsewhere.
    HandshakeUnanswered,
    /// A server's ICMP unreachable about a flow it never answered: kept from the client, the
    /// flow forgotten, its next packet placed elsewhere.
    ServerUnreachable,
    /// A packet of a flow the operator cut (its server in maintenance, or draining past its
    /// deadline): answered with a reset, so the client knows at once.
    Cut,
}

impl DropReason {
    /// The reasons that are not [`DropReason::Malformed`], in counter order.
    const OWN: [DropReason; 12] = [
        DropReason::NoService,
        DropReason::MidStream,
        DropReason::ReplyWithoutFlow,
        DropReason::NoServer,
        DropReason::TableFull,
        DropReason::Truncated,
        DropReason::AfterTakeover,
        DropReason::Untracked,
        DropReason::HandshakeRefused,
        DropReason::HandshakeUnanswered,
        DropReason::ServerUnreachable,
        DropReason::Cut,
    ];

    /// How many counters the reasons need: derived, so a reason added to `Self::OWN` or to
    /// [`Malformed::ALL`] gets one without anyone counting by hand.
    pub const COUNT: usize = Self::OWN.len() + Malformed::ALL.len();

    /// The reason's counter. The match is exhaustive, so a new variant does not compile
    /// until it is given a place.
    pub(super) fn index(self) -> usize {
        let own = |d: DropReason| Self::OWN.iter().position(|o| *o == d).unwrap_or(0);
        match self {
            DropReason::Malformed(m) => {
                Self::OWN.len() + Malformed::ALL.iter().position(|x| *x == m).unwrap_or(0)
            }
            d @ (DropReason::NoService
            | DropReason::MidStream
            | DropReason::ReplyWithoutFlow
            | DropReason::NoServer
            | DropReason::TableFull
            | DropReason::Truncated
            | DropReason::AfterTakeover
            | DropReason::Untracked
            | DropReason::HandshakeRefused
            | DropReason::HandshakeUnanswered
            | DropReason::ServerUnreachable
            | DropReason::Cut) => own(d),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoService => "no_service",
            DropReason::MidStream => "mid_stream_without_flow",
            DropReason::ReplyWithoutFlow => "reply_without_flow",
            DropReason::NoServer => "no_server",
            DropReason::TableFull => "flow_table_full",
            DropReason::Truncated => "truncated",
            DropReason::AfterTakeover => "mid_stream_after_takeover",
            DropReason::Untracked => "untracked_outside_handover",
            DropReason::HandshakeRefused => "handshake_refused_retried",
            DropReason::HandshakeUnanswered => "handshake_unanswered_retried",
            DropReason::ServerUnreachable => "server_unreachable_retried",
            DropReason::Cut => "cut_by_operator",
            DropReason::Malformed(m) => m.name(),
        }
    }

    /// Every reason, each once.
    pub fn all() -> impl Iterator<Item = DropReason> {
        Self::OWN
            .into_iter()
            .chain(Malformed::ALL.into_iter().map(DropReason::Malformed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_a_counter_of_its_own_within_bounds() {
        let mut seen = [false; DropReason::COUNT];
        for d in DropReason::all() {
            let i = d.index();
            assert!(i < DropReason::COUNT, "{d:?} counts at {i}");
            assert!(!seen[i], "{d:?} shares counter {i}");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "a counter nobody uses");
        assert_eq!(DropReason::all().count(), DropReason::COUNT);
    }

    #[test]
    fn every_drop_reason_has_its_own_metric_name() {
        let names: std::collections::HashSet<&str> = DropReason::all().map(|d| d.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
