//! The checker: a [`RawConfig`] becomes a [`Config`] only if every field and every rule between
//! fields holds; otherwise every problem is reported at once, each with its field path
//! (`services[1].servers[0].weight`). Pure: no system calls.

use super::checker::{port, Checker};
use super::parse::valid_user;
use super::raw::*;
use super::services::{reply_ports_apart, service, Inherited};

pub use super::checker::{ConfigError, FieldError};
use super::{Backup, Config, FlowLimits, QueueConfig, Redundancy, Service, SynFlood};
use crate::core::net::Ipv4Net;
use crate::core::sched::maglev::HashKey;

const MAX_FLOWS: u64 = 1 << 24;

impl TryFrom<&RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: &RawConfig) -> Result<Config, ConfigError> {
        let mut c = Checker::default();
        let vip = c.ipv4("address", &raw.address);
        let vip_dev = c.device("address_dev", &raw.address_dev);
        let gateway = c.ipv4("gateway", &raw.gateway);
        let gateway_dev = c.device("gateway_dev", &raw.gateway_dev);
        let cluster_network = match raw.cluster_network.parse::<Ipv4Net>() {
            Ok(n) if n.prefix() > 30 => {
                c.fail(
                    "cluster_network",
                    format!("{n} leaves no room for a gateway and real servers"),
                );
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                c.fail("cluster_network", format!("{:?}: {e}", raw.cluster_network));
                None
            }
        };
        let algorithm = c.algorithm("algorithm", &raw.algorithm);
        let persistence_timeout = c.seconds("persistence_timeout", raw.persistence_timeout, 0);

        if let (Some(vip), Some(net)) = (vip, cluster_network) {
            if net.contains(vip) {
                c.fail(
                    "address",
                    format!("the VIP {vip} must not be inside cluster_network {net}"),
                );
            }
        }
        if let (Some(gw), Some(net)) = (gateway, cluster_network) {
            if !net.contains(gw) {
                c.fail(
                    "gateway",
                    format!("{gw} is not inside cluster_network {net}"),
                );
            } else if gw == net.addr() || gw == net.broadcast() {
                c.fail(
                    "gateway",
                    format!("{gw} is the network or broadcast address of {net}"),
                );
            }
        }
        if vip.is_some() && vip == gateway {
            c.fail("gateway", "must differ from address (the VIP)");
        }

        if raw.services.is_empty() {
            c.fail("services", "at least one service is needed");
        }
        let hash_key = match raw.hash_key.as_deref().map(HashKey::parse) {
            None => HashKey::default(),
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                c.fail("hash_key", e);
                HashKey::default()
            }
        };
        let inherited = Inherited {
            algorithm,
            persistence: persistence_timeout,
            net: cluster_network,
            gateway,
            hash_key,
        };
        let mut services: Vec<Service> = Vec::new();
        for (i, s) in raw.services.iter().enumerate() {
            let Some(svc) = service(&mut c, i, s, &inherited) else {
                continue;
            };
            if services
                .iter()
                .any(|o| (o.protocol, o.port) == (svc.protocol, svc.port))
            {
                c.fail(
                    format!("services[{i}]"),
                    format!("{} is defined twice", svc.name()),
                );
            } else {
                services.push(svc);
            }
        }

        reply_ports_apart(&mut c, &services);
        let queue = queue(&mut c, &raw.queue);
        let flows = flows(&mut c, &raw.flows);
        let syn_flood = syn_flood(&mut c, &raw.syn_flood);
        let redundancy = redundancy(&mut c, raw);
        let metrics_listen = raw
            .metrics_listen
            .as_deref()
            .and_then(|m| listen_addr(&mut c, "metrics_listen", m));
        let announce = raw
            .announce
            .as_ref()
            .map(|a| super::announce::check(&mut c, a, raw));

        if !c.errors.is_empty() {
            return Err(ConfigError::Invalid(c.errors));
        }
        Ok(Config {
            vip: vip.expect("checked"),
            vip_dev,
            gateway: gateway.expect("checked"),
            gateway_dev,
            cluster_network: cluster_network.expect("checked"),
            algorithm,
            persistence_timeout,
            services,
            queue,
            flows,
            syn_flood,
            redundancy,
            metrics_listen,
            announce,
        })
    }
}

fn listen_addr(c: &mut Checker, path: &str, value: &str) -> Option<std::net::SocketAddr> {
    slb_common::listen::parse_listen(value, 9405)
        .map_err(|e| c.fail(path, e))
        .ok()
}

