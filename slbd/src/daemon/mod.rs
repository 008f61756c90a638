//! SHELL: the slbd process. Brings balancing up in an order that never exposes the VIP
//! (queues bound, then rules, then addresses), runs the queue workers, the flow expiry loop,
//! the health checks and the control socket, applies configuration changes live, and on
//! SIGTERM/SIGINT takes it all down again (addresses, then rules). SIGHUP re-reads the file.
//! In a pair (`--pair-key`), loading first takes over the flows replication delivered and
//! unloading hands the last changes to the dual (`shell::replication`).
//! Offload services' flows are committed to conntrack between the rules and the addresses, and
//! deleted from it when balancing stops (`offload`).
//! In cluster mode (`announce`), the VIP's route for the BGP daemon follows whether this node
//! can serve (`announce`).
//! Side effects: NFQUEUE binds, the `ip slb` nftables table, the VIP and gateway addresses,
//! conntrack entries carrying slbd's offload mark, the announce device and its route,
//! slb_conf.json (on save), the replication connections, threads, signal mask.

mod announce;
mod control;
pub mod metrics;
mod reconfigure;
mod role;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;

use crate::config::edit::Secrets;
use crate::config::{Config, RawConfig};
use crate::core::balancer::{Dataplane, DropReason};
use crate::core::ruleset::{OffloadTarget, QueueRange};
use crate::ctl;
use crate::shell::nfqueue::{self as queue, QueueStats};
use crate::shell::nft::{self, QueueBackend};
use crate::shell::offload::Offload;
use crate::shell::prober::Prober;
use crate::shell::replication::{self as replication, Replication};
use role::Role;

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

/// What is in force, changed only under the daemon's lock.
struct State {
    raw: RawConfig,
    config: Config,
    secrets: Secrets,
    role: Role,
}

/// The slbd process's parts, wired together by [`run`].
struct Daemon {
    state: Mutex<State>,
    /// Set once slbd is shutting down: control requests are refused from then on, so none can
    /// bring the rules or the VIP back between the final unload and exit.
    stopping: std::sync::atomic::AtomicBool,
    dp: Arc<Dataplane>,
    stats: Arc<QueueStats>,
    backend: QueueBackend,
    /// Whether the kernel takes netdev egress chains (offload direct routing needs one).
    netdev_egress: bool,
    queues: QueueRange,
    prober: Prober,
    config_path: PathBuf,
    /// The data plane's clock origin.
    epoch: Instant,
    replication: Option<Arc<Replication>>,
    offload: Arc<Offload>,
    /// The offload targets the rules in force were planned with.
    installed_targets: Mutex<Vec<OffloadTarget>>,
    /// Which services served from their backups at the last look, for the switch's log line.
    serving_backups: Mutex<Vec<(String, bool)>>,
    /// When conntrack was last dumped for a draining offload server's closes (ms).
    drain_resync_ms: std::sync::atomic::AtomicU64,
    /// When the flow map was last read ([`Daemon::follow_dr_flows`]).
    dr_resync_ms: std::sync::atomic::AtomicU64,
    /// Cluster mode's route (taken after `state`).
    announcement: Mutex<announce::Announcement>,
}

