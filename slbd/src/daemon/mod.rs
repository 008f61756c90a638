//! SHELL: the slbd process. Brings balancing up in an order that never exposes the VIP
//! (queues bound, then rules, then addresses), runs the queue workers, the flow expiry loop,
//! the health checks and the control socket, applies configuration changes live, and on
//! SIGTERM/SIGINT takes it all down again (addresses, then rules). SIGHUP re-reads the file.
//! In a pair (`--pair-key`), loading first takes over the flows replication delivered and
//! unloading hands the last changes to the dual (`replication::session`).
//! Offload services' flows are committed to conntrack between the rules and the addresses, and
//! deleted from it when balancing stops (`offload`).
//! Side effects: NFQUEUE binds, the `ip slb` nftables table, the VIP and gateway addresses,
//! conntrack entries carrying slbd's offload mark, slb_conf.json (on save), the replication
//! connections, threads, signal mask.

pub mod metrics;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;

use crate::addr::{self, ManagedAddr};
use crate::config::edit::{self, Secrets};
use crate::config::{Config, RawConfig};
use crate::core::balancer::{Dataplane, DropReason};
use crate::core::ruleset::{self, QueueRange};
use crate::ctl::{self, proto::Command, server::Handler};
use crate::queue::{self, QueueStats};
use crate::shell::nft::{self, QueueBackend};
use crate::shell::offload::Offload;
use crate::shell::prober::Prober;
use crate::shell::replication::{self as replication, Replication};

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
    loaded: bool,
    /// After `clear_config`: no services until some are added (`raw` then has none, `config`
    /// is the last valid one and is not in force).
    cleared: bool,
}

struct Daemon {
    state: Mutex<State>,
    /// Set once slbd is shutting down: control requests are refused from then on, so none can
    /// bring the rules or the VIP back between the final unload and exit.
    stopping: std::sync::atomic::AtomicBool,
    dp: Arc<Dataplane>,
    stats: Arc<QueueStats>,
    backend: QueueBackend,
    queues: QueueRange,
    prober: Prober,
    config_path: PathBuf,
    /// The data plane's clock origin.
    epoch: Instant,
    replication: Option<Arc<Replication>>,
    offload: Arc<Offload>,
}

impl Daemon {
    /// Installs the rules for `config` (plus the reply rules that removed servers still
    /// draining need).
    fn install_rules(&self, config: &Config) -> anyhow::Result<()> {
        let rules = ruleset::plan(
            config,
            self.queues,
            &self.dp.draining_ports(),
            &self.dp.offload_targets(),
        );
        nft::apply(&rules, self.backend).context("installing the nftables table")?;
        for r in &rules.rules {
            tracing::debug!(table = ruleset::TABLE, chain = r.chain.name, rule = %r, "rule installed");
        }
        Ok(())
    }

    /// Rules first, then addresses, so the VIP is never local without its rules. Between the
    /// two, offload flows go into conntrack: the replicated ones (a takeover), then the table
    /// is put in line with what conntrack holds (entries a crashed predecessor left are
    /// adopted). Only then, because the rules' NAT chain is what turns on conntrack and NAT in
    /// this network namespace: without it the kernel refuses NAT'd entries.
    fn bring_up(&self, config: &Config) -> anyhow::Result<()> {
        if let Err(e) = self.install_rules(config) {
            // A table that failed verification must not stay behind without slbd.
            let _ = nft::remove();
            return Err(e);
        }
        self.offload.commit(&self.dp);
        self.offload.resync(&self.dp);
        let addrs = config.managed_addrs();
        if let Err(e) = addr::add(&addrs) {
            // Some may have come up before the failure: none may stay without the rules.
            let _ = addr::remove(&addrs);
            let _ = nft::remove();
            return Err(e).context("bringing up the VIP and gateway addresses");
        }
        for a in &addrs {
            tracing::info!(address = %a, "address up");
        }
        self.start_checks(config);
        Ok(())
    }

    /// Health checks are best effort: failing to start them is logged, not fatal (servers then
    /// simply stay in rotation).
    fn start_checks(&self, config: &Config) {
        let offload = self.offload.clone();
        let cut = Arc::new(move |mark: u32| offload.cut(Some(mark)));
        if let Err(e) = self.prober.check(config, self.dp.clone(), cut) {
            tracing::error!(error = %e, "cannot start the health checks; servers stay in rotation");
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// After the addresses and rules are gone: this node's flows are now its dual's to carry;
    /// the last changes go to it before this returns.
    fn stop_balancing(&self) {
        self.dp.set_balancing(false, false, self.now_ms());
        if let Some(r) = &self.replication {
            r.deactivate();
        }
        // Offload flows would go on being translated by conntrack without the rules (even
        // without the VIP, prerouting NAT comes before routing): end them with the rest.
        self.offload.cut(None);
    }

    /// Addresses first, then the rules.
    fn take_down(&self, config: &Config) {
        self.prober.stop();
        let addrs = config.managed_addrs();
        if let Err(e) = addr::remove(&addrs) {
            tracing::error!(error = %format!("{e:#}"), "removing addresses failed");
        }
        for a in &addrs {
            tracing::info!(address = %a, "address down");
        }
        match nft::remove() {
            Ok(()) => tracing::info!(table = ruleset::TABLE, "table removed"),
            Err(e) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "removing the table failed")
            }
        }
    }

