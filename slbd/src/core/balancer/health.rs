//! What a server's health means for its flows, decided here rather than in the prober that
//! measures it: a server that leaves rotation has its flows forgotten at once (their next TCP
//! packets are dropped as mid-stream; a UDP flow's next datagram is scheduled afresh to a
//! server that is up), and an offload server's conntrack entries must be cut too; a server
//! the operator removed drains while its flows last. A node that is not balancing (a
//! STANDBY) checks its servers too, so it knows what it could serve before it takes over, but
//! only records what it sees: the flows it holds are its dual's, replicated, and end when the
//! dual ends them. Pure.

use std::sync::atomic::Ordering::Relaxed;

use super::replica::Record;
use super::stats::CHECK_PASSED;
use super::Dataplane;
use crate::core::agent::{weight_of, AgentAdmin, AgentOper, AgentSays};
use crate::core::flow::FlowKey;
use crate::core::health::Failure;
use crate::core::model::Mode;
use crate::core::net::Protocol;
use crate::core::ruleset::DrServer;

/// What recording a server's health did, and what the caller must still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthOutcome {
    /// Flows forgotten because the server left rotation.
    pub flows_ended: usize,
    /// The server left rotation and the kernel carries its flows: what must go, or the
    /// kernel goes on sending them to a dead server.
    pub cut: Option<FlowCut>,
}

/// Where the kernel carries an offload server's flows, to be deleted when they are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowCut {
    /// NAT: the conntrack entries under this mark.
    Conntrack { mark: u32 },
    /// Direct routing: the flow map's entries of this server.
    DrFlows(DrServer),
}

impl Dataplane {
    /// Whether server `id` is in rotation.
    pub fn is_up(&self, id: u32) -> bool {
        self.stats(id).is_some_and(|st| st.up.load(Relaxed))
    }

    /// Whether a server other than `id` is in rotation in a service `id` belongs to.
    pub fn another_up(&self, id: u32) -> bool {
        let view = self.view.load();
        let registry = self.registry.load();
        view.services
            .iter()
            .filter(|s| s.ids.contains(&id))
            .flat_map(|s| s.ids.iter())
            .filter(|&&other| other != id)
            .any(|&other| {
                registry
                    .stats
                    .get(other as usize)
                    .is_some_and(|st| st.up.load(Relaxed))
            })
    }

    /// Records a server's health as its checks see it (and its measured latency); `last` is
    /// the last check's failure, `None` when it passed. Going down records it as the reason.
    /// A server out of rotation comes back only when `came_up` (its checks just reached
    /// `rise`): a check that merely still passes does not undo passive detection, which can
    /// take the server out between the checker's look and this call.
    pub fn set_health(
        &self,
        id: u32,
        up: bool,
        latency_us: Option<u32>,
        last: Option<Failure>,
        came_up: bool,
    ) -> HealthOutcome {
        let Some(st) = self.stats(id) else {
            return HealthOutcome::default();
        };
        if let Some(l) = latency_us {
            st.latency_us.store(l.max(1), Relaxed);
        }
        st.last_check
            .store(last.map_or(CHECK_PASSED, Failure::code), Relaxed);
        // A server its agent took out comes back when the agent says so, not by its checks.
        if up && (!came_up || st.down_reason.load(Relaxed) == Failure::Agent.code()) {
            return HealthOutcome::default();
        }
        let was_up = st.up.swap(up, Relaxed);
        if up {
            st.down_reason.store(0, Relaxed);
            if !was_up {
                st.passive_fails.store(0, Relaxed);
                st.ramp_pending.store(true, Relaxed);
            }
            return HealthOutcome::default();
        }
        if !was_up {
            return HealthOutcome::default();
        }
        st.down_reason
            .store(last.unwrap_or(Failure::Error).code(), Relaxed);
        self.end_flows_of(id)
    }

    /// The weight a check says server `id` has from now on (`None`: its configured weight).
    /// A weight of 0 keeps the server's flows but gives it no new ones (IPVS's quiescent
    /// server).
    pub fn set_weight(&self, id: u32, weight: Option<u32>) {
        if let Some(st) = self.stats(id) {
            // Stored as weight + 1 so that 0 can mean "configured".
            let w = weight.map_or(0, |w| w.min(crate::core::model::MAX_WEIGHT as u32) + 1);
            st.dynamic_weight.store(w, Relaxed);
        }
    }

