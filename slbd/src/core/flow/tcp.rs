//! The one place a flow's TCP state changes: [`step`] takes the state and what was just seen
//! of the connection — a client's segment, a server's segment, conntrack's word on an offload
//! flow, the ACTIVE's word on a replicated one — and returns the new state and what changed.
//! The flow table stores the result; nothing else decides. Pure.
//!
//! slbd folds RFC 9293's states (§3.3.2) into the three that decide its timeouts and live
//! counts: a handshake not answered yet, a connection the server answered, and one that has
//! begun to close (either side's FIN, or a RST).

use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};

/// Where a TCP flow is, as far as slbd cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// A SYN went to the server; nothing came back yet.
    Opening,
    /// The server answered.
    Established,
    /// A FIN or RST was seen.
    Closing,
}

/// Where conntrack says an offload flow's TCP connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Opening,
    Established,
    Closing,
}

/// What was seen of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A client → VIP segment with these flags.
    Request(u8),
    /// A real server → client segment with these flags.
    Reply(u8),
    /// conntrack's report on an offload flow.
    Kernel(Phase),
    /// The ACTIVE saw the handshake complete (a replicated flow).
    Replicated,
}

/// The outcome of one [`step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub state: TcpState,
    /// This completed the handshake.
    pub established_now: bool,
    /// This began the close (the flow stops counting as live).
    pub closed_now: bool,
    /// A new connection on a closing flow's 5-tuple: the old flow ends here and the segment
    /// starts a flow of its own, scheduled afresh.
    pub restarts: bool,
    /// The server reset the handshake: a refused connection, which passive detection counts
    /// and the client's retransmitted SYN retries elsewhere.
    pub refused_now: bool,
}

/// A SYN without ACK: a connection's first segment, or a retransmission of it.
pub fn is_syn(flags: u8) -> bool {
    flags & (SYN | ACK) == SYN
}

/// The state after `seen`.
pub fn step(state: TcpState, seen: Seen) -> Step {
    use TcpState::*;
    let stay = Step {
        state,
        established_now: false,
        closed_now: false,
        restarts: false,
        refused_now: false,
    };
    let closes = |flags: u8| flags & (FIN | RST) != 0;
    match (state, seen) {
        (Closing, Seen::Request(f)) if is_syn(f) => Step {
            restarts: true,
            ..stay
        },
        (Opening, Seen::Reply(f)) if f & RST != 0 => Step {
            state: Closing,
            closed_now: true,
            refused_now: true,
            ..stay
        },
        (_, Seen::Request(f) | Seen::Reply(f)) if closes(f) => Step {
            state: Closing,
            closed_now: state != Closing,
            ..stay
        },
        (Opening, Seen::Reply(_) | Seen::Kernel(Phase::Established)) => Step {
            state: Established,
            established_now: true,
            ..stay
        },
        (Opening, Seen::Replicated) => Step {
            state: Established,
            ..stay
        },
        (Opening | Established, Seen::Kernel(Phase::Closing)) => Step {
            state: Closing,
            closed_now: true,
            ..stay
        },
        _ => stay,
    }
}

#[cfg(test)]
mod tests {
    use super::TcpState::*;
    use super::*;