    /// Puts a validated configuration in force without dropping established flows.
    fn switch(&self, st: &mut State, raw: RawConfig, config: Config) -> anyhow::Result<()> {
        if st.loaded {
            self.dp.update(&config);
            if let Err(e) = self.install_rules(&config) {
                self.dp.update(&st.config);
                return Err(e);
            }
            let (old, new) = (st.config.managed_addrs(), config.managed_addrs());
            if old != new {
                // New addresses first, so a failure can be rolled back with the old ones and
                // their rules still in place; the VIP is never up without its rules.
                let added: Vec<ManagedAddr> =
                    new.iter().filter(|a| !old.contains(a)).cloned().collect();
                if let Err(e) = addr::add(&added) {
                    let _ = addr::remove(&added);
                    self.dp.update(&st.config);
                    if let Err(back) = self.install_rules(&st.config) {
                        tracing::error!(error = %format!("{back:#}"), "restoring the previous rules failed");
                    }
                    return Err(e).context(
                        "bringing up the new addresses; the previous configuration stays",
                    );
                }
                let gone: Vec<ManagedAddr> = old.into_iter().filter(|a| !new.contains(a)).collect();
                if let Err(e) = addr::remove(&gone) {
                    tracing::error!(error = %format!("{e:#}"), "removing the previous addresses failed");
                }
                for a in &added {
                    tracing::info!(address = %a, "address up");
                }
            }
            self.start_checks(&config);
        } else {
            self.dp.update(&config);
        }
        st.cleared = false;
        if config.metrics_listen != st.config.metrics_listen {
            tracing::warn!(
                metrics_listen = ?config.metrics_listen,
                "metrics_listen changed: it takes effect when slbd restarts"
            );
        }
        tracing::info!(
            services = config.services.len(),
            servers = config
                .services
                .iter()
                .map(|s| s.servers.len())
                .sum::<usize>(),
            algorithm = config.algorithm.name(),
            "configuration in force"
        );
        st.raw = raw;
        st.config = config;
        Ok(())
    }

