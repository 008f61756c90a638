//! Who may take a service's next new flow, and with what weight: the one place where health,
//! the operator's and an agent's state, backup servers and slow start meet; and the decision
//! made from it (persistence first, then the scheduler). The real placement and `explain` both
//! run that decision, so they cannot disagree. Also the operator's cuts: a server in maintenance, or draining past its
//! deadline, has its flows forgotten, and their next packets are answered with a reset.
//! Pure.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use std::net::SocketAddrV4;

use super::stats::{Registry, ServerStats};
use super::view::ServiceState;
use super::{persist_key, view, Dataplane, Decided, DropReason, HealthOutcome};
use crate::core::flow::FlowKey;
use crate::core::model::{AdminState, RealServer};

/// Where a server stands for new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    InRotation,
    /// Its checks (or passive detection) took it out.
    Down,
    /// The operator is draining it.
    Draining,
    /// The operator put it in maintenance.
    Maint,
    /// Its weight is 0 (a check set it): it keeps its flows but gets no new ones.
    Quiescent,
    /// A backup server while a primary server is in rotation.
    BackupIdle,
}

impl Standing {
    pub fn name(self) -> &'static str {
        match self {
            Standing::InRotation => "in_rotation",
            Standing::Down => "down",
            Standing::Draining => "draining",
            Standing::Maint => "maint",
            Standing::Quiescent => "weight_0",
            Standing::BackupIdle => "backup_idle",
        }
    }
}

/// Weights handed to the schedulers are in thousandths of a configured unit, so a server in
/// slow start can hold a fraction of its weight; every scheduler is scale-free.
pub const WEIGHT_SCALE: u32 = 1000;

/// The share of its weight (in thousandths) a server has `elapsed_ms` into a slow start of
/// `slow_start_ms`: linear from 1 % to all of it.
pub fn ramp_permille(elapsed_ms: u64, slow_start_ms: u64) -> u32 {
    if slow_start_ms == 0 || elapsed_ms >= slow_start_ms {
        return WEIGHT_SCALE;
    }
    let share = elapsed_ms * u64::from(WEIGHT_SCALE) / slow_start_ms;
    (share as u32).clamp(WEIGHT_SCALE / 100, WEIGHT_SCALE)
}

/// How long a cut flow's packets are answered with a reset before they count as unknown.
const CUT_MEMORY_MS: u64 = 60_000;
/// The most cut flows remembered; past it a cut flow's packets are dropped as unknown.
const CUT_MEMORY_MAX: usize = 65_536;

/// Flows the operator cut, remembered so that their next packets get a reset.
#[derive(Default)]
pub(super) struct CutFlows(HashMap<FlowKey, u64>);

impl CutFlows {
    pub(super) fn remember(&mut self, key: FlowKey, now_ms: u64) {
        if self.0.len() < CUT_MEMORY_MAX {
            self.0.insert(key, now_ms + CUT_MEMORY_MS);
        }
    }

    pub(super) fn contains(&self, key: &FlowKey, now_ms: u64) -> bool {
        self.0.get(key).is_some_and(|until| now_ms < *until)
    }

    pub(super) fn expire(&mut self, now_ms: u64) {
        self.0.retain(|_, until| now_ms < *until);
    }
}

impl Dataplane {
    /// Where server `r` (with counters `st`) stands; `primaries_up`: whether a primary server
    /// of its service is in rotation.
    pub(super) fn standing(st: &ServerStats, r: &RealServer, primaries_up: bool) -> Standing {
        let state = Self::admin_state(st, r);
        if !st.up.load(Relaxed) {
            Standing::Down
        } else if state == AdminState::Maint {
            Standing::Maint
        } else if matches!(state, AdminState::Drain { .. }) {
            Standing::Draining
        } else if st.weight(r.weight) == 0 {
            Standing::Quiescent
        } else if r.backup && primaries_up {
            Standing::BackupIdle
        } else {
            Standing::InRotation
        }
    }

