//! The checks of `services[]`: each service's protocol, port, algorithm, persistence, mode and
//! health settings, each real server's address and weight, and the rules between services.
//! Part of the checker ([`super::check`]); pure.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::checker::{port, Checker};
use super::parse::parse_server_address;
use super::raw::{
    RawExpectStatus, RawHealth, RawHttpCheck, RawPassive, RawScript, RawServer, RawService, RawTls,
    RawWeightedServer,
};
use super::{AdminState, AgentCheck, Forwarding, Mode, RealServer, Service, MAX_WEIGHT};
use crate::core::health::{
    CheckConfig, ExpectStatus, HttpCheck, PassiveConfig, ScriptCheck, TlsCheck,
};
use crate::core::net::{Ipv4Net, Protocol};
use crate::core::sched::maglev::HashKey;
use crate::core::sched::Algorithm;

/// What a service takes from the top level of the file.
pub(super) struct Inherited {
    pub algorithm: Algorithm,
    pub persistence: Duration,
    pub net: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub hash_key: HashKey,
}

pub(super) fn service(
    c: &mut Checker,
    i: usize,
    raw: &RawService,
    top: &Inherited,
) -> Option<Service> {
    let Inherited {
        algorithm: default_algorithm,
        persistence: default_persistence,
        net,
        gateway,
        hash_key,
    } = *top;
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
    let mut health = health(c, &format!("{path}.health"), raw.health.as_ref(), protocol);
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
    let slow_start = match raw.slow_start_s {
        Some(s) => c.seconds(&format!("{path}.slow_start_s"), s, 0),
        None => Duration::ZERO,
    };
    let maglev = super::placement::maglev(c, &path, raw, algorithm, hash_key);
    let forwarding = super::placement::forwarding(c, &path, raw, port);
    if forwarding == Forwarding::Dr {
        // Passive detection reads the servers' answers, which DR never sees.
        if raw
            .health
            .as_ref()
            .and_then(|h| h.passive.as_ref())
            .is_some_and(|p| p.enabled)
        {
            c.fail(
                format!("{path}.health.passive.enabled"),
                "passive detection needs the servers' replies, which forwarding \"dr\" never sees",
            );
        }
        health.passive.enabled = false;
    }
    let mut servers = Vec::new();
    for (j, s) in raw.servers.iter().enumerate() {
        let spath = format!("{path}.servers[{j}]");
        if let Some(server) = real_server(c, &spath, s, net, gateway, slow_start) {
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
        forwarding,
        maglev,
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

fn health(
    c: &mut Checker,
    path: &str,
    raw: Option<&RawHealth>,
    protocol: Option<Protocol>,
) -> CheckConfig {
    let default = RawHealth::default();
    let raw = raw.unwrap_or(&default);
    if !(50..=3_600_000).contains(&raw.interval_ms) {
        c.fail(
            format!("{path}.interval_ms"),
            format!("{} is out of range (50 to 3600000)", raw.interval_ms),
        );
    }
    let shipped = CheckConfig::default().timeout.as_millis() as u64;
    let timeout_ms = raw.timeout_ms.unwrap_or(shipped.min(raw.interval_ms));
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
    let timeout = Duration::from_millis(timeout_ms);
    let (http, tls, script) = kinds(c, path, raw, protocol, timeout);
    CheckConfig {
        enabled: raw.enabled,
        interval: Duration::from_millis(raw.interval_ms),
        timeout,
        rise: raw.rise,
        fall: raw.fall,
        udp_payload: raw.udp_payload.as_bytes().to_vec(),
        passive: passive(c, &format!("{path}.passive"), raw.passive.as_ref()),
        http,
        tls,
        script,
    }
}

/// The checks beyond a connect: HTTP and TLS (tcp only), or a script instead of either.
fn kinds(
    c: &mut Checker,
    path: &str,
    raw: &RawHealth,
    protocol: Option<Protocol>,
    timeout: Duration,
) -> (Option<HttpCheck>, Option<TlsCheck>, Option<ScriptCheck>) {
    let tcp_only = |c: &mut Checker, field: &str| {
        if protocol == Some(Protocol::Udp) {
            c.fail(
                format!("{path}.{field}"),
                "only tcp services have this check",
            );
        }
    };
    let http = raw.http.as_ref().map(|h| {
        tcp_only(c, "http");
        http_check(c, &format!("{path}.http"), h)
    });
    let tls = match &raw.tls {
        None | Some(RawTls::On(false)) => None,
        Some(t) => {
            tcp_only(c, "tls");
            Some(tls_check(c, &format!("{path}.tls"), t))
        }
    };
    let script = raw.script.as_ref().map(|s| {
        if http.is_some() || tls.is_some() {
            c.fail(
                format!("{path}.script"),
                "cannot be combined with http or tls",
            );
        }
        script_check(c, &format!("{path}.script"), s, timeout, raw.interval_ms)
    });
    (http, tls, script)
}

/// Whether `text` can go into a request line or header as it is: no whitespace or control
/// bytes, which would end the line early or split it (request smuggling into the check).
fn header_safe(text: &str) -> bool {
    !text.is_empty() && text.len() <= 1024 && !text.bytes().any(|b| b <= b' ' || b == 0x7f)
}

fn http_check(c: &mut Checker, path: &str, raw: &RawHttpCheck) -> HttpCheck {
    if !raw.path.starts_with('/') || !header_safe(&raw.path) {
        c.fail(
            format!("{path}.path"),
            format!("{:?} is not an absolute path without spaces", raw.path),
        );
    }
    if let Some(host) = raw.host.as_deref().filter(|h| !header_safe(h)) {
        c.fail(
            format!("{path}.host"),
            format!("{host:?} is not a host name"),
        );
    }
    let expect_status = match &raw.expect_status {
        None => ExpectStatus::Range(200, 399),
        Some(e) => expect_status(c, &format!("{path}.expect_status"), e),
    };
    if let Some(body) = &raw.expect_body {
        if body.is_empty() || body.len() > 1024 {
            c.fail(format!("{path}.expect_body"), "must be 1 to 1024 bytes");
        }
    }
    HttpCheck {
        path: raw.path.clone(),
        host: raw.host.clone(),
        expect_status,
        expect_body: raw.expect_body.clone(),
    }
}

fn expect_status(c: &mut Checker, path: &str, raw: &RawExpectStatus) -> ExpectStatus {
    let code = |v: u32| u16::try_from(v).ok().filter(|v| (100..=599).contains(v));
    match raw {
        RawExpectStatus::Codes(codes) => {
            let valid: Vec<u16> = codes.iter().filter_map(|&v| code(v)).collect();
            if codes.is_empty() || valid.len() != codes.len() {
                c.fail(path, "must list HTTP statuses (100 to 599)");
            }
            ExpectStatus::Codes(valid)
        }
        RawExpectStatus::Range(text) => {
            let bounds = text.split_once('-').and_then(|(a, b)| {
                let (a, b) = (code(a.trim().parse().ok()?)?, code(b.trim().parse().ok()?)?);
                (a <= b).then_some((a, b))
            });
            match bounds {
                Some((low, high)) => ExpectStatus::Range(low, high),
                None => {
                    c.fail(
                        path,
                        format!("{text:?} is not a range of HTTP statuses like \"200-399\""),
                    );
                    ExpectStatus::Range(200, 399)
                }
            }
        }
    }
}

fn tls_check(c: &mut Checker, path: &str, raw: &RawTls) -> TlsCheck {
    let RawTls::Verify(v) = raw else {
        return TlsCheck {
            ca_file: None,
            server_name: None,
        };
    };
    if !v.ca_file.starts_with('/') {
        c.fail(
            format!("{path}.ca_file"),
            format!("{:?} is not an absolute path", v.ca_file),
        );
    }
    if let Some(name) = &v.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            c.fail(
                format!("{path}.server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
    }
    TlsCheck {
        ca_file: Some(v.ca_file.clone().into()),
        server_name: v.server_name.clone(),
    }
}

fn script_check(
    c: &mut Checker,
    path: &str,
    raw: &RawScript,
    default_timeout: Duration,
    interval_ms: u64,
) -> ScriptCheck {
    if !raw.command.first().is_some_and(|p| p.starts_with('/')) {
        c.fail(
            format!("{path}.command"),
            "must start with the program's absolute path",
        );
    }
    let timeout = match raw.timeout_ms {
        None => default_timeout,
        Some(t) => {
            if t < 10 || t > interval_ms.max(10) {
                c.fail(
                    format!("{path}.timeout_ms"),
                    format!("{t} is out of range (10 to interval_ms)"),
                );
            }
            Duration::from_millis(t)
        }
    };
    ScriptCheck {
        command: raw.command.clone(),
        timeout,
        dynamic_weight: raw.dynamic_weight,
    }
}

fn passive(c: &mut Checker, path: &str, raw: Option<&RawPassive>) -> PassiveConfig {
    let Some(raw) = raw else {
        return PassiveConfig::default();
    };
    if !(1..=100).contains(&raw.fall) {
        c.fail(
            format!("{path}.fall"),
            format!("{} is out of range (1 to 100)", raw.fall),
        );
    }
    if !(100..=10_000).contains(&raw.syn_timeout_ms) {
        c.fail(
            format!("{path}.syn_timeout_ms"),
            format!("{} is out of range (100 to 10000)", raw.syn_timeout_ms),
        );
    }
    PassiveConfig {
        enabled: raw.enabled,
        fall: raw.fall,
        syn_timeout: Duration::from_millis(raw.syn_timeout_ms),
    }
}

fn real_server(
    c: &mut Checker,
    path: &str,
    raw: &RawServer,
    net: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    slow_start: Duration,
) -> Option<RealServer> {
    let plain;
    let w = match raw {
        RawServer::Plain(a) => {
            plain = RawWeightedServer::new(a.clone(), 1);
            &plain
        }
        RawServer::Weighted(w) => w,
    };
    let (address, weight) = (w.address.as_str(), w.weight);
    let state = match w.state.as_deref().unwrap_or("ready") {
        "ready" => AdminState::Ready,
        "drain" => AdminState::Drain {
            until: w.drain_until,
        },
        "maint" => AdminState::Maint,
        other => {
            c.fail(
                format!("{path}.state"),
                format!("{other:?} is not \"ready\", \"drain\" or \"maint\""),
            );
            AdminState::Drain { until: None }
        }
    };
    if w.drain_until.is_some() && !matches!(state, AdminState::Drain { .. }) {
        c.fail(
            format!("{path}.drain_until"),
            format!(
                "only a draining server has a deadline (state is {:?})",
                state.name()
            ),
        );
    }
    let slow_start = match w.slow_start_s {
        Some(s) => c.seconds(&format!("{path}.slow_start_s"), s, 0),
        None => slow_start,
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
    let agent = w.agent.as_ref().and_then(|a| {
        let port = port(c, &format!("{path}.agent.port"), a.port);
        if !(100..=3_600_000).contains(&a.interval_ms) {
            c.fail(
                format!("{path}.agent.interval_ms"),
                format!("{} is out of range (100 to 3600000)", a.interval_ms),
            );
        }
        Some(AgentCheck {
            port: port?,
            interval: Duration::from_millis(a.interval_ms),
        })
    });
    Some(RealServer {
        addr,
        weight: weight.min(MAX_WEIGHT) as u32,
        state,
        backup: w.backup,
        slow_start,
        agent,
    })
}
