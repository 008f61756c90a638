//! `explain`: what the data plane would do with a new flow from a client right now, and why.
//! It runs the real decision ([`Dataplane::decide`], and the scheduler through
//! [`Dataplane::fill_candidates`]) on a fork of the service's scheduler, so it names the
//! server the next flow gets without moving anything on. Pure.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::rotation::WEIGHT_SCALE;
use super::{Dataplane, Decided, DropReason};
use crate::core::flow::FlowKey;
use crate::core::net::Protocol;

/// The answer, as `slbctl explain` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `tcp/80`.
    pub service: String,
    pub algorithm: String,
    pub client: String,
    /// The server a new flow from the client goes to now, if any.
    pub server: Option<String>,
    /// `existing_flow` (the client's port has a flow already), `persistence`, `scheduler`, or
    /// `no_server` (none is in rotation).
    pub decided_by: String,
    /// The flow from this client address and port, when one exists.
    pub flow: Option<FlowSeen>,
    /// The client's persistence entry, when it has one.
    pub persistence: Option<PersistSeen>,
    /// Every server of the service, with what the decision saw of it.
    pub servers: Vec<ServerSeen>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSeen {
    pub server: String,
    /// `open` or `closing`.
    pub state: String,
    /// Carried by conntrack (an offload flow).
    pub kernel: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistSeen {
    pub server: String,
    pub expires_in_ms: u64,
    /// Whether it decides: its server is in rotation.
    pub used: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerSeen {
    pub address: String,
    /// `in_rotation`, or why not: `down`, `draining`, `maint`, `weight_0`, `backup_idle`.
    pub standing: String,
    /// The operator's state: `ready`, `drain`, `maint`.
    pub admin_state: String,
    pub backup: bool,
    pub weight: u32,
    /// The weight the scheduler sees now (slow start applied), in configured units.
    pub effective_weight: f64,
    /// The slow-start share of its weight, 0-1 (1: not ramping).
    pub slow_start_factor: f64,
    pub live_flows: u64,
    pub latency_us: Option<u32>,
}

impl Dataplane {
    /// What a new flow from `client` (port 0: any port) to the service on `protocol`/`port`
    /// would get now; `None` when there is no such service.
    pub fn explain(
        &self,
        protocol: Protocol,
        port: u16,
        client: SocketAddrV4,
        now_ms: u64,
    ) -> Option<Explanation> {
        let view = self.view.load();
        let svc = view.service(protocol, port)?;
        let registry = self.registry.load();
        let vip = SocketAddrV4::new(view.vip, port);
        let flow = (client.port() != 0)
            .then(|| {
                let key = FlowKey {
                    protocol,
                    src: client,
                    dst: vip,
                };
                self.shards[super::shard_of(client)]
                    .lock()
                    .find_request_flow(&key)
            })
            .flatten();
        let mut candidates = {
            let p = svc.picker.lock();
            (p.scheduler.fork(), p.candidates.clone())
        };
        let decided = self.decide(svc, &registry, client, now_ms, None, || {
            let (scheduler, candidates) = &mut candidates;
            Self::fill_candidates(svc, &registry, None, now_ms, candidates);
            scheduler
                .pick_flow(candidates, &Self::flow(svc, client, None, now_ms))
                .filter(|&i| candidates.get(i).is_some_and(|c| c.up))
                .ok_or(DropReason::NoServer)
        });
        // The weights the decision saw, also when persistence decided without the scheduler.
        let mut seen = candidates.1;
        Self::fill_candidates(svc, &registry, None, now_ms, &mut seen);
        let pkey = super::persist_key(svc, client);
        let persistence = self
            .persistence
            .lock()
            .entry(&pkey, now_ms)
            .map(|(server, until)| PersistSeen {
                server: server.to_string(),
                expires_in_ms: until.saturating_sub(now_ms),
                used: matches!(decided, Ok(Decided::Persisted(_))),
            });
        let primaries_up = Self::primaries_up(svc, &registry);
        let servers = svc
            .service
            .servers
            .iter()
            .zip(&svc.ids)
            .zip(&seen)
            .filter_map(|((r, id), c)| {
                let st = registry.stats.get(*id as usize)?;
                let full = st.weight(r.weight).max(1) * WEIGHT_SCALE;
                Some(ServerSeen {
                    address: r.addr.to_string(),
                    standing: Self::standing(st, r, primaries_up).name().into(),
                    admin_state: Self::admin_state(st, r).name().into(),
                    backup: r.backup,
                    weight: r.weight,
                    effective_weight: f64::from(c.weight) / f64::from(WEIGHT_SCALE),
                    slow_start_factor: f64::from(c.weight) / f64::from(full),
                    live_flows: st.live_flows.load(Relaxed),
                    latency_us: c.latency_us,
                })
            })
            .collect();
        let name = |i: usize| svc.service.servers[i].addr.to_string();
        let (server, decided_by) = match (&flow, decided) {
            (Some(f), _) => (Some(f.server.to_string()), "existing_flow"),
            (None, Ok(Decided::Persisted(i))) => (Some(name(i)), "persistence"),
            (None, Ok(Decided::Scheduled(i))) => (Some(name(i)), "scheduler"),
            (None, Err(_)) => (None, "no_server"),
        };
        Some(Explanation {
            service: svc.service.name(),
            algorithm: svc.service.algorithm.name().into(),
            client: client.to_string(),
            server,
            decided_by: decided_by.into(),
            flow: flow.map(|f| FlowSeen {
                server: f.server.to_string(),
                state: if f.was_closing { "closing" } else { "open" }.into(),
                kernel: f.kernel,
            }),
            persistence,
            servers,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::SYN;

    fn dp(servers: &str, extra: &str) -> Dataplane {
        Dataplane::for_test(
            &Config::from_json(&format!(
                r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24", {extra}
                "services": [{{"protocol": "tcp", "port": 80, "servers": [{servers}]}}]}}"#
            ))
            .unwrap(),
        )
    }

    fn connect(dp: &Dataplane, client: &str, now_ms: u64) -> SocketAddrV4 {
        let mut p = tcp(sa(client), sa("10.0.0.100:80"), SYN, b"", &[]);
        let v = dp.handle(
            Direction::Request,
            &mut p,
            true,
            ChecksumState::Complete,
            now_ms,
        );
        assert_eq!(v, Verdict::Accept);
        dst_of(&p)
    }

    fn explained(dp: &Dataplane, client: &str, now_ms: u64) -> super::Explanation {
        dp.explain(Protocol::Tcp, 80, sa(client), now_ms).unwrap()
    }

    #[test]
    fn a_fresh_client_is_told_the_server_the_scheduler_gives_its_next_flow() {
        let dp = dp(r#""172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:80""#, "");
        for k in 0..6 {
            let e = explained(&dp, "10.0.0.5:0", k);
            assert_eq!(e.decided_by, "scheduler");
            let told = e.server.unwrap();
            // Asking again changes nothing.
            assert_eq!(explained(&dp, "10.0.0.5:0", k).server.unwrap(), told);
            let got = connect(&dp, &format!("10.0.0.5:{}", 1000 + k), k);
            assert_eq!(got.to_string(), told, "pick {k}");
        }
    }

    #[test]
    fn a_persisted_client_is_told_its_remembered_server_and_when_it_expires() {
        let dp = dp(
            r#""172.16.0.2:80", "172.16.0.3:80""#,
            r#""persistence_timeout": 30,"#,
        );
        let first = connect(&dp, "10.0.0.5:1000", 0);
        let e = explained(&dp, "10.0.0.5:0", 1_000);
        assert_eq!(e.decided_by, "persistence");
        assert_eq!(e.server.as_deref(), Some(first.to_string().as_str()));
        let p = e.persistence.unwrap();
        assert!(p.used);
        assert_eq!(p.expires_in_ms, 29_000);
        assert_eq!(connect(&dp, "10.0.0.5:1001", 1_000), first);
    }

    #[test]
    fn an_existing_flow_is_named_with_its_server_and_state() {
        let dp = dp(r#""172.16.0.2:80", "172.16.0.3:80""#, "");
        let got = connect(&dp, "10.0.0.5:1000", 0);
        let e = explained(&dp, "10.0.0.5:1000", 1);
        assert_eq!(e.decided_by, "existing_flow");
        assert_eq!(e.server, Some(got.to_string()));
        assert_eq!(e.flow.unwrap().state, "open");
    }

    #[test]
    fn a_draining_server_is_skipped_and_says_why() {
        let dp = dp(
            r#"{"address": "172.16.0.2:80", "state": "drain"}, "172.16.0.3:80""#,
            r#""persistence_timeout": 30,"#,
        );
        for k in 0..4 {
            let e = explained(&dp, &format!("10.0.0.{}:0", 5 + k), 0);
            assert_eq!(e.server.as_deref(), Some("172.16.0.3:80"));
            assert_eq!(e.servers[0].standing, "draining");
            assert_eq!(e.servers[0].admin_state, "drain");
            assert_eq!(e.servers[1].standing, "in_rotation");
            assert_eq!(
                connect(&dp, &format!("10.0.0.{}:1000", 5 + k), 0),
                sa("172.16.0.3:80")
            );
        }
    }

    #[test]
    fn with_every_server_out_there_is_no_server() {
        let dp = dp(r#"{"address": "172.16.0.2:80", "state": "maint"}"#, "");
        let e = explained(&dp, "10.0.0.5:0", 0);
        assert_eq!((e.server, e.decided_by.as_str()), (None, "no_server"));
        assert_eq!(e.servers[0].standing, "maint");
    }

    #[test]
    fn every_reason_a_server_is_skipped_is_named() {
        let dp = dp(
            r#""172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:80",
               {"address": "172.16.0.5:80", "backup": true}"#,
            "",
        );
        let (down, quiet) = (dp.server_id(0, 0).unwrap(), dp.server_id(0, 1).unwrap());
        dp.set_health(
            down,
            false,
            None,
            Some(crate::core::health::Failure::Refused),
            false,
        );
        dp.set_weight(quiet, Some(0));
        let e = explained(&dp, "10.0.0.5:0", 0);
        let standing: Vec<&str> = e.servers.iter().map(|s| s.standing.as_str()).collect();
        assert_eq!(standing, ["down", "weight_0", "in_rotation", "backup_idle"]);
        assert_eq!(e.server.as_deref(), Some("172.16.0.4:80"));
        assert!(e.servers[3].backup);
    }

    #[test]
    fn a_server_in_slow_start_shows_its_share_of_weight() {
        let cfg = |state: &str| {
            Config::from_json(&format!(
                r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{{"protocol": "tcp", "port": 80, "slow_start_s": 10,
                  "servers": [{{"address": "172.16.0.2:80", "state": "{state}"}}, "172.16.0.3:80"]}}]}}"#
            ))
            .unwrap()
        };
        let dp = Dataplane::for_test(&cfg("maint"));
        let cfg = cfg("ready");
        dp.update(&cfg);
        explained(&dp, "10.0.0.5:0", 1_000);
        let e = explained(&dp, "10.0.0.5:0", 3_500);
        assert_eq!(e.servers[0].slow_start_factor, 0.25);
        assert_eq!(e.servers[0].effective_weight, 0.25);
        assert_eq!(e.servers[1].slow_start_factor, 1.0);
    }

    #[test]
    fn no_such_service_explains_nothing() {
        let dp = dp(r#""172.16.0.2:80""#, "");
        assert!(dp.explain(Protocol::Udp, 80, sa("10.0.0.5:0"), 0).is_none());
    }
}
