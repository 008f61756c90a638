//! A checked configuration: every address parsed, every cross-field rule held. What the data
//! plane, the ruleset and the daemon read; `crate::config` is the only maker of one. Pure.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::core::health::CheckConfig;
use crate::core::net::{Ipv4Net, ManagedAddr, Protocol};
use crate::core::sched::Algorithm;

/// A validated configuration: every address parsed, every cross-field rule checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vip: Ipv4Addr,
    pub vip_dev: String,
    pub gateway: Ipv4Addr,
    pub gateway_dev: String,
    pub cluster_network: Ipv4Net,
    pub algorithm: Algorithm,
    pub persistence_timeout: Duration,
    pub services: Vec<Service>,
    pub queue: QueueConfig,
    pub flows: FlowLimits,
    pub syn_flood: SynFlood,
    pub redundancy: Redundancy,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cluster mode's announcement, when the file asks for one.
    pub announce: Option<crate::core::announce::Announce>,
}

/// What the failover agent needs from this node's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Redundancy {
    pub enabled: bool,
    pub ssh_port: u16,
    pub local_user: Option<String>,
    pub backup: Option<Backup>,
    pub credentials_file: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub address: Ipv4Addr,
    pub user: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub protocol: Protocol,
    pub port: u16,
    pub algorithm: Algorithm,
    pub persistence_timeout: Duration,
    pub health: CheckConfig,
    pub mode: Mode,
    /// How a request reaches its server.
    pub forwarding: Forwarding,
    /// MAGLEV's key, table size and hash (unused by the other algorithms).
    pub maglev: crate::core::sched::maglev::Settings,
    pub servers: Vec<RealServer>,
}

/// What the operator set a server to: in rotation, draining (no new flows or persistence
/// entries; its flows go on, until `until` if given, seconds since the Unix epoch, when they
/// are cut), or in maintenance (out of rotation, its flows cut at once). Kept in the file, so
/// it survives a restart and reaches the STANDBY with the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    #[default]
    Ready,
    Drain {
        until: Option<u64>,
    },
    Maint,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain { .. } => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// Whether the server's flows must be cut by `now_unix` (seconds since the epoch).
    pub fn cuts_flows(self, now_unix: u64) -> bool {
        match self {
            AdminState::Ready => false,
            AdminState::Drain { until } => until.is_some_and(|t| now_unix >= t),
            AdminState::Maint => true,
        }
    }
}

/// How a service's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Every packet of every flow goes through slbd, which rewrites it.
    #[default]
    Packet,
    /// Only a flow's first packet goes through slbd, which chooses its server; a kernel NAT
    /// rule binds the flow to it and conntrack translates the rest.
    Offload,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Packet => "packet",
            Mode::Offload => "offload",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "packet" => Ok(Mode::Packet),
            "offload" => Ok(Mode::Offload),
            _ => Err(format!("{s:?} is not \"packet\" or \"offload\"")),
        }
    }
}

/// How a request reaches its real server. One variant per way a packet is delivered, so a
/// tunnel (IPIP, GUE) is one more variant with its ruleset and rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// DNAT to the server, SNAT of its replies: both directions cross slbd.
    #[default]
    Nat,
    /// Direct routing (IPVS's DR): the request keeps the VIP as its destination and is sent
    /// to the server's MAC on the server network; the server holds the VIP on a loopback
    /// and answers the client directly, so replies never reach slbd.
    Dr,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Nat => "nat",
            Forwarding::Dr => "dr",
        }
    }
}

impl std::str::FromStr for Forwarding {
    type Err = String;
    fn from_str(s: &str) -> Result<Forwarding, String> {
        match s {
            "nat" => Ok(Forwarding::Nat),
            "dr" => Ok(Forwarding::Dr),
            _ => Err(format!("{s:?} is not \"nat\" or \"dr\"")),
        }
    }
}

impl Service {
    /// The name operators see in logs: `tcp/80`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.protocol, self.port)
    }

    /// An offload service whose flows conntrack carries, its NAT binding them to their server.
    pub fn nat_offload(&self) -> bool {
        self.mode == Mode::Offload && self.forwarding == Forwarding::Nat
    }

    /// An offload service of direct routing: the kernel's flow map carries its flows.
    pub fn dr_offload(&self) -> bool {
        self.mode == Mode::Offload && self.forwarding == Forwarding::Dr
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealServer {
    pub addr: SocketAddrV4,
    pub weight: u32,
    pub state: AdminState,
    /// Used only while no primary server of the service is in rotation (a sorry server).
    pub backup: bool,
    /// A server coming back into rotation has its weight ramped up over this long; zero: at
    /// once.
    pub slow_start: Duration,
    /// The server's agent, asked every interval for its weight and state.
    pub agent: Option<AgentCheck>,
}

/// An agent check (HAProxy's protocol): a TCP port on the server that answers one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentCheck {
    pub port: u16,
    pub interval: Duration,
}

impl RealServer {
    /// A ready primary server with no slow start.
    pub fn new(addr: SocketAddrV4, weight: u32) -> RealServer {
        RealServer {
            addr,
            weight,
            state: AdminState::Ready,
            backup: false,
            slow_start: Duration::ZERO,
            agent: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub num: u16,
    /// 0 until the daemon resolves it to the number of cores.
    pub count: u16,
    pub max_len: u32,
    pub gso: bool,
    /// Receive buffer per queue socket, bytes.
    pub rcvbuf: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    pub max: u32,
    pub tcp_timeout: Duration,
    pub tcp_closing_timeout: Duration,
    /// TCP handshakes the server has not answered.
    pub syn_timeout: Duration,
    pub udp_timeout: Duration,
}

/// A budget of new TCP connections per second to the VIP, in the kernel before the queue, for
/// clients that are not known: a client is known once one of its packets after a handshake
/// (an ACK) reached the VIP, for `known_for` after its last one. Known clients are never held
/// to the budget, so under a SYN flood from spoofed sources they keep connecting at once; an
/// unknown client's SYN shares the budget with the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynFlood {
    /// New connections per second; 0: no budget.
    pub budget: u32,
    pub known_for: Duration,
    pub known_max: u32,
}

/// Largest weight a server may have; keeps the weighted schedulers' sums far from overflow.
pub const MAX_WEIGHT: u64 = 10_000;

impl Config {
    /// Finds a service by protocol and port.
    pub fn service(&self, protocol: Protocol, port: u16) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.protocol == protocol && s.port == port)
    }

    /// The addresses slbd owns for this configuration: the VIP as a /32 and the gateway with
    /// the cluster network's prefix. (amgr removes them too, for a slbd that died holding them.)
    pub fn managed_addrs(&self) -> Vec<ManagedAddr> {
        vec![
            ManagedAddr {
                dev: self.vip_dev.clone(),
                ip: self.vip,
                prefix: 32,
            },
            ManagedAddr {
                dev: self.gateway_dev.clone(),
                ip: self.gateway,
                prefix: self.cluster_network.prefix(),
            },
        ]
    }
}
