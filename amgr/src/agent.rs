//! The agent: one thread that owns this node's state for slbd, and the only place it changes
//! (through [`crate::fsm::step`], whose actions it carries out). Inputs arrive on one channel:
//! heartbeats from the link threads, commands from the local socket and from the dual's amgr,
//! a hung-slbd report from the watchdog, and the stop signal. A tick every heartbeat interval
//! reaps slbd, feeds the events [`crate::timers::due`] finds due (the restart after a failure,
//! the end of INIT or its timeout, a lost or absent dual, nobody ACTIVE) to the state machine,
//! and sends our heartbeat (also sent at once after every state change, so the dual learns
//! fast).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use heartbeat::liveness::{Liveness, Peer};
use heartbeat::msg::{App as HbApp, AppState, Heartbeat, Rejected};
use heartbeat::socket::Link;
use parking_lot::Mutex;
use serde_json::{json, Value};
use slbd::ctl::proto::Command as SlbdCommand;

use crate::app::App;
use crate::command::{Command, Request};
use crate::config::{Config, Dynamic};
use crate::fsm::{self, Action, Dual, Event, Node, State};
use crate::peer::{self, PeerRequest};
use crate::{sync, timers};

/// The application id slbd has in heartbeats (amgr manages one application).
const SLBD_APP: u8 = 0;
const SLBD_TIMEOUT: Duration = Duration::from_secs(5);
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Input {
    Heard {
        link: usize,
        hb: Heartbeat,
    },
    Rejected {
        link: usize,
        why: Rejected,
    },
    Foreign {
        link: usize,
    },
    Local {
        req: Request,
        reply: mpsc::Sender<Result<Value, String>>,
    },
    Peer(peer::Incoming),
    /// The watchdog found slbd (this pid) not answering its control socket.
    AppHung(u32),
    /// A scrape: the counters, sampled.
    Metrics(mpsc::Sender<crate::metrics::Sample>),
    Stop,
}

#[derive(Default)]
struct LinkStats {
    sent: u64,
    send_errors: u64,
    received: u64,
    rejected: BTreeMap<String, u64>,
}

struct DualSeen {
    node: u32,
    state: State,
    primary: bool,
    inhibited: bool,
    generation: u64,
    heard: Instant,
}

fn to_wire(s: State) -> AppState {
    match s {
        State::Offline => AppState::Offline,
        State::Init => AppState::Init,
        State::Standby => AppState::Standby,
        State::Active => AppState::Active,
        State::Maintenance => AppState::Maintenance,
        State::Failed => AppState::Failed,
    }
}

