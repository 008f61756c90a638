//! SHELL: the one place this node's role changes — whether it carries the VIP's traffic. Every
//! part that cares follows from here, in an order that never exposes the VIP: the data plane's
//! balancing flag, the replication role, the rules, offload flows in conntrack, the addresses
//! and the health checks (which run in every role but a cleared one). amgr decides the pair's
//! roles and tells slbd through `load` and `unload`; slbd's own [`Role`] is the only copy of
//! the answer inside slbd.
//! Side effects: the `ip slb` table, the VIP and gateway addresses, conntrack entries under
//! slbd's marks, health-check threads.

use std::sync::Arc;

use anyhow::{bail, Context};

use super::{Daemon, State};
use crate::config::Config;
use crate::core::ruleset;
use crate::shell::addr;
use crate::shell::nft;

/// Whether this node balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Rules and addresses up: this node carries the VIP's traffic.
    Balancing,
    /// Standing by (a pair's STANDBY, or told to unload): no rules, no addresses; replicated
    /// flows are kept, not expired.
    Unloaded,
    /// After `clear_config`: no services until some are added (the raw configuration then has
    /// none; the typed one is the last valid one and is not in force).
    Cleared,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Balancing => "balancing",
            Role::Unloaded => "unloaded",
            Role::Cleared => "cleared",
        }
    }
}

