//! `amgr.json`: this node of the pair (its id, PRIMARY or BACKUP), the heartbeat links, the
//! pair's key, how to run slbd, and how to reach the peer for config sync. Pure: parsing and
//! validation work on text; every problem is reported at once with its field path.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/slb/amgr.json";
pub const DEFAULT_SOCKET: &str = "/run/slb/amgr.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node_id: u32,
    #[serde(default)]
    pub primary: bool,
    /// The pair's shared key (heartbeat and peer commands), mode 0600.
    pub key_file: String,
    /// Where PRIMARY and INHIBITED are kept across restarts (the original's "dynamic
    /// configuration file").
    #[serde(default = "default_state_file")]
    pub state_file: String,
    /// The amgr command socket (root-only).
    #[serde(default = "default_socket")]
    pub socket: String,
    pub heartbeat: RawHeartbeat,
    /// TCP port of the authenticated command connection between the two amgr instances.
    #[serde(default = "default_command_port")]
    pub command_port: u32,
    #[serde(default)]
    pub slbd: RawSlbd,
    #[serde(default)]
    pub sync: RawSync,
    /// Flow replication between the two slbd (stateful failover), over the heartbeat links.
    #[serde(default)]
    pub replication: RawReplication,
    /// Where Prometheus scrapes amgr's metrics (`"0.0.0.0:9406"`); absent: no metrics port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// The isolation guard: what this node must reach to take or keep the VIP.
    #[serde(default)]
    pub guard: crate::guard::RawGuard,
    /// Commands run after each transition into a state (`hooks.active`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<crate::hooks::RawHooks>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// The peer is lost after this many intervals of silence on every link.
    #[serde(default = "default_dead_intervals")]
    pub dead_intervals: u64,
    #[serde(default = "default_heartbeat_port")]
    pub port: u32,
    /// A dual's clock further than this from ours is logged; heartbeats do not depend on it.
    #[serde(default = "default_skew")]
    pub max_skew_ms: u64,
    pub links: Vec<RawLink>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub local: String,
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlbd {
    #[serde(default = "default_slbd_binary")]
    pub binary: String,
    #[serde(default = "default_slbd_config")]
    pub config: String,
    #[serde(default = "default_slbd_socket")]
    pub socket: String,
}