fn redundancy(c: &mut Checker, raw: &RawConfig) -> Redundancy {
    let ssh_port = match raw.ssh_port {
        Some(p) => port(c, "ssh_port", p).unwrap_or(22),
        None => 22,
    };
    let local_user = raw.credentials.as_ref().map(|cr| {
        if !valid_user(&cr.user) {
            c.fail(
                "credentials.user",
                format!("{:?} is not a user name", cr.user),
            );
        }
        cr.user.clone()
    });
    let backup = raw.backup_slb.as_ref().and_then(|b| {
        let address = c.ipv4("backup_slb.address", &b.address);
        if !valid_user(&b.user) {
            c.fail(
                "backup_slb.user",
                format!("{:?} is not a user name", b.user),
            );
        }
        let port = port(c, "backup_slb.port", b.port);
        Some(Backup {
            address: address?,
            user: b.user.clone(),
            port: port?,
        })
    });
    let credentials_file = std::path::PathBuf::from(
        raw.credentials_file
            .as_deref()
            .unwrap_or(DEFAULT_CREDENTIALS_FILE),
    );
    if !credentials_file.is_absolute() {
        c.fail(
            "credentials_file",
            format!("{} is not an absolute path", credentials_file.display()),
        );
    }
    Redundancy {
        enabled: raw.with_redundancy,
        ssh_port,
        local_user,
        backup,
        credentials_file,
    }
}

fn queue(c: &mut Checker, raw: &RawQueue) -> QueueConfig {
    if raw.num > u32::from(u16::MAX) {
        c.fail(
            "queue.num",
            format!("{} is not a queue number (0 to 65535)", raw.num),
        );
    }
    if raw.count > 64 {
        c.fail(
            "queue.count",
            format!("{} is out of range (0 to 64)", raw.count),
        );
    } else if raw.num + raw.count.max(1) > 65536 {
        c.fail("queue.count", "queue numbers would run past 65535");
    }
    if !(16..=1 << 20).contains(&raw.max_len) {
        c.fail(
            "queue.max_len",
            format!("{} is out of range (16 to 1048576)", raw.max_len),
        );
    }
    const MIB: u64 = 1 << 20;
    if raw.rcvbuf != 0 && !(MIB..=1024 * MIB).contains(&raw.rcvbuf) {
        c.fail(
            "queue.rcvbuf",
            format!(
                "{} is out of range (0 for automatic, or 1 MiB to 1 GiB in bytes)",
                raw.rcvbuf
            ),
        );
    }
    // Automatic: room for a full queue of small packets (8 KiB each with netlink overhead),
    // between 64 MiB and 256 MiB. Memory is only used while packets wait. The floor is for
    // bursts of large (GSO) packets, since a queue that fails open passes on what the socket
    // cannot take: with 8 MiB behind a 1024-packet queue the kill -9 takeover lab test lost
    // requests after the takeover, with 64 MiB it did not.
    let rcvbuf = match raw.rcvbuf {
        0 => (u64::from(raw.max_len) * 8192).clamp(64 * MIB, 256 * MIB),
        n => n.clamp(MIB, 1024 * MIB),
    };
    QueueConfig {
        num: raw.num.min(65535) as u16,
        count: raw.count.min(64) as u16,
        max_len: raw.max_len,
        gso: raw.gso,
        rcvbuf: rcvbuf as usize,
    }
}

fn flows(c: &mut Checker, raw: &RawFlows) -> FlowLimits {
    if !(1..=MAX_FLOWS).contains(&raw.max) {
        c.fail(
            "flows.max",
            format!("{} is out of range (1 to {MAX_FLOWS})", raw.max),
        );
    }
    FlowLimits {
        max: raw.max.clamp(1, MAX_FLOWS) as u32,
        tcp_timeout: c.seconds("flows.tcp_timeout", raw.tcp_timeout, 1),
        tcp_closing_timeout: c.seconds("flows.tcp_closing_timeout", raw.tcp_closing_timeout, 1),
        syn_timeout: c.seconds("flows.syn_timeout", raw.syn_timeout, 1),
        udp_timeout: c.seconds("flows.udp_timeout", raw.udp_timeout, 1),
    }
}

