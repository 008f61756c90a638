//! SHELL: the slbd process. Brings balancing up in an order that never exposes the VIP
//! (queues bound, then rules, then addresses), runs the queue workers and the flow expiry
//! loop, and on SIGTERM/SIGINT takes it all down again (addresses, then rules).
//! Side effects: NFQUEUE binds, the `ip slb` nftables table, the VIP and gateway addresses,
//! threads, signal mask.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};

use crate::addr::{self, ManagedAddr};
use std::path::Path;

use crate::config::{Config, RawConfig};
use crate::ctl::{self, proto::Command, server::Handler};
use crate::dataplane::{Dataplane, DropReason};
use crate::nft;
use crate::queue::{self, QueueStats};
use crate::ruleset::{self, QueueRange};

/// The addresses slbd owns for `config`: the VIP as a /32 and the gateway with the cluster
/// network's prefix.
pub fn managed_addrs(config: &Config) -> Vec<ManagedAddr> {
    vec![
        ManagedAddr {
            dev: config.vip_dev.clone(),
            ip: config.vip,
            prefix: 32,
        },
        ManagedAddr {
            dev: config.gateway_dev.clone(),
            ip: config.gateway,
            prefix: config.cluster_network.prefix(),
        },
    ]
}

fn check_forwarding() -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    let v = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    if v.trim() != "1" {
        bail!(
            "IPv4 forwarding is off in this network namespace ({path} is {}); slbd forwards \
             packets between clients and real servers: set net.ipv4.ip_forward=1",
            v.trim()
        );
    }
    Ok(())
}

/// Answers control-socket requests from the running data plane.
struct Control {
    dp: Arc<Dataplane>,
    stats: Arc<QueueStats>,
    raw: RawConfig,
    config: Config,
    backend: nft::QueueBackend,
}

impl Handler for Control {
    fn handle(&self, cmd: &Command) -> Result<serde_json::Value, String> {
        match cmd {
            Command::Status => {
                let mut v = crate::report::status(&self.dp);
                let c = &self.config;
                v["state"] = "balancing".into();
                v["algorithm"] = c.algorithm.name().into();
                v["address_dev"] = c.vip_dev.clone().into();
                v["gateway"] = c.gateway.to_string().into();
                v["gateway_dev"] = c.gateway_dev.clone().into();
                v["cluster_network"] = c.cluster_network.to_string().into();
                v["queue"] = serde_json::json!({
                    "backend": self.backend.name(),
                    "packets": self.stats.packets.load(Relaxed),
                    "overruns": self.stats.overruns.load(Relaxed),
                    "verdict_errors": self.stats.verdict_errors.load(Relaxed),
                });
                Ok(v)
            }
            // slb_conf.json holds no secrets yet; credentials arrive with --credentials and
            // will live in their own 0600 file, never in what this returns.
            Command::ShowConfig => serde_json::to_value(&self.raw).map_err(|e| e.to_string()),
        }
    }
}

/// Runs slbd with a validated config until SIGTERM or SIGINT, answering the control socket at
/// `socket`.
pub fn run(raw: RawConfig, config: Config, socket: &Path) -> anyhow::Result<()> {
    check_forwarding()?;
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // only the main thread's sigwait sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;

    let count = match config.queue.count {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()) as u16,
        n => n,
    };
    let queues = QueueRange {
        first: config.queue.num,
        count,
    };
    let backend = nft::probe().context("probing the kernel's NFQUEUE support")?;
    tracing::info!(backend = backend.name(), "queue expression chosen");

    let mut bound = Vec::new();
    for num in queues.first..queues.first + queues.count {
        bound.push((num, queue::open(num, &config.queue)?));
    }

    let rules = ruleset::plan(&config, queues);
    let addrs = managed_addrs(&config);
    nft::apply(&rules, backend).context("installing the nftables table")?;
    for r in &rules.rules {
        tracing::debug!(table = ruleset::TABLE, chain = r.chain.name, rule = %r, "rule installed");
    }
    if let Err(e) = addr::add(&addrs) {
        let _ = nft::remove();
        return Err(e).context("bringing up the VIP and gateway addresses");
    }
    for a in &addrs {
        tracing::info!(address = %a, "address up");
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let dp = Arc::new(Dataplane::new(&config, seed));
    let stats = Arc::new(QueueStats::default());
    let epoch = Instant::now();
    for (num, q) in bound {
        let (dp, stats) = (dp.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("queue-{num}"))
            .spawn(move || queue::run(q, dp, stats, epoch))
            .context("cannot start a queue worker")?;
    }
    let prober = crate::prober::Prober::default();
    prober
        .check(&config, dp.clone())
        .context("cannot start the health checker")?;
    {
        let dp = dp.clone();
        std::thread::Builder::new()
            .name("expiry".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                dp.expire(epoch.elapsed().as_millis() as u64);
            })
            .context("cannot start the expiry thread")?;
    }
    let control = Control {
        dp: dp.clone(),
        stats: stats.clone(),
        raw,
        config: config.clone(),
        backend,
    };
    let ctl = match ctl::server::start(socket, Arc::new(control)) {
        Ok(c) => c,
        Err(e) => {
            shut_down(&addrs, &dp, &stats);
            return Err(e).context("starting the control socket");
        }
    };
    tracing::info!(socket = %socket.display(), "control socket listening");
    tracing::info!(
        vip = %config.vip,
        services = config.services.len(),
        queues = %format!("{}-{}", queues.first, queues.first + queues.count - 1),
        "balancing"
    );

    let signal = loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                tracing::info!(
                    "SIGHUP: configuration reload arrives with the control socket; ignored"
                );
            }
            Ok(s) => break s,
            Err(e) => tracing::warn!(error = %e, "sigwait failed"),
        }
    };
    tracing::info!(signal = %signal, "stopping");
    drop(ctl);
    shut_down(&addrs, &dp, &stats);
    Ok(())
}

/// Removes what slbd put in place: addresses first so that the VIP is never local without
/// the rules that keep its traffic away from local sockets, then the table.
fn shut_down(addrs: &[ManagedAddr], dp: &Dataplane, stats: &QueueStats) {
    if let Err(e) = addr::remove(addrs) {
        tracing::error!(error = %format!("{e:#}"), "removing addresses failed");
    }
    for a in addrs {
        tracing::info!(address = %a, "address down");
    }
    match nft::remove() {
        Ok(()) => tracing::info!(table = ruleset::TABLE, "table removed"),
        Err(e) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "removing the table failed")
        }
    }
    let drops: Vec<String> = DropReason::all()
        .filter(|d| dp.counters.dropped(*d) > 0)
        .map(|d| format!("{}={}", d.name(), dp.counters.dropped(d)))
        .collect();
    tracing::info!(
        requests = dp.counters.requests.load(Relaxed),
        replies = dp.counters.replies.load(Relaxed),
        flows = dp.flow_count(),
        drops = %drops.join(","),
        foreign = stats.foreign.load(Relaxed),
        overruns = stats.overruns.load(Relaxed),
        verdict_errors = stats.verdict_errors.load(Relaxed),
        packets = stats.packets.load(Relaxed),
        batches = stats.batches.load(Relaxed),
        "final counters"
    );
}
