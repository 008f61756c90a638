//! What the agent shows and keeps: the transitions log and failover counts ([`History`]),
//! the heartbeat links' counters, `query`'s JSON and the metrics [`Sample`] (built from a
//! [`View`], plain data gathered from the agent, so they are tested without sockets or a
//! child), and the state file with the node's PRIMARY/INHIBITED flags.
//! Side effects: reading and writing the state file only.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use heartbeat::liveness::Peer;
use serde_json::{json, Value};

use super::{unix_ms, Agent, DualSeen};
use crate::config::Dynamic;
use crate::fsm::{Node, State};
use crate::metrics::{LinkSample, Sample};
use crate::sync;

/// How many transitions `query` shows.
const TRANSITIONS_KEPT: usize = 20;

/// This node's state changes and the failovers seen from here.
#[derive(Debug, Default)]
pub(super) struct History {
    /// The last [`TRANSITIONS_KEPT`] transitions, newest last.
    transitions: VecDeque<Value>,
    /// State changes of this node by (from, to).
    counts: BTreeMap<(State, State), u64>,
    /// Times the ACTIVE role moved, by the node that took it.
    failovers: BTreeMap<u32, u64>,
    last_failover: Option<Value>,
    app_failures: u64,
}

impl History {
    /// This node (`node`) went from `from` to `to` because of `why`, at `at_ms` (Unix ms).
    pub(super) fn changed(&mut self, node: u32, from: State, to: State, why: &str, at_ms: u64) {
        self.transitions.push_back(json!({
            "at_ms": at_ms,
            "from": from.name(),
            "to": to.name(),
            "event": why,
        }));
        while self.transitions.len() > TRANSITIONS_KEPT {
            self.transitions.pop_front();
        }
        *self.counts.entry((from, to)).or_default() += 1;
        if to == State::Active {
            self.failover(node, why, at_ms);
        }
    }

    /// The dual's heartbeat says `state` where its last one said `before` (None: the first
    /// heard). Only a dual seen becoming ACTIVE counts: one heard ACTIVE from the start was
    /// ACTIVE before we knew it.
    pub(super) fn dual_state(
        &mut self,
        dual: u32,
        before: Option<State>,
        state: State,
        at_ms: u64,
    ) {
        if state == State::Active && before.is_some_and(|b| b != State::Active) {
            self.failover(dual, "the dual became ACTIVE", at_ms);
        }
    }

    pub(super) fn app_failed(&mut self) {
        self.app_failures += 1;
    }

    fn failover(&mut self, active: u32, reason: &str, at_ms: u64) {
        *self.failovers.entry(active).or_default() += 1;
        self.last_failover = Some(json!({
            "at_ms": at_ms,
            "active": active,
            "reason": reason,
        }));
    }
}

/// One heartbeat link's counters.
#[derive(Debug, Default)]
pub(super) struct LinkStats {
    pub(super) sent: u64,
    pub(super) send_errors: u64,
    pub(super) received: u64,
    rejected: BTreeMap<String, u64>,
}

impl LinkStats {
    /// Counts a refused datagram; returns how many were refused for `reason` so far.
    pub(super) fn reject(&mut self, reason: &str) -> u64 {
        let n = self.rejected.entry(reason.to_string()).or_default();
        *n += 1;
        *n
    }

    fn sample(&self, local: String, peer: String, up: bool) -> LinkSample {
        LinkSample {
            local,
            peer,
            up,
            sent: self.sent,
            send_errors: self.send_errors,
            received: self.received,
            rejected: self.rejected.clone(),
        }
    }
}

/// What `query` and the metrics show, gathered from the agent at one moment.
pub(super) struct View<'a> {
    /// The agent's clock (ms).
    now_ms: u64,
    node: Node,
    state: State,
    slbd_pid: Option<u32>,
    generation: u64,
    dual: Option<&'a DualSeen>,
    peer: Peer,
    links: Vec<LinkSample>,
    history: &'a History,
    /// The `replication` part of slbd's last status answer.
    replication: Option<Value>,
    sync: sync::Status,
}

