//! The `status` the control socket reports, read from the same counters as the metrics: per
//! service and server, health, smoothed latency, live and new flows, packets and bytes; the
//! drops; the queues, the conntrack side and replication. Pure (it reads atomics).

use std::sync::atomic::Ordering::Relaxed;

use crate::config::{AdminState, Config};
use crate::core::balancer::{Dataplane, DropReason, CHECK_PASSED};
use crate::core::health::Failure;
use crate::ctl::status::{
    AnnounceStatus, ConntrackStatus, QueueStatus, ReplicationStatus, ServerStatus, ServiceStatus,
    Status,
};
use crate::shell::nfqueue::QueueStats;
use crate::shell::offload::OffloadStats;

/// What a status answer is built from.
pub struct Inputs<'a> {
    pub dp: &'a Dataplane,
    pub config: &'a Config,
    /// The daemon's role, by name.
    pub state: &'static str,
    pub backend: &'static str,
    pub queue: &'a QueueStats,
    pub offload: &'a OffloadStats,
    pub replication: Option<ReplicationStatus>,
    pub announce: Option<AnnounceStatus>,
}

/// The operator's state as status shows it: a draining server with no flow left is `drained`.
pub fn admin_state(state: AdminState, live_flows: u64) -> &'static str {
    match state {
        AdminState::Drain { .. } if live_flows == 0 => "drained",
        s => s.name(),
    }
}

pub fn status(i: Inputs) -> Status {
    let backups = i.dp.serving_backups();
    let services =
        i.dp.services()
            .iter()
            .map(|(svc, stats)| ServiceStatus {
                name: svc.name(),
                algorithm: svc.algorithm.name().into(),
                mode: svc.mode.name().into(),
                persistence_timeout: svc.persistence_timeout.as_secs(),
                serving_backups: backups.iter().any(|(n, on)| *on && *n == svc.name()),
                servers: svc
                    .servers
                    .iter()
                    .zip(stats)
                    .map(|(r, st)| ServerStatus {
                        address: r.addr.to_string(),
                        weight: r.weight,
                        state: if st.up.load(Relaxed) { "up" } else { "down" }.into(),
                        admin_state: admin_state(
                            Dataplane::admin_state(st, r),
                            st.live_flows.load(Relaxed),
                        )
                        .into(),
                        drain_until: match r.state {
                            AdminState::Drain { until } => until,
                            _ => None,
                        },
                        backup: r.backup,
                        latency_us: Some(st.latency_us.load(Relaxed)).filter(|l| *l > 0),
                        last_check: match st.last_check.load(Relaxed) {
                            0 => None,
                            CHECK_PASSED => Some("ok".into()),
                            code => Failure::from_code(code).map(|f| f.to_string()),
                        },
                        down_reason: Failure::from_code(st.down_reason.load(Relaxed))
                            .filter(|_| !st.up.load(Relaxed))
                            .map(|f| f.to_string()),
                        dynamic_weight: st.dynamic_weight.load(Relaxed).checked_sub(1),
                        live_flows: st.live_flows.load(Relaxed),
                        new_flows: st.new_flows.load(Relaxed),
                        packets_in: st.packets_in.load(Relaxed),
                        bytes_in: st.bytes_in.load(Relaxed),
                        packets_out: st.packets_out.load(Relaxed),
                        bytes_out: st.bytes_out.load(Relaxed),
                    })
                    .collect(),
            })
            .collect();
    let c = i.config;
    let o = i.offload;
    Status {
        state: i.state.into(),
        vip: i.dp.vip().to_string(),
        address_dev: c.vip_dev.clone(),
        gateway: c.gateway.to_string(),
        gateway_dev: c.gateway_dev.clone(),
        cluster_network: c.cluster_network.to_string(),
        algorithm: c.algorithm.name().into(),
        flows: i.dp.flow_count() as u64,
        requests: i.dp.counters.requests.load(Relaxed),
        replies: i.dp.counters.replies.load(Relaxed),
        adopted_replies: i.dp.counters.adopted_replies.load(Relaxed),
        adopted_midstream: i.dp.counters.adopted_midstream.load(Relaxed),
        untracked_requests: i.dp.counters.untracked_requests.load(Relaxed),
        retried_handshakes: i.dp.counters.retried_handshakes.load(Relaxed),
        evicted_flows: i.dp.counters.evicted_flows.load(Relaxed),
        icmp_to_client: i.dp.counters.icmp_to_client.load(Relaxed),
        icmp_to_server: i.dp.counters.icmp_to_server.load(Relaxed),
        drops: DropReason::all()
            .map(|d| (d.name().to_string(), i.dp.counters.dropped(d)))
            .collect(),
        services,
        queue: QueueStatus {
            backend: i.backend.into(),
            packets: i.queue.packets.load(Relaxed),
            overruns: i.queue.overruns.load(Relaxed),
            verdict_errors: i.queue.verdict_errors.load(Relaxed),
        },
        conntrack: ConntrackStatus {
            events: o.events.load(Relaxed),
            overruns: o.overruns.load(Relaxed),
            resyncs: o.resyncs.load(Relaxed),
            committed: o.committed.load(Relaxed),
            commit_failed: o.commit_failed.load(Relaxed),
            cuts: o.cuts.load(Relaxed),
            forgotten: o.forgotten.load(Relaxed),
        },
        replication: i.replication,
        announce: i.announce,
    }
}
