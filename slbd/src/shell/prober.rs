//! SHELL: the health checker, the one place that sleeps between checks. One thread runs a
//! current-thread tokio runtime with a task per (service, server): every `interval` it probes
//! the server ([`super::probe`]: TCP connect, UDP request, HTTP(S), TLS handshake or script),
//! feeds the result to the pure [`Health`] rule, hands the outcome (and any weight a script
//! set) to the data plane and logs each change.
//! Side effects: those of the probes (connections, datagrams, child processes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::probe::Probe;
use crate::config::Config;
use crate::core::balancer::{Dataplane, FlowCut};
use crate::core::health::{rise_needed, Change, CheckConfig, Health};
use crate::core::net::Protocol;

/// What the prober calls with what the kernel carries of a server's flows when they are cut.
pub type Cut = dyn Fn(FlowCut) + Send + Sync;

/// Runs the health checks; [`Prober::check`] replaces the set of servers checked.
#[derive(Default)]
pub struct Prober {
    generation: Arc<AtomicU64>,
}

impl Prober {
    /// Stops all checks (at their next tick).
    pub fn stop(&self) {
        self.generation.fetch_add(1, Relaxed);
    }

    /// Checks every server of every service of `config` whose checks are enabled, from now on,
    /// instead of what was checked before (those tasks end at their next tick).
    /// `cut` deletes the kernel's offload flows of a server that left rotation (by its mark).
    pub fn check(&self, config: &Config, dp: Arc<Dataplane>, cut: Arc<Cut>) -> std::io::Result<()> {
        let generation = self.generation.fetch_add(1, Relaxed) + 1;
        let mut jobs = Vec::new();
        let mut agents = Vec::new();
        for (si, s) in config.services.iter().enumerate() {
            for (i, r) in s.servers.iter().enumerate() {
                if let (Some(agent), Some(id)) = (r.agent, dp.server_id(si, i)) {
                    agents.push(AgentJob {
                        id,
                        service: s.name(),
                        server: r.addr,
                        agent: std::net::SocketAddrV4::new(*r.addr.ip(), agent.port),
                        interval: agent.interval,
                        weight: r.weight,
                    });
                }
            }
            if !s.health.enabled {
                continue;
            }
            for (i, r) in s.servers.iter().enumerate() {
                let Some(id) = dp.server_id(si, i) else {
                    continue;
                };
                jobs.push(Job {
                    id,
                    service: s.name(),
                    protocol: s.protocol,
                    addr: SocketAddr::V4(r.addr),
                    check: s.health.clone(),
                });
            }
        }
        if jobs.is_empty() && agents.is_empty() {
            return Ok(());
        }
        let current = self.generation.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds without I/O");
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for job in jobs {
                        let (dp, current, cut) = (dp.clone(), current.clone(), cut.clone());
                        tasks.push(tokio::spawn(async move {
                            watch(dp, job, cut, || current.load(Relaxed) == generation).await
                        }));
                    }
                    for job in agents {
                        let (dp, current, cut) = (dp.clone(), current.clone(), cut.clone());
                        tasks.push(tokio::spawn(async move {
                            super::agent::watch(dp, job, cut, || {
                                current.load(Relaxed) == generation
                            })
                            .await
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })?;
        Ok(())
    }
}

use super::agent::AgentJob;

struct Job {
    id: u32,
    service: String,
    protocol: Protocol,
    addr: SocketAddr,
    check: CheckConfig,
}

async fn watch(dp: Arc<Dataplane>, job: Job, cut: Arc<Cut>, still_current: impl Fn() -> bool) {
    let Job {
        id,
        service,
        protocol,
        addr,
        check,
    } = job;
    let probe = Probe::new(&check, protocol, &service, addr);
    // Carry on from the state the server is in (a reconfiguration restarts the checks).
    let mut health = Health::starting(dp.is_up(id));
    // What this task set last, so that the data plane is only told changes.
    let mut weight = None;
    if !check.script.as_ref().is_some_and(|s| s.dynamic_weight) {
        // A reconfiguration that dropped a dynamic-weight script leaves no weight behind.
        dp.set_weight(id, None);
    }
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !still_current() {
            return;
        }
        let outcome = probe.run().await;
        let result = outcome.result;
        if let Some(w) = outcome.weight.filter(|w| Some(*w) != weight) {
            dp.set_weight(id, w);
            weight = Some(w);
            let shown = w.map_or("configured".to_string(), |w| w.to_string());
            tracing::info!(
                service = %service, server = %addr, weight = shown,
                "script set the server's weight"
            );
        }
        // Passive detection may have taken the server out since the last check.
        health.sync(dp.is_up(id));
        let rise = rise_needed(check.rise, dp.another_up(id));
        let change = health.record(result, rise, check.fall);
        let outcome = dp.set_health(
            id,
            health.up,
            health.latency_us(),
            result.err(),
            change == Some(Change::CameUp),
        );
        if let Some(c) = outcome.cut {
            cut(c);
        }
        let ended = outcome.flows_ended;
        match (change, result) {
            (Some(Change::WentDown), Err(why)) => tracing::warn!(
                service = %service, server = %addr, state = "down", reason = %why,
                fall = check.fall, flows_ended = ended, "server left rotation"
            ),
            (Some(Change::CameUp), _) => tracing::info!(
                service = %service, server = %addr, state = "up",
                latency_us = health.latency_us().unwrap_or(0), rise, "server back in rotation"
            ),
            _ => {}
        }
    }
}