    fn load(&self) -> anyhow::Result<&'static str> {
        let mut st = self.state.lock();
        if st.loaded {
            return Ok("already loaded");
        }
        if st.cleared {
            bail!("nothing to balance: the configuration was cleared; add servers first");
        }
        // State first, then the VIP: what replication delivered is in the flow table before
        // the rules and addresses make this node the one clients reach.
        if let Some(r) = &self.replication {
            r.activate();
        }
        self.dp
            .set_balancing(true, self.replication.is_some(), self.now_ms());
        if let Err(e) = self.bring_up(&st.config) {
            self.stop_balancing();
            return Err(e);
        }
        st.loaded = true;
        tracing::info!(vip = %st.config.vip, "balancing");
        Ok("loaded")
    }

    fn unload(&self) -> &'static str {
        let mut st = self.state.lock();
        if !st.loaded {
            return "already unloaded";
        }
        self.take_down(&st.config);
        self.stop_balancing();
        st.loaded = false;
        tracing::info!("unloaded: not balancing");
        "unloaded"
    }

    /// Writes slb_conf.json, and the passwords (if any) to the credentials file, both 0600.
    fn save(&self) -> anyhow::Result<String> {
        let st = self.state.lock();
        let text = serde_json::to_string_pretty(&st.raw)? + "\n";
        write_private(&self.config_path, text.as_bytes())?;
        let creds = &st.config.redundancy.credentials_file;
        if !st.secrets.is_empty() {
            write_private(
                creds,
                (serde_json::to_string_pretty(&st.secrets)? + "\n").as_bytes(),
            )?;
        } else if creds.exists() {
            std::fs::remove_file(creds)
                .with_context(|| format!("cannot remove {}", creds.display()))?;
        }
        tracing::info!(path = %self.config_path.display(), "configuration saved");
        Ok(format!("saved to {}", self.config_path.display()))
    }

    fn clear(&self) -> &'static str {
        let mut st = self.state.lock();
        if st.loaded {
            self.take_down(&st.config);
            self.stop_balancing();
            st.loaded = false;
        }
        st.raw.services.clear();
        st.cleared = true;
        let mut empty = st.config.clone();
        empty.services.clear();
        self.dp.update(&empty);
        tracing::info!("configuration cleared: no services, not balancing");
        "cleared"
    }

    fn status(&self) -> serde_json::Value {
        let st = self.state.lock();
        let c = &st.config;
        let mut v = crate::daemon::status::status(&self.dp);
        v["state"] = match (st.loaded, st.cleared) {
            (true, _) => "balancing",
            (false, true) => "cleared",
            (false, false) => "unloaded",
        }
        .into();
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
        let o = &self.offload.stats;
        v["conntrack"] = serde_json::json!({
            "events": o.events.load(Relaxed),
            "overruns": o.overruns.load(Relaxed),
            "resyncs": o.resyncs.load(Relaxed),
            "committed": o.committed.load(Relaxed),
            "commit_failed": o.commit_failed.load(Relaxed),
            "cuts": o.cuts.load(Relaxed),
        });
        v["replication"] = self
            .replication
            .as_ref()
            .map_or(serde_json::Value::Null, |r| r.status.to_json(r.is_active()));
        v
    }

    /// The metrics exposition: read at scrape time from the same counters as `status`.
    fn metrics(&self) -> String {
        use crate::daemon::metrics::{families, parse_kernel_queues, Inputs};
        let balancing = self.state.lock().loaded;
        let range = u32::from(self.queues.first)
            ..u32::from(self.queues.first) + u32::from(self.queues.count);
        let kernel_queues = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
            .map_or_else(
                |_| Vec::new(),
                |t| {
                    parse_kernel_queues(&t)
                        .into_iter()
                        .filter(|k| range.contains(&u32::from(k.queue)))
                        .collect()
                },
            );
        slb_common::metrics::encode(families(&Inputs {
            dp: &self.dp,
            queue: &self.stats,
            balancing,
            backend: self.backend.name(),
            kernel_queues,
            replication: self.replication.as_ref().map(|r| &r.status),
            offload: Some(&self.offload.stats),
        }))
    }

    fn announce(&self) -> anyhow::Result<&'static str> {
        let st = self.state.lock();
        if !st.loaded {
            bail!("not balancing: no addresses to announce");
        }
        addr::reannounce(&st.config.managed_addrs()).context("announcing the addresses")?;
        tracing::info!(vip = %st.config.vip, "addresses announced again");
        Ok("announced")
    }

    fn reload(&self) -> anyhow::Result<&'static str> {
        let (raw, config) = Config::load_raw(&self.config_path).with_context(|| {
            format!(
                "keeping the running configuration: {} is refused",
                self.config_path.display()
            )
        })?;
        let mut st = self.state.lock();
        self.switch(&mut st, raw, config)?;
        Ok("reloaded")
    }
}

/// Reads the passwords file if there is one; refuses one that others can read.
fn load_secrets(path: &Path) -> anyhow::Result<Secrets> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} holds passwords and must be mode 0600 (chmod 600 it)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The parse error is not shown: it could quote a password.
    serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("{} is not a valid credentials file", path.display()))
}

/// Writes `bytes` to `path` whole and 0600 (slb_conf.json and the credentials file).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    slb_common::fs::write_private(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

impl Handler for Daemon {
    fn handle(&self, cmd: &Command) -> Result<serde_json::Value, String> {
        let err = |e: anyhow::Error| format!("{e:#}");
        if self.stopping.load(Relaxed) {
            return Err("slbd is stopping".into());
        }
        match cmd {
            Command::Status => Ok(self.status()),
            // slb_conf.json holds no secrets yet; credentials arrive with the failover work and
            // will live in their own 0600 file, never in what this returns.
            Command::ShowConfig => {
                serde_json::to_value(&self.state.lock().raw).map_err(|e| e.to_string())
            }
            Command::Apply(edits) => {
                let mut st = self.state.lock();
                let (raw, secrets, config) = edit::apply_with_secrets(&st.raw, &st.secrets, edits)
                    .map_err(|e| e.to_string())?;
                self.switch(&mut st, raw, config).map_err(err)?;
                st.secrets = secrets;
                Ok("applied".into())
            }
            Command::ClearConfig => Ok(self.clear().into()),
            Command::Load => self.load().map(Into::into).map_err(err),
            Command::Unload => Ok(self.unload().into()),
            Command::Reload => self.reload().map(Into::into).map_err(err),
            Command::SaveConfig => self.save().map(Into::into).map_err(err),
            Command::Announce => self.announce().map(Into::into).map_err(err),
        }
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
            secrets: load_secrets(&config.redundancy.credentials_file)?,
            config: config.clone(),
            loaded: false,
            cleared: false,
        }),
        dp: dp.clone(),
        stats: stats.clone(),
        backend,
        queues,
        prober: Prober::default(),
        config_path: config_path.to_path_buf(),
        epoch,
        replication,
        offload,
    });
    if standby {
        // A predecessor that crashed while balancing left its table and maybe the VIP: a
        // standby owns neither, and a VIP left here would answer ARP against the ACTIVE node.
        daemon.take_down(&config);
        daemon.offload.cut(None);
        tracing::info!("standby: not balancing until told to load");
    } else {
        daemon.load()?;
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