fn syn_flood(c: &mut Checker, raw: &RawSynFlood) -> SynFlood {
    const MAX_BUDGET: u64 = 10_000_000;
    const MAX_KNOWN: u64 = 1 << 24;
    if raw.budget > MAX_BUDGET {
        c.fail(
            "syn_flood.budget",
            format!(
                "{} is out of range (0 to {MAX_BUDGET} per second)",
                raw.budget
            ),
        );
    }
    if !(1..=MAX_KNOWN).contains(&raw.known_max) {
        c.fail(
            "syn_flood.known_max",
            format!("{} is out of range (1 to {MAX_KNOWN})", raw.known_max),
        );
    }
    SynFlood {
        budget: raw.budget.min(MAX_BUDGET) as u32,
        known_for: c.seconds("syn_flood.known_for", raw.known_for, 1),
        known_max: raw.known_max.clamp(1, MAX_KNOWN) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::core::health::CheckConfig;
    use crate::core::net::Protocol;
    use crate::core::sched::Algorithm;
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::time::Duration;

    const GOOD: &str = r#"{
        "address": "10.0.0.100",
        "address_dev": "eth0",
        "gateway": "172.16.0.1",
        "gateway_dev": "eth1",
        "cluster_network": "172.16.0.0/24",
        "algorithm": "ROUND_ROBIN",
        "persistence_timeout": 300,
        "services": [
            {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:8080"]},
            {"protocol": "udp", "port": 53, "algorithm": "RATIO",
             "servers": [{"address": "172.16.0.2:53", "weight": 3}, "172.16.0.3:53"]}
        ]
    }"#;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::from_json(text) {
            Err(ConfigError::Invalid(errs)) => errs.iter().map(|e| e.to_string()).collect(),
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    fn with(pointer: &str, value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        match v.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            // A top-level section GOOD leaves to its defaults.
            None => v[pointer.trim_start_matches('/')] = value,
        }
        v.to_string()
    }

    /// What a refused file is reported as: serde's error, or the checks' field errors.
    fn error_of(text: &str) -> String {
        match Config::from_json(text) {
            Err(ConfigError::Syntax(e)) => e,
            Err(ConfigError::Invalid(errs)) => errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn every_value_of_the_wrong_kind_is_refused_at_its_field_path() {
        let value = |v: serde_json::Value| v;
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            // A negative number where a count is due, inside a server's object.
            ("/services/1/servers/0/weight", value((-3).into()), "services[1].servers[0].weight: invalid value: integer `-3`"),
            // A string where a number is due.
            ("/services/0/port", value("80".into()), "services[0].port: invalid type: string \"80\""),
            // A number too big for its field.
            ("/services/0/port", value(70000.into()), "services[0].port: 70000 is not a port"),
            ("/queue", serde_json::json!({"max_len": -1}), "queue.max_len: invalid value: integer `-1`"),
            ("/syn_flood", serde_json::json!({"budget": "lots"}), "syn_flood.budget: invalid type: string \"lots\""),
            // A server that is neither shape.
            ("/services/0/servers/1", value(5.into()), "services[0].servers[1]: invalid type: integer `5`, expected \"ADDRESS:PORT\" or {\"address\""),
            // An unknown field inside a server's object.
            ("/services/1/servers/0", serde_json::json!({"address": "172.16.0.2:53", "wieght": 3}), "services[1].servers[0].wieght: unknown field `wieght`, expected one of `address`, `weight`, `state`, `drain_until`, `backup`, `slow_start_s`"),
            // Wrong kinds in the health settings.
            ("/services/0/health", serde_json::json!({"interval_ms": "fast"}), "services[0].health.interval_ms: invalid type: string \"fast\""),
            ("/services/0/health", serde_json::json!({"tls": "yes"}), "services[0].health.tls: invalid type: string \"yes\", expected true, false or {"),
            ("/services/0/health", serde_json::json!({"http": {"expect_status": {"min": 200}}}), "services[0].health.http.expect_status: invalid type: map, expected a list of status codes"),
            ("/services/0/health", serde_json::json!({"http": {"expect_status": [200, "ok"]}}), "services[0].health.http.expect_status[1]: invalid type: string \"ok\""),
            ("/services/0/health", serde_json::json!({"passive": {"fall": true}}), "services[0].health.passive.fall: invalid type: boolean `true`"),
            // A boolean where a string is due, at the top.
            ("/address_dev", value(true.into()), "address_dev: invalid type: boolean `true`"),
        ];
        // Sets `pointer` (whose parent exists) to `v`, adding the field if it is new.
        let set = |pointer: &str, v: serde_json::Value| {
            let mut doc: serde_json::Value = serde_json::from_str(GOOD).unwrap();
            let (parent, last) = pointer.rsplit_once('/').unwrap();
            match doc.pointer_mut(parent).unwrap() {
                serde_json::Value::Array(a) => a[last.parse::<usize>().unwrap()] = v,
                parent => {
                    parent[last] = v;
                }
            }
            doc.to_string()
        };
        for (pointer, v, want) in cases {
            let got = error_of(&set(pointer, v));
            assert!(got.starts_with(want), "{pointer}: {got}");
        }
        // Broken JSON has no path to name, only where it broke.
        let got = error_of("{\"address\": ");
        assert!(got.contains("line 1"), "{got}");
        assert!(error_of(&format!("{GOOD} trailing")).contains("trailing characters"));
    }

    #[test]
    fn a_maglev_service_takes_its_table_size_hash_and_the_files_key() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["hash_key"] = "00112233445566778899aabbccddeeff".into();
        v["services"][0]["algorithm"] = "MAGLEV".into();
        v["services"][0]["maglev"] = serde_json::json!({"table_size": 1009, "hash": "client"});
        let c = Config::from_json(&v.to_string()).unwrap();
        let m = c.services[0].maglev;
        assert_eq!(c.services[0].algorithm, Algorithm::Maglev);
        assert_eq!(
            (m.table_size, m.by),
            (1009, crate::core::sched::maglev::HashBy::Client)
        );
        assert_eq!(m.key.hex(), "00112233445566778899aabbccddeeff");
        // Without a block: the paper's table, each flow hashed on its own, the shared default.
        v["services"][0].as_object_mut().unwrap().remove("maglev");
        v.as_object_mut().unwrap().remove("hash_key");
        let d = Config::from_json(&v.to_string()).unwrap().services[0].maglev;
        assert_eq!(d, crate::core::sched::maglev::Settings::default());
    }

    #[test]
    fn accepts_a_good_file() {
        let c = Config::from_json(GOOD).unwrap();
        assert_eq!(c.vip, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[1].algorithm, Algorithm::Ratio);
        assert_eq!(c.services[0].algorithm, Algorithm::RoundRobin);
        assert_eq!(c.services[1].servers[0].weight, 3);
        assert_eq!(c.services[0].servers[1].addr.port(), 8080);
        assert_eq!(c.services[0].persistence_timeout, Duration::from_secs(300));
        assert_eq!(c.queue.max_len, 1024);
        assert!(c.service(Protocol::Udp, 53).is_some());
        assert!(c.service(Protocol::Tcp, 53).is_none());
    }

    #[test]
    fn a_service_runs_in_packet_mode_unless_told_offload() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"][0]["mode"] = "offload".into();
        let c = Config::from_json(&v.to_string()).unwrap();
        assert_eq!(c.services[0].mode, Mode::Offload);
        assert_eq!(c.services[1].mode, Mode::Packet);
        v["services"][1]["mode"] = "kernel".into();
        assert_eq!(
            errors_of(&v.to_string()),
            vec![r#"services[1].mode: "kernel" is not "packet" or "offload""#]
        );
        // udp/53's servers listen on 53 in packet mode; an offload udp service on them clashes.
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"protocol": "udp", "port": 54, "mode": "offload", "servers": ["172.16.0.4:53"]}
            ));
        assert_eq!(
            errors_of(&v.to_string()),
            vec![
                "services[2].mode: offload service udp/54 uses server port udp/53, which \
                  packet-mode service udp/53 uses too: the two modes' replies cannot be told apart"
            ]
        );
        // The same port under the other protocol is no clash.
        v["services"][2]["protocol"] = "tcp".into();
        assert!(Config::from_json(&v.to_string()).is_ok());
    }

    #[test]
    fn names_the_field_of_a_bad_server_address() {
        let text = with(
            "/services/1/servers/0",
            serde_json::json!("172.16.0.300:80"),
        );
        assert_eq!(
            errors_of(&text),
            vec![r#"services[1].servers[0]: "172.16.0.300:80" is not an IPv4 address"#]
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["address"] = "10.0.0".into();
        v["cluster_network"] = "172.16.0.1/24".into();
        v["services"][0]["port"] = 70000.into();
        v["services"][1]["protocol"] = "sctp".into();
        let errs = errors_of(&v.to_string());
        assert_eq!(
            errs,
            vec![
                r#"address: "10.0.0" is not an IPv4 address"#,
                r#"cluster_network: "172.16.0.1/24": host bits are set (did you mean 172.16.0.0/24?)"#,
                "services[0].port: 70000 is not a port (1 to 65535)",
                r#"services[1].protocol: "sctp" is not "tcp" or "udp""#,
            ]
        );
    }

    #[test]
    fn checks_cross_field_rules() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "/address",
                "172.16.0.9".into(),
                "address: the VIP 172.16.0.9 must not be inside cluster_network 172.16.0.0/24",
            ),
            (
                "/gateway",
                "10.9.9.9".into(),
                "gateway: 10.9.9.9 is not inside cluster_network 172.16.0.0/24",
            ),
            (
                "/gateway",
                "172.16.0.255".into(),
                "gateway: 172.16.0.255 is the network or broadcast address of 172.16.0.0/24",
            ),
            (
                "/services/0/servers/0",
                "10.1.1.1:80".into(),
                "services[0].servers[0]: 10.1.1.1 is not inside cluster_network 172.16.0.0/24",
            ),
            (
                "/services/0/servers/0",
                "172.16.0.1:80".into(),
                "services[0].servers[0]: 172.16.0.1 is the gateway address",
            ),
            (
                "/services/0/servers/1",
                "172.16.0.2:80".into(),
                "services[0].servers[1]: 172.16.0.2:80 is listed twice",
            ),
            (
                "/services/0/servers/0",
                "172.16.0.2".into(),
                r#"services[0].servers[0]: "172.16.0.2" is not ADDRESS:PORT"#,
            ),
            (
                "/services/0/servers/0",
                "172.16.0.2:0".into(),
                r#"services[0].servers[0]: "172.16.0.2:0" has no valid port (1 to 65535)"#,
            ),
            (
                "/services/1/servers/0/weight",
                0.into(),
                "services[1].servers[0].weight: 0 is out of range (1 to 10000)",
            ),
            (
                "/services/1/servers/0",
                serde_json::json!({"address": "172.16.0.2:53", "state": "paused"}),
                r#"services[1].servers[0].state: "paused" is not "ready", "drain" or "maint""#,
            ),
            (
                "/services/1/servers/0",
                serde_json::json!({"address": "172.16.0.2:53", "drain_until": 1_900_000_000}),
                r#"services[1].servers[0].drain_until: only a draining server has a deadline (state is "ready")"#,
            ),
            (
                "/services/1/servers/0",
                serde_json::json!({"address": "172.16.0.2:53", "slow_start_s": 700_000}),
                "services[1].servers[0].slow_start_s: 700000 is out of range (0 to 604800 seconds)",
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "slow_start_s": 700_000,
                                   "servers": ["172.16.0.2:80"]}),
                "services[0].slow_start_s: 700000 is out of range (0 to 604800 seconds)",
            ),
            (
                "/syn_flood",
                serde_json::json!({"budget": 20_000_000}),
                "syn_flood.budget: 20000000 is out of range (0 to 10000000 per second)",
            ),
            (
                "/syn_flood",
                serde_json::json!({"known_max": 0}),
                "syn_flood.known_max: 0 is out of range (1 to 16777216)",
            ),
            (
                "/syn_flood",
                serde_json::json!({"known_for": 0}),
                "syn_flood.known_for: 0 is out of range (1 to 604800 seconds)",
            ),
            (
                "/services/0/servers",
                serde_json::json!([]),
                "services[0].servers: at least one real server is needed",
            ),
            (
                "/services",
                serde_json::json!([]),
                "services: at least one service is needed",
            ),
            (
                "/algorithm",
                "FASTEST".into(),
                r#"algorithm: "FASTEST" is not a scheduling algorithm (ROUND_ROBIN, RATIO, RANDOM, LEAST_CONNECTIONS, LOWER_LATENCY, MAGLEV)"#,
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "algorithm": "MAGLEV",
                                   "maglev": {"table_size": 65_536}, "servers": ["172.16.0.2:80"]}),
                "services[0].maglev.table_size: 65536 is not a prime (every server's walk must reach every slot)",
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "algorithm": "MAGLEV",
                                   "maglev": {"table_size": 7}, "servers": ["172.16.0.2:80"]}),
                "services[0].maglev.table_size: 7 is not in 251-1048573",
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "algorithm": "MAGLEV",
                                   "maglev": {"hash": "5-tuple"}, "servers": ["172.16.0.2:80"]}),
                r#"services[0].maglev.hash: "5-tuple" is not "flow" or "client""#,
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "maglev": {},
                                   "servers": ["172.16.0.2:80"]}),
                "services[0].maglev: set, but the service's algorithm is ROUND_ROBIN, not MAGLEV",
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "forwarding": "tunnel",
                                   "servers": ["172.16.0.2:80"]}),
                r#"services[0].forwarding: "tunnel" is not "nat" or "dr""#,
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "forwarding": "dr",
                                   "servers": ["172.16.0.2:8080"]}),
                r#"services[0].servers[0]: 172.16.0.2:8080: with forwarding "dr" the request keeps the VIP's port, so the server must listen on it, not on 8080"#,
            ),
            (
                "/services/0",
                serde_json::json!({"protocol": "tcp", "port": 80, "forwarding": "dr",
                                   "health": {"passive": {"enabled": true}},
                                   "servers": ["172.16.0.2:80"]}),
                r#"services[0].health.passive.enabled: passive detection needs the servers' replies, which forwarding "dr" never sees"#,
            ),
            (
                "/hash_key",
                "0123".into(),
                r#"hash_key: "0123" is not 32 hex digits"#,
            ),
            (
                "/address_dev",
                "eth0 ".into(),
                r#"address_dev: "eth0 " is not a network interface name"#,
            ),
            (
                "/gateway_dev",
                "averyveryverylongname".into(),
                r#"gateway_dev: "averyveryverylongname" is not a network interface name"#,
            ),
            (
                "/cluster_network",
                "172.16.0.0/31".into(),
                "cluster_network: 172.16.0.0/31 leaves no room for a gateway and real servers",
            ),
        ];
        for (pointer, value, expected) in cases {
            assert_eq!(
                errors_of(&with(pointer, value.clone())),
                vec![*expected],
                "{pointer}"
            );
        }
    }

    #[test]
    fn checks_health_settings() {
        let cases = [
            (
                serde_json::json!({"interval_ms": 10, "timeout_ms": 10}),
                "services[0].health.interval_ms: 10 is out of range (50 to 3600000)",
            ),
            (
                serde_json::json!({"interval_ms": 500, "timeout_ms": 600}),
                "services[0].health.timeout_ms: 600 is out of range (10 to interval_ms)",
            ),
            (
                serde_json::json!({"fall": 0}),
                "services[0].health.fall: 0 is out of range (1 to 100)",
            ),
            (
                serde_json::json!({"udp_payload": ""}),
                "services[0].health.udp_payload: must be 1 to 1024 bytes",
            ),
            (
                serde_json::json!({"http": {"expect_status": "399-200"}}),
                "services[0].health.http.expect_status: \"399-200\" is not a range of HTTP \
                 statuses like \"200-399\"",
            ),
            (
                serde_json::json!({"http": {"expect_status": [200, 600]}}),
                "services[0].health.http.expect_status: must list HTTP statuses (100 to 599)",
            ),
            (
                serde_json::json!({"http": {"expect_status": []}}),
                "services[0].health.http.expect_status: must list HTTP statuses (100 to 599)",
            ),
            (
                serde_json::json!({"http": {"path": "/a b"}}),
                "services[0].health.http.path: \"/a b\" is not an absolute path without spaces",
            ),
            (
                serde_json::json!({"http": {"path": "health"}}),
                "services[0].health.http.path: \"health\" is not an absolute path without spaces",
            ),
            (
                serde_json::json!({"http": {"host": "a\r\nX: y"}}),
                "services[0].health.http.host: \"a\\r\\nX: y\" is not a host name",
            ),
            (
                serde_json::json!({"http": {"expect_body": ""}}),
                "services[0].health.http.expect_body: must be 1 to 1024 bytes",
            ),
            (
                serde_json::json!({"tls": {"ca_file": "ca.pem"}}),
                "services[0].health.tls.ca_file: \"ca.pem\" is not an absolute path",
            ),
            (
                serde_json::json!({"tls": {"ca_file": "/ca.pem", "server_name": "a b"}}),
                "services[0].health.tls.server_name: \"a b\" is not a DNS name or IP address",
            ),
            (
                serde_json::json!({"http": {}, "script": {"command": ["/bin/true"]}}),
                "services[0].health.script: cannot be combined with http or tls",
            ),
            (
                serde_json::json!({"tls": true, "script": {"command": ["/bin/true"]}}),
                "services[0].health.script: cannot be combined with http or tls",
            ),
            (
                serde_json::json!({"script": {"command": ["true"]}}),
                "services[0].health.script.command: must start with the program's absolute path",
            ),
            (
                serde_json::json!({"script": {"command": []}}),
                "services[0].health.script.command: must start with the program's absolute path",
            ),
            (
                serde_json::json!({"script": {"command": ["/bin/true"], "timeout_ms": 500}}),
                "services[0].health.script.timeout_ms: 500 is out of range (10 to interval_ms)",
            ),
            (
                serde_json::json!({"passive": {"fall": 0}}),
                "services[0].health.passive.fall: 0 is out of range (1 to 100)",
            ),
            (
                serde_json::json!({"passive": {"syn_timeout_ms": 50}}),
                "services[0].health.passive.syn_timeout_ms: 50 is out of range (100 to 10000)",
            ),
        ];
        for (health, expected) in cases {
            let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
            v["services"][0]["health"] = health;
            assert_eq!(errors_of(&v.to_string()), vec![expected]);
        }
        // HTTP and TLS checks are for tcp services; services[1] is udp/53.
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"][1]["health"] = serde_json::json!({"http": {}, "tls": true});
        assert_eq!(
            errors_of(&v.to_string()),
            vec![
                "services[1].health.http: only tcp services have this check",
                "services[1].health.tls: only tcp services have this check",
            ]
        );
        for bad in [
            serde_json::json!({"http": {"paht": "/"}}),
            serde_json::json!({"tls": "yes"}),
            serde_json::json!({"script": {"command": ["/x"], "dynamic": true}}),
            serde_json::json!({"passive": {"enabled": true, "rise": 1}}),
        ] {
            let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
            v["services"][0]["health"] = bad.clone();
            assert!(
                matches!(
                    Config::from_json(&v.to_string()),
                    Err(ConfigError::Syntax(_))
                ),
                "{bad} is refused"
            );
        }
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"][0]["health"] =
            serde_json::json!({"interval_ms": 200, "rise": 1, "enabled": false});
        let c = Config::from_json(&v.to_string()).unwrap();
        let h = &c.services[0].health;
        assert_eq!(
            (h.enabled, h.interval, h.rise, h.fall),
            (false, Duration::from_millis(200), 1, 3)
        );
        assert_eq!(c.services[1].health, CheckConfig::default());
        assert_eq!(
            h.timeout,
            Duration::from_millis(200),
            "the timeout defaults to the shipped 300 ms, or the interval when shorter"
        );
    }

    #[test]
    fn parses_http_tls_script_and_passive_settings() {
        use crate::core::health::{ExpectStatus, PassiveConfig};
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        let health = serde_json::json!({
            "http": {"path": "/health", "host": "app.example", "expect_status": [200, 204],
                     "expect_body": "ok"},
            "tls": {"ca_file": "/etc/slb/ca.pem", "server_name": "app.example"},
            "passive": {"enabled": false, "fall": 5, "syn_timeout_ms": 900},
        });
        v["services"][0]["health"] = health.clone();
        v["services"][1]["health"] = serde_json::json!({
            "timeout_ms": 250,
            "script": {"command": ["/usr/local/bin/check", "-q"], "dynamic_weight": true},
        });
        let c = Config::from_json(&v.to_string()).unwrap();
        let h = &c.services[0].health;
        let http = h.http.as_ref().unwrap();
        assert_eq!(
            (
                http.path.as_str(),
                http.host.as_deref(),
                http.expect_body.as_deref()
            ),
            ("/health", Some("app.example"), Some("ok"))
        );
        assert_eq!(http.expect_status, ExpectStatus::Codes(vec![200, 204]));
        let tls = h.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/slb/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("app.example"));
        assert_eq!(
            h.passive,
            PassiveConfig {
                enabled: false,
                fall: 5,
                syn_timeout: Duration::from_millis(900)
            }
        );
        let script = c.services[1].health.script.as_ref().unwrap();
        assert_eq!(script.command, ["/usr/local/bin/check", "-q"]);
        assert_eq!(
            script.timeout,
            Duration::from_millis(250),
            "the health timeout"
        );
        assert!(script.dynamic_weight);

        let raw: RawConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&raw).unwrap()["services"][0]["health"]["http"],
            health["http"],
            "kept by --save-config"
        );
        let again: RawConfig = serde_json::from_value(serde_json::to_value(&raw).unwrap()).unwrap();
        assert_eq!(again, raw);

        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"][0]["health"] =
            serde_json::json!({"http": {"expect_status": "200-204"}, "tls": true});
        let c = Config::from_json(&v.to_string()).unwrap();
        let h = &c.services[0].health;
        let http = h.http.as_ref().unwrap();
        assert_eq!(
            (http.path.as_str(), &http.expect_status),
            ("/", &ExpectStatus::Range(200, 204))
        );
        assert_eq!(
            h.tls.as_ref().unwrap().ca_file,
            None,
            "tls: true does not verify"
        );
        assert_eq!(h.passive, PassiveConfig::default());
        v["services"][0]["health"] = serde_json::json!({"http": {}, "tls": false});
        let c = Config::from_json(&v.to_string()).unwrap();
        let http = c.services[0].health.http.clone().unwrap();
        assert_eq!(http.expect_status, ExpectStatus::Range(200, 399));
        assert_eq!(c.services[0].health.tls, None);
    }

    #[test]
    fn checks_the_metrics_listen_address() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        assert_eq!(Config::from_json(GOOD).unwrap().metrics_listen, None);
        v["metrics_listen"] = "0.0.0.0:9405".into();
        assert_eq!(
            Config::from_json(&v.to_string()).unwrap().metrics_listen,
            Some("0.0.0.0:9405".parse().unwrap())
        );
        let raw: RawConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&raw).unwrap()["metrics_listen"],
            "0.0.0.0:9405",
            "kept by --save-config"
        );
        for (bad, why) in [
            ("9405", "is not an address:port"),
            ("0.0.0.0:0", "must not be 0"),
            ("localhost:9405", "is not an address:port"),
        ] {
            v["metrics_listen"] = bad.into();
            let errors = errors_of(&v.to_string());
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("metrics_listen: ") && errors[0].contains(why),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn checks_redundancy_settings() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["ssh_port"] = 2222.into();
        v["with_redundancy"] = true.into();
        v["credentials"] = serde_json::json!({"user": "slb"});
        v["backup_slb"] = serde_json::json!({"address": "10.0.0.2", "user": "slb"});
        let r = Config::from_json(&v.to_string()).unwrap().redundancy;
        assert_eq!(
            (r.enabled, r.ssh_port, r.local_user.as_deref()),
            (true, 2222, Some("slb"))
        );
        assert_eq!(
            r.backup,
            Some(Backup {
                address: Ipv4Addr::new(10, 0, 0, 2),
                user: "slb".into(),
                port: 22
            })
        );
        assert_eq!(
            r.credentials_file,
            std::path::PathBuf::from(DEFAULT_CREDENTIALS_FILE)
        );
        v["ssh_port"] = 0.into();
        v["credentials"] = serde_json::json!({"user": "Root!"});
        v["backup_slb"] = serde_json::json!({"address": "10.0.0", "user": "slb", "port": 99999});
        v["credentials_file"] = "creds.json".into();
        assert_eq!(
            errors_of(&v.to_string()),
            vec![
                "ssh_port: 0 is not a port (1 to 65535)",
                "credentials.user: \"Root!\" is not a user name",
                "backup_slb.address: \"10.0.0\" is not an IPv4 address",
                "backup_slb.port: 99999 is not a port (1 to 65535)",
                "credentials_file: creds.json is not an absolute path",
            ]
        );
        // A password field in slb_conf.json is refused: passwords live in the credentials file.
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["credentials"] = serde_json::json!({"user": "slb", "password": "x"});
        assert!(Config::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
            .contains("unknown field `password`"));
    }

    #[test]
    fn refuses_duplicate_services() {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v["services"][1]["protocol"] = "TCP".into();
        v["services"][1]["port"] = 80.into();
        assert_eq!(
            errors_of(&v.to_string()),
            vec!["services[1]: tcp/80 is defined twice"]
        );
    }

    #[test]
    fn refuses_unknown_fields_and_bad_json() {
        let text = GOOD.replace("\"gateway_dev\"", "\"gateway_device\"");
        let err = Config::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `gateway_device`"), "{err}");
        let err = Config::from_json("{\"address\": ").unwrap_err().to_string();
        assert!(err.starts_with("not valid slb_conf.json"), "{err}");
    }

    #[test]
    fn parses_the_shipped_example() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/slb/slb_conf.json");
        let c = Config::load(Path::new(path)).unwrap();
        assert!(!c.services.is_empty());
    }

    #[test]
    fn raw_config_round_trips_through_json() {
        let raw: RawConfig = serde_json::from_str(GOOD).unwrap();
        let again: RawConfig = serde_json::from_str(&serde_json::to_string(&raw).unwrap()).unwrap();
        assert_eq!(raw, again);
    }
}
