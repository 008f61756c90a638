//! What slbd's `status` answer holds, as types slbctl and amgr read (the control protocol's
//! typed reply), and what it means to an operator in words, shared by `slbctl --status` and
//! `amgr query` so both say the same thing. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// slbd's state, per service and server, and the figures of its queues, conntrack side and
/// replication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `balancing`, `unloaded` or `cleared`.
    pub state: String,
    pub vip: String,
    pub address_dev: String,
    pub gateway: String,
    pub gateway_dev: String,
    pub cluster_network: String,
    pub algorithm: String,
    /// Flows tracked now.
    pub flows: u64,
    pub requests: u64,
    pub replies: u64,
    /// Replies taken as the dual's flows right after a planned takeover (packet mode).
    #[serde(default)]
    pub adopted_replies: u64,
    /// TCP segments without SYN that matched no flow, placed by a MAGLEV table.
    #[serde(default)]
    pub adopted_midstream: u64,
    /// Offload requests conntrack did not translate, sent on by slbd in a hand-over.
    #[serde(default)]
    pub untracked_requests: u64,
    /// New connections whose handshake a server failed, retried on another server.
    #[serde(default)]
    pub retried_handshakes: u64,
    /// Flows evicted from a full table to make room for new ones.
    #[serde(default)]
    pub evicted_flows: u64,
    /// ICMP errors about packet-mode flows translated for the client and for the server.
    #[serde(default)]
    pub icmp_to_client: u64,
    #[serde(default)]
    pub icmp_to_server: u64,
    /// Packets dropped, by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    pub services: Vec<ServiceStatus>,
    pub queue: QueueStatus,
    pub conntrack: ConntrackStatus,
    /// Absent when slbd runs without a pair key.
    pub replication: Option<ReplicationStatus>,
    /// Cluster mode's announcement; absent without `announce` in the file.
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
}

/// Cluster mode: the VIP's route a BGP daemon announces, and why it is or is not there.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// `VIP/32 dev DEVICE table N`.
    pub route: String,
    pub announced: bool,
    /// `serving`, or why not (`withdrawn by the operator`, `no server in rotation`, ...).
    pub reason: String,
    /// The operator's `--withdraw`, kept in the file.
    pub withdrawn: bool,
    /// Times the route was added or deleted since slbd started.
    pub changes: u64,
    /// The last failure to create the device or change the route, while it lasts.
    pub error: Option<String>,
    /// The BGP daemon's sessions, as its control socket says (`show protocols`).
    #[serde(default)]
    pub bgp: Vec<BgpSessionStatus>,
    /// Its BFD sessions (`show bfd sessions`).
    #[serde(default)]
    pub bfd: Vec<BfdSessionStatus>,
    /// Why the daemon could not be asked, when it could not.
    #[serde(default)]
    pub daemon_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BgpSessionStatus {
    pub name: String,
    /// `up`, `start`, ...
    pub state: String,
    /// BGP's state (`Established`, `Active`, ...) and what else the daemon says.
    pub info: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BfdSessionStatus {
    pub address: String,
    pub interface: String,
    /// `Up`, `Down`, `Init`, `AdminDown`.
    pub state: String,
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `tcp/80`.
    pub name: String,
    pub algorithm: String,
    /// `packet` or `offload`.
    pub mode: String,
    /// Seconds; 0 when persistence is off.
    pub persistence_timeout: u64,
    /// No primary server is in rotation and backup servers take the new flows.
    #[serde(default)]
    pub serving_backups: bool,
    pub servers: Vec<ServerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub address: String,
    pub weight: u32,
    /// `up` or `down`.
    pub state: String,
    /// The operator's state: `ready`, `drain` (flows left), `drained` (draining, no flow
    /// left) or `maint`.
    #[serde(default = "ready")]
    pub admin_state: String,
    /// A draining server's deadline, seconds since the Unix epoch.
    #[serde(default)]
    pub drain_until: Option<u64>,
    /// Used only while no primary server is in rotation.
    #[serde(default)]
    pub backup: bool,
    /// The smoothed health-check latency, once measured.
    pub latency_us: Option<u32>,
    /// The last active check: `ok`, or why it failed (`refused`, `timeout`, `http 503`, ...);
    /// absent before the first.
    #[serde(default)]
    pub last_check: Option<String>,
    /// Why the server is out of rotation (a check's failure or `passive_rst`,
    /// `passive_unreachable`, `passive_timeout`); absent while it is in.
    #[serde(default)]
    pub down_reason: Option<String>,
    /// The weight a check set (a script's dynamic weight), when one did.
    #[serde(default)]
    pub dynamic_weight: Option<u32>,
    pub live_flows: u64,
    pub new_flows: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

fn ready() -> String {
    "ready".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Which NFQUEUE expression the rules use.
    pub backend: String,
    pub packets: u64,
    pub overruns: u64,
    pub verdict_errors: u64,
}

/// Offload mode's conntrack side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub events: u64,
    pub overruns: u64,
    pub resyncs: u64,
    /// Flows committed to conntrack at takeovers, and the ones the kernel refused.
    pub committed: u64,
    pub commit_failed: u64,
    pub cuts: u64,
    /// Entries of failed handshakes deleted so that their retransmission is a new flow.
    #[serde(default)]
    pub forgotten: u64,
}

/// Flow replication, from the side this node plays now.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// `sender` (the ACTIVE) or `receiver` (the STANDBY).
    pub role: String,
    /// Sender: the STANDBY being served, once authenticated.
    pub standby: Option<String>,
    pub standby_has_snapshot: bool,
    /// Receiver: the ACTIVE it receives from.
    pub receiving_from: Option<String>,
    pub takeover_ready: bool,
    pub lag_ms: u64,
    pub last_frame_ms_ago: Option<u64>,
    pub records_sent: u64,
    pub bytes_sent: u64,
    pub snapshots_sent: u64,
    pub keepalives_sent: u64,
    pub overflows: u64,
    pub records_applied: u64,
    pub records_unknown: u64,
    pub bytes_received: u64,
    pub snapshots_received: u64,
    /// Healed splits: the dual's snapshots merged while balancing, the flows taken from them,
    /// and the 5-tuples both had placed on different servers (this node's placement kept).
    #[serde(default)]
    pub merges: u64,
    #[serde(default)]
    pub merged_flows: u64,
    #[serde(default)]
    pub merge_conflicts: u64,
    /// Connections and frames refused, by reason.
    pub refused: BTreeMap<String, u64>,
}