    /// The administrative state in force: the more restrictive of the operator's and the
    /// agent's (whose drain has no deadline).
    pub fn admin_state(st: &ServerStats, r: &RealServer) -> AdminState {
        match (r.state, st.agent_admin.load(Relaxed)) {
            (AdminState::Maint, _) | (_, 2) => AdminState::Maint,
            (AdminState::Drain { until }, _) => AdminState::Drain { until },
            (AdminState::Ready, 1) => AdminState::Drain { until: None },
            (AdminState::Ready, _) => AdminState::Ready,
        }
    }

    /// Whether a primary (not backup) server of `svc` is in rotation.
    pub(super) fn primaries_up(svc: &ServiceState, registry: &Registry) -> bool {
        svc.service
            .servers
            .iter()
            .zip(&svc.ids)
            .filter(|(r, _)| !r.backup)
            .any(|(r, id)| {
                registry
                    .stats
                    .get(*id as usize)
                    .is_some_and(|st| Self::standing(st, r, true) == Standing::InRotation)
            })
    }

    /// The weight server `r` takes new flows with now, in [`WEIGHT_SCALE`] units: its
    /// configured (or check-set) weight times its slow-start share. A slow start begins at
    /// the first look after the server came into rotation.
    pub(super) fn effective_weight(st: &ServerStats, r: &RealServer, now_ms: u64) -> u32 {
        if st.ramp_pending.swap(false, Relaxed) {
            st.ramp_from_ms.store(now_ms.max(1), Relaxed);
        }
        let from = st.ramp_from_ms.load(Relaxed);
        let share = match from {
            0 => WEIGHT_SCALE,
            from => ramp_permille(now_ms.saturating_sub(from), r.slow_start.as_millis() as u64),
        };
        st.weight(r.weight).saturating_mul(share)
    }

    /// How many servers, over every service, are in rotation now: cluster mode withdraws the
    /// VIP's announcement at none.
    pub fn servers_in_rotation(&self) -> usize {
        let view = self.view.load();
        let registry = self.registry.load();
        view.services
            .iter()
            .map(|s| Self::in_rotation(s, &registry).count())
            .sum()
    }

    /// Whether the service on (protocol, port) is serving from its backup servers: no
    /// primary is in rotation and a backup is.
    pub fn serving_backups(&self) -> Vec<(String, bool)> {
        let view = self.view.load();
        let registry = self.registry.load();
        view.services
            .iter()
            .filter(|s| s.service.servers.iter().any(|r| r.backup))
            .map(|s| {
                let primaries = Self::primaries_up(s, &registry);
                let backups = Self::in_rotation(s, &registry).any(|r| r.backup);
                (s.service.name(), !primaries && backups)
            })
            .collect()
    }

    /// The servers of `svc` that may take its next new flow.
    fn in_rotation<'a>(
        svc: &'a ServiceState,
        registry: &'a Registry,
    ) -> impl Iterator<Item = &'a RealServer> + 'a {
        let primaries = Self::primaries_up(svc, registry);
        svc.service
            .servers
            .iter()
            .zip(&svc.ids)
            .filter(move |(r, id)| {
                registry
                    .stats
                    .get(**id as usize)
                    .is_some_and(|st| Self::standing(st, r, primaries) == Standing::InRotation)
            })
            .map(|(r, _)| r)
    }

    /// Whether an offload server is draining with flows left. Conntrack reports only the end
    /// of most offload flows (not their close), so their live count drops only when the
    /// entry expires; while a drain waits on it, the caller dumps conntrack to see closes.
    pub fn offload_draining(&self) -> bool {
        let view = self.view.load();
        view.services
            .iter()
            .filter(|s| s.service.mode == crate::core::model::Mode::Offload)
            .flat_map(|s| s.service.servers.iter().zip(&s.ids))
            .any(|(r, id)| {
                self.stats(*id).is_some_and(|st| {
                    matches!(Self::admin_state(&st, r), AdminState::Drain { .. })
                        && st.live_flows.load(Relaxed) > 0
                })
            })
    }

    /// Marks server `id` as just come into rotation: its slow start (if it has one) begins.
    pub(super) fn start_ramp(&self, id: u32) {
        if let Some(st) = self.stats(id) {
            st.ramp_pending.store(true, Relaxed);
        }
    }

    /// Cuts the flows of servers the operator put in maintenance or whose drain deadline has
    /// passed (`now_unix`, seconds since the epoch): their flows are forgotten and their
    /// next packets answered with a reset. Returns what the caller must still cut in
    /// conntrack, one outcome per server cut.
    pub fn enforce_admin_states(&self, now_unix: u64, now_ms: u64) -> Vec<(String, HealthOutcome)> {
        let view = self.view.load();
        let mut out = Vec::new();
        for svc in &view.services {
            for (r, id) in svc.service.servers.iter().zip(&svc.ids) {
                let live = self.stats(*id).map_or(0, |st| st.live_flows.load(Relaxed));
                if !r.state.cuts_flows(now_unix) || live == 0 {
                    continue;
                }
                let outcome = self.end_flows_where(*id, now_ms);
                out.push((format!("{}/{}", svc.service.name(), r.addr), outcome));
            }
        }
        out
    }
}

