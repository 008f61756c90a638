//! `slb_conf.json` as written: the serde schema, with every field's default, before anything
//! is checked. Unknown fields are refused. Pure.

use serde::{Deserialize, Serialize};

use crate::core::health::CheckConfig;

/// Where slbd looks for its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/slb/slb_conf.json";

/// The file as written, before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub address: String,
    pub address_dev: String,
    pub gateway: String,
    pub gateway_dev: String,
    pub cluster_network: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Seconds a client stays with the real server it was given; 0 turns persistence off.
    #[serde(default)]
    pub persistence_timeout: u64,
    pub services: Vec<RawService>,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub flows: RawFlows,
    #[serde(default)]
    pub syn_flood: RawSynFlood,
    /// The node's SSH port, for the peer's configuration sync (failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u32>,
    /// Run as one of a redundant pair under amgr.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_redundancy: bool,
    /// The local account the peer logs in as. No password here: SSH keys by default, a
    /// password only in `credentials_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RawCredentials>,
    /// The backup balancer the configuration is synced to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_slb: Option<RawBackup>,
    /// Where passwords live, mode 0600 (default /etc/slb/credentials.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<String>,
    /// Where Prometheus scrapes slbd's metrics (`"0.0.0.0:9405"`); absent: no metrics port.
    /// The file is shared by a pair, so a wildcard or loopback address suits both nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// The key of MAGLEV's hashes, 32 hex digits: every balancer of a cluster must share it
    /// (they share this file); absent, a fixed default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Cluster mode: the VIP's /32 kept in a kernel routing table while this node can serve,
    /// for a BGP daemon to announce; absent, nothing is announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<RawAnnounce>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    pub table: u64,
    #[serde(default = "default_announce_device")]
    pub device: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// The BGP daemon's control socket, read for `--status` (BIRD's; default
    /// /run/bird/bird.ctl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird_socket: Option<String>,
}

