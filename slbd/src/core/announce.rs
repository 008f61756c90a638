//! The announcement of cluster mode: whether this balancer should have the VIP's /32
//! announced to the routers (by the BGP daemon, which learns it from the kernel routing table
//! slbd keeps it in), and why not. One place decides; the shell only follows. Pure.

use std::net::Ipv4Addr;

/// Where slbd keeps the route a BGP daemon announces (`"announce"` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The kernel routing table the route goes into (the BGP daemon learns it from there).
    pub table: u32,
    /// The device slbd creates and holds for the route: it vanishes with slbd's process, and
    /// the route with it, so a dead slbd is withdrawn even though nothing ran to say so.
    pub device: String,
    /// The operator withdrew this node (`slbctl --withdraw`): it keeps serving what still
    /// reaches it, but the routers are told to send it nothing new.
    pub withdrawn: bool,
    /// The BGP daemon's control socket, read (never written to) for its sessions' states.
    pub bird_socket: std::path::PathBuf,
}

/// Where Debian's bird2 puts its control socket.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";

/// What the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// slbd's role is balancing (rules and VIP in force).
    pub balancing: bool,
    /// Servers in rotation over every service (up, not in maintenance, not draining).
    pub servers_in_rotation: usize,
    /// The operator's withdrawal.
    pub withdrawn: bool,
}

/// Whether to announce, and the reason shown when not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub announce: bool,
    pub reason: &'static str,
}

/// Announce only while this node can serve a new flow and the operator has not withdrawn it.
/// The operator's withdrawal is named first: it is the one an operator must undo.
pub fn decide(i: Inputs) -> Decision {
    let (announce, reason) = if i.withdrawn {
        (false, "withdrawn by the operator")
    } else if !i.balancing {
        (false, "not balancing")
    } else if i.servers_in_rotation == 0 {
        (false, "no server in rotation")
    } else {
        (true, "serving")
    };
    Decision { announce, reason }
}

/// The route as `ip route` would show it, for logs and status.
pub fn route_text(vip: Ipv4Addr, a: &Announce) -> String {
    format!("{vip}/32 dev {} table {}", a.device, a.table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs(balancing: bool, servers_in_rotation: usize, withdrawn: bool) -> Inputs {
        Inputs {
            balancing,
            servers_in_rotation,
            withdrawn,
        }
    }

    #[test]
    fn a_balancing_node_with_a_server_in_rotation_announces() {
        assert_eq!(
            decide(inputs(true, 1, false)),
            Decision {
                announce: true,
                reason: "serving"
            }
        );
    }

    #[test]
    fn each_reason_not_to_announce_is_named() {
        assert_eq!(decide(inputs(false, 3, false)).reason, "not balancing");
        assert_eq!(
            decide(inputs(true, 0, false)).reason,
            "no server in rotation"
        );
        assert_eq!(
            decide(inputs(true, 3, true)).reason,
            "withdrawn by the operator"
        );
        assert_eq!(
            decide(inputs(false, 0, true)).reason,
            "withdrawn by the operator",
            "the operator's withdrawal is the one to name first"
        );
    }

    proptest! {
        #[test]
        fn announces_exactly_when_balancing_serving_and_not_withdrawn(
            balancing: bool, servers in 0usize..5, withdrawn: bool
        ) {
            let d = decide(inputs(balancing, servers, withdrawn));
            prop_assert_eq!(d.announce, balancing && servers > 0 && !withdrawn);
            prop_assert_eq!(d.announce, d.reason == "serving");
        }
    }

    #[test]
    fn the_route_reads_as_ip_route_shows_it() {
        let a = Announce {
            table: 100,
            device: "slb-vip".into(),
            withdrawn: false,
            bird_socket: DEFAULT_BIRD_SOCKET.into(),
        };
        assert_eq!(
            route_text(Ipv4Addr::new(10, 0, 0, 100), &a),
            "10.0.0.100/32 dev slb-vip table 100"
        );
    }
}
