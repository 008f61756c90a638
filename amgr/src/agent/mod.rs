//! SHELL: the agent, one thread that owns this node's state for slbd and the only place it
//! changes (through [`crate::fsm::step`], whose actions it carries out). Inputs arrive on one
//! channel: heartbeats from the link threads, commands from the local socket and from the
//! dual's amgr, a hung-slbd report from the watchdog, and the stop signal. A tick every
//! heartbeat interval reaps slbd, feeds the events [`crate::timers::due`] finds due (the
//! restart after a failure, the end of INIT or its timeout, a lost or absent dual, nobody
//! ACTIVE) to the state machine, and sends our heartbeat (also sent at once after every state
//! change, so the dual learns fast).
//!
//! This file holds the agent, its loop and its inputs; `effects` carries out the state
//! machine's actions, `commands` answers the operator and the dual, `observe` keeps what
//! `query` and the metrics show and the state file.
//! Side effects: slbd as a child and its control socket (`effects`), heartbeats, peer
//! requests, the state file.

mod beacon;
mod commands;
mod effects;
mod guard;
mod observe;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use heartbeat::liveness::{Liveness, Peer};
use heartbeat::msg::{AppState, Heartbeat, Rejected};
use parking_lot::Mutex;
use serde_json::Value;
use slbd::ctl::proto::Command as SlbdCommand;

use crate::app::App;
use crate::command::Request;
use crate::config::{Config, Dynamic};
use crate::fsm::{Dual, Event, Node, State};
use crate::{peer, sync, timers};

pub use beacon::Beacon;
pub use observe::load_dynamic;
use observe::{History, LinkStats};

/// The application id slbd has in heartbeats (amgr manages one application).
const SLBD_APP: u8 = 0;
const SLBD_TIMEOUT: Duration = Duration::from_secs(5);
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// A TakeOver is answered once the dual's slbd has loaded (up to [`SLBD_TIMEOUT`]).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(7);
/// A STANDBY's SWITCH waits for the ACTIVE's hand-over: its slbd's, then the TakeOver.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(12);

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

/// The dual as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DualSeen {
    node: u32,
    state: State,
    primary: bool,
    inhibited: bool,
    generation: u64,
    /// The heartbeat this came from: its sender's boot and sequence.
    boot: u64,
    seq: u64,
    /// When, on the agent's clock (ms).
    heard_ms: u64,
    /// The dual's wall clock less ours as its heartbeat showed it (plus the link's delay).
    /// Heartbeats do not depend on it; logs and certificates do.
    clock_offset_ms: i64,
}

/// Whether `hb` says nothing newer than the heartbeat `seen` came from: a copy of it from
/// another link, or an older one that one link delivered late (a loaded or flooded link can
/// hold back a heartbeat sent before the dual changed state; believed, an ACTIVE that has
/// just let go would look ACTIVE again and undo a switch).
fn stale(seen: Option<&DualSeen>, hb: &Heartbeat) -> bool {
    seen.is_some_and(|d| d.node == hb.node && d.boot == hb.boot && hb.seq <= d.seq)
}

/// The state as the heartbeat carries it. The wire has its own enum so that heartbeat's
/// codec does not depend on amgr; these two are the only crossings.
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
    beacon: Beacon,
    stats: Vec<LinkStats>,
    node: Node,
    state: State,
    app: App,
    /// slbd's pid for the watchdog (0: none).
    app_pid: Arc<AtomicU32>,
    /// The agent's monotonic clock starts here (amgr's start).
    epoch: Instant,
    liveness: Liveness,
    peer_was: Peer,
    dual: Option<DualSeen>,
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
    history: History,
    /// The state-change hooks amgr.json names.
    hooks: crate::hooks::Hooks,
    generation: u64,
    generation_mtime: Option<SystemTime>,
    sync_status: Arc<Mutex<sync::Status>>,
    /// Read by the sync thread: only the ACTIVE node pushes its configuration.
    active_flag: Arc<AtomicBool>,
    replication: Arc<Mutex<Option<Value>>>,
    /// The guard thread's last checks.
    guard: Arc<Mutex<crate::guard::probe::View>>,
    /// Why the guard last held this node back from taking over (until it serves, or the dual
    /// does).
    held_back: Option<String>,
    /// When this ACTIVE last tried to hand over because it cannot serve.
    guard_handover_at: Option<Instant>,
    /// When the dual's state last changed, as its heartbeats say (ms).
    dual_state_since_ms: u64,
    /// The dual's clock was last seen further from ours than `max_skew_ms` (warned once).
    clock_warned: bool,
    /// The dual asked for the VIP (its SWITCH): handed over once the answer is out.
    release_to: Option<Dual>,
    /// This takeover is a planned switch: the dual still balances (slbd `take_over`).
    planned_takeover: bool,
    /// A local SWITCH on this STANDBY, answered once the dual's TakeOver made it ACTIVE.
    pending_switch: Option<(mpsc::Sender<Result<Value, String>>, Instant)>,
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
    /// Written by the guard thread.
    pub guard: Arc<Mutex<crate::guard::probe::View>>,
    /// The agent's clock starts here (the guard times its checks on it).
    pub epoch: Instant,
}

