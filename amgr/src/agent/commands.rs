//! SHELL: the agent's answers to the operator's commands (the local socket, or the dual's
//! amgr running one here) and to the dual's requests, SWITCH from either side.
//! Side effects: state changes through [`Agent::apply`], requests to the dual's amgr, slbd's
//! reload, the state file (PRIMARY).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slbd::ctl::proto::Command as SlbdCommand;

use super::{Agent, PEER_TIMEOUT, SLBD_TIMEOUT, TAKEOVER_TIMEOUT};
use crate::command::{Command, Request};
use crate::fsm::{self, Action, Dual, Event, State};
use crate::peer::{self, PeerError, PeerRequest};

impl Agent {
    /// A command from the local socket.
    pub(super) fn local(&mut self, req: Request) -> Result<Value, String> {
        if req.peer {
            return self
                .call_dual(
                    &PeerRequest::run(self.node.id, req.cmd),
                    Duration::from_secs(15),
                )
                .map_err(|e| e.to_string());
        }
        let cmd = req.cmd;
        tracing::info!(command = cmd.name(), node = self.node.id, "command");
        let dual = self.dual();
        match cmd {
            Command::Query => Ok(self.query()),
            Command::Start => self.start(),
            Command::Shutdown { forced } => {
                self.apply(
                    Event::Shutdown {
                        forced,
                        restart: false,
                        dual,
                    },
                    cmd.name(),
                )?;
                self.keep_running = false;
                Ok(self.state_reply())
            }
            Command::Restart { .. } | Command::Reboot => self.restart(cmd, dual),
            Command::Switch => self.switch(),
            Command::Reload => self
                .app
                .call(&SlbdCommand::Reload, SLBD_TIMEOUT)
                .map_err(|e| format!("{e:#}")),
            Command::Test => self.transition(Event::Test, "TEST"),
            Command::Untest => self.transition(Event::Untest, "UNTEST"),
            Command::Enable => self.transition(Event::Enable, "ENABLE"),
            Command::Disable { forced } => {
                self.transition(Event::Disable { forced, dual }, cmd.name())
            }
            Command::Inhibit => self.inhibit(Event::Inhibit, "INHIBIT", true),
            Command::Uninhibit => self.inhibit(Event::Uninhibit, "UNINHIBIT", false),
            Command::Primary => Ok(self.make_primary()),
            Command::GetPid => Ok(json!({"amgr": std::process::id(), "slbd": self.app.pid()})),
            Command::KillProc => Ok(self.kill_proc()),
            Command::KillRm => self.ping_dual(),
        }
    }

