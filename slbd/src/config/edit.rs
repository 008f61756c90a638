//! Changes to the running configuration, as slbctl sends them: each is applied to the raw
//! configuration, and the result is validated as a whole ([`Config::try_from`]) before anything
//! is put in force. Pure.

use serde::{Deserialize, Serialize};

use std::fmt;

use crate::config::{
    parse_server_address, Config, ConfigError, RawBackup, RawConfig, RawCredentials, RawServer,
    RawService, RawWeightedServer,
};
use crate::core::net::Protocol;

/// A password. Its `Debug` never shows it, so no log line can.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The passwords slbd holds, kept out of slb_conf.json (they are saved to the 0600
/// credentials file). SSH keys are the default and need none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_password: Option<Secret>,
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.local_password.is_none() && self.backup_password.is_none()
    }
}

/// One change. Several given together are applied in order and validated together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Edit {
    /// Adds `address` (`IP:PORT`) to a service of that protocol: the one on VIP port
    /// `service_port` when given; else the one whose VIP port is PORT; else the one whose
    /// servers listen on PORT; else a new service on VIP port PORT (with the default algorithm).
    AddServer {
        protocol: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_port: Option<u16>,
        address: String,
        weight: u64,
    },
    /// Removes an address from every service.
    RmServer {
        address: String,
    },
    /// Removes `IP:PORT` from every service with that server.
    RmServerPort {
        address: String,
    },
    Algorithm {
        name: String,
    },
    /// Sets the data-path mode (`packet` or `offload`) of the service on `protocol`/`port`.
    Mode {
        protocol: String,
        port: u16,
        mode: String,
    },
    Address {
        value: String,
    },
    AddressDev {
        value: String,
    },
    Gateway {
        value: String,
    },
    GatewayDev {
        value: String,
    },
    ClusterNetwork {
        value: String,
    },
    /// Sets (or with `None` removes) the node's SSH port.
    SshPort {
        port: Option<u16>,
    },
    /// The local account the peer uses; a password only if given (keys otherwise).
    Credentials {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
    },
    RmCredentials,
    /// The backup balancer to sync the configuration to.
    BackupSlb {
        address: String,
        user: String,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<Secret>,
    },
    WithRedundancy,
    /// Sets the operator's state of a server (`IP:PORT`, or `IP` for every port of that
    /// address) in every service that has it: `ready`, `drain` (with `until`, a deadline in
    /// seconds since the Unix epoch, when its flows are cut) or `maint`.
    ServerState {
        server: String,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
    /// Sets one setting of the service on `protocol`/`port`: `key` is its field in
    /// slb_conf.json (`persistence_timeout`, `slow_start_s`, `health.interval_ms`, ...) and
    /// `value` its JSON (a bare word is taken as a string).
    Set {
        protocol: String,
        port: u16,
        key: String,
        value: String,
    },
    /// Cluster mode: withdraws this node's announcement (it keeps serving what still reaches
    /// it) or, with `false`, lets it be announced again. A struct variant: the tagged enum
    /// this is cannot carry a bare bool.
    Withdraw {
        withdrawn: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Applies `edits` to `raw`; returns the new raw and validated configuration, or why not.
pub fn apply(raw: &RawConfig, edits: &[Edit]) -> Result<(RawConfig, Config), EditError> {
    apply_with_secrets(raw, &Secrets::default(), edits).map(|(r, _, c)| (r, c))
}

/// [`apply`], also updating the passwords the edits carry.
pub fn apply_with_secrets(
    raw: &RawConfig,
    secrets: &Secrets,
    edits: &[Edit],
) -> Result<(RawConfig, Secrets, Config), EditError> {
    let mut new = raw.clone();
    let mut secrets = secrets.clone();
    for e in edits {
        apply_one(&mut new, &mut secrets, e)?;
    }
    let config = Config::try_from(&new)?;
    Ok((new, secrets, config))
}

fn apply_one(raw: &mut RawConfig, secrets: &mut Secrets, e: &Edit) -> Result<(), EditError> {
    let refuse = |m: String| Err(EditError::Refused(m));
    match e {
        Edit::AddServer {
            protocol,
            service_port,
            address,
            weight,
        } => {
            let proto: Protocol = match protocol.parse() {
                Ok(p) => p,
                Err(()) => return refuse(format!("--add-server: {protocol:?} is not tcp or udp")),
            };
            let addr = parse_server_address(address)
                .map_err(|m| EditError::Refused(format!("--add-server: {m}")))?;
            let server = if *weight == 1 {
                RawServer::Plain(addr.to_string())
            } else {
                RawServer::Weighted(RawWeightedServer::new(addr.to_string(), *weight))
            };
            let same_proto = |s: &RawService| s.protocol.parse::<Protocol>() == Ok(proto);
            let listens_on = |s: &RawService| {
                s.servers.iter().any(|o| {
                    parse_server_address(o.address()).is_ok_and(|a| a.port() == addr.port())
                })
            };
            let vip_port = u32::from(service_port.unwrap_or(addr.port()));
            let by_vip_port = raw
                .services
                .iter()
                .position(|s| same_proto(s) && s.port == vip_port);
            let by_server_port = || {
                let found: Vec<usize> = (0..raw.services.len())
                    .filter(|&i| same_proto(&raw.services[i]) && listens_on(&raw.services[i]))
                    .collect();
                (found.len() == 1).then(|| found[0])
            };
            let at = match service_port {
                Some(_) => by_vip_port,
                None => by_vip_port.or_else(by_server_port),
            };
            let svc = at.map(|i| &mut raw.services[i]);
            match svc {
                Some(s) if s.servers.iter().any(|o| o.address() == addr.to_string()) => {
                    return refuse(format!("--add-server: {proto}/{addr} is already a server"));
                }
                Some(s) => s.servers.push(server),
                None => raw.services.push(RawService {
                    protocol: proto.name().to_string(),
                    port: vip_port,
                    algorithm: None,
                    persistence_timeout: None,
                    health: None,
                    mode: None,
                    slow_start_s: None,
                    forwarding: None,
                    maglev: None,
                    servers: vec![server],
                }),
            }
        }
        Edit::RmServer { address } => {
            let before: usize = raw.services.iter().map(|s| s.servers.len()).sum();
            for s in &mut raw.services {
                s.servers.retain(|o| {
                    o.address().rsplit_once(':').map(|(ip, _)| ip) != Some(address.as_str())
                });
            }
            raw.services.retain(|s| !s.servers.is_empty());
            let after: usize = raw.services.iter().map(|s| s.servers.len()).sum();
            if before == after {
                return refuse(format!("--rm-server: {address} is not a server"));
            }
        }
        Edit::RmServerPort { address } => {
            let before: usize = raw.services.iter().map(|s| s.servers.len()).sum();
            for s in &mut raw.services {
                s.servers.retain(|o| o.address() != address);
            }
            raw.services.retain(|s| !s.servers.is_empty());
            let after: usize = raw.services.iter().map(|s| s.servers.len()).sum();
            if before == after {
                return refuse(format!("--rm-server-port: {address} is not a server"));
            }
        }
        Edit::Algorithm { name } => raw.algorithm = name.clone(),
        Edit::Mode {
            protocol,
            port,
            mode,
        } => {
            let svc = raw
                .services
                .iter_mut()
                .find(|s| s.protocol.eq_ignore_ascii_case(protocol) && s.port == u32::from(*port));
            match svc {
                Some(s) => s.mode = Some(mode.clone()),
                None => return refuse(format!("--mode: there is no service {protocol}/{port}")),
            }
        }
        Edit::Address { value } => raw.address = value.clone(),
        Edit::AddressDev { value } => raw.address_dev = value.clone(),
        Edit::Gateway { value } => raw.gateway = value.clone(),
        Edit::GatewayDev { value } => raw.gateway_dev = value.clone(),
        Edit::ClusterNetwork { value } => raw.cluster_network = value.clone(),
        Edit::SshPort { port } => raw.ssh_port = port.map(u32::from),
        Edit::Credentials { user, password } => {
            raw.credentials = Some(RawCredentials { user: user.clone() });
            secrets.local_password = password.clone();
        }
        Edit::RmCredentials => {
            if raw.credentials.is_none() && secrets.local_password.is_none() {
                return refuse("--rm-credentials: no credentials are set".into());
            }
            raw.credentials = None;
            secrets.local_password = None;
        }
        Edit::BackupSlb {
            address,
            user,
            port,
            password,
        } => {
            raw.backup_slb = Some(RawBackup {
                address: address.clone(),
                user: user.clone(),
                port: u32::from(*port),
            });
            secrets.backup_password = password.clone();
        }
        Edit::WithRedundancy => raw.with_redundancy = true,
        Edit::ServerState {
            server,
            state,
            until,
        } => set_server_state(raw, server, state, *until)?,
        Edit::Set {
            protocol,
            port,
            key,
            value,
        } => set_service_field(raw, protocol, *port, key, value)?,
        Edit::Withdraw { withdrawn } => match &mut raw.announce {
            Some(a) => a.withdrawn = *withdrawn,
            None => {
                return Err(EditError::Refused(
                    "not in cluster mode: the configuration has no announce section".into(),
                ))
            }
        },
    }
    Ok(())
}

/// Whether `address` (`IP:PORT`) is named by `server` (`IP:PORT`, or `IP` for every port).
fn names(server: &str, address: &str) -> bool {
    address == server || address.rsplit_once(':').map(|(ip, _)| ip) == Some(server)
}

fn set_server_state(
    raw: &mut RawConfig,
    server: &str,
    state: &str,
    until: Option<u64>,
) -> Result<(), EditError> {
    let flag = match state {
        "ready" | "drain" | "maint" => format!("--{state}"),
        _ => {
            return Err(EditError::Refused(format!(
                "{state:?} is not a server state (ready, drain, maint)"
            )))
        }
    };
    let mut found = false;
    for s in &mut raw.services {
        for o in s.servers.iter_mut().filter(|o| names(server, o.address())) {
            found = true;
            let mut w = match o {
                RawServer::Plain(a) => RawWeightedServer::new(a.clone(), 1),
                RawServer::Weighted(w) => w.clone(),
            };
            w.state = (state != "ready").then(|| state.to_string());
            w.drain_until = until.filter(|_| state == "drain");
            let plain = w == RawWeightedServer::new(w.address.clone(), 1);
            *o = if plain {
                RawServer::Plain(w.address)
            } else {
                RawServer::Weighted(w)
            };
        }
    }
    if !found {
        return Err(EditError::Refused(format!(
            "{flag}: {server} is not a server"
        )));
    }
    Ok(())
}

/// The service fields `--set` may change: not its identity (protocol, port) nor its
/// servers, which have their own flags.
const SETTABLE: &[&str] = &[
    "algorithm",
    "persistence_timeout",
    "mode",
    "slow_start_s",
    "health",
];

fn set_service_field(
    raw: &mut RawConfig,
    protocol: &str,
    port: u16,
    key: &str,
    value: &str,
) -> Result<(), EditError> {
    let refuse = |m: String| Err(EditError::Refused(format!("--set {protocol}/{port}: {m}")));
    let Some(at) = raw
        .services
        .iter()
        .position(|s| s.protocol.eq_ignore_ascii_case(protocol) && s.port == u32::from(port))
    else {
        return refuse("there is no such service".into());
    };
    let path: Vec<&str> = key.split('.').collect();
    if !SETTABLE.contains(&path[0]) || path.iter().any(|p| p.is_empty()) {
        return refuse(format!(
            "{key:?} is not a setting of a service (one of {}, health.FIELD)",
            SETTABLE.join(", ")
        ));
    }
    // A bare word is a string; anything JSON reads is taken as JSON.
    let value = serde_json::from_str(value).unwrap_or(serde_json::Value::String(value.into()));
    let mut json = serde_json::to_value(&raw.services[at]).expect("a service serialises");
    let mut slot = &mut json;
    for p in &path {
        if slot.is_null() {
            *slot = serde_json::Value::Object(Default::default());
        }
        let Some(obj) = slot.as_object_mut() else {
            return refuse(format!(
                "{key:?}: {p:?} is inside a value that is not an object"
            ));
        };
        slot = obj.entry(p.to_string()).or_insert(serde_json::Value::Null);
    }
    *slot = value;
    let service: RawService = serde_path_to_error::deserialize(json).map_err(|e| {
        EditError::Refused(format!(
            "--set {protocol}/{port}: {}: {}",
            e.path(),
            e.inner()
        ))
    })?;
    raw.services[at] = service;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminState;

    fn raw() -> RawConfig {
        serde_json::from_str(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                             {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53"]}]}"#,
        )
        .unwrap()
    }

    fn add(p: &str, a: &str, w: u64) -> Edit {
        Edit::AddServer {
            protocol: p.into(),
            service_port: None,
            address: a.into(),
            weight: w,
        }
    }

    #[test]
    fn sets_a_services_mode_or_says_there_is_no_such_service() {
        let mode = |p: &str, port: u16, m: &str| Edit::Mode {
            protocol: p.into(),
            port,
            mode: m.into(),
        };
        let (raw2, c) = apply(&raw(), &[mode("udp", 53, "offload")]).unwrap();
        assert_eq!(c.services[1].mode, crate::config::Mode::Offload);
        assert_eq!(c.services[0].mode, crate::config::Mode::Packet);
        let (_, c) = apply(&raw2, &[mode("udp", 53, "packet")]).unwrap();
        assert_eq!(c.services[1].mode, crate::config::Mode::Packet);
        let err = apply(&raw(), &[mode("tcp", 53, "offload")]).unwrap_err();
        assert_eq!(err.to_string(), "--mode: there is no service tcp/53");
    }

    #[test]
    fn adds_to_the_matching_service_or_creates_one() {
        let (_, c) = apply(
            &raw(),
            &[
                add("tcp", "172.16.0.4:80", 2),
                add("tcp", "172.16.0.4:443", 1),
            ],
        )
        .unwrap();
        assert_eq!(c.services[0].servers.len(), 3);
        assert_eq!(c.services[0].servers[2].weight, 2);
        assert_eq!(c.services[2].name(), "tcp/443");
        let (_, c) = apply(&raw(), &[add("udp", "172.16.0.9:53", 1)]).unwrap();
        assert_eq!(c.services[1].servers.len(), 2);
    }

    #[test]
    fn finds_the_service_by_vip_port_then_by_server_port() {
        let mut r = raw();
        r.services[0].port = 8080; // VIP 8080 -> servers on :80
        let (_, c) = apply(&r, &[add("tcp", "172.16.0.4:80", 1)]).unwrap();
        assert_eq!(
            (c.services.len(), c.services[0].servers.len()),
            (2, 3),
            "joined the service whose servers use :80"
        );
        let explicit = Edit::AddServer {
            protocol: "tcp".into(),
            service_port: Some(9000),
            address: "172.16.0.4:80".into(),
            weight: 1,
        };
        let (_, c) = apply(&r, &[explicit]).unwrap();
        assert_eq!(
            c.services[2].name(),
            "tcp/9000",
            "an explicit VIP port makes its own service"
        );
    }

    #[test]
    fn removes_by_address_or_address_and_port() {
        let (_, c) = apply(
            &raw(),
            &[Edit::RmServer {
                address: "172.16.0.2".into(),
            }],
        )
        .unwrap();
        assert_eq!(c.services.len(), 1, "udp/53 lost its only server and went");
        assert_eq!(c.services[0].servers.len(), 1);
        let (_, c) = apply(
            &raw(),
            &[Edit::RmServerPort {
                address: "172.16.0.2:80".into(),
            }],
        )
        .unwrap();
        assert_eq!(c.services[1].servers.len(), 1, "udp/53 keeps 172.16.0.2:53");
    }

    #[test]
    fn a_batch_is_validated_as_a_whole_and_refused_whole() {
        let r = raw();
        // The new server is only valid with the new cluster network; together they pass.
        let ok = apply(
            &r,
            &[
                Edit::ClusterNetwork {
                    value: "172.16.0.0/16".into(),
                },
                add("tcp", "172.16.5.5:80", 1),
            ],
        );
        assert!(ok.is_ok());
        let err = apply(&r, &[add("tcp", "172.16.5.5:80", 1)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "services[0].servers[2]: 172.16.5.5 is not inside cluster_network 172.16.0.0/24"
        );
        let err = apply(
            &r,
            &[Edit::Algorithm {
                name: "FASTEST".into(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("algorithm: \"FASTEST\" is not a scheduling algorithm"),
            "{err}"
        );
    }

    #[test]
    fn refuses_what_does_not_exist_or_already_exists() {
        let r = raw();
        let cases = [
            (
                Edit::RmServer {
                    address: "172.16.0.9".into(),
                },
                "--rm-server: 172.16.0.9 is not a server",
            ),
            (
                Edit::RmServerPort {
                    address: "172.16.0.2:81".into(),
                },
                "--rm-server-port: 172.16.0.2:81 is not a server",
            ),
            (
                add("tcp", "172.16.0.2:80", 1),
                "--add-server: tcp/172.16.0.2:80 is already a server",
            ),
            (
                add("sctp", "172.16.0.2:80", 1),
                "--add-server: \"sctp\" is not tcp or udp",
            ),
            (
                add("tcp", "172.16.0.2", 1),
                "--add-server: \"172.16.0.2\" is not ADDRESS:PORT",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(apply(&r, &[e]).unwrap_err().to_string(), want);
        }
        let err = apply(
            &r,
            &[
                Edit::RmServer {
                    address: "172.16.0.2".into(),
                },
                Edit::RmServer {
                    address: "172.16.0.3".into(),
                },
            ],
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "services: at least one service is needed");
    }

    #[test]
    fn credentials_keep_passwords_out_of_the_config() {
        let r = raw();
        let edits = [
            Edit::Credentials {
                user: "slb".into(),
                password: Some(Secret("hunter2".into())),
            },
            Edit::BackupSlb {
                address: "10.0.0.2".into(),
                user: "slb".into(),
                port: 2222,
                password: None,
            },
            Edit::SshPort { port: Some(2200) },
            Edit::WithRedundancy,
        ];
        let (new, secrets, c) = apply_with_secrets(&r, &Secrets::default(), &edits).unwrap();
        assert!(
            !serde_json::to_string(&new).unwrap().contains("hunter2"),
            "no password in slb_conf.json"
        );
        assert_eq!(secrets.local_password, Some(Secret("hunter2".into())));
        assert_eq!(secrets.backup_password, None, "the backup uses keys");
        assert!(
            !format!("{secrets:?}").contains("hunter2"),
            "Debug hides it"
        );
        assert_eq!(c.redundancy.ssh_port, 2200);
        assert!(c.redundancy.enabled);
        assert_eq!(c.redundancy.backup.as_ref().unwrap().port, 2222);
        let (new, secrets, _) = apply_with_secrets(
            &new,
            &secrets,
            &[Edit::RmCredentials, Edit::SshPort { port: None }],
        )
        .unwrap();
        assert_eq!(
            (new.credentials, new.ssh_port, secrets.local_password),
            (None, None, None)
        );
        let err =
            apply_with_secrets(&raw(), &Secrets::default(), &[Edit::RmCredentials]).unwrap_err();
        assert_eq!(err.to_string(), "--rm-credentials: no credentials are set");
    }

    fn state(server: &str, state: &str, until: Option<u64>) -> Edit {
        Edit::ServerState {
            server: server.into(),
            state: state.into(),
            until,
        }
    }

    #[test]
    fn server_states_are_set_by_address_or_address_and_port_and_kept_in_the_file() {
        let (r, c) = apply(&raw(), &[state("172.16.0.2", "drain", Some(1_900_000_000))]).unwrap();
        assert_eq!(
            c.services[0].servers[0].state,
            AdminState::Drain {
                until: Some(1_900_000_000)
            }
        );
        assert_eq!(
            c.services[1].servers[0].state,
            c.services[0].servers[0].state
        );
        assert_eq!(c.services[0].servers[1].state, AdminState::Ready);
        let text = serde_json::to_string(&r.services[0].servers[0]).unwrap();
        assert_eq!(
            text,
            r#"{"address":"172.16.0.2:80","weight":1,"state":"drain","drain_until":1900000000}"#
        );
        let (r, c) = apply(&r, &[state("172.16.0.2:80", "ready", None)]).unwrap();
        assert_eq!(c.services[0].servers[0].state, AdminState::Ready);
        assert_eq!(
            r.services[0].servers[0],
            RawServer::Plain("172.16.0.2:80".into()),
            "back to the plain form"
        );
        let (_, c) = apply(&r, &[state("172.16.0.3:80", "maint", Some(5))]).unwrap();
        assert_eq!(
            c.services[0].servers[1].state,
            AdminState::Maint,
            "no deadline"
        );
        for (e, why) in [
            (
                state("172.16.0.9", "drain", None),
                "--drain: 172.16.0.9 is not a server",
            ),
            (
                state("172.16.0.2", "gone", None),
                "\"gone\" is not a server state",
            ),
        ] {
            let err = apply(&raw(), &[e]).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    fn set(key: &str, value: &str) -> Edit {
        Edit::Set {
            protocol: "tcp".into(),
            port: 80,
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn one_service_setting_is_changed_and_validated_at_its_field_path() {
        let (_, c) = apply(
            &raw(),
            &[
                set("persistence_timeout", "30"),
                set("health.interval_ms", "500"),
                set("slow_start_s", "10"),
                set("algorithm", "RATIO"),
            ],
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.persistence_timeout, std::time::Duration::from_secs(30));
        assert_eq!(s.health.interval, std::time::Duration::from_millis(500));
        assert_eq!(s.servers[0].slow_start, std::time::Duration::from_secs(10));
        assert_eq!(s.algorithm.name(), "RATIO");
        assert_eq!(c.services[1].persistence_timeout, c.persistence_timeout);
        for (e, why) in [
            (
                set("servers", "[]"),
                "\"servers\" is not a setting of a service",
            ),
            (set("port", "81"), "\"port\" is not a setting"),
            (
                set("health.interval_ms", "-1"),
                "health.interval_ms: invalid value",
            ),
            (set("health.bogus", "1"), "unknown field `bogus`"),
            (
                set("persistence_timeout", "999999999"),
                "services[0].persistence_timeout",
            ),
            (set("algorithm", "FASTEST"), "is not a scheduling algorithm"),
        ] {
            let err = apply(&raw(), &[e]).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let other = Edit::Set {
            protocol: "udp".into(),
            port: 80,
            key: "mode".into(),
            value: "offload".into(),
        };
        assert!(apply(&raw(), &[other])
            .unwrap_err()
            .to_string()
            .contains("--set udp/80: there is no such service"));
    }

    #[test]
    fn edits_travel_as_json() {
        let e = add("udp", "172.16.0.9:53", 3);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add_server","protocol":"udp","address":"172.16.0.9:53","weight":3}"#
        );
        assert_eq!(serde_json::from_str::<Edit>(&text).unwrap(), e);
        assert!(serde_json::from_str::<Edit>(r#"{"op":"format_disk"}"#).is_err());
    }

    #[test]
    fn withdraw_and_rejoin_set_the_announcement_and_refuse_without_one() {
        let mut with = raw();
        with.announce = Some(crate::config::RawAnnounce {
            table: 100,
            device: "slb-vip".into(),
            withdrawn: false,
            bird_socket: None,
        });
        let (out, c) = apply(&with, &[Edit::Withdraw { withdrawn: true }]).unwrap();
        assert!(out.announce.as_ref().unwrap().withdrawn);
        assert!(c.announce.unwrap().withdrawn, "in force");
        let (back, _) = apply(&out, &[Edit::Withdraw { withdrawn: false }]).unwrap();
        assert_eq!(back, with, "rejoined: as before");
        let text = serde_json::to_string(&Edit::Withdraw { withdrawn: true }).unwrap();
        assert_eq!(
            serde_json::from_str::<Edit>(&text).unwrap(),
            Edit::Withdraw { withdrawn: true }
        );
        let err = apply(&raw(), &[Edit::Withdraw { withdrawn: true }]).unwrap_err();
        assert!(err.to_string().contains("no announce section"), "{err}");
    }
}
