//! slbd's metric families, read from the data plane's and the queue workers' counters at
//! scrape time (nothing is counted twice: `--status` and the metrics read the same atomics),
//! plus the kernel's own per-queue drop counters from `/proc/net/netfilter/nfnetlink_queue`.

use std::sync::atomic::Ordering::Relaxed;

use crate::core::balancer::{Dataplane, DropReason, CHECK_PASSED};
use crate::core::health::Failure;
use crate::shell::nfqueue::QueueStats;
use slb_common::metrics::Family;

/// One line of `/proc/net/netfilter/nfnetlink_queue`: what the kernel says about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelQueue {
    pub queue: u16,
    /// Packets waiting for a verdict now.
    pub waiting: u64,
    /// Dropped because the queue was full (`queue_maxlen`).
    pub queue_dropped: u64,
    /// Dropped because slbd's socket buffer was full (netlink could not deliver).
    pub user_dropped: u64,
}

/// Parses the kernel's queue table: `num portid waiting copy_mode copy_range queue_dropped
/// user_dropped id_sequence 1` per line. Lines that do not parse are skipped.
pub fn parse_kernel_queues(text: &str) -> Vec<KernelQueue> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            if f.len() < 7 {
                return None;
            }
            Some(KernelQueue {
                queue: u16::try_from(f[0]).ok()?,
                waiting: f[2],
                queue_dropped: f[5],
                user_dropped: f[6],
            })
        })
        .collect()
}

/// What the families are built from.
pub struct Inputs<'a> {
    pub dp: &'a Dataplane,
    pub queue: &'a QueueStats,
    pub balancing: bool,
    pub backend: &'static str,
    /// The kernel's view of slbd's queues only.
    pub kernel_queues: Vec<KernelQueue>,
    /// Flow replication's figures, when it is on.
    pub replication: Option<&'a crate::shell::replication::Status>,
    /// Offload mode's conntrack figures.
    pub offload: Option<&'a crate::shell::offload::OffloadStats>,
    /// Cluster mode's announcement, when there is one.
    pub announce: Option<crate::ctl::status::AnnounceStatus>,
}

/// Cluster mode: whether the routers are told to send this node the VIP's traffic.
fn announce_families(a: &crate::ctl::status::AnnounceStatus) -> Vec<Family> {
    let mut announced = Family::gauge(
        "slb_vip_announced",
        "1 while the VIP's route is in the table the BGP daemon announces from, 0 while \
         withdrawn (not balancing, no server in rotation, or the operator's --withdraw).",
    );
    announced.set(
        vec![("reason", a.reason.clone())],
        if a.announced { 1.0 } else { 0.0 },
    );
    let mut changes = Family::counter(
        "slb_vip_announce_changes",
        "Times the VIP's route was added or deleted since slbd started.",
    );
    changes.count(vec![], a.changes);
    let mut failing = Family::gauge(
        "slb_vip_announce_failing",
        "1 while the last attempt to create the announce device or change its route failed.",
    );
    failing.set(vec![], if a.error.is_some() { 1.0 } else { 0.0 });
    let mut bgp = Family::gauge(
        "slb_bgp_session_up",
        "1 while the BGP daemon's session is Established, per session (its control socket).",
    );
    for b in &a.bgp {
        let up = b.info.split_whitespace().next() == Some("Established");
        bgp.set(
            vec![("session", b.name.clone())],
            if up { 1.0 } else { 0.0 },
        );
    }
    let mut bfd = Family::gauge(
        "slb_bfd_session_up",
        "1 while the BGP daemon's BFD session with the neighbour is Up.",
    );
    for b in &a.bfd {
        bfd.set(
            vec![
                ("neighbor", b.address.clone()),
                ("interface", b.interface.clone()),
            ],
            if b.state == "Up" { 1.0 } else { 0.0 },
        );
    }
    let mut asked = Family::gauge(
        "slb_bgp_daemon_reachable",
        "1 when the BGP daemon's control socket answered this scrape.",
    );
    asked.set(vec![], if a.daemon_error.is_none() { 1.0 } else { 0.0 });
    vec![announced, changes, failing, bgp, bfd, asked]
}

