//! What the passing of time does to the application, as pure functions: the restart after a
//! failure (and its backoff), the end of INIT or its timeout, a lost or never-heard dual, and
//! nobody ACTIVE. [`due`] maps the time and what the agent knows to the [`Event`]s due now;
//! the agent feeds them to [`crate::fsm::step`] and carries out what it answers. Times are
//! milliseconds on the agent's monotonic clock.

use std::time::Duration;

use heartbeat::liveness::Peer;

use crate::fsm::{Dual, Event, State};

/// INIT kills an slbd that has not answered its control socket after this long.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the agent knows when its timers are asked what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub state: State,
    /// Cleared by SHUTDOWN: a shut-down application is not restarted.
    pub keep_running: bool,
    /// When a FAILED application is to be started again.
    pub restart_at_ms: Option<u64>,
    /// When this node last entered INIT.
    pub init_since_ms: u64,
    /// Whether slbd answered its control socket now (asked only in INIT).
    pub app_answered: bool,
    /// The dual as the heartbeat links see it.
    pub peer: Peer,
    /// The dual as its heartbeat last described it, while the links still carry it.
    pub dual: Option<Dual>,
    /// When amgr started.
    pub started_ms: u64,
    /// When either node was last seen ACTIVE (or this one last became STANDBY).
    pub last_active_seen_ms: u64,
    /// The dead time: how long the links may be silent before the dual counts as lost.
    pub dead_ms: u64,
}

/// The events due at `now_ms`, in the order the agent applies them.
pub fn due(now_ms: u64, k: &Known) -> Vec<Event> {
    let mut events = Vec::new();
    let since = |t: u64| now_ms.saturating_sub(t);
    if k.state == State::Failed && k.keep_running && k.restart_at_ms.is_some_and(|t| now_ms >= t) {
        events.push(Event::Started);
    }
    if k.state == State::Init {
        // INIT ends only once the dual has had the dead time to be heard: a PRIMARY that
        // restarts must not take the VIP from a BACKUP that is serving.
        if k.app_answered && since(k.init_since_ms) >= k.dead_ms {
            events.push(Event::Initialised { dual: k.dual });
        } else if !k.app_answered && since(k.init_since_ms) > INIT_TIMEOUT.as_millis() as u64 {
            events.push(Event::InitTimedOut);
        }
    }
    // A fact in every state; the state machine decides where it matters (STANDBY).
    let never_heard = k.peer == Peer::Unknown && since(k.started_ms) >= k.dead_ms;
    if k.peer == Peer::Lost || never_heard {
        events.push(Event::DualLost);
    }
    let dual_active = k.dual.is_some_and(|d| d.state == State::Active);
    if k.state == State::Standby
        && k.dual.is_some()
        && !dual_active
        && since(k.last_active_seen_ms) >= k.dead_ms
    {
        events.push(Event::NoActive { dual: k.dual });
    }
    events
}

