//! Live reconfiguration: the services in force are a [`View`] swapped whole by
//! [`Dataplane::update`]; flows, persistence and the per-server counters outlive it. Each real
//! server (protocol, VIP port, address) keeps the stable id the registry gave it the first
//! time it was configured, so a flow keeps its server and its counters whatever the view looks
//! like now. Pure.

use std::net::Ipv4Addr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::stats::ServerStats;
use super::{timeouts, Dataplane};
use crate::core::health::PassiveConfig;
use crate::core::model::{AdminState, Config, Service};
use crate::core::sched::{Candidate, Scheduler};

/// A service's scheduler with the candidate list it is handed, refreshed at each pick (kept
/// here so that a pick allocates nothing).
pub(super) struct Picker {
    pub(super) scheduler: Box<dyn Scheduler>,
    pub(super) candidates: Vec<Candidate>,
}

pub(super) struct ServiceState {
    pub(super) service: Service,
    /// The registry id of each of `service.servers`.
    pub(super) ids: Vec<u32>,
    pub(super) picker: Mutex<Picker>,
}

/// The services in force.
pub(super) struct View {
    pub(super) vip: Ipv4Addr,
    pub(super) services: Vec<ServiceState>,
}

impl View {
    pub(super) fn empty(vip: Ipv4Addr) -> View {
        View {
            vip,
            services: Vec::new(),
        }
    }

    /// The services of `protocol` and `mode` that have `server`, each with its index there.
    pub(super) fn with_server(
        &self,
        protocol: crate::core::net::Protocol,
        mode: crate::core::model::Mode,
        server: std::net::SocketAddrV4,
    ) -> impl Iterator<Item = (&ServiceState, usize)> {
        self.services.iter().filter_map(move |s| {
            let i = s.service.servers.iter().position(|r| r.addr == server)?;
            (s.service.protocol == protocol && s.service.mode == mode).then_some((s, i))
        })
    }

    /// The service for (protocol, VIP port).
    pub(super) fn service(
        &self,
        protocol: crate::core::net::Protocol,
        port: u16,
    ) -> Option<&ServiceState> {
        self.services
            .iter()
            .find(|s| s.service.protocol == protocol && s.service.port == port)
    }
}