/// Offload mode: what slbd learnt from and did to conntrack.
fn offload_families(o: &crate::shell::offload::OffloadStats) -> Vec<Family> {
    let counter = |name, help, n: &std::sync::atomic::AtomicU64| {
        let mut f = Family::counter(name, help);
        f.count(vec![], n.load(Relaxed));
        f
    };
    let mut committed = Family::counter(
        "slb_conntrack_committed_flows",
        "Replicated offload flows this node put into conntrack when it took over, by result.",
    );
    committed.count(vec![("result", "ok".into())], o.committed.load(Relaxed));
    committed.count(
        vec![("result", "failed".into())],
        o.commit_failed.load(Relaxed),
    );
    vec![
        counter(
            "slb_conntrack_events",
            "Conntrack events slbd read (its offload flows' state changes and ends).",
            &o.events,
        ),
        counter(
            "slb_conntrack_overruns",
            "Times conntrack events were lost (socket overrun) and slbd resynchronised from a dump.",
            &o.overruns,
        ),
        counter(
            "slb_conntrack_resyncs",
            "Dumps of slbd's conntrack entries read to resynchronise the flow table.",
            &o.resyncs,
        ),
        committed,
        counter(
            "slb_conntrack_cuts",
            "Deletions of conntrack entries: a server left rotation, or balancing stopped.",
            &o.cuts,
        ),
        counter(
            "slb_conntrack_forgotten_handshakes",
            "Conntrack entries of handshakes a server failed, deleted so that the client's \
             retransmission is a new flow.",
            &o.forgotten,
        ),
    ]
}