/// The decision for a new flow: persistence, then the scheduler over the candidates above.
impl Dataplane {
    /// The decision itself, with no side effect but the scheduler's (`pick`): the client's
    /// remembered server when persistence is on and that server is in rotation (and not
    /// `avoid`), else `pick`'s choice. The real placement and `explain` both come here.
    pub(super) fn decide(
        &self,
        svc: &ServiceState,
        registry: &Registry,
        client: SocketAddrV4,
        now_ms: u64,
        avoid: Option<u32>,
        pick: impl FnOnce() -> Result<usize, DropReason>,
    ) -> Result<Decided, DropReason> {
        let primaries_up = Self::primaries_up(svc, registry);
        let in_rotation = |i: usize| {
            svc.ids
                .get(i)
                .and_then(|id| registry.stats.get(*id as usize))
                .is_some_and(|st| {
                    Self::standing(st, &svc.service.servers[i], primaries_up)
                        == Standing::InRotation
                })
        };
        let timeout = svc.service.persistence_timeout.as_millis() as u64;
        let remembered = (timeout > 0)
            .then(|| {
                self.persistence
                    .lock()
                    .get(&persist_key(svc, client), now_ms)
            })
            .flatten()
            .and_then(|addr| svc.service.servers.iter().position(|s| s.addr == addr))
            .filter(|&i| in_rotation(i) && svc.ids.get(i) != avoid.as_ref());
        match remembered {
            Some(i) => Ok(Decided::Persisted(i)),
            None => pick().map(Decided::Scheduled),
        }
    }

    /// The service's scheduler's choice among its servers as they are now. A scheduler is
    /// trusted for its policy, not its bounds: an index past the list, or a server out of
    /// rotation, is no choice at all. `avoid` (a server that just failed this client's
    /// handshake) is left out unless no other server is in rotation.
    pub(super) fn pick(
        &self,
        svc: &ServiceState,
        registry: &Registry,
        client: SocketAddrV4,
        avoid: Option<u32>,
        now_ms: u64,
    ) -> Result<usize, DropReason> {
        let mut p = svc.picker.lock();
        let view::Picker {
            scheduler,
            candidates,
        } = &mut *p;
        Self::fill_candidates(svc, registry, avoid, now_ms, candidates);
        let flow = Self::flow(svc, client, avoid, now_ms);
        let picked = scheduler
            .pick_flow(candidates, &flow)
            .filter(|&i| i < svc.service.servers.len() && candidates.get(i).is_some_and(|c| c.up));
        match picked {
            // The server to avoid was the only one in rotation: better it than none.
            None if avoid.is_some() => {
                drop(p);
                self.pick(svc, registry, client, None, now_ms)
            }
            picked => picked.ok_or(DropReason::NoServer),
        }
    }

