//! SHELL: the health checker, the one place that sleeps between checks. One thread runs a
//! current-thread tokio runtime with a task per (service, server): every `interval` it probes
//! the server (TCP connect, or a UDP request that wants any reply), feeds the result to the
//! pure [`Health`] rule, hands the outcome to the data plane and logs each change.
//! Side effects: TCP connections and UDP datagrams from the balancer to its real servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dataplane::Dataplane;
use crate::health::{Change, CheckConfig, Failure, Health};
use crate::net::Protocol;

/// Starts checking every server of every service whose checks are enabled.
pub fn start(config: &Config, dp: Arc<Dataplane>) -> std::io::Result<()> {
    let mut jobs = Vec::new();
    for (si, s) in config.services.iter().enumerate() {
        if !s.health.enabled {
            continue;
        }
        for (i, r) in s.servers.iter().enumerate() {
            jobs.push((
                si,
                i,
                s.name(),
                s.protocol,
                SocketAddr::V4(r.addr),
                s.health.clone(),
            ));
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds without I/O");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (si, i, service, protocol, addr, check) in jobs {
                    tasks.push(tokio::spawn(watch(
                        dp.clone(),
                        si,
                        i,
                        service,
                        protocol,
                        addr,
                        check,
                    )));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    Ok(())
}

async fn watch(
    dp: Arc<Dataplane>,
    si: usize,
    i: usize,
    service: String,
    protocol: Protocol,
    addr: SocketAddr,
    check: CheckConfig,
) {
    let mut health = Health::default();
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match protocol {
            Protocol::Tcp => probe_tcp(addr, check.timeout).await,
            Protocol::Udp => probe_udp(addr, &check.udp_payload, check.timeout).await,
        };
        let change = health.record(result, check.rise, check.fall);
        let ended = dp.set_health(si, i, health.up, health.latency_us());
        match (change, result) {
            (Some(Change::WentDown), Err(why)) => tracing::warn!(
                service = %service, server = %addr, state = "down", reason = why.name(),
                fall = check.fall, flows_ended = ended, "server left rotation"
            ),
            (Some(Change::CameUp), _) => tracing::info!(
                service = %service, server = %addr, state = "up",
                latency_us = health.latency_us().unwrap_or(0), rise = check.rise, "server back in rotation"
            ),
            _ => {}
        }
    }
}

fn failure(e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::Refused,
        std::io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Error,
    }
}

async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<Duration, Failure> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(failure(&e)),
        Err(_) => Err(Failure::Timeout),
    }
}

async fn probe_udp(
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Duration, Failure> {
    let started = Instant::now();
    let attempt = async {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        // Connected, so an ICMP port unreachable comes back as ECONNREFUSED on recv.
        sock.connect(addr).await?;
        sock.send(payload).await?;
        let mut buf = [0u8; 2048];
        sock.recv(&mut buf).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(failure(&e)),
        Err(_) => Err(Failure::Timeout),
    }
}