impl Default for RawSlbd {
    fn default() -> RawSlbd {
        RawSlbd {
            binary: default_slbd_binary(),
            config: default_slbd_config(),
            socket: default_slbd_socket(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    /// On by default: established connections survive a failover.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The TCP port each slbd listens on, on its heartbeat link addresses.
    #[serde(default = "default_replication_port")]
    pub port: u32,
}

impl Default for RawReplication {
    fn default() -> RawReplication {
        RawReplication {
            enabled: true,
            port: default_replication_port(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_replication_port() -> u32 {
    u32::from(slbd::wire::replication::DEFAULT_PORT)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    /// Seconds between two copies of slb_conf.json to the STANDBY (the original's 10 s).
    #[serde(default = "default_sync_period")]
    pub period_s: u64,
    /// The private key amgr logs in to the peer with.
    #[serde(default = "default_identity")]
    pub identity: String,
    /// The peer's host key must be in this file (OpenSSH known_hosts format).
    #[serde(default = "default_known_hosts")]
    pub known_hosts: String,
    /// Where the peer keeps slb_conf.json (default: the same path as here).
    #[serde(default)]
    pub remote_config: Option<String>,
}

impl Default for RawSync {
    fn default() -> RawSync {
        RawSync {
            period_s: default_sync_period(),
            identity: default_identity(),
            known_hosts: default_known_hosts(),
            remote_config: None,
        }
    }
}

fn default_state_file() -> String {
    "/var/lib/slb/amgr-state.json".into()
}
fn default_socket() -> String {
    DEFAULT_SOCKET.into()
}
fn default_command_port() -> u32 {
    7406
}
fn default_interval() -> u64 {
    100
}
fn default_dead_intervals() -> u64 {
    3
}
fn default_heartbeat_port() -> u32 {
    7405
}
fn default_skew() -> u64 {
    5000
}
fn default_slbd_binary() -> String {
    "/usr/sbin/slbd".into()
}
fn default_slbd_config() -> String {
    slbd::config::DEFAULT_PATH.into()
}
fn default_slbd_socket() -> String {
    slbd::ctl::proto::DEFAULT_SOCKET.into()
}
fn default_sync_period() -> u64 {
    10
}
fn default_identity() -> String {
    "/etc/slb/id_ed25519".into()
}
fn default_known_hosts() -> String {
    "/etc/slb/known_hosts".into()
}

/// One heartbeat path: our address on it and the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
}

/// A validated amgr.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_id: u32,
    pub primary: bool,
    pub key_file: PathBuf,
    pub state_file: PathBuf,
    pub socket: PathBuf,
    pub interval: Duration,
    pub dead: Duration,
    pub heartbeat_port: u16,
    pub max_skew_ms: u64,
    pub links: Vec<Link>,
    pub command_port: u16,
    pub slbd_binary: PathBuf,
    pub slbd_config: PathBuf,
    pub slbd_socket: PathBuf,
    pub sync_period: Duration,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub remote_config: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// The slbd flow replication port; None: replication is off.
    pub replication_port: Option<u16>,
    pub guard: crate::guard::Settings,
    pub hooks: crate::hooks::HookSet,
}

impl Config {
    /// Where the heartbeat goes out on each link.
    pub fn heartbeat_addrs(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.links
            .iter()
            .map(|l| {
                (
                    SocketAddrV4::new(l.local, self.heartbeat_port).into(),
                    SocketAddrV4::new(l.peer, self.heartbeat_port).into(),
                )
            })
            .collect()
    }

    /// The peer's command port, one address per link, in link order.
    pub fn peer_command_addrs(&self) -> Vec<SocketAddr> {
        self.links
            .iter()
            .map(|l| SocketAddrV4::new(l.peer, self.command_port).into())
            .collect()
    }

    /// Where this node listens for the peer's commands, one address per link.
    pub fn command_listen_addrs(&self) -> Vec<SocketAddr> {
        self.links
            .iter()
            .map(|l| SocketAddrV4::new(l.local, self.command_port).into())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

fn ipv4(errors: &mut Vec<String>, path: &str, text: &str) -> Option<Ipv4Addr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(format!("{path}: {text:?} is not an IPv4 address"));
            None
        }
    }
}

fn port(errors: &mut Vec<String>, path: &str, p: u32) -> u16 {
    match u16::try_from(p) {
        Ok(p) if p > 0 => p,
        _ => {
            errors.push(format!("{path}: {p} is not a port (1-65535)"));
            0
        }
    }
}

fn absolute(errors: &mut Vec<String>, path: &str, p: &str) -> PathBuf {
    if !p.starts_with('/') {
        errors.push(format!("{path}: {p:?} must be an absolute path"));
    }
    PathBuf::from(p)
}

/// Parses and validates amgr.json.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig =
        serde_json::from_str(text).map_err(|e| ConfigError(vec![format!("amgr.json: {e}")]))?;
    validate(&raw)
}

pub fn validate(raw: &RawConfig) -> Result<Config, ConfigError> {
    let mut e = Vec::new();
    if raw.node_id == 0 {
        e.push("node_id: must be 1 or more".into());
    }
    let hb = &raw.heartbeat;
    if !(10..=10_000).contains(&hb.interval_ms) {
        e.push(format!(
            "heartbeat.interval_ms: {} is outside 10-10000",
            hb.interval_ms
        ));
    }
    if !(2..=100).contains(&hb.dead_intervals) {
        e.push(format!(
            "heartbeat.dead_intervals: {} is outside 2-100",
            hb.dead_intervals
        ));
    }
    if hb.links.is_empty() || hb.links.len() > 8 {
        e.push(format!(
            "heartbeat.links: {} links given; 1 to 8 are needed",
            hb.links.len()
        ));
    }
    let mut links = Vec::new();
    for (i, l) in hb.links.iter().enumerate() {
        let local = ipv4(&mut e, &format!("heartbeat.links[{i}].local"), &l.local);
        let peer = ipv4(&mut e, &format!("heartbeat.links[{i}].peer"), &l.peer);
        if let (Some(local), Some(peer)) = (local, peer) {
            if local == peer {
                e.push(format!(
                    "heartbeat.links[{i}]: local and peer are both {local}"
                ));
            }
            if links.iter().any(|x: &Link| x.local == local) {
                e.push(format!(
                    "heartbeat.links[{i}].local: {local} is used by another link"
                ));
            }
            links.push(Link { local, peer });
        }
    }
    let heartbeat_port = port(&mut e, "heartbeat.port", hb.port);
    let command_port = port(&mut e, "command_port", raw.command_port);
    if heartbeat_port == command_port && command_port != 0 {
        e.push(format!(
            "command_port: {command_port} is the heartbeat port too"
        ));
    }
    if !(1..=3600).contains(&raw.sync.period_s) {
        e.push(format!(
            "sync.period_s: {} is outside 1-3600",
            raw.sync.period_s
        ));
    }
    let slbd_config = absolute(&mut e, "slbd.config", &raw.slbd.config);
    let metrics_listen = raw.metrics_listen.as_deref().and_then(|m| {
        slb_common::listen::parse_listen(m, 9406)
            .map_err(|why| e.push(format!("metrics_listen: {why}")))
            .ok()
    });
    if metrics_listen.is_some_and(|m| m.port() == command_port || m.port() == heartbeat_port) {
        e.push("metrics_listen: its port is the command or heartbeat port".into());
    }
    let replication_port = raw.replication.enabled.then(|| {
        let p = port(&mut e, "replication.port", raw.replication.port);
        if p != 0 && (p == command_port || p == heartbeat_port) {
            e.push(format!(
                "replication.port: {p} is the command or heartbeat port"
            ));
        }
        p
    });
    let config = Config {
        node_id: raw.node_id,
        primary: raw.primary,
        key_file: absolute(&mut e, "key_file", &raw.key_file),
        state_file: absolute(&mut e, "state_file", &raw.state_file),
        socket: absolute(&mut e, "socket", &raw.socket),
        interval: Duration::from_millis(hb.interval_ms),
        dead: Duration::from_millis(hb.interval_ms * hb.dead_intervals),
        heartbeat_port,
        max_skew_ms: hb.max_skew_ms,
        links,
        command_port,
        slbd_binary: absolute(&mut e, "slbd.binary", &raw.slbd.binary),
        slbd_socket: absolute(&mut e, "slbd.socket", &raw.slbd.socket),
        sync_period: Duration::from_secs(raw.sync.period_s),
        identity: absolute(&mut e, "sync.identity", &raw.sync.identity),
        known_hosts: absolute(&mut e, "sync.known_hosts", &raw.sync.known_hosts),
        remote_config: match &raw.sync.remote_config {
            Some(p) => absolute(&mut e, "sync.remote_config", p),
            None => slbd_config.clone(),
        },
        slbd_config,
        metrics_listen,
        replication_port,
        guard: crate::guard::validate(
            &raw.guard,
            Duration::from_millis(hb.interval_ms * hb.dead_intervals),
            &mut e,
        ),
        hooks: crate::hooks::validate(&raw.hooks.clone().unwrap_or_default(), &mut e),
    };
    if e.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError(e))
    }
}

/// What a node keeps across restarts and changes at run time (PRIMARY, INHIBIT, DISABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dynamic {
    pub primary: bool,
    pub inhibited: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"node_id": 1, "primary": true, "key_file": "/etc/slb/pair.key",
        "heartbeat": {"links": [{"local": "192.168.1.1", "peer": "192.168.1.2"}]}}"#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.interval, Duration::from_millis(100));
        assert_eq!(c.dead, Duration::from_millis(300));
        assert_eq!(c.heartbeat_port, 7405);
        assert_eq!(c.command_port, 7406);
        assert_eq!(c.sync_period, Duration::from_secs(10));
        assert_eq!(c.slbd_config, PathBuf::from("/etc/slb/slb_conf.json"));
        assert_eq!(c.remote_config, c.slbd_config);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.metrics_listen, None);
        assert_eq!(
            c.peer_command_addrs(),
            vec!["192.168.1.2:7406".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let text = r#"{"node_id": 0, "key_file": "pair.key", "command_port": 7405,
            "heartbeat": {"interval_ms": 5, "dead_intervals": 1, "links": [
                {"local": "10.0.0.1", "peer": "10.0.0.1"},
                {"local": "10.0.0.300", "peer": "10.0.0.2"}]},
            "sync": {"period_s": 0}, "metrics_listen": "0.0.0.0"}"#;
        let err = parse(text).unwrap_err().0;
        for want in [
            "node_id: must be 1 or more",
            "heartbeat.interval_ms: 5 is outside 10-10000",
            "heartbeat.dead_intervals: 1 is outside 2-100",
            "heartbeat.links[0]: local and peer are both 10.0.0.1",
            "heartbeat.links[1].local: \"10.0.0.300\" is not an IPv4 address",
            "command_port: 7405 is the heartbeat port too",
            "sync.period_s: 0 is outside 1-3600",
            "key_file: \"pair.key\" must be an absolute path",
            "metrics_listen: \"0.0.0.0\" is not an address:port (e.g. \"0.0.0.0:9406\")",
        ] {
            assert!(err.iter().any(|e| e == want), "missing {want:?} in {err:?}");
        }
        assert_eq!(err.len(), 9, "{err:?}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../../etc/slb/amgr.json")).unwrap();
        assert_eq!(c.links.len(), 2);
        assert!(c.primary);
    }

    #[test]
    fn unknown_fields_and_broken_json_are_refused() {
        let e = parse(&MINIMAL.replace("\"primary\"", "\"primery\"")).unwrap_err();
        assert!(e.to_string().contains("unknown field `primery`"), "{e}");
        let e = parse(&MINIMAL[..40]).unwrap_err();
        assert!(e.to_string().starts_with("amgr.json: "), "{e}");
        let e =
            parse(r#"{"node_id": 1, "key_file": "/k", "heartbeat": {"links": []}}"#).unwrap_err();
        assert!(e.to_string().contains("0 links given"), "{e}");
    }
}
