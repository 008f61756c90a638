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

/// One heartbeat link's receive counters (the beacon counts what it sends).
#[derive(Debug, Default)]
pub(super) struct LinkStats {
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

    fn sample(&self, local: String, peer: String, up: bool, sent: (u64, u64)) -> LinkSample {
        LinkSample {
            local,
            peer,
            up,
            sent: sent.0,
            send_errors: sent.1,
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
    /// What `query` shows of the isolation guard.
    guard: Value,
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
        can_serve: v.guard["can_serve"].as_bool(),
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
            "clock_offset_ms": d.clock_offset_ms,
            "config_generation": format!("{:016x}", d.generation),
            "config_in_sync": d.generation == v.generation,
        })),
        "peer": peer,
        "links": links,
        "last_failover": v.history.last_failover,
        "transitions": v.history.transitions,
        "replication": v.replication,
        "guard": v.guard,
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
                    self.beacon.sent(i),
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
            guard: self.guard_view(),
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::fsm::State::*;

    const NODE: Node = Node {
        id: 1,
        primary: true,
        inhibited: false,
        fit: true,
    };

    fn dual_seen(state: State, generation: u64) -> DualSeen {
        DualSeen {
            node: 2,
            state,
            primary: false,
            inhibited: true,
            generation,
            boot: 1,
            seq: 1,
            heard_ms: 9_800,
            clock_offset_ms: -23_400,
        }
    }

    fn link() -> LinkSample {
        let mut stats = LinkStats {
            received: 8,
            ..LinkStats::default()
        };
        stats.reject("replay");
        stats.reject("replay");
        stats.sample(
            "192.168.100.1".into(),
            "192.168.100.2".into(),
            true,
            (10, 1),
        )
    }

    /// Node 1 STANDBY at 10 s on the agent's clock, generation 0xab, dual as given.
    fn view<'a>(history: &'a History, dual: Option<&'a DualSeen>) -> View<'a> {
        View {
            now_ms: 10_000,
            node: NODE,
            state: Standby,
            slbd_pid: Some(4242),
            generation: 0xab,
            dual,
            peer: if dual.is_some() {
                Peer::Alive
            } else {
                Peer::Unknown
            },
            links: vec![link()],
            history,
            replication: Some(json!({"takeover_ready": true, "lag_ms": 7})),
            sync: sync::Status {
                last_ok: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(5_000)),
                last_error: None,
                pushes: 3,
                failures: 1,
                peer: Some("192.168.100.2".into()),
            },
            guard: json!({"enabled": true, "can_serve": false}),
        }
    }

    #[test]
    fn the_transitions_log_keeps_the_last_20_newest_last() {
        let mut h = History::default();
        for i in 0..25u64 {
            h.changed(1, Standby, Maintenance, &format!("event {i}"), i);
        }
        assert_eq!(h.transitions.len(), 20);
        assert_eq!(h.transitions[0]["event"], "event 5", "the oldest kept");
        assert_eq!(
            h.transitions[19],
            json!({"at_ms": 24, "from": "STANDBY", "to": "MAINTENANCE", "event": "event 24"}),
            "the newest last"
        );
        assert_eq!(
            h.counts[&(Standby, Maintenance)],
            25,
            "the counters count every transition, not only those kept"
        );
    }

    #[test]
    fn transitions_are_counted_by_from_and_to() {
        let mut h = History::default();
        h.changed(1, Offline, Init, "amgr started", 1);
        h.changed(1, Init, Standby, "initialised", 2);
        h.changed(1, Standby, Active, "dual lost", 3);
        h.changed(1, Active, Failed, "the application exited", 4);
        h.changed(1, Failed, Init, "restart after failure", 5);
        h.changed(1, Init, Standby, "initialised", 6);
        let expected: BTreeMap<(State, State), u64> = [
            ((Offline, Init), 1),
            ((Init, Standby), 2),
            ((Standby, Active), 1),
            ((Active, Failed), 1),
            ((Failed, Init), 1),
        ]
        .into();
        assert_eq!(h.counts, expected);
    }

    #[test]
    fn this_node_becoming_active_counts_a_failover_with_its_reason() {
        let mut h = History::default();
        h.changed(1, Init, Standby, "initialised", 1);
        assert_eq!(h.failovers, BTreeMap::new());
        assert_eq!(h.last_failover, None);
        h.changed(1, Standby, Active, "dual lost", 2);
        h.changed(1, Active, Standby, "SWITCH", 3);
        h.changed(1, Standby, Active, "SWITCH from the dual", 4);
        assert_eq!(h.failovers, [(1, 2)].into());
        assert_eq!(
            h.last_failover,
            Some(json!({"at_ms": 4, "active": 1, "reason": "SWITCH from the dual"}))
        );
    }

    #[test]
    fn the_dual_seen_becoming_active_counts_a_failover_but_first_heard_active_does_not() {
        let mut h = History::default();
        h.dual_state(2, None, Active, 1);
        assert_eq!(h.failovers, BTreeMap::new(), "ACTIVE before we heard it");
        h.dual_state(2, Some(Active), Standby, 2);
        h.dual_state(2, Some(Standby), Active, 3);
        assert_eq!(h.failovers, [(2, 1)].into());
        assert_eq!(
            h.last_failover,
            Some(json!({"at_ms": 3, "active": 2, "reason": "the dual became ACTIVE"}))
        );
    }

    #[test]
    fn refused_datagrams_are_counted_by_reason() {
        let mut l = LinkStats::default();
        assert_eq!(l.reject("mac"), 1);
        assert_eq!(l.reject("foreign"), 1);
        assert_eq!(l.reject("mac"), 2);
        assert_eq!(
            l.rejected,
            [("foreign".to_string(), 1), ("mac".to_string(), 2)].into()
        );
    }

    #[test]
    fn query_shows_this_node_the_dual_the_links_and_the_sync() {
        let mut h = History::default();
        h.changed(1, Init, Standby, "initialised", 1_000);
        let d = dual_seen(Active, 0xab);
        let q = query(&view(&h, Some(&d)));
        assert_eq!(
            q["node"],
            json!({"id": 1, "state": "STANDBY", "primary": true, "inhibited": false,
                   "slbd_pid": 4242, "config_generation": "00000000000000ab"})
        );
        assert_eq!(
            q["dual"],
            json!({"id": 2, "state": "ACTIVE", "primary": false, "inhibited": true,
                   "heard_ms_ago": 200, "clock_offset_ms": -23_400,
                   "config_generation": "00000000000000ab", "config_in_sync": true})
        );
        assert_eq!(q["peer"], "alive");
        assert_eq!(
            q["links"],
            json!([{"local": "192.168.100.1", "peer": "192.168.100.2", "up": true,
                    "sent": 10, "send_errors": 1, "received": 8, "rejected": {"replay": 2}}])
        );
        assert_eq!(
            q["transitions"],
            json!([{"at_ms": 1_000, "from": "INIT", "to": "STANDBY", "event": "initialised"}])
        );
        assert_eq!(q["last_failover"], Value::Null);
        assert_eq!(
            q["replication"],
            json!({"takeover_ready": true, "lag_ms": 7})
        );
        assert_eq!(
            q["sync"],
            json!({"peer": "192.168.100.2", "last_ok_ms": 5_000, "last_error": null,
                   "pushes": 3, "failures": 1})
        );
    }

    #[test]
    fn query_before_the_dual_is_heard_shows_no_dual_and_an_unknown_peer() {
        let h = History::default();
        let q = query(&view(&h, None));
        assert_eq!(q["dual"], Value::Null);
        assert_eq!(q["peer"], "unknown");
    }

    #[test]
    fn query_shows_a_dual_with_another_generation_out_of_sync() {
        let h = History::default();
        let d = dual_seen(Standby, 0xcd);
        let q = query(&view(&h, Some(&d)));
        assert_eq!(q["dual"]["config_generation"], "00000000000000cd");
        assert_eq!(q["dual"]["config_in_sync"], false);
    }

    #[test]
    fn the_metrics_sample_carries_the_states_flags_links_and_counters() {
        let mut h = History::default();
        h.changed(1, Standby, Active, "dual lost", 1);
        h.changed(1, Active, Failed, "the application exited", 2);
        h.app_failed();
        h.changed(1, Failed, Init, "restart after failure", 3);
        h.changed(1, Init, Standby, "initialised", 4);
        let d = dual_seen(Active, 0xcd);
        let s = sample(&view(&h, Some(&d)));
        let expected = Sample {
            node: 1,
            state: Standby,
            primary: true,
            inhibited: false,
            dual_state: Some(Active),
            links: vec![link()],
            transitions: [
                ((Standby, Active), 1),
                ((Active, Failed), 1),
                ((Failed, Init), 1),
                ((Init, Standby), 1),
            ]
            .into(),
            failovers: [(1, 1)].into(),
            app_failures: 1,
            config_in_sync: Some(false),
            sync_pushes: 3,
            sync_failures: 1,
            takeover_ready: Some(true),
            replication_lag_ms: Some(7),
            can_serve: Some(false),
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn the_metrics_show_replication_readiness_only_on_a_standby() {
        let h = History::default();
        for state in [Active, Init, Maintenance, Failed, Offline] {
            let s = sample(&View {
                state,
                ..view(&h, None)
            });
            assert_eq!(s.takeover_ready, None, "{state:?}");
            assert_eq!(s.replication_lag_ms, None, "{state:?}");
        }
    }

    #[test]
    fn the_metrics_have_no_dual_state_or_sync_verdict_before_the_dual_is_heard() {
        let h = History::default();
        let s = sample(&view(&h, None));
        assert_eq!(s.dual_state, None);
        assert_eq!(s.config_in_sync, None);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("amgr-state-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn without_a_state_file_the_flags_come_from_amgr_json() {
        let dir = scratch("missing");
        let path = dir.join("state.json");
        for primary in [true, false] {
            assert_eq!(
                load_dynamic(&path, primary).unwrap(),
                Dynamic {
                    primary,
                    inhibited: false
                }
            );
        }
    }

    #[test]
    fn saved_flags_read_back_over_amgr_json() {
        let dir = scratch("round-trip");
        let path = dir.join("sub").join("state.json");
        for flags in [
            Dynamic {
                primary: false,
                inhibited: true,
            },
            Dynamic {
                primary: true,
                inhibited: false,
            },
        ] {
            save_dynamic(&path, flags).unwrap();
            assert_eq!(load_dynamic(&path, !flags.primary).unwrap(), flags);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_state_file_is_readable_by_its_owner_only() {
        let dir = scratch("mode");
        let path = dir.join("state.json");
        save_dynamic(
            &path,
            Dynamic {
                primary: true,
                inhibited: true,
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }

    #[test]
    fn a_state_file_that_is_not_the_flags_is_refused_naming_it() {
        let dir = scratch("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, "{\"primary\": true}\n").unwrap();
        let e = load_dynamic(&path, true).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.starts_with(&path.display().to_string()), "{e}");
    }
}