/// Flow replication: both roles' counters (a node is sender and receiver in turn).
fn replication_families(r: &crate::shell::replication::Status, balancing: bool) -> Vec<Family> {
    let mut ready = Family::gauge(
        "slb_replication_takeover_ready",
        "1 when this STANDBY holds the ACTIVE's whole flow table (snapshot complete, stream \
         alive); 0 otherwise, and always 0 on the ACTIVE.",
    );
    ready.set(
        vec![],
        if !balancing && r.takeover_ready() {
            1.0
        } else {
            0.0
        },
    );
    let mut connected = Family::gauge(
        "slb_replication_standby_connected",
        "1 when this ACTIVE streams its flows to a STANDBY that has its snapshot.",
    );
    connected.set(
        vec![],
        if balancing && r.serving_ready.load(Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    let mut lag = Family::gauge(
        "slb_replication_lag_seconds",
        "Receive time minus send time of the last batch this STANDBY applied.",
    );
    lag.set(vec![], r.lag_ms.load(Relaxed) as f64 / 1000.0);
    let mut records = Family::counter(
        "slb_replication_records",
        "Replication records: sent (snapshot and changes) or applied.",
    );
    records.count(
        vec![("direction", "sent".into())],
        r.records_sent.load(Relaxed),
    );
    records.count(
        vec![("direction", "applied".into())],
        r.records_applied.load(Relaxed),
    );
    let mut bytes = Family::counter(
        "slb_replication_bytes",
        "Replication bytes on the wire (frames with headers and MACs), sent or received.",
    );
    bytes.count(
        vec![("direction", "sent".into())],
        r.bytes_sent.load(Relaxed),
    );
    bytes.count(
        vec![("direction", "received".into())],
        r.bytes_received.load(Relaxed),
    );
    let mut snapshots = Family::counter(
        "slb_replication_snapshots",
        "Whole snapshots sent or received.",
    );
    snapshots.count(
        vec![("direction", "sent".into())],
        r.snapshots_sent.load(Relaxed),
    );
    snapshots.count(
        vec![("direction", "received".into())],
        r.snapshots_received.load(Relaxed),
    );
    let mut overflows = Family::counter(
        "slb_replication_overflows",
        "Times new flows outran replication (the change log filled): the STANDBY resynchronised.",
    );
    overflows.count(vec![], r.overflows.load(Relaxed));
    let mut refused = Family::counter(
        "slb_replication_refused",
        "Replication connections and frames refused, by reason (mac, sequence, garbage, \
         unknown_peer, ...).",
    );
    for (why, n) in r.refused.lock().iter() {
        refused.count(vec![("reason", why.to_string())], *n);
    }
    vec![
        ready, connected, lag, records, bytes, snapshots, overflows, refused,
    ]
}

pub fn families(i: &Inputs) -> Vec<Family> {
    let mut balancing = Family::gauge(
        "slb_balancing",
        "1 when slbd is balancing (rules and VIP up), 0 when unloaded or standby.",
    );
    balancing.set(
        vec![
            ("vip", i.dp.vip().to_string()),
            ("queue_backend", i.backend.to_string()),
        ],
        if i.balancing { 1.0 } else { 0.0 },
    );
    let mut flows = Family::gauge("slb_flows", "Flows in the flow table.");
    flows.set(vec![], i.dp.flow_count() as f64);

    let mut packets = Family::counter(
        "slb_server_packets",
        "Packets forwarded per real server: in = client to server, out = server to client.",
    );
    let mut bytes = Family::counter(
        "slb_server_bytes",
        "IP bytes forwarded per real server: in = client to server, out = server to client.",
    );
    let mut live = Family::gauge("slb_server_live_flows", "Open flows per real server.");
    let mut new = Family::counter("slb_server_new_flows", "Flows placed on each real server.");
    let mut up = Family::gauge(
        "slb_server_up",
        "1 when the real server is in rotation, 0 when its health check took it out.",
    );
    let mut latency = Family::gauge(
        "slb_server_latency_seconds",
        "Smoothed service latency (TCP connect time) per real server; absent until measured.",
    );
    let mut weight = Family::gauge("slb_server_weight", "Configured weight per real server.");
    let mut effective = Family::gauge(
        "slb_server_effective_weight",
        "Weight new flows are scheduled by: the configured one, or the one a check set.",
    );
    let mut down_reason = Family::gauge(
        "slb_server_down_reason",
        "1 for a real server out of rotation, labelled with why (refused, timeout, http 503, \
         passive_rst, passive_unreachable, passive_timeout, ...); absent while it is in.",
    );
    let mut last_check = Family::gauge(
        "slb_server_last_check",
        "1, labelled with the result of the server's last active check (ok or why it failed).",
    );
    let mut admin = Family::gauge(
        "slb_server_admin_state",
        "1, labelled with the operator's state of the real server: ready, drain (flows left), \
         drained (no flow left) or maint.",
    );
    let mut backups = Family::gauge(
        "slb_service_serving_backups",
        "1 while no primary server of the service is in rotation and its backup servers take \
         the new flows; 0 otherwise (services with backup servers only).",
    );
    for (service, on) in i.dp.serving_backups() {
        backups.set(vec![("service", service)], if on { 1.0 } else { 0.0 });
    }
    let mut decisions = Family::counter(
        "slb_scheduler_decisions",
        "Real-server choices for new flows: by the service's scheduler (labelled with its \
         algorithm) or by client persistence.",
    );
    for (svc, stats) in i.dp.services() {
        for (server, st) in svc.servers.iter().zip(&stats) {
            let l = || vec![("service", svc.name()), ("server", server.addr.to_string())];
            let with = |k: &'static str, v: &str| {
                let mut x = l();
                x.push((k, v.to_string()));
                x
            };
            packets.count(with("direction", "in"), st.packets_in.load(Relaxed));
            packets.count(with("direction", "out"), st.packets_out.load(Relaxed));
            bytes.count(with("direction", "in"), st.bytes_in.load(Relaxed));
            bytes.count(with("direction", "out"), st.bytes_out.load(Relaxed));
            live.set(l(), st.live_flows.load(Relaxed) as f64);
            new.count(l(), st.new_flows.load(Relaxed));
            up.set(l(), if st.up.load(Relaxed) { 1.0 } else { 0.0 });
            let state = super::status::admin_state(
                crate::core::balancer::Dataplane::admin_state(st, server),
                st.live_flows.load(Relaxed),
            );
            admin.set(with("state", state), 1.0);
            let us = st.latency_us.load(Relaxed);
            if us > 0 {
                latency.set(l(), f64::from(us) / 1e6);
            }
            weight.set(l(), f64::from(server.weight));
            let dynamic = st.dynamic_weight.load(Relaxed);
            effective.set(
                l(),
                f64::from(if dynamic > 0 {
                    dynamic - 1
                } else {
                    server.weight
                }),
            );
            if !st.up.load(Relaxed) {
                let why = Failure::from_code(st.down_reason.load(Relaxed))
                    .map_or("unknown".to_string(), |f| f.to_string());
                down_reason.set(with("reason", &why), 1.0);
            }
            let result = match st.last_check.load(Relaxed) {
                0 => None,
                CHECK_PASSED => Some("ok".to_string()),
                code => Failure::from_code(code).map(|f| f.to_string()),
            };
            if let Some(r) = result {
                last_check.set(with("result", &r), 1.0);
            }
            let mut by = |how: &str, n: u64| {
                let mut x = with("by", how);
                x.push(("algorithm", svc.algorithm.name().to_string()));
                decisions.count(x, n);
            };
            by("scheduler", st.scheduled.load(Relaxed));
            by("persistence", st.persisted.load(Relaxed));
        }
    }

    let mut dropped = Family::counter(
        "slb_dropped_packets",
        "Packets slbd dropped, by reason (malformed, no flow, no server up, table full, ...).",
    );
    for d in DropReason::all() {
        dropped.count(
            vec![("reason", d.name().to_string())],
            i.dp.counters.dropped(d),
        );
    }

    let mut retried = Family::counter(
        "slb_retried_handshakes",
        "New connections whose handshake a real server failed (reset, ICMP, no answer), \
         kept from the client and retried on another server.",
    );
    retried.count(vec![], i.dp.counters.retried_handshakes.load(Relaxed));
    let mut adopted = Family::counter(
        "slb_adopted_midstream",
        "TCP segments without SYN that matched no flow (placed by another balancer or an \
         earlier slbd), carried to the server a MAGLEV table names instead of dropped.",
    );
    adopted.count(vec![], i.dp.counters.adopted_midstream.load(Relaxed));
    let mut evicted = Family::counter(
        "slb_evicted_flows",
        "Flows evicted from a full table (unanswered handshakes, idle UDP flows) to make room \
         for new ones.",
    );
    evicted.count(vec![], i.dp.counters.evicted_flows.load(Relaxed));
    let mut icmp = Family::counter(
        "slb_icmp_errors_translated",
        "ICMP errors (fragmentation needed, unreachable, time exceeded) about packet-mode \
         flows, translated and sent on: to the client (about its request) or to the server \
         (about its reply).",
    );
    icmp.count(
        vec![("to", "client".to_string())],
        i.dp.counters.icmp_to_client.load(Relaxed),
    );
    icmp.count(
        vec![("to", "server".to_string())],
        i.dp.counters.icmp_to_server.load(Relaxed),
    );

    let q = i.queue;
    let mut queue_packets = Family::counter("slb_queue_packets", "Packets read from NFQUEUE.");
    queue_packets.count(vec![], q.packets.load(Relaxed));
    let mut batches = Family::counter(
        "slb_queue_batches",
        "Receive batches (packets per batch = packets / batches).",
    );
    batches.count(vec![], q.batches.load(Relaxed));
    let mut overruns = Family::counter(
        "slb_queue_overruns",
        "Times the queue socket overflowed (ENOBUFS) and the kernel dropped packets.",
    );
    overruns.count(vec![], q.overruns.load(Relaxed));
    let mut verdict_errors = Family::counter(
        "slb_queue_verdict_errors",
        "Verdict batches the kernel refused to take.",
    );
    verdict_errors.count(vec![], q.verdict_errors.load(Relaxed));
    let mut recv_errors = Family::counter("slb_queue_receive_errors", "Failed queue reads.");
    recv_errors.count(vec![], q.recv_errors.load(Relaxed));
    let mut bad = Family::counter(
        "slb_queue_bad_messages",
        "Queue messages too malformed to answer.",
    );
    bad.count(vec![], q.bad_messages.load(Relaxed));

    let mut kernel_dropped = Family::counter(
        "slb_queue_kernel_dropped_packets",
        "Packets the kernel dropped before slbd saw them, per queue: full = queue_maxlen \
         reached, socket = slbd's receive buffer full.",
    );
    let mut waiting = Family::gauge(
        "slb_queue_waiting_packets",
        "Packets waiting for slbd's verdict, per queue.",
    );
    for k in &i.kernel_queues {
        let n = || vec![("queue", k.queue.to_string())];
        let mut why = |w: &str, v: u64| {
            let mut x = n();
            x.push(("why", w.to_string()));
            kernel_dropped.count(x, v);
        };
        why("full", k.queue_dropped);
        why("socket", k.user_dropped);
        waiting.set(n(), k.waiting as f64);
    }

    let mut out = vec![
        balancing,
        flows,
        packets,
        bytes,
        live,
        new,
        up,
        latency,
        weight,
        effective,
        down_reason,
        last_check,
        admin,
        backups,
        decisions,
        dropped,
        retried,
        adopted,
        evicted,
        queue_packets,
        batches,
        overruns,
        verdict_errors,
        recv_errors,
        bad,
        kernel_dropped,
        waiting,
    ];
    if let Some(r) = i.replication {
        out.extend(replication_families(r, i.balancing));
    }
    if let Some(o) = i.offload {
        out.extend(offload_families(o));
    }
    if let Some(a) = &i.announce {
        out.extend(announce_families(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use slb_common::metrics::{encode, sample};

    #[test]
    fn parses_the_kernel_queue_table() {
        let text = "    0  12345     3 2 65531    17     5  100 1\n    1 -4000 garbage\n\
                    65535  99  0 2 65531 0 0 1 1\n";
        assert_eq!(
            parse_kernel_queues(text),
            vec![
                KernelQueue {
                    queue: 0,
                    waiting: 3,
                    queue_dropped: 17,
                    user_dropped: 5
                },
                KernelQueue {
                    queue: 65535,
                    waiting: 0,
                    queue_dropped: 0,
                    user_dropped: 0
                },
            ]
        );
        assert!(parse_kernel_queues("").is_empty());
    }

    #[test]
    fn every_server_of_every_service_is_exposed() {
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [
                  {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:8080", {"address": "172.16.0.3:8080", "weight": 3}]},
                  {"protocol": "udp", "port": 53, "algorithm": "LEAST_CONNECTIONS", "servers": ["172.16.0.2:53"]}]}"#,
        )
        .unwrap();
        let dp = Dataplane::new(&config, 1);
        let stats = dp.services();
        stats[0].1[1].packets_in.fetch_add(5, Relaxed);
        stats[0].1[1].scheduled.fetch_add(2, Relaxed);
        dp.set_health(
            dp.server_id(1, 0).unwrap(),
            false,
            Some(1500),
            Some(Failure::Status(503)),
            false,
        );
        dp.set_weight(dp.server_id(0, 1).unwrap(), Some(7));
        let queue = QueueStats::default();
        queue.overruns.fetch_add(4, Relaxed);
        let offload = crate::shell::offload::OffloadStats::default();
        offload.events.fetch_add(12, Relaxed);
        offload.commit_failed.fetch_add(1, Relaxed);
        let text = encode(families(&Inputs {
            dp: &dp,
            queue: &queue,
            balancing: true,
            backend: "native nft queue",
            kernel_queues: vec![KernelQueue {
                queue: 7,
                waiting: 1,
                queue_dropped: 9,
                user_dropped: 0,
            }],
            replication: None,
            offload: Some(&offload),
            announce: Some(crate::ctl::status::AnnounceStatus {
                route: "10.0.0.100/32 dev slb-vip table 100".into(),
                announced: false,
                reason: "no server in rotation".into(),
                changes: 2,
                bfd: vec![crate::ctl::status::BfdSessionStatus {
                    address: "192.168.77.1".into(),
                    interface: "bgp0".into(),
                    state: "Up".into(),
                    since: "18:40:01.123".into(),
                }],
                ..Default::default()
            }),
        }));
        assert_eq!(
            sample(
                &text,
                "slb_vip_announced",
                &[("reason", "no server in rotation")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "slb_vip_announce_changes_total", &[]),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "slb_bfd_session_up",
                &[("neighbor", "192.168.77.1"), ("interface", "bgp0")]
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "slb_conntrack_events_total", &[]), Some(12.0));
        assert_eq!(
            sample(
                &text,
                "slb_conntrack_committed_flows_total",
                &[("result", "failed")]
            ),
            Some(1.0)
        );
        let get = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
        let s3 = [("service", "tcp/80"), ("server", "172.16.0.3:8080")];
        assert_eq!(
            get(
                "slb_server_packets_total",
                &[s3[0], s3[1], ("direction", "in")]
            ),
            Some(5.0)
        );
        assert_eq!(
            get(
                "slb_server_packets_total",
                &[s3[0], s3[1], ("direction", "out")]
            ),
            Some(0.0)
        );
        assert_eq!(get("slb_server_weight", &s3), Some(3.0));
        assert_eq!(
            get(
                "slb_scheduler_decisions_total",
                &[
                    s3[0],
                    s3[1],
                    ("by", "scheduler"),
                    ("algorithm", "ROUND_ROBIN")
                ]
            ),
            Some(2.0)
        );
        let u = [("service", "udp/53"), ("server", "172.16.0.2:53")];
        assert_eq!(get("slb_server_up", &u), Some(0.0));
        assert_eq!(
            get(
                "slb_server_down_reason",
                &[u[0], u[1], ("reason", "http 503")]
            ),
            Some(1.0),
            "a down server's metrics say why"
        );
        assert_eq!(
            get(
                "slb_server_last_check",
                &[u[0], u[1], ("result", "http 503")]
            ),
            Some(1.0)
        );
        assert_eq!(
            get("slb_server_down_reason", &s3),
            None,
            "an up server has no reason"
        );
        assert_eq!(get("slb_server_effective_weight", &s3), Some(7.0));
        assert_eq!(get("slb_server_weight", &s3), Some(3.0), "configured stays");
        assert_eq!(get("slb_server_latency_seconds", &u), Some(0.0015));
        assert_eq!(
            get(
                "slb_server_latency_seconds",
                &[("server", "172.16.0.2:8080")]
            ),
            None,
            "no latency before one is measured"
        );
        assert_eq!(
            get(
                "slb_scheduler_decisions_total",
                &[u[0], ("algorithm", "LEAST_CONNECTIONS")]
            ),
            Some(0.0)
        );
        assert_eq!(get("slb_balancing", &[("vip", "10.0.0.100")]), Some(1.0));
        assert_eq!(get("slb_queue_overruns_total", &[]), Some(4.0));
        assert_eq!(
            get(
                "slb_queue_kernel_dropped_packets_total",
                &[("queue", "7"), ("why", "full")]
            ),
            Some(9.0)
        );
        assert_eq!(
            get("slb_dropped_packets_total", &[("reason", "no_server")]),
            Some(0.0)
        );
    }
}