fn default_announce_device() -> String {
    "slb-vip".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredentials {
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub address: String,
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u32,
}

fn default_ssh_port() -> u32 {
    22
}

/// Where passwords are kept unless `credentials_file` says otherwise.
pub const DEFAULT_CREDENTIALS_FILE: &str = "/etc/slb/credentials.json";

fn default_algorithm() -> String {
    "ROUND_ROBIN".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub protocol: String,
    pub port: u32,
    /// Overrides the top-level algorithm for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Overrides the top-level persistence timeout for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence_timeout: Option<u64>,
    /// How the service's servers are health-checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<RawHealth>,
    /// `"packet"` (the default: every packet through slbd) or `"offload"` (slbd places each
    /// new flow, the kernel's conntrack carries the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Seconds over which a server coming back into rotation is ramped to its full weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_s: Option<u64>,
    /// `"nat"` (the default: DNAT in, SNAT of the replies) or `"dr"` (direct routing: the
    /// request goes to the server's MAC unchanged, the server answers the client itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    /// MAGLEV's table: its size and what a flow's hash covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<RawMaglev>,
    pub servers: Vec<RawServer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMaglev {
    /// Slots, a prime; 100 per server or more keeps each server within 1 % of its share.
    pub table_size: u32,
    /// `"flow"` (protocol, client address and port, service port) or `"client"` (the client
    /// address only: all its connections to one server).
    pub hash: String,
}

impl Default for RawMaglev {
    fn default() -> RawMaglev {
        RawMaglev {
            table_size: crate::core::sched::maglev::DEFAULT_TABLE_SIZE,
            hash: "flow".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub enabled: bool,
    pub interval_ms: u64,
    /// Defaults to 300 ms ([`CheckConfig::default`]), or the interval when that is shorter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub rise: u32,
    pub fall: u32,
    /// What a UDP probe sends.
    pub udp_payload: String,
    /// An HTTP GET instead of a bare connect (tcp services only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<RawHttpCheck>,
    /// `true` (no certificate verification) or `{"ca_file": ..., "server_name": ...}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// A program that decides instead of the connection checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<RawScript>,
    /// Passive detection on the data path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<RawPassive>,
}

impl Default for RawHealth {
    fn default() -> Self {
        let d = CheckConfig::default();
        RawHealth {
            enabled: d.enabled,
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: None,
            rise: d.rise,
            fall: d.fall,
            udp_payload: String::from_utf8_lossy(&d.udp_payload).into_owned(),
            http: None,
            tls: None,
            script: None,
            passive: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    #[serde(default = "root_path")]
    pub path: String,
    /// The Host header; the server's IP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `[200, 204]` or `"200-399"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<RawExpectStatus>,
    /// Text the answer's body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

fn root_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawExpectStatus {
    Codes(Vec<u32>),
    Range(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawTls {
    On(bool),
    Verify(RawTlsVerify),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsVerify {
    pub ca_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScript {
    /// argv; not run through a shell.
    pub command: Vec<String>,
    /// Defaults to the health timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub dynamic_weight: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPassive {
    pub enabled: bool,
    pub fall: u32,
    pub syn_timeout_ms: u64,
}

impl Default for RawPassive {
    fn default() -> Self {
        let d = crate::core::health::PassiveConfig::default();
        RawPassive {
            enabled: d.enabled,
            fall: d.fall,
            syn_timeout_ms: d.syn_timeout.as_millis() as u64,
        }
    }
}

/// A real server: `"172.16.0.2:80"`, or `{"address": "172.16.0.2:80", "weight": 3}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawServer {
    Plain(String),
    Weighted(RawWeightedServer),
}

impl RawServer {
    /// Its `ADDRESS:PORT`, as written.
    pub fn address(&self) -> &str {
        match self {
            RawServer::Plain(a) => a,
            RawServer::Weighted(w) => &w.address,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedServer {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u64,
    /// `"ready"` (the default), `"drain"` or `"maint"`, as `slbctl --drain/--maint/--ready`
    /// set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A draining server's deadline, seconds since the Unix epoch: its flows are cut then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until: Option<u64>,
    /// Used only while no primary server of the service is up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
    /// Overrides the service's `slow_start_s` for this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_s: Option<u64>,
    /// An agent on the server (HAProxy's agent-check protocol) that sets its weight and state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<RawAgent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub port: u32,
    #[serde(default = "default_agent_interval")]
    pub interval_ms: u64,
}

fn default_agent_interval() -> u64 {
    2000
}

impl RawWeightedServer {
    /// A server with only an address and a weight.
    pub fn new(address: String, weight: u64) -> RawWeightedServer {
        RawWeightedServer {
            address,
            weight,
            state: None,
            drain_until: None,
            backup: false,
            slow_start_s: None,
            agent: None,
        }
    }
}

fn default_weight() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    /// First NFQUEUE number slbd binds.
    pub num: u32,
    /// How many queues (one worker thread each); 0 means one per CPU core.
    pub count: u32,
    /// Packets the kernel holds per queue; what does not fit goes on without slbd (an
    /// offload flow's first packet to the kernel's spread, a packet-mode one to a drop). Short,
    /// because a full queue is a wait every queued packet pays: at slbd's ~70 k packets/s,
    /// 1024 is ~15 ms.
    pub max_len: u32,
    /// Let the kernel hand over segmentation-offloaded (GSO) packets whole.
    pub gso: bool,
    /// Receive buffer per queue socket in bytes; 0 sizes it from `max_len`.
    pub rcvbuf: u64,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            num: 0,
            count: 0,
            max_len: 1024,
            gso: true,
            rcvbuf: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFlows {
    /// Flows tracked at most; new flows beyond it are refused.
    pub max: u64,
    pub tcp_timeout: u64,
    pub tcp_closing_timeout: u64,
    /// Seconds a TCP handshake the server has not answered is kept.
    pub syn_timeout: u64,
    pub udp_timeout: u64,
}

impl Default for RawFlows {
    fn default() -> Self {
        // The established and FIN timeouts follow IPVS's defaults (900 s, 120 s would be its
        // tcpfin; closed flows here are only kept to absorb retransmitted FIN/ACKs).
        RawFlows {
            max: 1 << 20,
            tcp_timeout: 900,
            tcp_closing_timeout: 30,
            // Past the client's first SYN retransmissions (a second apart on Linux ≥ 6.5),
            // short enough that a flood of unanswered SYNs leaves the table soon.
            syn_timeout: 5,
            udp_timeout: 60,
        }
    }
}

/// The kernel's SYN budget in front of the queue: see [`crate::core::model::SynFlood`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSynFlood {
    /// New TCP connections per second from clients slbd's table does not know; 0: no budget.
    pub budget: u64,
    /// Seconds a client that completed a handshake stays known.
    pub known_for: u64,
    /// Clients known at most.
    pub known_max: u64,
}

impl Default for RawSynFlood {
    fn default() -> Self {
        RawSynFlood {
            // Above what slbd places per second on this kind of machine (~15 k new
            // connections/s), below what fills its queue (~70 k packets/s, a SYN and its
            // SYN-ACK each): without a flood it never bites.
            budget: 20_000,
            known_for: 600,
            known_max: 65_536,
        }
    }
}

// The fields that take one of two shapes are read by hand rather than as serde's untagged
// enums: an untagged enum buffers its input and reports only "data did not match any
// variant", losing both what was wrong and where (a negative weight inside a server's object
// must be reported at `services[0].servers[1].weight`).

/// A visitor for a field written either as a scalar or list (`scalar`) or as an object.
macro_rules! one_of_two_shapes {
    ($ty:ident, $expecting:literal, $object:ident => $from_object:expr, $($scalar:tt)*) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty, A::Error> {
                        let d = serde::de::value::MapAccessDeserializer::new(map);
                        $object::deserialize(d).map($from_object)
                    }
                    $($scalar)*
                }
                d.deserialize_any(V)
            }
        }
    };
}

one_of_two_shapes!(
    RawServer,
    r#""ADDRESS:PORT" or {"address": "ADDRESS:PORT", "weight": N, ...}"#,
    RawWeightedServer => RawServer::Weighted,
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawServer, E> {
        Ok(RawServer::Plain(s.to_string()))
    }
);

one_of_two_shapes!(
    RawTls,
    r#"true, false or {"ca_file": PATH, "server_name": NAME}"#,
    RawTlsVerify => RawTls::Verify,
    fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<RawTls, E> {
        Ok(RawTls::On(on))
    }
);

/// `expect_status` has no object shape: a list of codes or a range string.
impl<'de> Deserialize<'de> for RawExpectStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawExpectStatus;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a list of status codes ([200, 204]) or a range ("200-399")"#)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawExpectStatus, E> {
                Ok(RawExpectStatus::Range(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<RawExpectStatus, A::Error> {
                let d = serde::de::value::SeqAccessDeserializer::new(seq);
                Vec::<u32>::deserialize(d).map(RawExpectStatus::Codes)
            }
        }
        d.deserialize_any(V)
    }
}
