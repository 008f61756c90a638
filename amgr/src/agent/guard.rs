//! SHELL: how the agent uses the isolation guard's checks (`crate::guard`): the verdict the
//! state machine gets with each event (fresh enough for that event), the hand-over of an
//! ACTIVE that cannot serve to a STANDBY that can, and what `query` shows.
//! Side effects: a SWITCH through [`Agent::hand_over`], a ping to the dual's amgr.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Agent, PEER_TIMEOUT};
use crate::fsm::{Event, State};
use crate::peer::PeerRequest;

/// An ACTIVE that cannot serve tries to hand over at most this often.
const HANDOVER_EVERY: Duration = Duration::from_secs(5);

impl Agent {
    /// The guard's verdict for `event`. Taking over from a lost dual needs a check that began
    /// once the dual's silence was certain: the links may have gone down together with the
    /// servers' (a node cut off on every side) at any time up to one heartbeat interval after
    /// the dual was last heard, and a check from before says nothing about that. Other events
    /// take the last check if it is recent.
    pub(super) fn can_serve(&self, event: &Event) -> Result<(), String> {
        if !self.cfg.guard.enabled() {
            return Ok(());
        }
        let now = self.now_ms();
        let g = &self.cfg.guard;
        let recent = (2 * g.every + g.timeout).as_millis() as u64;
        let silent_after = (self.cfg.interval * 3 / 2).as_millis() as u64;
        let since = match event {
            Event::DualLost => self.dual.as_ref().map_or(0, |d| d.heard_ms + silent_after),
            _ => now.saturating_sub(recent),
        };
        let view = self.guard.lock();
        let Some(s) = &view.latest else {
            return Err("no guard check has ended yet".into());
        };
        if s.started_ms < since {
            return Err("waiting for a guard check begun after the dual went silent".into());
        }
        s.verdict.clone()
    }

    /// The verdict as a peer's ping or a SWITCH sees it.
    pub(super) fn can_serve_now(&self) -> Result<(), String> {
        self.can_serve(&Event::Switch { dual: None })
    }

    /// The guard held this node back from taking over: said once per reason.
    pub(super) fn held_back(&mut self, why: String) {
        if self.held_back.as_deref() != Some(why.as_str()) {
            tracing::warn!(node = self.node.id, why = %why, "guard: not taking over, this node cannot serve");
            self.held_back = Some(why);
        }
    }

    /// Each tick, on an ACTIVE: after `unfit_rounds` checks in a row that say it cannot serve,
    /// hand over to a STANDBY dual that says it can. Asking first matters: a STANDBY that
    /// refuses would cost a gap for nothing.
    pub(super) fn guard_tick(&mut self) {
        if self.state != State::Active || !self.cfg.guard.enabled() {
            return;
        }
        // The failed rounds must come after the dual became STANDBY: right after a healed
        // split, the rounds from while this node was cut off still say it cannot serve, and
        // the dual has just stepped down to it.
        let settled = (self.cfg.guard.every * self.cfg.guard.unfit_rounds).as_millis() as u64;
        let why = {
            let v = self.guard.lock();
            match &v.latest {
                Some(s)
                    if v.unfit_in_row >= self.cfg.guard.unfit_rounds
                        && s.started_ms >= self.dual_state_since_ms + settled =>
                {
                    s.verdict.clone().err()
                }
                _ => None,
            }
        };
        let Some(why) = why else {
            return;
        };
        let Some(dual) = self
            .dual()
            .filter(|d| d.state == State::Standby && !d.inhibited)
        else {
            return;
        };
        if self
            .guard_handover_at
            .is_some_and(|t| t.elapsed() < HANDOVER_EVERY)
        {
            return;
        }
        self.guard_handover_at = Some(Instant::now());
        let ping = PeerRequest::Ping { from: self.node.id };
        match self.call_dual(&ping, PEER_TIMEOUT.min(Duration::from_secs(1))) {
            Ok(v) if v["can_serve"].as_bool() == Some(true) => {}
            Ok(_) => {
                tracing::warn!(why = %why, "guard: this ACTIVE cannot serve, nor can its STANDBY: keeping the VIP");
                return;
            }
            Err(e) => {
                tracing::warn!(why = %why, error = %e, "guard: this ACTIVE cannot serve and its STANDBY does not answer: keeping the VIP");
                return;
            }
        }
        tracing::warn!(node = self.node.id, why = %why, "guard: this ACTIVE cannot serve: handing over to the STANDBY");
        if let Err(e) = self.hand_over(Some(dual), "guard: cannot serve") {
            tracing::error!(error = %e, "guard: the hand-over failed");
        }
    }

    /// `query`'s `guard` part.
    pub(super) fn guard_view(&self) -> Value {
        let g = &self.cfg.guard;
        if !g.enabled() {
            return json!({"enabled": false});
        }
        let v = self.guard.lock();
        let now = self.now_ms();
        json!({
            "enabled": true,
            "servers_needed": g.servers.name(),
            "witness": g.witness,
            "can_serve": v.latest.as_ref().map(|s| s.verdict.is_ok()),
            "why_not": v.latest.as_ref().and_then(|s| s.verdict.clone().err()),
            "last_check": v.latest.as_ref().map(|s| json!({
                "ms_ago": now.saturating_sub(s.started_ms),
                "took_ms": s.took_ms,
                "servers": s.reach.servers,
                "servers_answered": s.reach.servers_up,
                "witnesses": s.reach.witnesses,
                "witnesses_answered": s.reach.witnesses_up,
            })),
            "unfit_in_row": v.unfit_in_row,
            "held_back": self.held_back,
        })
    }
}