impl Dataplane {
    /// Puts `config`'s services in force for new flows. Established flows keep their server
    /// (a removed server's flows drain: they run until they end, as long as their service
    /// remains; a removed service's flows end with it); counters and health of servers that
    /// stay are kept. Flow limits other than the timeouts apply from a restart.
    pub fn update(&self, config: &Config) {
        let mut generation = self.updating.lock();
        *generation += 1;
        let mut registry = super::stats::Registry::clone(&self.registry.load());
        let old = self.view.load();
        // Servers coming into rotation by this change begin their slow start: newly added
        // ones (after the first configuration, where all start alike) and ones the operator
        // made ready again.
        let mut ramping = Vec::new();
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // Only active checks bring a server back: without them passive detection
                // still retries failed handshakes but never takes a server out.
                let passive = PassiveConfig {
                    fall: if s.health.enabled {
                        s.health.passive.fall
                    } else {
                        u32::MAX
                    },
                    ..s.health.passive
                };
                let ids = s
                    .servers
                    .iter()
                    .map(|r| {
                        let id =
                            registry.id(s.protocol, s.port, r.addr, s.mode, s.forwarding, passive);
                        let was = old
                            .service(s.protocol, s.port)
                            .and_then(|o| o.service.servers.iter().find(|x| x.addr == r.addr));
                        let comes_in = match was {
                            None => *generation > 1,
                            Some(was) => {
                                was.state != AdminState::Ready && r.state == AdminState::Ready
                            }
                        };
                        if comes_in {
                            ramping.push(id);
                        }
                        id
                    })
                    .collect();
                let seed = self
                    .seed
                    .wrapping_add(*generation << 16)
                    .wrapping_add(i as u64);
                let candidates = s
                    .servers
                    .iter()
                    .map(|r| Candidate {
                        weight: r.weight,
                        up: true,
                        live: 0,
                        latency_us: None,
                        key: crate::core::sched::maglev::server_id(r.addr),
                    })
                    .collect();
                ServiceState {
                    picker: Mutex::new(Picker {
                        scheduler: s.algorithm.scheduler(seed, s.maglev),
                        candidates,
                    }),
                    ids,
                    service: s.clone(),
                }
            })
            .collect();
        self.registry.store(Arc::new(registry));
        self.view.store(Arc::new(View {
            vip: config.vip,
            services,
        }));
        for id in ramping {
            self.start_ramp(id);
        }
        for shard in self.shards.iter() {
            shard.lock().set_timeouts(timeouts(config));
        }
    }

    /// The stable id of server `server` of service `service` in the view in force.
    pub fn server_id(&self, service: usize, server: usize) -> Option<u32> {
        self.view
            .load()
            .services
            .get(service)?
            .ids
            .get(server)
            .copied()
    }

    /// Each service in force with its servers' counters, for status and tests.
    pub fn services(&self) -> Vec<(Service, Vec<Arc<ServerStats>>)> {
        let view = self.view.load();
        let registry = self.registry.load();
        view.services
            .iter()
            .map(|s| {
                let stats = s
                    .ids
                    .iter()
                    .filter_map(|id| registry.stats.get(*id as usize).cloned())
                    .collect();
                (s.service.clone(), stats)
            })
            .collect()
    }

    /// The VIP in force.
    pub fn vip(&self) -> Ipv4Addr {
        self.view.load().vip
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::{ACK, SYN};

    fn config(servers: &[&str], algorithm: &str) -> Config {
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        Config::from_json(&format!(
            r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24", "algorithm": "{algorithm}",
                "services": [{{"protocol": "tcp", "port": 80, "servers": [{}]}}]}}"#,
            servers.join(",")
        ))
        .unwrap()
    }

    fn send(dp: &Dataplane, port: u16, flags: u8) -> (Verdict, SocketAddrV4) {
        let mut p = tcp(
            SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
            sa("10.0.0.100:80"),
            flags,
            b"",
            &[],
        );
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        (v, packet::parse(&p).unwrap().dst)
    }

    #[test]
    fn an_added_server_takes_new_flows_while_old_flows_stay_put() {
        let dp = Dataplane::new(&config(&["172.16.0.2:80"], "ROUND_ROBIN"), 1);
        assert_eq!(send(&dp, 1000, SYN).1, sa("172.16.0.2:80"));
        dp.update(&config(&["172.16.0.2:80", "172.16.0.3:80"], "ROUND_ROBIN"));
        let news: Vec<_> = (2000..2004).map(|p| send(&dp, p, SYN).1).collect();
        assert_eq!(
            news.iter().filter(|s| **s == sa("172.16.0.3:80")).count(),
            2,
            "{news:?}"
        );
        assert_eq!(
            send(&dp, 1000, ACK),
            (Verdict::Accept, sa("172.16.0.2:80")),
            "the old flow keeps its server"
        );
        // Counters of a server that stays survive the update.
        let (_, stats) = &dp.services()[0];
        assert_eq!(stats[0].new_flows.load(Relaxed), 3);
    }

    #[test]
    fn a_removed_server_drains() {
        let dp = Dataplane::new(
            &config(&["172.16.0.2:8080", "172.16.0.3:80"], "ROUND_ROBIN"),
            1,
        );
        assert_eq!(send(&dp, 1000, SYN).1, sa("172.16.0.2:8080"));
        dp.update(&config(&["172.16.0.3:80"], "ROUND_ROBIN"));
        assert_eq!(
            send(&dp, 1000, ACK),
            (Verdict::Accept, sa("172.16.0.2:8080")),
            "its flow continues"
        );
        assert!(
            (2000..2010).all(|p| send(&dp, p, SYN).1 == sa("172.16.0.3:80")),
            "no new flow goes to it"
        );
        assert_eq!(
            dp.draining_ports(),
            vec![(Protocol::Tcp, 8080)],
            "its replies must still be queued"
        );
        dp.expire(10_000_000);
        assert_eq!(dp.draining_ports(), vec![], "drained");
    }

    #[test]
    fn a_new_algorithm_applies_to_new_flows() {
        let dp = Dataplane::new(
            &config(&["172.16.0.2:80", "172.16.0.3:80"], "ROUND_ROBIN"),
            1,
        );
        // Two long flows on .2 and .3, then one more on .2.
        for p in 1000..1003 {
            send(&dp, p, SYN);
        }
        dp.update(&config(
            &["172.16.0.2:80", "172.16.0.3:80"],
            "LEAST_CONNECTIONS",
        ));
        assert_eq!(
            send(&dp, 2000, SYN).1,
            sa("172.16.0.3:80"),
            "the less loaded server"
        );
    }
}