    /// Applies what server `id`'s agent said (`configured`: its configured weight): its
    /// weight, the agent's administrative state, and its operational state (a `down` takes
    /// it out of rotation as a failed check does; `up` brings back only a server the agent
    /// took out). Says what the caller must still cut.
    pub fn apply_agent(&self, id: u32, says: &AgentSays, configured: u32) -> HealthOutcome {
        let Some(st) = self.stats(id) else {
            return HealthOutcome::default();
        };
        if let Some(pct) = says.weight_pct {
            self.set_weight(id, Some(weight_of(configured, pct)));
        }
        if let Some(admin) = says.admin {
            let code = match admin {
                AgentAdmin::Ready => 0,
                AgentAdmin::Drain => 1,
                AgentAdmin::Maint => 2,
            };
            if st.agent_admin.swap(code, Relaxed) != 0 && code == 0 {
                st.ramp_pending.store(true, Relaxed);
            }
        }
        match says.oper {
            Some(AgentOper::Down) => self.set_health(id, false, None, Some(Failure::Agent), false),
            Some(AgentOper::Up)
                if !st.up.load(Relaxed)
                    && st.down_reason.load(Relaxed) == Failure::Agent.code() =>
            {
                st.down_reason.store(0, Relaxed);
                st.passive_fails.store(0, Relaxed);
                st.ramp_pending.store(true, Relaxed);
                st.up.store(true, Relaxed);
                HealthOutcome::default()
            }
            _ => HealthOutcome::default(),
        }
    }

    /// A server just left rotation: forgets its flows (on a balancing node) and says what the
    /// caller must still cut.
    pub(super) fn end_flows_of(&self, id: u32) -> HealthOutcome {
        self.end_server_flows(id, None)
    }

    /// The operator cut server `id`'s flows: forgotten as [`Self::end_flows_of`] does, and
    /// remembered until a while after `now_ms`, so that their next packets get a reset.
    pub(super) fn end_flows_where(&self, id: u32, now_ms: u64) -> HealthOutcome {
        self.end_server_flows(id, Some(now_ms))
    }

    fn end_server_flows(&self, id: u32, cut_at: Option<u64>) -> HealthOutcome {
        if !self.balancing.load(Relaxed) {
            return HealthOutcome::default();
        }
        let Some(st) = self.stats(id) else {
            return HealthOutcome::default();
        };
        let (mut n, mut open) = (0, 0);
        for shard in self.shards.iter() {
            let mut t = shard.lock();
            let ended = t.remove_where(|e| e.tag == id);
            for e in &ended {
                self.log(&mut t, Record::end(e));
            }
            if let Some(now_ms) = cut_at.filter(|_| !ended.is_empty()) {
                let mut cut = self.cut_flows.lock();
                for e in ended.iter().filter(|e| e.protocol == Protocol::Tcp) {
                    let key = FlowKey {
                        protocol: e.protocol,
                        src: e.client,
                        dst: e.vip,
                    };
                    cut.remember(key, now_ms);
                }
            }
            drop(t);
            n += ended.len();
            open += ended.iter().filter(|e| !e.was_closing).count();
        }
        st.less_live(open as u64);
        HealthOutcome {
            flows_ended: n,
            cut: self.cut_of(id),
        }
    }