    pub(super) fn call_dual(
        &self,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<Value, PeerError> {
        peer::call(&self.cfg.peer_command_addrs(), &self.key, req, timeout)
    }

    fn state_reply(&self) -> Value {
        json!({"state": self.state.name()})
    }

    /// A command that is one event for the state machine; answers the state after it.
    fn transition(&mut self, event: Event, why: &str) -> Result<Value, String> {
        self.apply(event, why)?;
        Ok(self.state_reply())
    }

    fn inhibit(&mut self, event: Event, why: &str, inhibited: bool) -> Result<Value, String> {
        self.apply(event, why)?;
        Ok(json!({"state": self.state.name(), "inhibited": inhibited}))
    }

    fn start(&mut self) -> Result<Value, String> {
        self.keep_running = true;
        if !matches!(self.state, State::Offline | State::Failed) {
            return Err(format!("slbd is already running ({})", self.state.name()));
        }
        self.restart_at_ms = None;
        self.transition(Event::Started, "START")
    }

    /// RESTART, RESTART-F and REBOOT: a SHUTDOWN (forced for RESTART-F), then a start.
    fn restart(&mut self, cmd: Command, dual: Option<Dual>) -> Result<Value, String> {
        let forced = matches!(cmd, Command::Restart { forced: true });
        self.apply(
            Event::Shutdown {
                forced,
                restart: true,
                dual,
            },
            cmd.name(),
        )?;
        self.keep_running = true;
        self.transition(Event::Started, cmd.name())
    }

    /// PRIMARY: this node becomes PRIMARY and asks the dual to stop being it.
    fn make_primary(&mut self) -> Value {
        self.node.primary = true;
        self.save_dynamic();
        tracing::info!(node = self.node.id, "this node is PRIMARY");
        let demoted = self.call_dual(
            &PeerRequest::DemotePrimary { from: self.node.id },
            PEER_TIMEOUT,
        );
        json!({
            "primary": true,
            "dual_demoted": demoted.as_ref().is_ok(),
            "dual_error": demoted.err().map(|e| e.to_string()),
        })
    }

    /// KILLPROC: whether slbd is alive (signal 0).
    fn kill_proc(&self) -> Value {
        let pid = self.app.pid();
        let alive = pid.is_some_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
        });
        json!({"slbd": pid, "alive": alive})
    }

    /// KILLRM: whether the dual's amgr answers.
    fn ping_dual(&self) -> Result<Value, String> {
        self.call_dual(&PeerRequest::Ping { from: self.node.id }, PEER_TIMEOUT)
            .map(|v| json!({"dual_amgr": "alive", "dual": v}))
            .map_err(|e| format!("the dual's amgr does not answer: {e}"))
    }

    /// SWITCH. From the ACTIVE side: [`Agent::hand_over`]. From the STANDBY side the ACTIVE
    /// is asked to hand over to this node: it answers at once and then sends TakeOver, which
    /// this node answers from its loop (a local command waits for it: `pending_switch`).
    fn switch(&mut self) -> Result<Value, String> {
        let dual = self.dual();
        match self.state {
            State::Active => self.hand_over(dual, "SWITCH"),
            State::Standby => {
                self.ask_release()?;
                Ok(json!({"state": self.state.name(), "dual": "handing over"}))
            }
            _ => self
                .apply(Event::Switch { dual }, "SWITCH")
                .map(|_| Value::Null),
        }
    }

    /// A STANDBY's SWITCH: whether it may take over (the state machine's refusals, the guard),
    /// then the ACTIVE dual asked to hand over.
    pub(super) fn ask_release(&mut self) -> Result<(), String> {
        self.node.fit = self.can_serve_now().is_ok();
        self.refusal(Event::Switch { dual: None })?;
        self.call_dual(&PeerRequest::Release { from: self.node.id }, PEER_TIMEOUT)
            .map(|_| ())
            .map_err(|e| format!("the dual did not hand over: {e}"))
    }

    /// What the state machine would refuse `event` with, asked before anything is done: the
    /// step itself comes only once the dual has answered.
    fn refusal(&self, event: Event) -> Result<(), String> {
        let (_, actions) = fsm::step(self.state, &self.node, event);
        match actions.iter().find_map(|a| match a {
            Action::Refuse(r) => Some(*r),
            _ => None,
        }) {
            Some(r) => Err(r.to_string()),
            None => Ok(()),
        }
    }

    /// This ACTIVE hands over to its STANDBY dual (SWITCH, or the guard), make before break:
    /// the dual takes over first, while this node still carries the VIP's traffic and its
    /// replication goes on (the dual keeps applying it), then this node lets go, sending its
    /// last changes. In between both hold the VIP for the few milliseconds the dual's answer
    /// takes; the dual's gratuitous ARP has already moved the clients and the servers. If the
    /// dual does not take over, nothing changed here.
    pub(super) fn hand_over(&mut self, dual: Option<Dual>, why: &str) -> Result<Value, String> {
        self.refusal(Event::Switch { dual })?;
        if let Err(e) = self.app.call(&SlbdCommand::HandOver, SLBD_TIMEOUT) {
            tracing::warn!(error = %format!("{e:#}"), "slbd not told of the hand-over");
        }
        // From here no heartbeat of ours says ACTIVE: the dual undoes the switch on one newer
        // than `seq` by the split rule. Saying STANDBY ends the quiet.
        let req = PeerRequest::TakeOver {
            from: self.node.id,
            seq: self.beacon.quiet(),
        };
        match self.call_dual(&req, TAKEOVER_TIMEOUT) {
            Ok(_) => {
                let switched = self.apply(Event::Switch { dual }, why);
                self.beacon.resume();
                switched?;
                Ok(json!({"state": self.state.name(), "dual": "ACTIVE"}))
            }
            Err(e) => {
                self.beacon.resume();
                tracing::error!(error = %e, "the dual did not take over: this node stays ACTIVE");
                Err(format!(
                    "the dual did not take over ({e}); this node is still {}",
                    self.state.name()
                ))
            }
        }
    }

    /// A healed split, on the side giving up the VIP: the dual takes this node's flows first.
    /// Best effort: a dual that does not answer costs the flows, not the heal.
    pub(super) fn hand_flows(&mut self) {
        let started = Instant::now();
        match self.call_dual(&PeerRequest::Merge { from: self.node.id }, TAKEOVER_TIMEOUT) {
            Ok(v) => tracing::info!(
                node = self.node.id,
                ms = started.elapsed().as_millis() as u64,
                answer = %v,
                "flows handed to the dual"
            ),
            Err(e) => tracing::error!(
                node = self.node.id,
                error = %e,
                "the dual did not take this node's flows: those accepted here during the split are lost"
            ),
        }
    }

    /// A request from the dual's amgr (already authenticated).
    pub(super) fn peer_request(&mut self, req: &PeerRequest) -> Result<Value, String> {
        if req.from() == self.node.id {
            return Err("a request carrying this node's own id".into());
        }
        tracing::info!(request = ?req, "peer request");
        match req {
            PeerRequest::TakeOver { from, seq } => {
                if self.state != State::Standby {
                    return Err(format!("this node is {}, not STANDBY", self.state.name()));
                }
                // The dual stays ACTIVE until this answers: none of its heartbeats up to `seq`
                // (still saying ACTIVE) may undo the switch by the split rule.
                if let Some(d) = self.dual.as_mut().filter(|d| d.node == *from) {
                    d.seq = d.seq.max(*seq);
                }
                self.planned_takeover = true;
                let r = self.transition(Event::Switch { dual: None }, "SWITCH from the dual");
                self.planned_takeover = false;
                r
            }
            PeerRequest::Release { from } => self.release(*from),
            PeerRequest::Merge { .. } => {
                if self.state != State::Active {
                    return Err(format!("this node is {}, not ACTIVE", self.state.name()));
                }
                let merged = self
                    .app
                    .call(&SlbdCommand::Merge, SLBD_TIMEOUT)
                    .map_err(|e| format!("slbd did not merge: {e:#}"))?;
                Ok(json!({"merged": merged}))
            }
            PeerRequest::Ping { .. } => Ok(json!({
                "node": self.node.id,
                "pid": std::process::id(),
                "state": self.state.name(),
                "can_serve": self.can_serve_now().is_ok(),
            })),
            PeerRequest::DemotePrimary { .. } => {
                self.node.primary = false;
                self.save_dynamic();
                tracing::info!(node = self.node.id, "no longer PRIMARY: the dual is");
                Ok(json!({"primary": false}))
            }
            PeerRequest::Run { cmd, .. } => {
                let cmd = Command::parse(cmd).ok_or_else(|| format!("unknown command {cmd:?}"))?;
                self.local(Request { cmd, peer: false })
            }
        }
    }

    /// The STANDBY dual's SWITCH: this ACTIVE hands over to it, once this answer is out (the
    /// dual is waiting for it and must be free to answer the TakeOver).
    fn release(&mut self, from: u32) -> Result<Value, String> {
        if self.state != State::Active {
            return Err(format!("this node is {}, not ACTIVE", self.state.name()));
        }
        self.release_to = Some(Dual {
            id: from,
            state: State::Standby,
            primary: self.dual.as_ref().is_some_and(|d| d.primary),
            inhibited: self.dual.as_ref().is_some_and(|d| d.inhibited),
        });
        Ok(json!({"state": self.state.name(), "handing_over": true}))
    }

    /// After each input: a hand-over the dual asked for.
    pub(super) fn after_input(&mut self) {
        if let Some(asker) = self.release_to.take() {
            if let Err(e) = self.hand_over(Some(asker), "SWITCH from the dual") {
                tracing::error!(error = %e, "the hand-over the dual asked for failed");
            }
        }
    }
}