    /// What the scheduler may know of a new flow from `client`: its hash (only MAGLEV looks
    /// at it), the time, and the server to avoid as an index into the service's servers.
    pub(super) fn flow(
        svc: &ServiceState,
        client: SocketAddrV4,
        avoid: Option<u32>,
        now_ms: u64,
    ) -> crate::core::sched::Flow {
        let s = &svc.service;
        let hash = if s.algorithm == crate::core::sched::Algorithm::Maglev {
            s.maglev.flow_hash(s.protocol as u8, client, s.port)
        } else {
            0
        };
        crate::core::sched::Flow {
            hash,
            now_ms,
            avoid: avoid.and_then(|id| svc.ids.iter().position(|&x| x == id)),
        }
    }

    /// The scheduler's view of `svc`'s servers now: in rotation or not, effective weight,
    /// live flows, latency. `avoid` is left out.
    pub(super) fn fill_candidates(
        svc: &ServiceState,
        registry: &Registry,
        avoid: Option<u32>,
        now_ms: u64,
        candidates: &mut [crate::core::sched::Candidate],
    ) {
        let primaries_up = Self::primaries_up(svc, registry);
        for ((c, id), r) in candidates
            .iter_mut()
            .zip(&svc.ids)
            .zip(&svc.service.servers)
        {
            let Some(st) = registry.stats.get(*id as usize) else {
                c.up = false;
                continue;
            };
            c.weight = Self::effective_weight(st, r, now_ms);
            c.up =
                Self::standing(st, r, primaries_up) == Standing::InRotation && Some(*id) != avoid;
            c.live = st.live_flows.load(Relaxed).min(u64::from(u32::MAX)) as u32;
            c.latency_us = Some(st.latency_us.load(Relaxed)).filter(|l| *l > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::balancer::testing::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::{ACK, RST, SYN};
    use proptest::prelude::*;

    fn dp(servers: &str, extra: &str) -> Dataplane {
        Dataplane::for_test(&one_service(servers, extra))
    }

    fn one_service(servers: &str, extra: &str) -> Config {
        Config::from_json(&format!(
            r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
            "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
            "services": [{{"protocol": "tcp", "port": 80, {extra} "servers": [{servers}]}}]}}"#
        ))
        .unwrap()
    }

    fn send(dp: &Dataplane, client: &str, flags: u8, now_ms: u64) -> (Verdict, SocketAddrV4) {
        let mut p = tcp(sa(client), sa("10.0.0.100:80"), flags, b"", &[]);
        let v = dp.handle(
            Direction::Request,
            &mut p,
            true,
            ChecksumState::Complete,
            now_ms,
        );
        (v, dst_of(&p))
    }

    const MAGLEV: &str = r#""algorithm": "MAGLEV", "maglev": {"table_size": 251},"#;
    const FIVE: &str =
        r#""172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:80", "172.16.0.5:80", "172.16.0.6:80""#;

    fn reply(dp: &Dataplane, server: SocketAddrV4, client: &str, flags: u8) -> Verdict {
        let mut p = tcp(server, sa(client), flags, b"", &[]);
        dp.handle(Direction::Reply, &mut p, true, ChecksumState::Complete, 5)
    }

    #[test]
    fn servers_in_rotation_counts_neither_a_down_nor_a_backup_server_while_a_primary_serves() {
        let dp = dp(
            r#""172.16.0.2:80", "172.16.0.3:80", {"address": "172.16.0.4:80", "backup": true}"#,
            "",
        );
        assert_eq!(
            dp.servers_in_rotation(),
            2,
            "two primaries; the backup idles"
        );
        let id = |j| dp.server_id(0, j).unwrap();
        dp.set_health(
            id(0),
            false,
            None,
            Some(crate::core::health::Failure::Timeout),
            false,
        );
        assert_eq!(dp.servers_in_rotation(), 1);
        dp.set_health(
            id(1),
            false,
            None,
            Some(crate::core::health::Failure::Timeout),
            false,
        );
        assert_eq!(dp.servers_in_rotation(), 1, "no primary: the backup serves");
        dp.set_health(
            id(2),
            false,
            None,
            Some(crate::core::health::Failure::Timeout),
            false,
        );
        assert_eq!(dp.servers_in_rotation(), 0);
    }

    /// Two balancers of a cluster (two data planes, seeded differently) place each flow on the
    /// same server, and one that never saw a flow's SYN carries its next segments there.
    #[test]
    fn maglev_carries_a_flow_placed_elsewhere_to_the_server_that_placed_it() {
        for mode in ["", r#""mode": "offload","#] {
            let extra = format!("{MAGLEV} {mode}");
            let a = dp(FIVE, &extra);
            let b = Dataplane::new(&one_service(FIVE, &extra), 7);
            let mut servers = std::collections::BTreeSet::new();
            for k in 0..40 {
                let client = format!("10.0.0.{}:{}", 5 + k % 3, 1000 + k);
                let placed = |dp: &Dataplane, flags| {
                    let mut p = tcp(sa(&client), sa("10.0.0.100:80"), flags, b"", &[]);
                    match dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 1) {
                        Verdict::Accept => dst_of(&p),
                        Verdict::Offload(mark) => {
                            let i = (0..5)
                                .find(|&j| dp.server_id(0, j).and_then(offload_mark) == Some(mark))
                                .expect("a server's mark");
                            dp.services()[0].0.servers[i].addr
                        }
                        v => panic!("{mode} {client}: {v:?}"),
                    }
                };
                let on_a = placed(&a, SYN);
                assert_eq!(placed(&b, ACK), on_a, "{mode} {client}: the same server");
                assert_eq!(placed(&b, ACK), on_a, "{mode} {client}: and it stays there");
                servers.insert(on_a);
            }
            assert!(servers.len() >= 4, "{mode}: 40 flows spread: {servers:?}");
            assert_eq!(b.counters.adopted_midstream.load(Relaxed), 40, "{mode}");
        }
    }