/// How long a FAILED application waits before its restart: 1 s after the first failure in a
/// row, doubling up to 16 s, so an slbd that cannot start does not spin.
pub fn restart_backoff(failures_in_row: u32) -> Duration {
    Duration::from_secs(1 << failures_in_row.min(5).saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::State::*;

    const DEAD: u64 = 300;

    fn dual(state: State) -> Option<Dual> {
        Some(Dual {
            id: 2,
            state,
            primary: false,
            inhibited: false,
        })
    }

    /// A node in `state` long after amgr started, the dual heard and ACTIVE just now.
    fn known(state: State) -> Known {
        Known {
            state,
            keep_running: true,
            restart_at_ms: None,
            init_since_ms: 0,
            app_answered: false,
            peer: Peer::Alive,
            dual: dual(Active),
            started_ms: 0,
            last_active_seen_ms: 100_000,
            dead_ms: DEAD,
        }
    }

    #[test]
    fn restart_backoff_doubles_from_1_s_up_to_16_s() {
        let rows: [(u32, u64); 7] = [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 16)];
        for (failures, secs) in rows {
            assert_eq!(
                restart_backoff(failures),
                Duration::from_secs(secs),
                "after {failures} failures in a row"
            );
        }
        assert_eq!(restart_backoff(u32::MAX), Duration::from_secs(16));
    }

    #[test]
    fn the_timers_table() {
        let now = 100_000;
        let init_at = |since: u64, answered: bool| Known {
            init_since_ms: now - since,
            app_answered: answered,
            dual: dual(Standby),
            ..known(Init)
        };
        let standby_quiet_for = |ms: u64, d: Option<Dual>| Known {
            dual: d,
            last_active_seen_ms: now - ms,
            ..known(Standby)
        };
        let lost = |state| Known {
            peer: Peer::Lost,
            dual: None,
            ..known(state)
        };
        let unknown_since_start = |ms: u64| Known {
            peer: Peer::Unknown,
            dual: None,
            started_ms: now - ms,
            ..known(Standby)
        };
        let rows: Vec<(&str, Known, Vec<Event>)> = vec![
            // The restart after a failure.
            (
                "FAILED restarts at its time",
                Known {
                    restart_at_ms: Some(now),
                    ..known(Failed)
                },
                vec![Event::Started],
            ),
            (
                "FAILED does not restart before its time",
                Known {
                    restart_at_ms: Some(now + 1),
                    ..known(Failed)
                },
                vec![],
            ),
            (
                "no restart after SHUTDOWN",
                Known {
                    restart_at_ms: Some(now - 1),
                    keep_running: false,
                    ..known(Failed)
                },
                vec![],
            ),
            ("no restart without one scheduled", known(Failed), vec![]),
            (
                "only a FAILED node restarts",
                Known {
                    restart_at_ms: Some(now - 1),
                    ..known(Offline)
                },
                vec![],
            ),
            // The end of INIT.
            (
                "INIT ends when slbd answers after the dead time",
                init_at(DEAD, true),
                vec![Event::Initialised {
                    dual: dual(Standby),
                }],
            ),
            (
                "INIT does not end before the dead time even if slbd answers",
                init_at(DEAD - 1, true),
                vec![],
            ),
            (
                "INIT does not end while slbd does not answer",
                init_at(DEAD, false),
                vec![],
            ),
            (
                "INIT ends without a dual when none is heard",
                Known {
                    dual: None,
                    ..init_at(DEAD, true)
                },
                vec![Event::Initialised { dual: None }],
            ),
            (
                "INIT waits 20 s for slbd to answer",
                init_at(20_000, false),
                vec![],
            ),
            (
                "INIT times out after 20 s without an answer",
                init_at(20_001, false),
                vec![Event::InitTimedOut],
            ),
            (
                "INIT ends rather than times out when slbd answers late",
                init_at(25_000, true),
                vec![Event::Initialised {
                    dual: dual(Standby),
                }],
            ),
            // The dual lost or never heard.
            (
                "a lost dual is reported",
                lost(Standby),
                vec![Event::DualLost],
            ),
            (
                "a lost dual is reported in ACTIVE too (the state machine ignores it there)",
                lost(Active),
                vec![Event::DualLost],
            ),
            (
                "a dual never heard within the dead time after start is lost",
                unknown_since_start(DEAD),
                vec![Event::DualLost],
            ),
            (
                "a dual not heard yet is not lost before the dead time after start",
                unknown_since_start(DEAD - 1),
                vec![],
            ),
            // Nobody ACTIVE.
            (
                "STANDBY with a STANDBY dual and nobody ACTIVE for the dead time",
                standby_quiet_for(DEAD, dual(Standby)),
                vec![Event::NoActive {
                    dual: dual(Standby),
                }],
            ),
            (
                "STANDBY with a dual in MAINTENANCE and nobody ACTIVE for the dead time",
                standby_quiet_for(DEAD, dual(Maintenance)),
                vec![Event::NoActive {
                    dual: dual(Maintenance),
                }],
            ),
            (
                "no NoActive before the dead time",
                standby_quiet_for(DEAD - 1, dual(Standby)),
                vec![],
            ),
            (
                "no NoActive while the dual is ACTIVE",
                standby_quiet_for(DEAD, dual(Active)),
                vec![],
            ),
            (
                "no NoActive without a dual heard",
                Known {
                    peer: Peer::Alive,
                    ..standby_quiet_for(DEAD, None)
                },
                vec![],
            ),
            (
                "no NoActive in MAINTENANCE",
                Known {
                    state: Maintenance,
                    ..standby_quiet_for(DEAD, dual(Standby))
                },
                vec![],
            ),
            // Nothing in ACTIVE, whatever the other fields say.
            (
                "nothing in ACTIVE",
                Known {
                    restart_at_ms: Some(0),
                    app_answered: true,
                    dual: dual(Standby),
                    last_active_seen_ms: 0,
                    ..known(Active)
                },
                vec![],
            ),
        ];
        for (what, k, expected) in rows {
            assert_eq!(due(now, &k), expected, "{what}");
        }
    }
}