impl Daemon {
    /// Starts carrying traffic. State first, then the VIP: what replication delivered is in the
    /// flow table before the rules and addresses make this node the one clients reach. In a
    /// planned switch (`overlap`) the dual is still balancing: its session keeps being applied
    /// until the dual lets go and ends it.
    pub(super) fn load(&self, overlap: bool) -> anyhow::Result<&'static str> {
        let mut st = self.state.lock();
        match st.role {
            Role::Balancing => return Ok("already loaded"),
            Role::Cleared => {
                bail!("nothing to balance: the configuration was cleared; add servers first")
            }
            Role::Unloaded => {}
        }
        if let Some(r) = &self.replication {
            r.activate(overlap);
        }
        self.dp
            .set_balancing(true, self.replication.is_some(), self.now_ms());
        if let Err(e) = self.bring_up(&st.config) {
            self.stop_balancing();
            return Err(e);
        }
        st.role = Role::Balancing;
        tracing::info!(vip = %st.config.vip, "balancing");
        Ok("loaded")
    }

    /// A healed split: while this node balances, the dual's flows are taken (replication's
    /// merge) before the dual lets go. Replies of the dual's flows not merged yet are adopted
    /// meanwhile (the grace period a hand-over opens).
    pub(super) fn merge(&self) -> anyhow::Result<String> {
        if self.state.lock().role != Role::Balancing {
            bail!("not balancing: nothing to merge into");
        }
        let Some(r) = &self.replication else {
            bail!("no flow replication (--pair-key): nothing to merge through");
        };
        self.dp.handing_over(self.now_ms());
        let m = r.merge().map_err(anyhow::Error::msg)?;
        Ok(format!(
            "merged {} flows ({} conflicts, {} unknown)",
            m.flows, m.conflicts, m.unknown
        ))
    }

    /// What a merge tells the daemon: the offload flows it took go to conntrack as they
    /// arrive; once the dual has let go (`ended`), the addresses are announced again, since
    /// the dual held them until then.
    pub(super) fn merge_step(&self, ended: bool) {
        let st = self.state.lock();
        if st.role != Role::Balancing {
            return;
        }
        self.offload.commit(&self.dp);
        if ended {
            match addr::reannounce(&st.config.managed_addrs()) {
                Ok(()) => {
                    tracing::info!(vip = %st.config.vip, "merge ended: addresses announced again")
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "merge ended: cannot announce the addresses")
                }
            }
        }
    }

    /// Stops carrying traffic: addresses, then rules, then this node's flows become the dual's.
    pub(super) fn unload(&self) -> &'static str {
        let mut st = self.state.lock();
        if st.role != Role::Balancing {
            return "already unloaded";
        }
        self.leave(&mut st, Role::Unloaded);
        tracing::info!("unloaded: not balancing");
        "unloaded"
    }

    /// Stops balancing and forgets every service.
    pub(super) fn clear(&self) -> &'static str {
        let mut st = self.state.lock();
        self.leave(&mut st, Role::Cleared);
        st.raw.services.clear();
        let mut empty = st.config.clone();
        empty.services.clear();
        self.dp.update(&empty);
        tracing::info!("configuration cleared: no services, not balancing");
        "cleared"
    }

    /// A standby start: a predecessor that crashed while balancing left its table and maybe
    /// the VIP; a standby owns neither, and a VIP left here would answer ARP against the
    /// ACTIVE node.
    pub(super) fn stand_by(&self) {
        let st = self.state.lock();
        self.dp.set_balancing(false, false, self.now_ms());
        self.take_down(&st.config);
        self.offload.cut_all();
        self.start_checks(&st.config);
        tracing::info!("standby: not balancing until told to load");
    }

    /// The health checks go on when balancing stops: a STANDBY knows which servers it could
    /// reach before it takes over (the data plane only records what they show while it stands
    /// by). A cleared configuration has nothing to check.
    fn leave(&self, st: &mut State, to: Role) {
        self.withdraw_now(st);
        if st.role == Role::Balancing {
            self.take_down(&st.config);
            self.stop_balancing();
        }
        if to == Role::Cleared {
            self.prober.stop();
        }
        st.role = to;
    }

    /// Installs the rules for `config` (plus the reply rules that removed servers still
    /// draining need).
    pub(super) fn install_rules(&self, config: &Config) -> anyhow::Result<()> {
        let refused = ruleset::needing_netdev_egress(config);
        if !self.netdev_egress && !refused.is_empty() {
            bail!(
                "services {}: offload direct routing needs the netdev egress hook (Linux 5.16 \
                 and later), which this kernel lacks; give them \"mode\": \"packet\"",
                refused.join(", ")
            );
        }
        let targets = self.dp.offload_targets();
        let rules = ruleset::plan(config, self.queues, &self.dp.draining_ports(), &targets);
        // Recorded even when refused, so a failing table is retried on the next change, not
        // on every look.
        *self.installed_targets.lock() = targets;
        nft::apply(&rules, self.backend).context("installing the nftables table")?;
        for r in &rules.rules {
            tracing::debug!(table = ruleset::TABLE, chain = r.chain.name, rule = %r, "rule installed");
        }
        Ok(())
    }

    /// The kernel's overflow spread (see [`ruleset`]) names the offload servers in rotation
    /// and their weights: when health, passive detection or a check changes them, the rules
    /// follow.
    pub(super) fn follow_rotation(&self) {
        let st = self.state.lock();
        if st.role != Role::Balancing {
            return;
        }
        self.enforce_admin_states();
        self.follow_backups();
        if self.dp.offload_draining() {
            let now = self.now_ms();
            let last = self
                .drain_resync_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if now >= last + 1_000 {
                self.drain_resync_ms
                    .store(now, std::sync::atomic::Ordering::Relaxed);
                self.offload.resync(&self.dp);
            }
        }
        self.follow_dr_flows(&st.config);
        let targets = self.dp.offload_targets();
        if *self.installed_targets.lock() == targets {
            return;
        }
        match self.install_rules(&st.config) {
            Ok(()) => tracing::info!(
                in_rotation = targets.iter().filter(|t| t.weight > 0).count(),
                servers = targets.len(),
                "offload overflow spread follows the servers in rotation"
            ),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "cannot update the offload overflow spread; the previous rules stay"
            ),
        }
    }

    /// Once a second, the flow map of offload direct-routing flows tells the flow table which
    /// of them live, and in what phase (the kernel carries their packets, slbd sees only
    /// their first).
    fn follow_dr_flows(&self, config: &crate::core::model::Config) {
        use std::sync::atomic::Ordering::Relaxed;
        if ruleset::dr_flows(config).is_none() {
            return;
        }
        let now = self.now_ms();
        if now < self.dr_resync_ms.load(Relaxed) + 1_000 {
            return;
        }
        self.dr_resync_ms.store(now, Relaxed);
        match crate::shell::nft::dr_flows() {
            Ok(flows) => self.dp.dr_flows_resync(&flows, &config.flows, now),
            Err(e) => tracing::warn!(
                error = %e, map = ruleset::DR_FLOWS,
                "cannot read the flow map; the flow table keeps what it had"
            ),
        }
    }

    /// Cuts the flows of servers in maintenance or draining past their deadline, in the
    /// flow table and (offload) in conntrack.
    pub(super) fn enforce_admin_states(&self) {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (server, outcome) in self.dp.enforce_admin_states(now_unix, self.now_ms()) {
            if let Some(cut) = outcome.cut {
                self.offload.cut(cut);
            }
            tracing::warn!(
                server = %server, flows_ended = outcome.flows_ended,
                "operator's state cut the server's flows (maintenance, or drain deadline passed)"
            );
        }
    }

    /// Logs each service's switch to its backup servers and back, once each way.
    fn follow_backups(&self) {
        let now = self.dp.serving_backups();
        let mut was = self.serving_backups.lock();
        for (service, on) in &now {
            let before = was
                .iter()
                .find(|(s, _)| s == service)
                .is_some_and(|(_, b)| *b);
            if *on && !before {
                tracing::warn!(service = %service, serving = "backups", "no primary server in rotation: backup servers serve");
            } else if !*on && before {
                tracing::info!(service = %service, serving = "primaries", "a primary server is back: new flows go to the primaries");
            }
        }
        *was = now;
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
    pub(super) fn start_checks(&self, config: &Config) {
        let offload = self.offload.clone();
        let cut = Arc::new(move |cut| offload.cut(cut));
        if let Err(e) = self.prober.check(config, self.dp.clone(), cut) {
            tracing::error!(error = %e, "cannot start the health checks; servers stay in rotation");
        }
    }

    /// After the addresses and rules are gone: this node's flows are now its dual's to carry;
    /// the last changes go to it before this returns.
    fn stop_balancing(&self) {
        let half_open = self.dp.log_unestablished();
        if half_open > 0 {
            tracing::info!(
                flows = half_open,
                "replication: flows not yet established go to the dual too"
            );
        }
        self.dp.set_balancing(false, false, self.now_ms());
        if let Some(r) = &self.replication {
            r.deactivate();
        }
        // Offload flows would go on being translated by conntrack without the rules (even
        // without the VIP, prerouting NAT comes before routing): end them with the rest.
        self.offload.cut_all();
    }

    /// Addresses first, then the rules.
    pub(super) fn take_down(&self, config: &Config) {
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
}
