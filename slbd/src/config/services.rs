//! The checks of `services[]`: each service's protocol, port, algorithm, persistence, mode and
//! health settings, each real server's address and weight, and the rules between services.
//! Part of the checker ([`super::check`]); pure.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::checker::{port, Checker};
use super::parse::parse_server_address;
use super::raw::{RawHealth, RawServer, RawService};
use super::{Mode, RealServer, Service, MAX_WEIGHT};
use crate::core::health::CheckConfig;
use crate::core::net::{Ipv4Net, Protocol};
use crate::core::sched::Algorithm;

pub(super) fn service(
    c: &mut Checker,
    i: usize,
    raw: &RawService,
    default_algorithm: Algorithm,
    default_persistence: Duration,
    net: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
) -> Option<Service> {
    let path = format!("services[{i}]");
    let protocol = match raw.protocol.parse::<Protocol>() {
        Ok(p) => Some(p),
        Err(()) => {
            c.fail(
                format!("{path}.protocol"),
                format!("{:?} is not \"tcp\" or \"udp\"", raw.protocol),
            );
            None
        }
    };
    let port = port(c, &format!("{path}.port"), raw.port);
    let algorithm = match &raw.algorithm {
        Some(a) => c.algorithm(&format!("{path}.algorithm"), a),
        None => default_algorithm,
    };
    let persistence_timeout = match raw.persistence_timeout {
        Some(t) => c.seconds(&format!("{path}.persistence_timeout"), t, 0),
        None => default_persistence,
    };
    let health = health(c, &format!("{path}.health"), raw.health.as_ref());
    let mode = match raw.mode.as_deref().map(str::parse::<Mode>) {
        None => Mode::Packet,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            c.fail(format!("{path}.mode"), e);
            Mode::Packet
        }
    };
    if raw.servers.is_empty() {
        c.fail(
            format!("{path}.servers"),
            "at least one real server is needed",
        );
    }
    let mut servers = Vec::new();
    for (j, s) in raw.servers.iter().enumerate() {
        let spath = format!("{path}.servers[{j}]");
        if let Some(server) = real_server(c, &spath, s, net, gateway) {
            if servers.iter().any(|o: &RealServer| o.addr == server.addr) {
                c.fail(spath, format!("{} is listed twice", server.addr));
            } else {
                servers.push(server);
            }
        }
    }
    Some(Service {
        protocol: protocol?,
        port: port?,
        algorithm,
        persistence_timeout,
        health,
        mode,
        servers,
    })
}

/// The two modes treat replies differently (packet mode keeps them out of conntrack by
/// protocol and server port, for the whole cluster network; offload mode needs conntrack to
/// see them), so one server port cannot serve both.
pub(super) fn reply_ports_apart(c: &mut Checker, services: &[Service]) {
    for (i, s) in services.iter().enumerate() {
        if s.mode != Mode::Offload {
            continue;
        }
        for r in &s.servers {
            let clash = services.iter().find(|o| {
                o.mode == Mode::Packet
                    && o.protocol == s.protocol
                    && o.servers.iter().any(|x| x.addr.port() == r.addr.port())
            });
            if let Some(o) = clash {
                c.fail(
                    format!("services[{i}].mode"),
                    format!(
                        "offload service {} uses server port {}/{}, which packet-mode service {} \
                         uses too: the two modes' replies cannot be told apart",
                        s.name(),
                        s.protocol,
                        r.addr.port(),
                        o.name()
                    ),
                );
                return;
            }
        }
    }
}

fn health(c: &mut Checker, path: &str, raw: Option<&RawHealth>) -> CheckConfig {
    let default = RawHealth::default();
    let raw = raw.unwrap_or(&default);
    if !(50..=3_600_000).contains(&raw.interval_ms) {
        c.fail(
            format!("{path}.interval_ms"),
            format!("{} is out of range (50 to 3600000)", raw.interval_ms),
        );
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(1000.min(raw.interval_ms));
    if timeout_ms < 10 || timeout_ms > raw.interval_ms.max(10) {
        c.fail(
            format!("{path}.timeout_ms"),
            format!("{timeout_ms} is out of range (10 to interval_ms)"),
        );
    }
    for (name, v) in [("rise", raw.rise), ("fall", raw.fall)] {
        if !(1..=100).contains(&v) {
            c.fail(
                format!("{path}.{name}"),
                format!("{v} is out of range (1 to 100)"),
            );
        }
    }
    if raw.udp_payload.is_empty() || raw.udp_payload.len() > 1024 {
        c.fail(format!("{path}.udp_payload"), "must be 1 to 1024 bytes");
    }
    CheckConfig {
        enabled: raw.enabled,
        interval: Duration::from_millis(raw.interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise: raw.rise,
        fall: raw.fall,
        udp_payload: raw.udp_payload.as_bytes().to_vec(),
        passive: Default::default(),
    }
}

fn real_server(
    c: &mut Checker,
    path: &str,
    raw: &RawServer,
    net: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
) -> Option<RealServer> {
    let (address, weight) = match raw {
        RawServer::Plain(a) => (a.as_str(), 1),
        RawServer::Weighted(w) => (w.address.as_str(), w.weight),
    };
    let addr = match parse_server_address(address) {
        Ok(a) => a,
        Err(e) => {
            c.fail(path, e);
            return None;
        }
    };
    if !(1..=MAX_WEIGHT).contains(&weight) {
        c.fail(
            format!("{path}.weight"),
            format!("{weight} is out of range (1 to {MAX_WEIGHT})"),
        );
    }
    if let Some(net) = net {
        // NAT mode: replies only come back through slbd if the server routes via the gateway,
        // which it can only do from inside the cluster network.
        if !net.contains(*addr.ip()) {
            c.fail(
                path,
                format!("{} is not inside cluster_network {net}", addr.ip()),
            );
        } else if *addr.ip() == net.addr() || *addr.ip() == net.broadcast() {
            c.fail(
                path,
                format!("{} is the network or broadcast address of {net}", addr.ip()),
            );
        }
    }
    if Some(*addr.ip()) == gateway {
        c.fail(path, format!("{} is the gateway address", addr.ip()));
    }
    Some(RealServer {
        addr,
        weight: weight.min(MAX_WEIGHT) as u32,
    })
}
