//! SHELL: the agent's one path into the state machine, [`Agent::apply`], and the carrying
//! out of its actions; what our heartbeat says.
//! Side effects: slbd as a child (start, stop, kill) and its control socket (reload, load,
//! unload, announce); the VIP and gateway addresses of a dead slbd; the beacon's content;
//! reading slb_conf.json for its generation; the state file (inhibited flag).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use heartbeat::msg::App as HbApp;
use slbd::ctl::proto::Command as SlbdCommand;

use super::beacon::Said;
use super::{to_wire, unix_ms, Agent, SLBD_APP, SLBD_TIMEOUT};
use crate::fsm::{self, Action, Event, State};
use crate::{sync, timers};

impl Agent {
    /// Feeds `event` to the state machine and carries out its actions. A refusal comes back as
    /// the error; a failed activation makes the application FAILED.
    pub(super) fn apply(&mut self, event: Event, why: &str) -> Result<(), String> {
        let from = self.state;
        let fit = self.can_serve(&event);
        self.node.fit = fit.is_ok();
        let (to, actions) = fsm::step(from, &self.node, event);
        if to != from {
            self.entered(from, to, why);
        }
        let mut refused = None;
        for a in actions {
            if let Action::Refuse(r) = a {
                refused = Some(r.to_string());
            } else if a == Action::HoldBack {
                self.held_back(fit.clone().err().unwrap_or_default());
            } else if let Err(failure) = self.carry_out(a) {
                return self.app_failed(failure);
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// The state changed from `from` to `to` because of `why`.
    fn entered(&mut self, from: State, to: State, why: &str) {
        self.state = to;
        // Said before the actions are carried out: loading slbd can take seconds.
        self.beacon.publish(self.said());
        self.active_flag.store(to == State::Active, Relaxed);
        tracing::info!(
            app = "slbd",
            node = self.node.id,
            from = from.name(),
            to = to.name(),
            event = why,
            "state changed"
        );
        self.history
            .changed(self.node.id, from, to, why, unix_ms(SystemTime::now()));
        // In a thread of its own: a hook never delays what this transition does next.
        self.hooks.fire(self.node.id, from, to, why);
        if to == State::Init {
            self.init_since_ms = self.now_ms();
        }
        if to == State::Active {
            self.held_back = None;
            if let Some((reply, _)) = self.pending_switch.take() {
                let _ = reply.send(Ok(
                    serde_json::json!({"state": to.name(), "dual": "STANDBY"}),
                ));
            }
        }
        if to == State::Standby {
            // NoActive counts the dead time from here: a node that has just become
            // STANDBY (or the dual that just let go in a SWITCH) is not "nobody ACTIVE".
            self.last_active_seen_ms = self.now_ms();
        }
    }

    /// Carries out one action; the error says why the application failed doing it.
    fn carry_out(&mut self, action: Action) -> Result<(), &'static str> {
        match action {
            Action::StartApp => {
                if let Err(e) = self.app.start() {
                    tracing::error!(app = "slbd", error = %format!("{e:#}"), "cannot start the application");
                    self.app_pid.store(0, Relaxed);
                    return Err("it could not be started");
                }
                self.app_pid.store(self.app.pid().unwrap_or(0), Relaxed);
            }
            Action::Activate => {
                if let Err(e) = self.activate() {
                    tracing::error!(app = "slbd", error = %format!("{e:#}"), "activation failed");
                    self.app.kill();
                    return Err("activation failed");
                }
            }
            Action::Deactivate => self.deactivate(),
            Action::HandFlows => self.hand_flows(),
            Action::StopApp => {
                self.app.stop(Duration::from_secs(5));
                self.app_pid.store(0, Relaxed);
            }
            Action::KillApp => {
                tracing::error!(
                    app = "slbd",
                    "application did not come up within {} s: killing it",
                    timers::INIT_TIMEOUT.as_secs()
                );
                self.app.kill();
            }
            Action::SetInhibited(b) => self.set_inhibited(b),
            Action::Announce => self.announce(),
            // apply hands refusals back to the caller and says why the guard held back.
            Action::Refuse(_) | Action::HoldBack => {}
        }
        Ok(())
    }

    pub(super) fn app_failed(&mut self, why: &str) -> Result<(), String> {
        self.history.app_failed();
        let r = self.apply(Event::AppFailed, why);
        self.schedule_restart();
        r
    }

    fn schedule_restart(&mut self) {
        if self.state == State::Failed && self.keep_running {
            self.failures_in_row += 1;
            let backoff = timers::restart_backoff(self.failures_in_row);
            self.restart_at_ms = Some(self.now_ms() + backoff.as_millis() as u64);
            tracing::info!(
                app = "slbd",
                retry_s = backoff.as_secs(),
                "application will be restarted"
            );
        }
    }

    fn set_inhibited(&mut self, inhibited: bool) {
        if self.node.inhibited != inhibited {
            self.node.inhibited = inhibited;
            tracing::info!(node = self.node.id, inhibited, "inhibited flag changed");
            self.save_dynamic();
        }
    }

    /// Gratuitous ARP again, at most once a second: two ACTIVE nodes converging send one
    /// Announce per heartbeat received.
    fn announce(&mut self) {
        if self
            .last_announce
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_announce = Some(Instant::now());
            if let Err(e) = self.app.call(&SlbdCommand::Announce, SLBD_TIMEOUT) {
                tracing::warn!(error = %format!("{e:#}"), "announcing the addresses again failed");
            }
        }
    }

    /// Re-reads slb_conf.json (the ACTIVE's sync may have changed it) and starts balancing.
    fn activate(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.app.call(&SlbdCommand::Reload, SLBD_TIMEOUT) {
            tracing::error!(error = %format!("{e:#}"), "slb_conf.json refused: activating with the configuration slbd has");
        }
        let load = if self.planned_takeover {
            SlbdCommand::TakeOver
        } else {
            SlbdCommand::Load
        };
        self.app.call(&load, SLBD_TIMEOUT)?;
        Ok(())
    }

    /// Stops balancing. With slbd dead or hung, amgr removes the addresses itself: a VIP left
    /// here would answer ARP against the node that took over.
    fn deactivate(&mut self) {
        if self.app.running() {
            match self.app.call(&SlbdCommand::Unload, SLBD_TIMEOUT) {
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "slbd did not unload: killing it");
                    self.app.kill();
                }
            }
        }
        match slbd::config::Config::load(&self.cfg.slbd_config) {
            Ok(c) => {
                let addrs = c.managed_addrs();
                match slbd::shell::addr::remove(&addrs) {
                    Ok(()) => {
                        for a in &addrs {
                            tracing::info!(address = %a, "address removed for a dead slbd");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot remove the VIP and gateway addresses")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read slb_conf.json to remove its addresses")
            }
        }
    }

    /// What our heartbeat says now.
    pub(super) fn said(&self) -> Said {
        Said {
            app: HbApp {
                id: SLBD_APP,
                state: to_wire(self.state),
                primary: self.node.primary,
                inhibited: self.node.inhibited,
            },
            generation: self.generation,
        }
    }

    /// The generation our heartbeat carries, re-read when slb_conf.json's mtime changes.
    pub(super) fn refresh_generation(&mut self) {
        let mtime = std::fs::metadata(&self.cfg.slbd_config)
            .and_then(|m| m.modified())
            .ok();
        if mtime == self.generation_mtime {
            return;
        }
        self.generation_mtime = mtime;
        if let Ok((raw, _)) = slbd::config::Config::load_raw(&self.cfg.slbd_config) {
            self.generation = sync::generation(&raw);
        }
    }
}