    /// Server ports (protocol, port) of packet-mode servers no longer configured that still
    /// have flows: their replies must keep reaching slbd while they drain.
    pub fn draining_ports(&self) -> Vec<(Protocol, u16)> {
        let view = self.view.load();
        let registry = self.registry.load();
        let mut ports: Vec<(Protocol, u16)> = registry
            .ids
            .iter()
            .filter(|(_, id)| {
                let i = **id as usize;
                registry.stats[i].live_flows.load(Relaxed) > 0
                    && registry.modes[i] == Mode::Packet
                    && !view.services.iter().any(|s| s.ids.contains(id))
            })
            .map(|((p, _, addr), _)| (*p, addr.port()))
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::health::Failure;
    use crate::core::packet::fixtures::{tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, SYN};

    fn dp() -> Dataplane {
        let c = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [
                  {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                  {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53", "172.16.0.3:53"]}]}"#,
        )
        .unwrap();
        Dataplane::new(&c, 1)
    }

    fn send(dp: &Dataplane, mut p: Vec<u8>) -> (Verdict, SocketAddrV4) {
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        (v, packet::parse(&p).unwrap().dst)
    }

    #[test]
    fn a_down_server_gets_no_new_flows_and_its_flows_end() {
        let dp = dp();
        let (_, first) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(first, sa("172.16.0.2:80"));
        assert_eq!(
            dp.set_health(
                dp.server_id(0, 0).unwrap(),
                false,
                None,
                Some(Failure::Refused),
                false
            ),
            HealthOutcome {
                flows_ended: 1,
                cut: None
            },
            "a packet-mode server's flows are forgotten, nothing to cut"
        );
        // The flow's next packet is mid-stream now: dropped, not moved.
        let (v, _) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), ACK, b"x", &[]),
        );
        assert_eq!(v, Verdict::Drop(DropReason::MidStream));
        for port in 2000..2010 {
            let (v, to) = send(
                &dp,
                tcp(
                    SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                    sa("10.0.0.100:80"),
                    SYN,
                    b"",
                    &[],
                ),
            );
            assert_eq!((v, to), (Verdict::Accept, sa("172.16.0.3:80")));
        }
        dp.set_health(dp.server_id(0, 0).unwrap(), true, Some(300), None, true);
        let picks: Vec<_> = (3000..3004)
            .map(|port| {
                send(
                    &dp,
                    tcp(
                        SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                        sa("10.0.0.100:80"),
                        SYN,
                        b"",
                        &[],
                    ),
                )
                .1
            })
            .collect();
        assert!(
            picks.contains(&sa("172.16.0.2:80")),
            "back in rotation: {picks:?}"
        );
    }

    #[test]
    fn a_standby_records_a_down_server_but_keeps_the_duals_flows_on_it() {
        let dp = dp();
        let client = sa("10.0.0.5:1000");
        let (_, first) = send(&dp, tcp(client, sa("10.0.0.100:80"), SYN, b"", &[]));
        assert_eq!(first, sa("172.16.0.2:80"));
        dp.set_balancing(false, false, 0);
        let id = dp.server_id(0, 0).unwrap();
        assert_eq!(
            dp.set_health(id, false, None, Some(Failure::Refused), false),
            HealthOutcome::default(),
            "no flow ended, nothing cut while standing by"
        );
        assert!(
            !dp.is_up(id),
            "the standby's view of the server is recorded"
        );
        dp.set_balancing(true, false, 0);
        let (v, to) = send(&dp, tcp(client, sa("10.0.0.100:80"), ACK, b"x", &[]));
        assert_eq!(
            (v, to),
            (Verdict::Accept, sa("172.16.0.2:80")),
            "the flow carries on where the dual placed it"
        );
        let (v, to) = send(
            &dp,
            tcp(sa("10.0.0.5:2000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(
            (v, to),
            (Verdict::Accept, sa("172.16.0.3:80")),
            "new flows avoid it"
        );
    }

    #[test]
    fn another_up_says_whether_the_service_has_another_server_in_rotation() {
        let dp = dp();
        let (a, b) = (dp.server_id(0, 0).unwrap(), dp.server_id(0, 1).unwrap());
        assert!(dp.another_up(a));
        dp.set_health(b, false, None, Some(Failure::Refused), false);
        assert!(!dp.another_up(a), "b is down: a is the service's last");
        assert!(dp.another_up(b), "a is up");
    }

    #[test]
    fn a_udp_flow_moves_when_its_server_goes_down() {
        let dp = dp();
        let q = || udp(sa("10.0.0.5:5000"), sa("10.0.0.100:53"), b"q");
        assert_eq!(send(&dp, q()).1, sa("172.16.0.2:53"));
        dp.set_health(
            dp.server_id(1, 0).unwrap(),
            false,
            None,
            Some(Failure::Refused),
            false,
        );
        assert_eq!(send(&dp, q()), (Verdict::Accept, sa("172.16.0.3:53")));
    }

    #[test]
    fn with_every_server_down_new_flows_are_refused_and_counted() {
        let dp = dp();
        dp.set_health(
            dp.server_id(0, 0).unwrap(),
            false,
            None,
            Some(Failure::Refused),
            false,
        );
        dp.set_health(
            dp.server_id(0, 1).unwrap(),
            false,
            None,
            Some(Failure::Refused),
            false,
        );
        let (v, _) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(
            v,
            Verdict::Refuse,
            "answered from the VIP, not left to time out"
        );
        assert_eq!(dp.counters.dropped(DropReason::NoServer), 1);
    }
}
