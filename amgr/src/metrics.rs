//! amgr's metric families, built from a [`Sample`] of the agent's counters (the agent thread
//! takes the sample, the metrics thread encodes it): this node's and the dual's state, the
//! heartbeat links, state transitions, failovers, slbd failures and the config sync. Pure.

use std::collections::BTreeMap;

use slb_common::metrics::Family;

use crate::fsm::State;

const STATES: [State; 6] = [
    State::Offline,
    State::Init,
    State::Standby,
    State::Active,
    State::Maintenance,
    State::Failed,
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkSample {
    pub local: String,
    pub peer: String,
    pub up: bool,
    pub sent: u64,
    pub send_errors: u64,
    pub received: u64,
    /// Rejected datagrams by reason (mac, replay, unconfirmed, foreign, ...).
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub node: u32,
    pub state: State,
    pub primary: bool,
    pub inhibited: bool,
    pub dual_state: Option<State>,
    pub links: Vec<LinkSample>,
    /// State changes of this node by (from, to).
    pub transitions: BTreeMap<(State, State), u64>,
    /// Times the ACTIVE role moved, by the node that took it (as seen from here).
    pub failovers: BTreeMap<u32, u64>,
    pub app_failures: u64,
    pub config_in_sync: Option<bool>,
    pub sync_pushes: u64,
    pub sync_failures: u64,
    /// From slbd's last status answer: a STANDBY holding its dual's whole flow table; None
    /// when replication is off or slbd has not answered.
    pub takeover_ready: Option<bool>,
    /// The STANDBY's replication lag (ms).
    pub replication_lag_ms: Option<u64>,
    /// The isolation guard's last verdict; None when it is off or has not checked yet.
    pub can_serve: Option<bool>,
}

fn one_hot(f: &mut Family, extra: &[(&'static str, String)], state: Option<State>) {
    for s in STATES {
        let mut l = extra.to_vec();
        l.push(("state", s.name().to_string()));
        f.set(l, if Some(s) == state { 1.0 } else { 0.0 });
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

pub fn families(s: &Sample) -> Vec<Family> {
    let node = vec![("node", s.node.to_string())];
    let mut state = Family::gauge(
        "amgr_state",
        "1 for this node's current state (OFFLINE, INIT, STANDBY, ACTIVE, MAINTENANCE, FAILED).",
    );
    one_hot(&mut state, &node, Some(s.state));
    let mut dual = Family::gauge(
        "amgr_dual_state",
        "1 for the dual's last heard state; all 0 before it is first heard.",
    );
    one_hot(&mut dual, &[], s.dual_state);
    let mut primary = Family::gauge("amgr_primary", "1 when this node is PRIMARY.");
    primary.set(node.clone(), flag(s.primary));
    let mut inhibited = Family::gauge(
        "amgr_inhibited",
        "1 when this node is INHIBITED (never ACTIVE).",
    );
    inhibited.set(node.clone(), flag(s.inhibited));

    let mut up = Family::gauge(
        "amgr_heartbeat_link_up",
        "1 when the dual's heartbeat arrives on the link within the dead time.",
    );
    let mut sent = Family::counter("amgr_heartbeats_sent", "Heartbeats sent, per link.");
    let mut send_errors = Family::counter(
        "amgr_heartbeat_send_errors",
        "Heartbeats that could not be sent, per link.",
    );
    let mut received = Family::counter(
        "amgr_heartbeats_received",
        "Authentic heartbeats received, per link.",
    );
    let mut rejected = Family::counter(
        "amgr_heartbeats_rejected",
        "Datagrams refused on a heartbeat link, by reason (mac = forged or wrong key, \
         replay, unconfirmed = no echo of our boot, foreign = not from the peer's address, ...).",
    );
    for l in &s.links {
        let link = || vec![("local", l.local.clone()), ("peer", l.peer.clone())];
        up.set(link(), flag(l.up));
        sent.count(link(), l.sent);
        send_errors.count(link(), l.send_errors);
        received.count(link(), l.received);
        for reason in ["mac", "replay", "unconfirmed"] {
            if !l.rejected.contains_key(reason) {
                let mut x = link();
                x.push(("reason", reason.to_string()));
                rejected.count(x, 0);
            }
        }
        for (reason, n) in &l.rejected {
            let mut x = link();
            x.push(("reason", reason.clone()));
            rejected.count(x, *n);
        }
    }

    let mut transitions = Family::counter(
        "amgr_state_transitions",
        "This node's state changes, by from and to state.",
    );
    for ((from, to), n) in &s.transitions {
        transitions.count(
            vec![
                ("from", from.name().to_string()),
                ("to", to.name().to_string()),
            ],
            *n,
        );
    }
    let mut failovers = Family::counter(
        "amgr_failovers",
        "Times the ACTIVE role moved to a node (label active = that node's id), as seen here.",
    );
    for (n, c) in &s.failovers {
        failovers.count(vec![("active", n.to_string())], *c);
    }
    let mut app_failures = Family::counter(
        "amgr_app_failures",
        "Times slbd failed (exited, could not start or activate, or hung).",
    );
    app_failures.count(node.clone(), s.app_failures);

    let mut in_sync = Family::gauge(
        "amgr_config_in_sync",
        "1 when the dual reports the same slb_conf.json generation; absent before it is heard.",
    );
    if let Some(b) = s.config_in_sync {
        in_sync.set(vec![], flag(b));
    }
    let mut pushes = Family::counter(
        "amgr_config_sync_pushes",
        "slb_conf.json copies pushed to the dual.",
    );
    pushes.count(vec![], s.sync_pushes);
    let mut sync_failures = Family::counter(
        "amgr_config_sync_failures",
        "Failed attempts to push slb_conf.json to the dual.",
    );
    sync_failures.count(vec![], s.sync_failures);
    let mut ready = Family::gauge(
        "amgr_takeover_ready",
        "1 when this STANDBY's slbd holds the ACTIVE's replicated flows (snapshot complete, \
         stream alive); absent when replication is off.",
    );
    if let Some(b) = s.takeover_ready {
        ready.set(node.clone(), flag(b));
    }
    let mut lag = Family::gauge(
        "amgr_replication_lag_milliseconds",
        "The STANDBY's flow replication lag: receive time minus send time of the last batch.",
    );
    if let Some(l) = s.replication_lag_ms {
        lag.set(node.clone(), l as f64);
    }
    let mut can_serve = Family::gauge(
        "amgr_guard_can_serve",
        "1 when the isolation guard's last round reached enough real servers and a witness; \
         a node at 0 does not take the VIP. Absent when the guard is off.",
    );
    if let Some(b) = s.can_serve {
        can_serve.set(node.clone(), flag(b));
    }

    vec![
        state,
        dual,
        primary,
        inhibited,
        up,
        sent,
        send_errors,
        received,
        rejected,
        transitions,
        failovers,
        app_failures,
        in_sync,
        pushes,
        sync_failures,
        ready,
        lag,
        can_serve,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use slb_common::metrics::{encode, sample};

    fn example() -> Sample {
        Sample {
            node: 2,
            state: State::Active,
            primary: false,
            inhibited: false,
            dual_state: Some(State::Failed),
            links: vec![LinkSample {
                local: "192.168.100.2".into(),
                peer: "192.168.100.1".into(),
                up: true,
                sent: 10,
                send_errors: 0,
                received: 8,
                rejected: [("replay".to_string(), 3)].into(),
            }],
            transitions: [((State::Standby, State::Active), 1)].into(),
            failovers: [(2, 1)].into(),
            app_failures: 0,
            config_in_sync: None,
            sync_pushes: 4,
            sync_failures: 1,
            takeover_ready: Some(false),
            replication_lag_ms: None,
            can_serve: Some(false),
        }
    }

    #[test]
    fn states_are_one_hot_and_counters_carry_their_labels() {
        let text = encode(families(&example()));
        let get = |n: &str, l: &[(&str, &str)]| sample(&text, n, l);
        assert_eq!(
            get("amgr_state", &[("node", "2"), ("state", "ACTIVE")]),
            Some(1.0)
        );
        assert_eq!(get("amgr_state", &[("state", "STANDBY")]), Some(0.0));
        assert_eq!(get("amgr_dual_state", &[("state", "FAILED")]), Some(1.0));
        let link = [("local", "192.168.100.2"), ("peer", "192.168.100.1")];
        assert_eq!(get("amgr_heartbeats_sent_total", &link), Some(10.0));
        assert_eq!(get("amgr_heartbeats_received_total", &link), Some(8.0));
        assert_eq!(get("amgr_heartbeat_link_up", &link), Some(1.0));
        assert_eq!(
            get("amgr_heartbeats_rejected_total", &[("reason", "replay")]),
            Some(3.0)
        );
        assert_eq!(
            get("amgr_heartbeats_rejected_total", &[("reason", "mac")]),
            Some(0.0),
            "the reasons an alert watches exist from the start"
        );
        assert_eq!(
            get(
                "amgr_state_transitions_total",
                &[("from", "STANDBY"), ("to", "ACTIVE")]
            ),
            Some(1.0)
        );
        assert_eq!(get("amgr_failovers_total", &[("active", "2")]), Some(1.0));
        assert_eq!(get("amgr_config_in_sync", &[]), None);
        assert_eq!(get("amgr_config_sync_pushes_total", &[]), Some(4.0));
        assert_eq!(get("amgr_takeover_ready", &[("node", "2")]), Some(0.0));
        assert_eq!(get("amgr_guard_can_serve", &[("node", "2")]), Some(0.0));
        assert_eq!(get("amgr_replication_lag_milliseconds", &[]), None);
    }
}