impl Agent {
    pub fn new(
        cfg: Config,
        key: Vec<u8>,
        beacon: Beacon,
        dynamic: Dynamic,
        shared: Shared,
        log_format: slb_common::logging::LogFormat,
    ) -> Agent {
        let n = cfg.links.len();
        let hooks = cfg.hooks.clone();
        Agent {
            node: Node {
                id: cfg.node_id,
                primary: dynamic.primary,
                inhibited: dynamic.inhibited,
                fit: true,
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
            beacon,
            stats: (0..n).map(|_| LinkStats::default()).collect(),
            state: State::Offline,
            app_pid: shared.app_pid,
            epoch: shared.epoch,
            peer_was: Peer::Unknown,
            dual: None,
            init_since_ms: 0,
            last_active_seen_ms: 0,
            restart_at_ms: None,
            failures_in_row: 0,
            keep_running: true,
            last_announce: None,
            history: History::default(),
            hooks: crate::hooks::Hooks::new(hooks),
            generation: 0,
            generation_mtime: None,
            sync_status: shared.sync_status,
            active_flag: shared.active_flag,
            replication: shared.replication,
            guard: shared.guard,
            held_back: None,
            guard_handover_at: None,
            dual_state_since_ms: 0,
            clock_warned: false,
            release_to: None,
            planned_takeover: false,
            pending_switch: None,
        }
    }

    /// The agent's clock: ms since amgr started.
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
        self.beacon.alive();
        self.beacon.publish(self.said());
        self.guard_tick();
        if self
            .pending_switch
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() >= *until)
        {
            if let Some((reply, _)) = self.pending_switch.take() {
                let _ = reply.send(Err(format!(
                    "the dual did not hand over in time; this node is {}",
                    self.state.name()
                )));
            }
        }
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
                Peer::Alive => {
                    tracing::info!(node = self.node.id, "dual heard");
                    // Its state counts from now: the guard's rounds from before a healed
                    // split (cut off, every one unfit) must not hand over to a dual whose
                    // last known state, from before the split, is the same STANDBY.
                    self.dual_state_since_ms = now_ms;
                }
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
                let n = self.stats[link].reject(&reason);
                // The first heartbeats after either side starts do not echo yet: normal.
                let expected = why == Rejected::Unconfirmed && n < 16;
                if n.is_power_of_two() && !expected {
                    tracing::warn!(link, reason = %reason, count = n, error = %why, "heartbeat rejected");
                }
            }
            Input::Foreign { link } => {
                let n = self.stats[link].reject("foreign");
                if n.is_power_of_two() {
                    tracing::warn!(
                        link,
                        count = n,
                        "datagram from an address other than the peer's"
                    );
                }
            }
            Input::Local { req, reply }
                if req.cmd == crate::command::Command::Switch
                    && !req.peer
                    && self.state == State::Standby =>
            {
                // Answered when the dual's TakeOver has made this node ACTIVE.
                match self.ask_release() {
                    Ok(()) => self.pending_switch = Some((reply, Instant::now() + SWITCH_TIMEOUT)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Input::Local { req, reply } => {
                let _ = reply.send(self.local(req));
            }
            Input::Peer(incoming) => {
                let _ = incoming.reply.send(self.peer_request(&incoming.req));
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
        if stale(self.dual.as_ref(), &hb) {
            return;
        }
        let Some(app) = hb.apps.iter().find(|a| a.id == SLBD_APP) else {
            return;
        };
        let state = from_wire(app.state);
        let clock_offset_ms = (hb.sent_ms as i64).wrapping_sub(unix_ms(SystemTime::now()) as i64);
        let far = clock_offset_ms.unsigned_abs() > self.cfg.max_skew_ms;
        if far && !self.clock_warned {
            tracing::warn!(
                dual = hb.node,
                offset_ms = clock_offset_ms,
                max_skew_ms = self.cfg.max_skew_ms,
                "the dual's clock is far from ours (heartbeats still count; run NTP for logs and certificates)"
            );
        }
        self.clock_warned = far;
        let before = self.dual.as_ref().map(|d| (d.node, d.state));
        if before != Some((hb.node, state)) {
            self.dual_state_since_ms = now_ms;
            tracing::info!(dual = hb.node, state = state.name(), "dual state");
            let at_ms = unix_ms(SystemTime::now());
            self.history
                .dual_state(hb.node, before.map(|b| b.1), state, at_ms);
        }
        self.dual = Some(DualSeen {
            node: hb.node,
            state,
            primary: app.primary,
            inhibited: app.inhibited,
            generation: hb.generation,
            boot: hb.boot,
            seq: hb.seq,
            heard_ms: now_ms,
            clock_offset_ms,
        });
        if state == State::Active {
            self.last_active_seen_ms = now_ms;
            self.held_back = None;
        }
        if let Some(d) = self.dual() {
            let _ = self.apply(Event::DualState(d), "dual state");
        }
    }

    /// SIGTERM/SIGINT: stop balancing and stop slbd; the dual sees OFFLINE and takes over.
    pub fn stop(&mut self) {
        let _ = self.apply(
            Event::Shutdown {
                forced: true,
                restart: false,
                dual: None,
            },
            "amgr stopping",
        );
        self.app.stop(Duration::from_secs(5));
        self.beacon.last(self.said());
    }
}

/// Runs the agent until [`Input::Stop`].
pub fn run(mut agent: Agent, rx: mpsc::Receiver<Input>) {
    let interval = agent.cfg.interval;
    let _ = agent.apply(Event::Started, "amgr started");
    let mut next_tick = Instant::now();
    loop {
        // What queued while the agent waited on slbd or the dual goes first: a heartbeat
        // that arrived during a slow load must count before the timers judge the dual lost.
        loop {
            match rx.try_recv() {
                Ok(input) => {
                    if !agent.take(input) {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            agent.tick();
            next_tick += interval;
            if next_tick < now {
                next_tick = now + interval;
            }
        }
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(input) => {
                if !agent.take(input) {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Agent {
    /// One input; false once it was [`Input::Stop`] (the agent has stopped).
    fn take(&mut self, input: Input) -> bool {
        if matches!(input, Input::Stop) {
            self.stop();
            return false;
        }
        self.input(input);
        self.after_input();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_crosses_the_heartbeat_and_comes_back_as_itself() {
        for s in [
            State::Offline,
            State::Init,
            State::Standby,
            State::Active,
            State::Maintenance,
            State::Failed,
        ] {
            assert_eq!(from_wire(to_wire(s)), s);
        }
    }

    #[test]
    fn a_heartbeat_is_believed_only_if_newer_than_the_last_one_believed() {
        let seen = DualSeen {
            node: 2,
            state: State::Standby,
            primary: false,
            inhibited: false,
            generation: 0,
            boot: 7,
            seq: 10,
            heard_ms: 0,
            clock_offset_ms: 0,
        };
        let hb = |node: u32, boot: u64, seq: u64| Heartbeat {
            node,
            boot,
            echo: 0,
            seq,
            sent_ms: 0,
            generation: 0,
            link: 0,
            apps: vec![],
        };
        let rows = [
            (hb(2, 7, 11), false, "the next heartbeat"),
            (
                hb(2, 7, 10),
                true,
                "the same heartbeat's copy on another link",
            ),
            (hb(2, 7, 9), true, "an older one a link held back"),
            (
                hb(2, 8, 0),
                false,
                "the dual restarted: a new boot starts again at 0",
            ),
            (hb(3, 7, 1), false, "another node"),
        ];
        for (h, want, what) in rows {
            assert_eq!(stale(Some(&seen), &h), want, "{what}");
        }
        assert!(!stale(None, &hb(2, 7, 0)), "the first heartbeat heard");
    }
}