    #[test]
    fn a_servers_reset_of_a_carried_flow_reaches_the_client_and_counts_no_failed_handshake() {
        let dp = dp(FIVE, MAGLEV);
        let (v, server) = send(&dp, "10.0.0.5:1000", ACK, 1);
        assert_eq!(v, Verdict::Accept);
        assert_eq!(
            reply(&dp, server, "10.0.0.5:1000", RST),
            Verdict::Accept,
            "the server does not know the connection: the client hears so"
        );
        assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 0);
    }

    /// Direct routing: the request leaves unchanged, marked with its server's address; the
    /// client's first segment after its SYN establishes the flow, which never sees a reply.
    #[test]
    fn direct_routing_marks_requests_unchanged_and_the_clients_ack_establishes_the_flow() {
        let dp = dp(
            r#""172.16.0.2:80", "172.16.0.3:80""#,
            r#""forwarding": "dr","#,
        );
        let mut syn = tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]);
        let before = syn.clone();
        let v = dp.handle(
            Direction::Request,
            &mut syn,
            true,
            ChecksumState::Complete,
            1,
        );
        let Verdict::Offload(mark) = v else {
            panic!("{v:?}");
        };
        let server = std::net::Ipv4Addr::from(mark.to_ne_bytes());
        assert!(
            server == "172.16.0.2".parse::<std::net::Ipv4Addr>().unwrap()
                || server == "172.16.0.3".parse::<std::net::Ipv4Addr>().unwrap(),
            "{server}"
        );
        assert_eq!(syn, before, "the packet is not rewritten");
        let key = crate::core::flow::FlowKey {
            protocol: Protocol::Tcp,
            src: sa("10.0.0.5:1000"),
            dst: sa("10.0.0.100:80"),
        };
        let established = |dp: &Dataplane| {
            dp.shards[crate::core::balancer::shard_of(key.src)]
                .lock()
                .is_established(&key)
        };
        assert_eq!(established(&dp), Some(false));
        let mut ack = tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), ACK, b"", &[]);
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut ack,
                true,
                ChecksumState::Complete,
                2
            ),
            Verdict::Offload(mark),
            "the flow's next segment goes to the same server"
        );
        assert_eq!(established(&dp), Some(true));
    }

    #[test]
    fn other_schedulers_still_drop_a_segment_without_syn_that_no_flow_knows() {
        let dp = dp(FIVE, r#""algorithm": "RATIO","#);
        assert_eq!(
            send(&dp, "10.0.0.5:1000", ACK, 1).0,
            Verdict::Drop(DropReason::MidStream)
        );
        assert_eq!(dp.counters.adopted_midstream.load(Relaxed), 0);
    }

    #[test]
    fn backups_serve_only_while_no_primary_is_up_and_their_flows_stay() {
        let dp = dp(
            r#""172.16.0.2:80", {"address": "172.16.0.9:80", "backup": true}"#,
            "",
        );
        assert_eq!(dp.serving_backups(), vec![("tcp/80".to_string(), false)]);
        for k in 0..4 {
            let (_, to) = send(&dp, &format!("10.0.0.5:{}", 1000 + k), SYN, 0);
            assert_eq!(to, sa("172.16.0.2:80"), "a primary is up: no backup");
        }
        let primary = dp.server_id(0, 0).unwrap();
        dp.set_health(primary, false, None, None, false);
        assert_eq!(dp.serving_backups(), vec![("tcp/80".to_string(), true)]);
        let (v, to) = send(&dp, "10.0.0.5:2000", SYN, 1);
        assert_eq!((v, to), (Verdict::Accept, sa("172.16.0.9:80")));
        dp.set_health(primary, true, None, None, true);
        assert_eq!(send(&dp, "10.0.0.5:2001", SYN, 2).1, sa("172.16.0.2:80"));
        let (v, to) = send(&dp, "10.0.0.5:2000", ACK, 3);
        assert_eq!(
            (v, to),
            (Verdict::Accept, sa("172.16.0.9:80")),
            "the backup's flow goes on"
        );
    }

    #[test]
    fn a_server_in_maintenance_has_its_flows_cut_and_their_next_packets_reset() {
        let servers = r#""172.16.0.2:80", "172.16.0.3:80""#;
        let dp = dp(servers, r#""algorithm": "ROUND_ROBIN","#);
        let (_, a) = send(&dp, "10.0.0.5:1000", SYN, 0);
        let (_, b) = send(&dp, "10.0.0.5:1001", SYN, 0);
        assert_ne!(a, b);
        let maint = one_service(
            &format!(r#"{{"address": "{a}", "state": "maint"}}, "{b}""#),
            "",
        );
        dp.update(&maint);
        let cut = dp.enforce_admin_states(0, 10);
        assert_eq!(cut.len(), 1, "{cut:?}");
        assert_eq!(cut[0].1.flows_ended, 1);
        let (v, _) = send(&dp, "10.0.0.5:1000", ACK, 20);
        assert_eq!(
            v,
            Verdict::Refuse,
            "the cut flow's next packet gets a reset"
        );
        assert_eq!(dp.counters.dropped(DropReason::Cut), 1);
        assert_eq!(send(&dp, "10.0.0.5:1001", ACK, 20), (Verdict::Accept, b));
        for k in 0..4 {
            assert_eq!(send(&dp, &format!("10.0.0.6:{k}"), SYN, 30).1, b);
        }
        assert!(dp.enforce_admin_states(0, 40).is_empty(), "cut once");
        let (v, _) = send(&dp, "10.0.0.5:1000", ACK, 20 + CUT_MEMORY_MS);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::MidStream),
            "remembered a while only"
        );
    }

    #[test]
    fn a_draining_server_keeps_its_flows_until_the_deadline_and_gets_no_new_ones() {
        let dp = dp(
            r#""172.16.0.2:80", "172.16.0.3:80""#,
            r#""persistence_timeout": 60,"#,
        );
        let (_, a) = send(&dp, "10.0.0.5:1000", SYN, 0);
        let other = if a == sa("172.16.0.2:80") {
            "172.16.0.3:80"
        } else {
            "172.16.0.2:80"
        };
        dp.update(&one_service(
            &format!(r#"{{"address": "{a}", "state": "drain", "drain_until": 1000}}, "{other}""#),
            r#""persistence_timeout": 60,"#,
        ));
        assert_eq!(
            send(&dp, "10.0.0.5:1001", SYN, 5).1,
            sa(other),
            "persistence does not send the client back to a draining server"
        );
        assert!(
            dp.enforce_admin_states(999, 10).is_empty(),
            "before the deadline"
        );
        assert_eq!(send(&dp, "10.0.0.5:1000", ACK, 20), (Verdict::Accept, a));
        let cut = dp.enforce_admin_states(1000, 30);
        assert_eq!(cut.len(), 1);
        assert_eq!(send(&dp, "10.0.0.5:1000", ACK, 40).0, Verdict::Refuse);
    }

    #[test]
    fn an_agent_drains_takes_out_and_brings_back_and_checks_do_not_overrule_its_down() {
        use crate::core::agent::parse;
        let dp = dp(r#""172.16.0.2:80", "172.16.0.3:80""#, "");
        let a = dp.server_id(0, 0).unwrap();
        dp.apply_agent(a, &parse(b"drain"), 1);
        for k in 0..4 {
            assert_eq!(
                send(&dp, &format!("10.0.0.5:{k}"), SYN, 0).1,
                sa("172.16.0.3:80")
            );
        }
        dp.apply_agent(a, &parse(b"ready down"), 1);
        assert!(!dp.is_up(a));
        dp.set_health(a, true, None, None, true);
        assert!(
            !dp.is_up(a),
            "a passing check does not undo the agent's down"
        );
        dp.apply_agent(a, &parse(b"up"), 1);
        assert!(dp.is_up(a));
        let got: Vec<_> = (0..4)
            .map(|k| send(&dp, &format!("10.0.0.6:{k}"), SYN, 0).1)
            .collect();
        assert!(got.contains(&sa("172.16.0.2:80")), "{got:?}");
    }

    #[test]
    fn a_server_back_from_maintenance_ramps_up_over_its_slow_start() {
        let servers = |state: &str| {
            format!(
                r#"{{"address": "172.16.0.2:80", "state": "{state}"}}, "172.16.0.3:80", "172.16.0.4:80""#
            )
        };
        let extra = r#""algorithm": "RATIO", "slow_start_s": 10,"#;
        let dp = dp(&servers("maint"), extra);
        dp.update(&one_service(&servers("ready"), extra));
        // Per second of the ramp, the share the returning server gets of 300 new flows.
        let mut shares = Vec::new();
        for second in 0..12u64 {
            let now = second * 1000 + 500;
            let got = (0..300)
                .filter(|k| {
                    let c = format!("10.0.{}.{}:{}", second, k % 250, 1000 + k);
                    send(&dp, &c, SYN, now).1 == sa("172.16.0.2:80")
                })
                .count();
            shares.push(got);
        }
        // The ramp begins at the first look (0.5 s). Full weight is a third of the flows;
        // t seconds into the ramp, (t/10) / (t/10 + 2) of them.
        for (second, got) in shares.iter().enumerate() {
            let f = (second as f64 / 10.0).clamp(0.01, 1.0);
            let want = 300.0 * f / (f + 2.0);
            assert!(
                (*got as f64 - want).abs() <= 3.0,
                "second {second}: {got} of 300, want {want:.0}; all: {shares:?}"
            );
        }
    }

    #[test]
    fn slow_start_ramps_linearly_from_one_percent_to_full() {
        assert_eq!(ramp_permille(0, 10_000), 10);
        assert_eq!(ramp_permille(2_500, 10_000), 250);
        assert_eq!(ramp_permille(5_000, 10_000), 500);
        assert_eq!(ramp_permille(10_000, 10_000), 1000);
        assert_eq!(ramp_permille(99_000, 10_000), 1000);
        assert_eq!(
            ramp_permille(0, 0),
            1000,
            "no slow start: full weight at once"
        );
    }

    proptest! {
        #[test]
        fn the_ramp_never_falls_and_stays_within_one_percent_and_full(
            ss in 1u64..1_000_000, a in 0u64..2_000_000, b in 0u64..2_000_000,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(ramp_permille(lo, ss) <= ramp_permille(hi, ss));
            prop_assert!((10..=1000).contains(&ramp_permille(a, ss)));
        }
    }
}