/// One line saying where cluster mode's announcement stands.
pub fn describe_announce(a: &AnnounceStatus) -> String {
    let mut out = if a.announced {
        format!("{}: announced ({})", a.route, a.reason)
    } else {
        format!("{}: WITHDRAWN ({})", a.route, a.reason)
    };
    if a.withdrawn && a.announced {
        out.push_str(", withdrawal pending");
    }
    out.push_str(&format!(", {} changes", a.changes));
    if let Some(e) = &a.error {
        out.push_str(&format!("; ERROR: {e}"));
    }
    for b in &a.bgp {
        out.push_str(&format!("\n  bgp {}: {} {}", b.name, b.state, b.info));
    }
    for b in &a.bfd {
        out.push_str(&format!(
            "\n  bfd {} on {}: {} since {}",
            b.address, b.interface, b.state, b.since
        ));
    }
    if let Some(e) = &a.daemon_error {
        out.push_str(&format!("\n  BGP daemon not asked: {e}"));
    }
    out
}

/// One line saying what the replication figures mean to an operator; `off` without any.
pub fn describe_replication(r: Option<&ReplicationStatus>) -> String {
    let Some(r) = r else {
        return "off".into();
    };
    let mut out = if r.role == "sender" {
        match &r.standby {
            None => "sender, no standby connected".to_string(),
            Some(standby) => format!(
                "sender to {standby} ({}), {} records / {} bytes sent, {} snapshots, {} overflows",
                if r.standby_has_snapshot {
                    "has the snapshot"
                } else {
                    "snapshot in progress"
                },
                r.records_sent,
                r.bytes_sent,
                r.snapshots_sent,
                r.overflows,
            ),
        }
    } else {
        match &r.receiving_from {
            None => "receiver, NOT takeover-ready: not connected to the ACTIVE".to_string(),
            Some(active) => format!(
                "receiver from {active}, {}, lag {} ms, last frame {} ms ago, {} records applied",
                if r.takeover_ready {
                    "takeover-ready"
                } else {
                    "NOT takeover-ready (snapshot incomplete or stream silent)"
                },
                r.lag_ms,
                r.last_frame_ms_ago.unwrap_or(0),
                r.records_applied,
            ),
        }
    };
    let refused: Vec<String> = r.refused.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !refused.is_empty() {
        out += &format!(", refused {}", refused.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(standby: Option<&str>) -> ReplicationStatus {
        ReplicationStatus {
            role: "sender".into(),
            standby: standby.map(Into::into),
            ..Default::default()
        }
    }

    fn receiver(from: Option<&str>) -> ReplicationStatus {
        ReplicationStatus {
            role: "receiver".into(),
            receiving_from: from.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn each_role_and_readiness_reads_as_one_line() {
        assert_eq!(describe_replication(None), "off");
        assert_eq!(
            describe_replication(Some(&sender(None))),
            "sender, no standby connected"
        );
        let serving = ReplicationStatus {
            standby_has_snapshot: true,
            records_sent: 10,
            bytes_sent: 300,
            snapshots_sent: 1,
            refused: [("mac".to_string(), 2)].into(),
            ..sender(Some("192.168.100.2:5000"))
        };
        assert_eq!(
            describe_replication(Some(&serving)),
            "sender to 192.168.100.2:5000 (has the snapshot), 10 records / 300 bytes sent, \
             1 snapshots, 0 overflows, refused mac=2"
        );
        assert_eq!(
            describe_replication(Some(&receiver(None))),
            "receiver, NOT takeover-ready: not connected to the ACTIVE"
        );
        let ready = ReplicationStatus {
            takeover_ready: true,
            lag_ms: 3,
            last_frame_ms_ago: Some(120),
            records_applied: 1000,
            ..receiver(Some("192.168.100.1:7407"))
        };
        assert_eq!(
            describe_replication(Some(&ready)),
            "receiver from 192.168.100.1:7407, takeover-ready, lag 3 ms, last frame 120 ms ago, \
             1000 records applied"
        );
    }

    #[test]
    fn a_status_travels_as_the_json_operators_script_against() {
        let st = Status {
            state: "balancing".into(),
            vip: "10.0.0.100".into(),
            address_dev: "eth0".into(),
            gateway: "172.16.0.1".into(),
            gateway_dev: "eth1".into(),
            cluster_network: "172.16.0.0/24".into(),
            algorithm: "RATIO".into(),
            flows: 3,
            requests: 9,
            replies: 8,
            adopted_replies: 0,
            adopted_midstream: 0,
            untracked_requests: 0,
            retried_handshakes: 0,
            evicted_flows: 0,
            icmp_to_client: 0,
            icmp_to_server: 0,
            drops: [("no_server".to_string(), 1)].into(),
            services: vec![ServiceStatus {
                name: "tcp/80".into(),
                algorithm: "RATIO".into(),
                mode: "packet".into(),
                persistence_timeout: 0,
                serving_backups: false,
                servers: vec![ServerStatus {
                    address: "172.16.0.2:80".into(),
                    weight: 2,
                    state: "up".into(),
                    admin_state: "drain".into(),
                    drain_until: Some(1_800_000_000),
                    backup: true,
                    latency_us: None,
                    last_check: Some("ok".into()),
                    down_reason: None,
                    dynamic_weight: None,
                    live_flows: 3,
                    new_flows: 4,
                    packets_in: 5,
                    bytes_in: 6,
                    packets_out: 7,
                    bytes_out: 8,
                }],
            }],
            queue: QueueStatus {
                backend: "xtables".into(),
                packets: 17,
                overruns: 0,
                verdict_errors: 0,
            },
            conntrack: ConntrackStatus {
                events: 0,
                overruns: 0,
                resyncs: 0,
                committed: 0,
                commit_failed: 0,
                cuts: 0,
                forgotten: 0,
            },
            replication: None,
            announce: None,
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(
            v["services"][0]["servers"][0]["latency_us"],
            serde_json::Value::Null
        );
        assert_eq!(v["drops"]["no_server"], 1);
        assert_eq!(v["replication"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), st);
    }

    #[test]
    fn the_announcement_reads_announced_or_withdrawn_with_its_reason() {
        let mut a = AnnounceStatus {
            route: "10.0.0.100/32 dev slb-vip table 100".into(),
            announced: true,
            reason: "serving".into(),
            changes: 1,
            ..AnnounceStatus::default()
        };
        assert_eq!(
            describe_announce(&a),
            "10.0.0.100/32 dev slb-vip table 100: announced (serving), 1 changes"
        );
        a.announced = false;
        a.reason = "no server in rotation".into();
        a.changes = 2;
        a.error = Some("cannot add the route".into());
        assert_eq!(
            describe_announce(&a),
            "10.0.0.100/32 dev slb-vip table 100: WITHDRAWN (no server in rotation), 2 changes; \
             ERROR: cannot add the route"
        );
        a.error = None;
        a.bgp = vec![BgpSessionStatus {
            name: "up1".into(),
            state: "up".into(),
            info: "Established".into(),
        }];
        a.bfd = vec![BfdSessionStatus {
            address: "192.168.77.1".into(),
            interface: "bgp0".into(),
            state: "Up".into(),
            since: "18:40:01.123".into(),
        }];
        assert_eq!(
            describe_announce(&a),
            "10.0.0.100/32 dev slb-vip table 100: WITHDRAWN (no server in rotation), 2 changes\n  \
             bgp up1: up Established\n  bfd 192.168.77.1 on bgp0: Up since 18:40:01.123"
        );
    }
}