/// The metrics sample of `v`.
pub(super) fn sample(v: &View) -> Sample {
    // Readiness means something on the STANDBY only.
    let replication = v.replication.as_ref().filter(|_| v.state == State::Standby);
    Sample {
        node: v.node.id,
        state: v.state,
        primary: v.node.primary,
        inhibited: v.node.inhibited,
        dual_state: v.dual.map(|d| d.state),
        links: v.links.clone(),
        transitions: v.history.counts.clone(),
        failovers: v.history.failovers.clone(),
        app_failures: v.history.app_failures,
        config_in_sync: v.dual.map(|d| d.generation == v.generation),
        sync_pushes: v.sync.pushes,
        sync_failures: v.sync.failures,
        takeover_ready: replication.and_then(|r| r["takeover_ready"].as_bool()),
        replication_lag_ms: replication.and_then(|r| r["lag_ms"].as_u64()),
    }
}

/// `query`'s answer for `v`.
pub(super) fn query(v: &View) -> Value {
    let links: Vec<Value> = v
        .links
        .iter()
        .map(|l| {
            json!({
                "local": l.local,
                "peer": l.peer,
                "up": l.up,
                "sent": l.sent,
                "send_errors": l.send_errors,
                "received": l.received,
                "rejected": l.rejected,
            })
        })
        .collect();
    let peer = match v.peer {
        Peer::Unknown => "unknown",
        Peer::Alive => "alive",
        Peer::Lost => "lost",
    };
    json!({
        "node": {
            "id": v.node.id,
            "state": v.state.name(),
            "primary": v.node.primary,
            "inhibited": v.node.inhibited,
            "slbd_pid": v.slbd_pid,
            "config_generation": format!("{:016x}", v.generation),
        },
        "dual": v.dual.map(|d| json!({
            "id": d.node,
            "state": d.state.name(),
            "primary": d.primary,
            "inhibited": d.inhibited,
            "heard_ms_ago": v.now_ms.saturating_sub(d.heard_ms),
            "config_generation": format!("{:016x}", d.generation),
            "config_in_sync": d.generation == v.generation,
        })),
        "peer": peer,
        "links": links,
        "last_failover": v.history.last_failover,
        "transitions": v.history.transitions,
        "replication": v.replication,
        "sync": {
            "peer": v.sync.peer,
            "last_ok_ms": v.sync.last_ok.map(unix_ms),
            "last_error": v.sync.last_error,
            "pushes": v.sync.pushes,
            "failures": v.sync.failures,
        },
    })
}

impl Agent {
    fn view(&self) -> View<'_> {
        let now_ms = self.now_ms();
        let links = (self.cfg.links.iter().zip(&self.stats).enumerate())
            .map(|(i, (l, st))| {
                st.sample(
                    l.local.to_string(),
                    l.peer.to_string(),
                    self.liveness.link_up(i, now_ms),
                )
            })
            .collect();
        View {
            now_ms,
            node: self.node,
            state: self.state,
            slbd_pid: self.app.pid(),
            generation: self.generation,
            dual: self.dual.as_ref(),
            peer: self.liveness.peer(now_ms),
            links,
            history: &self.history,
            replication: self.replication.lock().clone(),
            sync: self.sync_status.lock().clone(),
        }
    }

    pub fn metrics(&self) -> Sample {
        sample(&self.view())
    }

    pub fn query(&self) -> Value {
        query(&self.view())
    }

    pub(super) fn save_dynamic(&self) {
        let flags = Dynamic {
            primary: self.node.primary,
            inhibited: self.node.inhibited,
        };
        if let Err(e) = save_dynamic(&self.cfg.state_file, flags) {
            tracing::error!(path = %self.cfg.state_file.display(), error = %format!("{e:#}"), "cannot save the node's PRIMARY/INHIBITED flags");
        }
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

/// Writes the flags atomically (a crash leaves the old flags or the new ones), mode 0600.
fn save_dynamic(path: &Path, d: Dynamic) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    slb_common::fs::write_private(path, (serde_json::to_string(&d)? + "\n").as_bytes())?;
    Ok(())
}