fn from_wire(s: AppState) -> State {
    match s {
        AppState::Offline => State::Offline,
        AppState::Init => State::Init,
        AppState::Standby => State::Standby,
        AppState::Active => State::Active,
        AppState::Maintenance => State::Maintenance,
        AppState::Failed => State::Failed,
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Agent {
    cfg: Config,
    key: Vec<u8>,
    links: Vec<Link>,
    stats: Vec<LinkStats>,
    node: Node,
    state: State,
    app: App,
    /// slbd's pid for the watchdog (0: none).
    app_pid: Arc<AtomicU32>,
    epoch: Instant,
    liveness: Liveness,
    peer_was: Peer,
    dual: Option<DualSeen>,
    boot: u64,
    seq: u64,
    /// When INIT began, on the agent's clock (ms since `epoch`).
    init_since_ms: u64,
    /// When either node was last seen ACTIVE, or this one last became STANDBY (ms).
    last_active_seen_ms: u64,
    /// When a FAILED slbd is to be started again (ms).
    restart_at_ms: Option<u64>,
    failures_in_row: u32,
    /// Cleared by SHUTDOWN: a shut-down application is not restarted after it exits.
    keep_running: bool,
    last_announce: Option<Instant>,
    last_failover: Option<Value>,
    transitions: VecDeque<Value>,
    transition_counts: BTreeMap<(State, State), u64>,
    failover_counts: BTreeMap<u32, u64>,
    app_failures: u64,
    generation: u64,
    generation_mtime: Option<SystemTime>,
    sync_status: Arc<Mutex<sync::Status>>,
    /// Read by the sync thread: only the ACTIVE node pushes its configuration.
    active_flag: Arc<AtomicBool>,
    replication: Arc<Mutex<Option<Value>>>,
}

/// What the agent shares with the daemon's other threads.
pub struct Shared {
    /// Written by the sync thread, shown by `query`.
    pub sync_status: Arc<Mutex<sync::Status>>,
    /// Read by the sync thread: only the ACTIVE node pushes its configuration.
    pub active_flag: Arc<AtomicBool>,
    /// slbd's pid for the watchdog (0: none).
    pub app_pid: Arc<AtomicU32>,
    /// The `replication` part of slbd's last status answer (the watchdog's), for `query`.
    pub replication: Arc<Mutex<Option<Value>>>,
}

impl Agent {
    pub fn new(
        cfg: Config,
        key: Vec<u8>,
        links: Vec<Link>,
        dynamic: Dynamic,
        shared: Shared,
        log_format: slb_common::logging::LogFormat,
    ) -> Agent {
        let Shared {
            sync_status,
            active_flag,
            app_pid,
            replication,
        } = shared;
        let now = Instant::now();
        let n = links.len();
        let boot =
            u64::from_ne_bytes(slb_common::auth::nonce::<8>().expect("the kernel's random source"));
        Agent {
            node: Node {
                id: cfg.node_id,
                primary: dynamic.primary,
                inhibited: dynamic.inhibited,
            },
            liveness: Liveness::new(n, cfg.dead.as_millis() as u64),
            app: App::new(
                cfg.slbd_binary.clone(),
                cfg.slbd_config.clone(),
                cfg.slbd_socket.clone(),
                log_format,
                crate::app::replication_args(&cfg),
            ),
            cfg,
            key,
            links,
            stats: (0..n).map(|_| LinkStats::default()).collect(),
            state: State::Offline,
            app_pid,
            epoch: now,
            peer_was: Peer::Unknown,
            dual: None,
            boot,
            seq: 0,
            init_since_ms: 0,
            last_active_seen_ms: 0,
            restart_at_ms: None,
            failures_in_row: 0,
            keep_running: true,
            last_announce: None,
            last_failover: None,
            transitions: VecDeque::new(),
            transition_counts: BTreeMap::new(),
            failover_counts: BTreeMap::new(),
            app_failures: 0,
            generation: 0,
            generation_mtime: None,
            sync_status,
            active_flag,
            replication,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The dual as the heartbeat last described it, while the links still carry it.
    fn dual(&self) -> Option<Dual> {
        if self.liveness.peer(self.now_ms()) != Peer::Alive {
            return None;
        }
        self.dual.as_ref().map(|d| Dual {
            id: d.node,
            state: d.state,
            primary: d.primary,
            inhibited: d.inhibited,
        })
    }

    fn dynamic(&self) -> Dynamic {
        Dynamic {
            primary: self.node.primary,
            inhibited: self.node.inhibited,
        }
    }

    fn save_dynamic(&self) {
        if let Err(e) = save_dynamic(&self.cfg.state_file, self.dynamic()) {
            tracing::error!(path = %self.cfg.state_file.display(), error = %format!("{e:#}"), "cannot save the node's PRIMARY/INHIBITED flags");
        }
    }

    /// Feeds `event` to the state machine and carries out its actions. A refusal comes back as
    /// the error; a failed activation makes the application FAILED.
    fn apply(&mut self, event: Event, why: &str) -> Result<(), String> {
        let from = self.state;
        let (to, actions) = fsm::step(from, &self.node, event);
        if to != from {
            self.state = to;
            self.active_flag.store(to == State::Active, Relaxed);
            tracing::info!(
                app = "slbd",
                node = self.node.id,
                from = from.name(),
                to = to.name(),
                event = why,
                "state changed"
            );
            self.transitions.push_back(json!({
                "at_ms": unix_ms(SystemTime::now()),
                "from": from.name(),
                "to": to.name(),
                "event": why,
            }));
            while self.transitions.len() > 20 {
                self.transitions.pop_front();
            }
            *self.transition_counts.entry((from, to)).or_default() += 1;
            if to == State::Active {
                *self.failover_counts.entry(self.node.id).or_default() += 1;
                self.last_failover = Some(json!({
                    "at_ms": unix_ms(SystemTime::now()),
                    "active": self.node.id,
                    "reason": why,
                }));
            }
            if to == State::Init {
                self.init_since_ms = self.now_ms();
            }
            if to == State::Standby {
                // NoActive counts the dead time from here: a node that has just become
                // STANDBY (or the dual that just let go in a SWITCH) is not "nobody ACTIVE".
                self.last_active_seen_ms = self.now_ms();
            }
        }
        let mut refused = None;
        for a in actions {
            match a {
                Action::StartApp => {
                    if let Err(e) = self.app.start() {
                        tracing::error!(app = "slbd", error = %format!("{e:#}"), "cannot start the application");
                        self.app_pid.store(0, Relaxed);
                        return self.app_failed("it could not be started");
                    }
                    self.app_pid.store(self.app.pid().unwrap_or(0), Relaxed);
                }
                Action::Activate => {
                    if let Err(e) = self.activate() {
                        tracing::error!(app = "slbd", error = %format!("{e:#}"), "activation failed");
                        self.app.kill();
                        return self.app_failed("activation failed");
                    }
                }
                Action::Deactivate => self.deactivate(),
                Action::StopApp => {
                    self.app.stop(Duration::from_secs(5));
                    self.app_pid.store(0, Relaxed);
                }
                Action::SetInhibited(b) => {
                    if self.node.inhibited != b {
                        self.node.inhibited = b;
                        tracing::info!(
                            node = self.node.id,
                            inhibited = b,
                            "inhibited flag changed"
                        );
                        self.save_dynamic();
                    }
                }
                Action::Announce => {
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
                Action::KillApp => {
                    tracing::error!(
                        app = "slbd",
                        "application did not come up within {} s: killing it",
                        timers::INIT_TIMEOUT.as_secs()
                    );
                    self.app.kill();
                }
                Action::Refuse(r) => refused = Some(r.to_string()),
            }
        }
        if to != from {
            self.send_heartbeats();
        }
        refused.map_or(Ok(()), Err)
    }

    fn app_failed(&mut self, why: &str) -> Result<(), String> {
        self.app_failures += 1;
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

    /// Re-reads slb_conf.json (the ACTIVE's sync may have changed it) and starts balancing.
    fn activate(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.app.call(&SlbdCommand::Reload, SLBD_TIMEOUT) {
            tracing::error!(error = %format!("{e:#}"), "slb_conf.json refused: activating with the configuration slbd has");
        }
        self.app.call(&SlbdCommand::Load, SLBD_TIMEOUT)?;
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
                let addrs = slbd::daemon::managed_addrs(&c);
                match slbd::addr::remove(&addrs) {
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

    fn send_heartbeats(&mut self) {
        self.seq += 1;
        for (i, link) in self.links.iter().enumerate() {
            let hb = Heartbeat {
                node: self.node.id,
                boot: self.boot,
                seq: self.seq,
                sent_ms: unix_ms(SystemTime::now()),
                generation: self.generation,
                link: i as u8,
                apps: vec![HbApp {
                    id: SLBD_APP,
                    state: to_wire(self.state),
                    primary: self.node.primary,
                    inhibited: self.node.inhibited,
                }],
            };
            match link.send(&hb, &self.key) {
                Ok(()) => self.stats[i].sent += 1,
                Err(e) => {
                    // A link that is down fails here every interval: count, log at debug.
                    self.stats[i].send_errors += 1;
                    tracing::debug!(link = i, error = %e, "heartbeat not sent");
                }
            }
        }
    }

    fn refresh_generation(&mut self) {
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

    /// Every heartbeat interval: reaps slbd, feeds the events the timers find due to the
    /// state machine, and sends our heartbeat.
    pub fn tick(&mut self) {
        let now_ms = self.now_ms();
        if let Some(status) = self.app.exited() {
            self.app_pid.store(0, Relaxed);
            if self.state != State::Offline {
                tracing::error!(app = "slbd", status = %status, "application exited");
                let _ = self.app_failed("the application exited");
            }
        }
        self.refresh_generation();
        let known = self.known(now_ms);
        for event in timers::due(now_ms, &known) {
            let why = match event {
                Event::Started => {
                    self.restart_at_ms = None;
                    "restart after failure"
                }
                Event::Initialised { .. } => {
                    self.failures_in_row = 0;
                    "initialised"
                }
                Event::InitTimedOut => "INIT timed out",
                Event::DualLost => "dual lost",
                Event::NoActive { .. } => "nobody ACTIVE",
                // timers::due returns nothing else.
                _ => "timer",
            };
            let _ = self.apply(event, why);
        }
        self.send_heartbeats();
    }

    /// What the timers need to know at `now_ms`. In INIT, asks slbd whether it answers.
    fn known(&mut self, now_ms: u64) -> timers::Known {
        let peer = self.liveness.peer(now_ms);
        if peer != self.peer_was {
            match peer {
                Peer::Lost => tracing::warn!(
                    node = self.node.id,
                    "dual lost: every heartbeat link silent for the dead time"
                ),
                Peer::Alive => tracing::info!(node = self.node.id, "dual heard"),
                Peer::Unknown => {}
            }
            self.peer_was = peer;
        }
        let dual = self.dual();
        if self.state == State::Active || dual.is_some_and(|d| d.state == State::Active) {
            self.last_active_seen_ms = now_ms;
        }
        let app_answered = self.state == State::Init
            && self
                .app
                .call(&SlbdCommand::Status, Duration::from_millis(200))
                .is_ok();
        timers::Known {
            state: self.state,
            keep_running: self.keep_running,
            restart_at_ms: self.restart_at_ms,
            init_since_ms: self.init_since_ms,
            app_answered,
            peer,
            dual,
            started_ms: 0,
            last_active_seen_ms: self.last_active_seen_ms,
            dead_ms: self.cfg.dead.as_millis() as u64,
        }
    }

    pub fn input(&mut self, input: Input) {
        match input {
            Input::Heard { link, hb } => self.heard(link, hb),
            Input::Rejected { link, why } => {
                let reason = format!("{why:?}").to_lowercase();
                let n = self.stats[link].rejected.entry(reason.clone()).or_default();
                *n += 1;
                if n.is_power_of_two() {
                    tracing::warn!(link, reason = %reason, count = *n, error = %why, "heartbeat rejected");
                }
            }
            Input::Foreign { link } => {
                let n = self.stats[link]
                    .rejected
                    .entry("foreign".into())
                    .or_default();
                *n += 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        link,
                        count = *n,
                        "datagram from an address other than the peer's"
                    );
                }
            }
            Input::Local { req, reply } => {
                let r = self.local(req);
                let _ = reply.send(r);
            }
            Input::Peer(incoming) => {
                let r = self.peer_request(&incoming.req);
                let _ = incoming.reply.send(r);
            }
            Input::AppHung(pid) => {
                if self.app.pid() == Some(pid) {
                    tracing::error!(
                        app = "slbd",
                        pid,
                        "application not answering its control socket: killing it"
                    );
                    self.app.kill();
                }
            }
            Input::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
            Input::Stop => {}
        }
    }

    fn heard(&mut self, link: usize, hb: Heartbeat) {
        let now_ms = self.now_ms();
        self.liveness.heard(link, now_ms);
        self.stats[link].received += 1;
        let Some(app) = hb.apps.iter().find(|a| a.id == SLBD_APP) else {
            return;
        };
        let state = from_wire(app.state);
        let before = self.dual.as_ref().map(|d| (d.node, d.state));
        if before != Some((hb.node, state)) {
            tracing::info!(dual = hb.node, state = state.name(), "dual state");
            if state == State::Active && before.is_some_and(|b| b.1 != State::Active) {
                *self.failover_counts.entry(hb.node).or_default() += 1;
                self.last_failover = Some(json!({
                    "at_ms": unix_ms(SystemTime::now()),
                    "active": hb.node,
                    "reason": "the dual became ACTIVE",
                }));
            }
        }
        self.dual = Some(DualSeen {
            node: hb.node,
            state,
            primary: app.primary,
            inhibited: app.inhibited,
            generation: hb.generation,
            heard: Instant::now(),
        });
        if state == State::Active {
            self.last_active_seen_ms = now_ms;
        }
        if let Some(d) = self.dual() {
            let _ = self.apply(Event::DualState(d), "dual state");
        }
    }

    /// A command from the local socket.
    fn local(&mut self, req: Request) -> Result<Value, String> {
        if req.peer {
            return peer::call(
                &self.cfg.peer_command_addrs(),
                &self.key,
                &PeerRequest::run(self.node.id, req.cmd),
                Duration::from_secs(15),
            )
            .map_err(|e| e.to_string());
        }
        tracing::info!(command = req.cmd.name(), node = self.node.id, "command");
        let dual = self.dual();
        let state = |a: &Agent| Ok(json!({"state": a.state.name()}));
        match req.cmd {
            Command::Query => Ok(self.query()),
            Command::Start => {
                self.keep_running = true;
                if !matches!(self.state, State::Offline | State::Failed) {
                    return Err(format!("slbd is already running ({})", self.state.name()));
                }
                self.restart_at_ms = None;
                self.apply(Event::Started, "START")?;
                state(self)
            }
            Command::Shutdown { forced } => {
                self.apply(Event::Shutdown { forced, dual }, req.cmd.name())?;
                self.keep_running = false;
                state(self)
            }
            Command::Restart { .. } | Command::Reboot => {
                let forced = matches!(req.cmd, Command::Restart { forced: true });
                self.apply(Event::Shutdown { forced, dual }, req.cmd.name())?;
                self.keep_running = true;
                self.apply(Event::Started, req.cmd.name())?;
                state(self)
            }
            Command::Switch => self.switch(),
            Command::Reload => self
                .app
                .call(&SlbdCommand::Reload, SLBD_TIMEOUT)
                .map_err(|e| format!("{e:#}")),
            Command::Test => {
                self.apply(Event::Test, "TEST")?;
                state(self)
            }
            Command::Untest => {
                self.apply(Event::Untest, "UNTEST")?;
                state(self)
            }
            Command::Enable => {
                self.apply(Event::Enable, "ENABLE")?;
                state(self)
            }
            Command::Disable { forced } => {
                self.apply(Event::Disable { forced, dual }, req.cmd.name())?;
                state(self)
            }
            Command::Inhibit => {
                self.apply(Event::Inhibit, "INHIBIT")?;
                Ok(json!({"state": self.state.name(), "inhibited": true}))
            }
            Command::Uninhibit => {
                self.apply(Event::Uninhibit, "UNINHIBIT")?;
                Ok(json!({"state": self.state.name(), "inhibited": false}))
            }
            Command::Primary => {
                self.node.primary = true;
                self.save_dynamic();
                tracing::info!(node = self.node.id, "this node is PRIMARY");
                let demoted = peer::call(
                    &self.cfg.peer_command_addrs(),
                    &self.key,
                    &PeerRequest::DemotePrimary { from: self.node.id },
                    PEER_TIMEOUT,
                );
                Ok(json!({
                    "primary": true,
                    "dual_demoted": demoted.as_ref().is_ok(),
                    "dual_error": demoted.err().map(|e| e.to_string()),
                }))
            }
            Command::GetPid => Ok(json!({"amgr": std::process::id(), "slbd": self.app.pid()})),
            Command::KillProc => {
                let pid = self.app.pid();
                let alive = pid.is_some_and(|p| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
                });
                Ok(json!({"slbd": pid, "alive": alive}))
            }
            Command::KillRm => peer::call(
                &self.cfg.peer_command_addrs(),
                &self.key,
                &PeerRequest::Ping { from: self.node.id },
                PEER_TIMEOUT,
            )
            .map(|v| json!({"dual_amgr": "alive", "dual": v}))
            .map_err(|e| format!("the dual's amgr does not answer: {e}")),
        }
    }

    /// SWITCH: the ACTIVE side always lets go first, so the VIP is never up on both.
    fn switch(&mut self) -> Result<Value, String> {
        let dual = self.dual();
        match self.state {
            State::Active => {
                self.apply(Event::Switch { dual }, "SWITCH")?;
                match peer::call(
                    &self.cfg.peer_command_addrs(),
                    &self.key,
                    &PeerRequest::TakeOver { from: self.node.id },
                    PEER_TIMEOUT,
                ) {
                    Ok(_) => Ok(json!({"state": self.state.name(), "dual": "ACTIVE"})),
                    Err(e) => {
                        tracing::error!(error = %e, "the dual did not take over: taking the VIP back");
                        let _ = self.apply(Event::Switch { dual: None }, "SWITCH failed");
                        Err(format!(
                            "the dual did not take over ({e}); this node is {} again",
                            self.state.name()
                        ))
                    }
                }
            }
            State::Standby if self.node.inhibited => Err("this node is INHIBITED".into()),
            State::Standby => {
                peer::call(
                    &self.cfg.peer_command_addrs(),
                    &self.key,
                    &PeerRequest::Release { from: self.node.id },
                    PEER_TIMEOUT,
                )
                .map_err(|e| format!("the dual did not release the VIP: {e}"))?;
                self.apply(Event::Switch { dual: None }, "SWITCH")?;
                Ok(json!({"state": self.state.name(), "dual": "STANDBY"}))
            }
            _ => self
                .apply(Event::Switch { dual }, "SWITCH")
                .map(|_| Value::Null),
        }
    }

    /// A request from the dual's amgr (already authenticated).
    fn peer_request(&mut self, req: &PeerRequest) -> Result<Value, String> {
        if req.from() == self.node.id {
            return Err("a request carrying this node's own id".into());
        }
        tracing::info!(request = ?req, "peer request");
        match req {
            PeerRequest::TakeOver { .. } => {
                if self.state != State::Standby {
                    return Err(format!("this node is {}, not STANDBY", self.state.name()));
                }
                self.apply(Event::Switch { dual: None }, "SWITCH from the dual")?;
                Ok(json!({"state": self.state.name()}))
            }
            PeerRequest::Release { from } => {
                if self.state != State::Active {
                    return Err(format!("this node is {}, not ACTIVE", self.state.name()));
                }
                let asker = Dual {
                    id: *from,
                    state: State::Standby,
                    primary: self.dual.as_ref().is_some_and(|d| d.primary),
                    inhibited: self.dual.as_ref().is_some_and(|d| d.inhibited),
                };
                self.apply(Event::Switch { dual: Some(asker) }, "SWITCH from the dual")?;
                Ok(json!({"state": self.state.name()}))
            }
            PeerRequest::Ping { .. } => Ok(json!({
                "node": self.node.id,
                "pid": std::process::id(),
                "state": self.state.name(),
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

    pub fn metrics(&self) -> crate::metrics::Sample {
        let now_ms = self.now_ms();
        let sync = self.sync_status.lock().clone();
        // Readiness means something on the STANDBY only.
        let replication = self
            .replication
            .lock()
            .clone()
            .filter(|_| self.state == State::Standby);
        crate::metrics::Sample {
            node: self.node.id,
            state: self.state,
            primary: self.node.primary,
            inhibited: self.node.inhibited,
            dual_state: self.dual.as_ref().map(|d| d.state),
            links: self
                .cfg
                .links
                .iter()
                .zip(&self.stats)
                .enumerate()
                .map(|(i, (l, st))| crate::metrics::LinkSample {
                    local: l.local.to_string(),
                    peer: l.peer.to_string(),
                    up: self.liveness.link_up(i, now_ms),
                    sent: st.sent,
                    send_errors: st.send_errors,
                    received: st.received,
                    rejected: st.rejected.clone(),
                })
                .collect(),
            transitions: self.transition_counts.clone(),
            failovers: self.failover_counts.clone(),
            app_failures: self.app_failures,
            config_in_sync: self.dual.as_ref().map(|d| d.generation == self.generation),
            sync_pushes: sync.pushes,
            sync_failures: sync.failures,
            takeover_ready: replication
                .as_ref()
                .and_then(|r| r["takeover_ready"].as_bool()),
            replication_lag_ms: replication.as_ref().and_then(|r| r["lag_ms"].as_u64()),
        }
    }

    pub fn query(&self) -> Value {
        let now_ms = self.now_ms();
        let sync = self.sync_status.lock().clone();
        let links: Vec<Value> = self
            .cfg
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "local": l.local.to_string(),
                    "peer": l.peer.to_string(),
                    "up": self.liveness.link_up(i, now_ms),
                    "sent": self.stats[i].sent,
                    "send_errors": self.stats[i].send_errors,
                    "received": self.stats[i].received,
                    "rejected": self.stats[i].rejected,
                })
            })
            .collect();
        let peer = match self.liveness.peer(now_ms) {
            Peer::Unknown => "unknown",
            Peer::Alive => "alive",
            Peer::Lost => "lost",
        };
        json!({
            "node": {
                "id": self.node.id,
                "state": self.state.name(),
                "primary": self.node.primary,
                "inhibited": self.node.inhibited,
                "slbd_pid": self.app.pid(),
                "config_generation": format!("{:016x}", self.generation),
            },
            "dual": self.dual.as_ref().map(|d| json!({
                "id": d.node,
                "state": d.state.name(),
                "primary": d.primary,
                "inhibited": d.inhibited,
                "heard_ms_ago": d.heard.elapsed().as_millis() as u64,
                "config_generation": format!("{:016x}", d.generation),
                "config_in_sync": d.generation == self.generation,
            })),
            "peer": peer,
            "links": links,
            "last_failover": self.last_failover,
            "transitions": self.transitions,
            "replication": self.replication.lock().clone(),
            "sync": {
                "peer": sync.peer,
                "last_ok_ms": sync.last_ok.map(unix_ms),
                "last_error": sync.last_error,
                "pushes": sync.pushes,
                "failures": sync.failures,
            },
        })
    }

    /// SIGTERM/SIGINT: stop balancing and stop slbd; the dual sees OFFLINE and takes over.
    pub fn stop(&mut self) {
        let _ = self.apply(
            Event::Shutdown {
                forced: true,
                dual: None,
            },
            "amgr stopping",
        );
        self.app.stop(Duration::from_secs(5));
        self.send_heartbeats();
    }
}

/// Reads the node's persisted flags, or takes them from amgr.json the first time.
pub fn load_dynamic(path: &Path, cfg_primary: bool) -> anyhow::Result<Dynamic> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Dynamic {
            primary: cfg_primary,
            inhibited: false,
        }),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn save_dynamic(path: &Path, d: Dynamic) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    slb_common::fs::write_private(path, (serde_json::to_string(&d)? + "\n").as_bytes())?;
    Ok(())
}

/// Runs the agent until [`Input::Stop`].
pub fn run(mut agent: Agent, rx: mpsc::Receiver<Input>) {
    let interval = agent.cfg.interval;
    let _ = agent.apply(Event::Started, "amgr started");
    let mut next_tick = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_tick {
            agent.tick();
            next_tick += interval;
            if next_tick < now {
                next_tick = now + interval;
            }
        }
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Input::Stop) => {
                agent.stop();
                return;
            }
            Ok(input) => agent.input(input),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