    /// (from, seen, to, established_now, closed_now, restarts)
    const ROWS: &[(TcpState, Seen, TcpState, bool, bool, bool)] = &[
        // A client's segments.
        (Opening, Seen::Request(SYN), Opening, false, false, false),
        (Opening, Seen::Request(ACK), Opening, false, false, false),
        (
            Opening,
            Seen::Request(FIN | ACK),
            Closing,
            false,
            true,
            false,
        ),
        (Opening, Seen::Request(RST), Closing, false, true, false),
        (
            Established,
            Seen::Request(ACK),
            Established,
            false,
            false,
            false,
        ),
        (
            Established,
            Seen::Request(SYN),
            Established,
            false,
            false,
            false,
        ),
        (
            Established,
            Seen::Request(FIN | ACK),
            Closing,
            false,
            true,
            false,
        ),
        (
            Closing,
            Seen::Request(FIN | ACK),
            Closing,
            false,
            false,
            false,
        ),
        (Closing, Seen::Request(ACK), Closing, false, false, false),
        // A new connection on the 5-tuple of one that closed.
        (Closing, Seen::Request(SYN), Closing, false, false, true),
        // A server's segments.
        (
            Opening,
            Seen::Reply(SYN | ACK),
            Established,
            true,
            false,
            false,
        ),
        (Opening, Seen::Reply(RST | ACK), Closing, false, true, false),
        (
            Established,
            Seen::Reply(ACK),
            Established,
            false,
            false,
            false,
        ),
        (
            Established,
            Seen::Reply(FIN | ACK),
            Closing,
            false,
            true,
            false,
        ),
        (Closing, Seen::Reply(RST), Closing, false, false, false),
        (
            Closing,
            Seen::Reply(SYN | ACK),
            Closing,
            false,
            false,
            false,
        ),
        // conntrack's reports.
        (
            Opening,
            Seen::Kernel(Phase::Opening),
            Opening,
            false,
            false,
            false,
        ),
        (
            Opening,
            Seen::Kernel(Phase::Established),
            Established,
            true,
            false,
            false,
        ),
        (
            Established,
            Seen::Kernel(Phase::Established),
            Established,
            false,
            false,
            false,
        ),
        (
            Opening,
            Seen::Kernel(Phase::Closing),
            Closing,
            false,
            true,
            false,
        ),
        (
            Established,
            Seen::Kernel(Phase::Closing),
            Closing,
            false,
            true,
            false,
        ),
        (
            Closing,
            Seen::Kernel(Phase::Closing),
            Closing,
            false,
            false,
            false,
        ),
        (
            Closing,
            Seen::Kernel(Phase::Established),
            Closing,
            false,
            false,
            false,
        ),
        // The ACTIVE's word on a replicated flow.
        (Opening, Seen::Replicated, Established, false, false, false),
        (
            Established,
            Seen::Replicated,
            Established,
            false,
            false,
            false,
        ),
        (Closing, Seen::Replicated, Closing, false, false, false),
    ];

    #[test]
    fn every_row_of_the_transition_table() {
        for &(from, seen, to, established_now, closed_now, restarts) in ROWS {
            assert_eq!(
                step(from, seen),
                Step {
                    state: to,
                    established_now,
                    closed_now,
                    restarts,
                    refused_now: from == Opening && matches!(seen, Seen::Reply(f) if f & RST != 0),
                },
                "{from:?} + {seen:?}"
            );
        }
    }

    #[test]
    fn only_a_reset_answering_the_handshake_is_a_refusal() {
        assert!(step(Opening, Seen::Reply(RST | ACK)).refused_now);
        assert!(step(Opening, Seen::Reply(RST)).refused_now);
        // An application's reset after the handshake is not the server refusing.
        assert!(!step(Established, Seen::Reply(RST | ACK)).refused_now);
        assert!(!step(Opening, Seen::Request(RST)).refused_now);
        assert!(!step(Closing, Seen::Reply(RST)).refused_now);
    }

    #[test]
    fn a_syn_is_a_syn_without_ack() {
        assert!(is_syn(SYN));
        assert!(!is_syn(SYN | ACK));
        assert!(!is_syn(ACK));
        assert!(
            is_syn(SYN | FIN),
            "flags other than ACK do not make it an answer"
        );
    }

    #[test]
    fn the_close_is_reported_once_whatever_follows() {
        for seen in [
            Seen::Request(FIN),
            Seen::Reply(RST),
            Seen::Kernel(Phase::Closing),
        ] {
            let first = step(Established, seen);
            assert!(first.closed_now);
            for again in [
                Seen::Request(FIN),
                Seen::Reply(FIN),
                Seen::Kernel(Phase::Closing),
            ] {
                assert!(
                    !step(first.state, again).closed_now,
                    "{seen:?} then {again:?}"
                );
            }
        }
    }
}