impl Daemon {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Runs slbd with a validated config (read from `config_path`) until SIGTERM or SIGINT,
/// answering the control socket at `socket`.
pub fn run(
    raw: RawConfig,
    config: Config,
    config_path: &Path,
    socket: &Path,
    standby: bool,
    replication: Option<replication::Settings>,
) -> anyhow::Result<()> {
    check_forwarding()?;
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // only the main thread's sigwait sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;

    // One queue per core by default, at most 64, and never past queue number 65535.
    let room = 65536 - u32::from(config.queue.num);
    let wanted = match config.queue.count {
        0 => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(64) as u32,
        n => u32::from(n),
    };
    let count = wanted.min(room) as u16;
    let queues = QueueRange {
        first: config.queue.num,
        count,
    };
    let backend = nft::probe().context("probing the kernel's NFQUEUE support")?;
    tracing::info!(backend = backend.name(), "queue expression chosen");
    let netdev_egress = nft::probe_netdev_egress();
    if !netdev_egress {
        tracing::warn!(
            "this kernel has no netdev egress hook (Linux 5.16 and later): offload direct-routing services are refused"
        );
    }
    let mut bound = Vec::new();
    for num in (0..queues.count).map(|k| queues.first + k) {
        bound.push((num, queue::open(num, &config.queue)?));
    }

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let dp = Arc::new(Dataplane::new(&config, seed));
    let epoch = Instant::now();
    // Not balancing until loaded: a standby's flows are its dual's, kept, not expired.
    dp.set_balancing(false, false, 0);
    let replication = match replication {
        Some(settings) => Some(
            Replication::start(settings, dp.clone(), epoch).context("starting flow replication")?,
        ),
        None => None,
    };
    let stats = Arc::new(QueueStats::default());
    let offload = Offload::new(epoch);
    if let Err(e) = offload.start_events(dp.clone()) {
        tracing::error!(error = %e, "cannot follow conntrack events: offload services' live counts will drift");
    }
    let daemon = Arc::new(Daemon {
        stopping: std::sync::atomic::AtomicBool::new(false),
        state: Mutex::new(State {
            raw,
            secrets: reconfigure::load_secrets(&config.redundancy.credentials_file)?,
            config: config.clone(),
            role: Role::Unloaded,
        }),
        dp: dp.clone(),
        stats: stats.clone(),
        backend,
        netdev_egress,
        queues,
        prober: Prober::default(),
        config_path: config_path.to_path_buf(),
        epoch,
        replication,
        offload,
        installed_targets: Mutex::new(Vec::new()),
        serving_backups: Mutex::new(Vec::new()),
        drain_resync_ms: std::sync::atomic::AtomicU64::new(0),
        dr_resync_ms: std::sync::atomic::AtomicU64::new(0),
        announcement: Mutex::new(announce::Announcement::default()),
    });
    if let Some(r) = &daemon.replication {
        let d = Arc::downgrade(&daemon);
        r.on_merge(Box::new(move |ended| {
            if let Some(d) = d.upgrade() {
                d.merge_step(ended);
            }
        }));
    }
    if standby {
        daemon.stand_by();
    } else {
        daemon.load(false)?;
    }

    for (num, q) in bound {
        let (dp, stats) = (dp.clone(), stats.clone());
        std::thread::Builder::new()
            .name(format!("queue-{num}"))
            .spawn(move || queue::run(q, dp, stats, epoch))
            .context("cannot start a queue worker")?;
    }
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
    {
        let d = Arc::downgrade(&daemon);
        std::thread::Builder::new()
            .name("rotation".into())
            .spawn(move || {
                while let Some(d) = d.upgrade() {
                    d.follow_rotation();
                    d.follow_announcement();
                    drop(d);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .context("cannot start the rotation thread")?;
    }
    crate::shell::passive::start(dp.clone(), daemon.offload.clone())
        .context("cannot start the passive detection thread")?;
    let ctl = match ctl::server::start(socket, daemon.clone()) {
        Ok(c) => c,
        Err(e) => {
            daemon.unload();
            return Err(e).context("starting the control socket");
        }
    };
    tracing::info!(socket = %socket.display(), "control socket listening");
    if let Some(listen) = config.metrics_listen {
        // Metrics are for watching, not for balancing: a port that cannot be bound is logged
        // loudly but does not stop the balancer (or a failover onto this node).
        let d = daemon.clone();
        match slb_common::metrics::http::serve(listen, move || Ok(d.metrics())) {
            Ok(bound) => tracing::info!(listen = %bound, "metrics listening"),
            Err(e) => {
                tracing::error!(listen = %listen, error = %e, "cannot listen for metrics")
            }
        }
    }
    tracing::info!(
        vip = %config.vip,
        services = config.services.len(),
        queues = %format!("{}-{}", queues.first, queues.first + (queues.count - 1)),
        standby,
        "ready"
    );

    let signal = loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => match daemon.reload() {
                Ok(_) => tracing::info!("SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload refused"),
            },
            Ok(s) => break s,
            Err(e) => tracing::warn!(error = %e, "sigwait failed"),
        }
    };
    tracing::info!(signal = %signal, "stopping");
    daemon.stopping.store(true, Relaxed);
    drop(ctl);
    daemon.unload();
    final_counters(&dp, &stats);
    Ok(())
}

fn final_counters(dp: &Dataplane, stats: &QueueStats) {
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
