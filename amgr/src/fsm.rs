//! The state of one managed application on one node of the pair, as one pure function:
//! `step(state, node, event) -> (state, actions)`. The actions are data that the shell carries
//! out (start slbd, claim or release the VIP, ...); nothing here performs them.
//!
//! The original's table, row by row, plus what it leaves implicit (each marked below):
//! - a BACKUP that initialises without an ACTIVE dual waits as STANDBY; losing the dual (all
//!   links silent, or the dual reporting FAILED/OFFLINE) is what makes it ACTIVE;
//! - ACTIVE → STANDBY on SWITCH, only when the dual is STANDBY to take over;
//! - two ACTIVE nodes (a healed partition) converge: PRIMARY wins, else the lower node id; the
//!   winner announces the addresses again, since the loser may have announced last;
//! - nobody ACTIVE for the dead time (both STANDBY, or the dual in MAINTENANCE or INIT): the
//!   STANDBY that would win that rule takes over, or the only one not INHIBITED;
//! - SWITCH is refused when the STANDBY dual is INHIBITED;
//! - an INHIBITED node never becomes ACTIVE;
//! - the non-forced SHUTDOWN and DISABLE refuse to stop an ACTIVE instance with no STANDBY dual;
//! - the isolation guard (`crate::guard`): a node that cannot serve (too few real servers or no
//!   witness answer) never becomes ACTIVE. Where it would take over (the dual lost, FAILED or
//!   OFFLINE, nobody ACTIVE, a PRIMARY initialising) it stays STANDBY and says why; a SWITCH to
//!   it is refused. What it cannot prevent: both nodes isolated from each other but each
//!   reaching enough servers and a witness still both go ACTIVE (a split the heal rule ends);
//!   with the guard's targets unreachable from both, nobody takes the VIP. An ACTIVE that
//!   cannot serve hands over to a STANDBY that can: the agent starts that switch
//!   (`agent::guard`), through the SWITCH rows below.

/// The Application Manager's states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Offline,
    Init,
    Standby,
    Active,
    Maintenance,
    Failed,
}

impl State {
    /// The name operators see: in logs, `query`, metric labels and the transitions log.
    pub fn name(self) -> &'static str {
        match self {
            State::Offline => "OFFLINE",
            State::Init => "INIT",
            State::Standby => "STANDBY",
            State::Active => "ACTIVE",
            State::Maintenance => "MAINTENANCE",
            State::Failed => "FAILED",
        }
    }
}

/// This node's configuration for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    pub primary: bool,
    pub inhibited: bool,
    /// The guard's verdict, fresh for the event at hand: this node can reach what it must to
    /// serve.
    pub fit: bool,
}

/// What the heartbeat says of the dual instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dual {
    pub id: u32,
    pub state: State,
    pub primary: bool,
    pub inhibited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The application was started.
    Started,
    /// The application finished initialising; `dual` is the dual as last heard, if at all.
    Initialised {
        dual: Option<Dual>,
    },
    /// INIT has lasted too long without the application answering.
    InitTimedOut,
    /// Every heartbeat link has been silent for the dead time.
    DualLost,
    /// A heartbeat from the dual.
    DualState(Dual),
    /// Neither node has been ACTIVE for the dead time while the dual was heard (both STANDBY,
    /// or the dual in MAINTENANCE or INIT).
    NoActive {
        dual: Option<Dual>,
    },
    /// The application died or stopped answering.
    AppFailed,
    Test,
    Untest,
    Switch {
        dual: Option<Dual>,
    },
    /// SHUTDOWN, or the stop half of RESTART (`restart`), which names its own forced form.
    Shutdown {
        forced: bool,
        restart: bool,
        dual: Option<Dual>,
    },
    Enable,
    Disable {
        forced: bool,
        dual: Option<Dual>,
    },
    Inhibit,
    Uninhibit,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StartApp,
    /// Bring up the VIP and gateway addresses (with gratuitous ARP) and balance.
    Activate,
    /// Remove the addresses and the rules.
    Deactivate,
    /// A healed split, on the side that gives up the VIP: hand this node's flows to the dual
    /// (ACTIVE too) before letting go, so the connections accepted here during the split go
    /// on there.
    HandFlows,
    /// Announce the addresses again (gratuitous ARP): the dual held them too, and may have
    /// announced last.
    Announce,
    StopApp,
    /// Kill the application (SIGKILL): it did not come up in time. Its exit, reaped later,
    /// is what makes it FAILED.
    KillApp,
    /// Persist the node's inhibited flag.
    SetInhibited(bool),
    /// A command that does not apply now; the reason goes back to the operator.
    Refuse(&'static str),
    /// The guard held this node back from taking over: the shell says why (`query`, log).
    HoldBack,
}

fn standby_dual(dual: Option<Dual>) -> bool {
    dual.is_some_and(|d| d.state == State::Standby)
}

/// Whether this node keeps ACTIVE when the dual is ACTIVE too.
fn wins(node: &Node, dual: &Dual) -> bool {
    match (node.primary, dual.primary) {
        (true, false) => true,
        (false, true) => false,
        _ => node.id < dual.id,
    }
}

/// Stopping (SHUTDOWN, DISABLE) an ACTIVE instance needs a STANDBY dual unless forced.
fn may_stop(state: State, forced: bool, dual: Option<Dual>) -> bool {
    forced || state != State::Active || standby_dual(dual)
}

/// Takes over from a lost or failed dual, unless inhibited or unable to serve.
fn take_over(node: &Node) -> (State, Vec<Action>) {
    if node.inhibited {
        (State::Standby, vec![])
    } else if !node.fit {
        (State::Standby, vec![Action::HoldBack])
    } else {
        (State::Active, vec![Action::Activate])
    }
}

pub fn step(state: State, node: &Node, event: Event) -> (State, Vec<Action>) {
    use Action::*;
    use State::*;
    let deactivate = |s: State| {
        if s == Active {
            vec![Deactivate]
        } else {
            vec![]
        }
    };
    match (state, event) {
        // The table's rows.
        (Offline | Failed, Event::Started) => (Init, vec![StartApp]),
        (Init, Event::Initialised { .. }) if node.inhibited => (Maintenance, vec![]),
        (Init, Event::Initialised { dual }) if dual.is_some_and(|d| d.state == Active) => {
            (Standby, vec![])
        }
        (Init, Event::Initialised { .. }) if node.primary => take_over(node),
        // Implicit: a BACKUP waits as STANDBY; the dual's loss makes it ACTIVE.
        (Init, Event::Initialised { .. }) => (Standby, vec![]),
        // Implicit: an application that never answers in INIT is killed; it then fails and
        // is restarted like any other failure.
        (Init, Event::InitTimedOut) => (Init, vec![KillApp]),
        (Standby, Event::Test) => (Maintenance, vec![]),
        (Maintenance, Event::Untest) => (Standby, vec![]),
        (Standby, Event::DualLost) => take_over(node),
        (Standby, Event::DualState(d)) if matches!(d.state, Failed | Offline) => take_over(node),
        (Standby, Event::Switch { .. }) if node.inhibited => {
            (Standby, vec![Refuse("this node is INHIBITED")])
        }
        (Standby, Event::Switch { .. }) if !node.fit => (
            Standby,
            vec![Refuse(
                "this node cannot serve: the guard's checks fail (see query)",
            )],
        ),
        (Standby, Event::Switch { .. }) => (Active, vec![Activate]),
        // Implicit: with nobody ACTIVE, the STANDBY that would win a split takes over (or the
        // only one that may).
        (Standby, Event::NoActive { dual }) => match dual {
            Some(d) if d.state == Standby && !d.inhibited && !wins(node, &d) => (Standby, vec![]),
            _ => take_over(node),
        },
        (Offline, Event::AppFailed) => (Offline, vec![]),
        (s, Event::AppFailed) => (Failed, deactivate(s)),
        (
            s,
            Event::Shutdown {
                forced,
                restart,
                dual,
            },
        ) => {
            if may_stop(s, forced, dual) {
                let mut actions = deactivate(s);
                if s != Offline {
                    actions.push(StopApp);
                }
                (Offline, actions)
            } else {
                let hint = if restart {
                    "ACTIVE with no STANDBY dual: use RESTART-F to force"
                } else {
                    "ACTIVE with no STANDBY dual: use SHUTDOWN-F to force"
                };
                (s, vec![Refuse(hint)])
            }
        }
        // Implicit: SWITCH on the ACTIVE side hands over to a STANDBY dual.
        (Active, Event::Switch { dual }) if dual.is_some_and(|d| d.inhibited) => (
            Active,
            vec![Refuse(
                "the STANDBY dual is INHIBITED and would not take over",
            )],
        ),
        (Active, Event::Switch { dual }) if standby_dual(dual) => (Standby, vec![Deactivate]),
        (Active, Event::Switch { .. }) => (Active, vec![Refuse("no STANDBY dual to take over")]),
        // Implicit: after a partition heals, exactly one stays ACTIVE.
        (Active, Event::DualState(d)) if d.state == Active && !wins(node, &d) => {
            (Standby, vec![HandFlows, Deactivate])
        }
        (Active, Event::DualState(d)) if d.state == Active => (Active, vec![Announce]),
        // ENABLE / DISABLE move between STANDBY and MAINTENANCE and set the inhibited flag.
        (Maintenance, Event::Enable) => (Standby, vec![SetInhibited(false)]),
        (s, Event::Enable) => (s, vec![SetInhibited(false)]),
        (s @ (Standby | Active), Event::Disable { forced, dual }) => {
            if may_stop(s, forced, dual) {
                let mut actions = deactivate(s);
                actions.push(SetInhibited(true));
                (Maintenance, actions)
            } else {
                (
                    s,
                    vec![Refuse(
                        "ACTIVE with no STANDBY dual: use DISABLE-F to force",
                    )],
                )
            }
        }
        (s, Event::Disable { .. }) => (s, vec![SetInhibited(true)]),
        (s, Event::Inhibit) => (s, vec![SetInhibited(true)]),
        (s, Event::Uninhibit) => (s, vec![SetInhibited(false)]),
        (_, Event::Test) => (state, vec![Refuse("TEST applies to a STANDBY instance")]),
        (_, Event::Untest) => (
            state,
            vec![Refuse("UNTEST applies to a MAINTENANCE instance")],
        ),
        (_, Event::Switch { .. }) => (
            state,
            vec![Refuse("SWITCH applies to an ACTIVE or STANDBY instance")],
        ),
        // Heartbeat news that changes nothing here.
        (
            s,
            Event::DualLost
            | Event::DualState(_)
            | Event::NoActive { .. }
            | Event::Started
            | Event::Initialised { .. }
            | Event::InitTimedOut,
        ) => (s, vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::State::*;
    use super::*;

    const PRIMARY: Node = Node {
        id: 1,
        primary: true,
        inhibited: false,
        fit: true,
    };
    const BACKUP: Node = Node {
        id: 2,
        primary: false,
        inhibited: false,
        fit: true,
    };
    const INHIBITED: Node = Node {
        id: 2,
        primary: false,
        inhibited: true,
        fit: true,
    };

    fn dual(state: State) -> Option<Dual> {
        Some(Dual {
            id: 9,
            state,
            primary: false,
            inhibited: false,
        })
    }

    #[test]
    fn the_original_table() {
        let rows: Vec<(State, Node, Event, State, Vec<Action>)> = vec![
            // OFFLINE -> INIT: application started
            (Offline, PRIMARY, Event::Started, Init, vec![StartApp]),
            // INIT -> STANDBY: initialised, configured BACKUP, and the dual is ACTIVE
            (
                Init,
                BACKUP,
                Event::Initialised { dual: dual(Active) },
                Standby,
                vec![],
            ),
            // INIT -> ACTIVE: initialised, configured PRIMARY, and the dual is not ACTIVE
            (
                Init,
                PRIMARY,
                Event::Initialised {
                    dual: dual(Standby),
                },
                Active,
                vec![Activate],
            ),
            (
                Init,
                PRIMARY,
                Event::Initialised { dual: None },
                Active,
                vec![Activate],
            ),
            // INIT -> MAINTENANCE: initialised and configured INHIBITED
            (
                Init,
                INHIBITED,
                Event::Initialised { dual: None },
                Maintenance,
                vec![],
            ),
            // STANDBY -> MAINTENANCE: TEST; MAINTENANCE -> STANDBY: UNTEST
            (Standby, BACKUP, Event::Test, Maintenance, vec![]),
            (Maintenance, BACKUP, Event::Untest, Standby, vec![]),
            // STANDBY -> ACTIVE: the ACTIVE dual failed or was lost, or SWITCH
            (Standby, BACKUP, Event::DualLost, Active, vec![Activate]),
            (
                Standby,
                BACKUP,
                Event::DualState(Dual {
                    id: 9,
                    state: Failed,
                    primary: true,
                    inhibited: false,
                }),
                Active,
                vec![Activate],
            ),
            (
                Standby,
                BACKUP,
                Event::Switch { dual: dual(Active) },
                Active,
                vec![Activate],
            ),
            // any -> FAILED: the application failed
            (Init, PRIMARY, Event::AppFailed, Failed, vec![]),
            (Standby, BACKUP, Event::AppFailed, Failed, vec![]),
            (Active, PRIMARY, Event::AppFailed, Failed, vec![Deactivate]),
            (Maintenance, BACKUP, Event::AppFailed, Failed, vec![]),
            // any -> OFFLINE: SHUTDOWN or SHUTDOWN-F
            (
                Standby,
                BACKUP,
                Event::Shutdown {
                    forced: false,
                    restart: false,
                    dual: dual(Active),
                },
                Offline,
                vec![StopApp],
            ),
            (
                Active,
                PRIMARY,
                Event::Shutdown {
                    forced: false,
                    restart: false,
                    dual: dual(Standby),
                },
                Offline,
                vec![Deactivate, StopApp],
            ),
            (
                Active,
                PRIMARY,
                Event::Shutdown {
                    forced: true,
                    restart: false,
                    dual: None,
                },
                Offline,
                vec![Deactivate, StopApp],
            ),
            (
                Failed,
                PRIMARY,
                Event::Shutdown {
                    forced: false,
                    restart: false,
                    dual: None,
                },
                Offline,
                vec![StopApp],
            ),
        ];
        for (i, (from, node, event, to, actions)) in rows.into_iter().enumerate() {
            assert_eq!(
                step(from, &node, event),
                (to, actions),
                "row {i}: {from:?} + {event:?}"
            );
        }
    }

    #[test]
    fn what_the_table_leaves_implicit() {
        let rows: Vec<(State, Node, Event, State, Vec<Action>)> = vec![
            // A BACKUP initialising without an ACTIVE dual waits; losing the dual activates it.
            (
                Init,
                BACKUP,
                Event::Initialised { dual: None },
                Standby,
                vec![],
            ),
            (
                Init,
                BACKUP,
                Event::Initialised { dual: dual(Init) },
                Standby,
                vec![],
            ),
            // A PRIMARY that finds an ACTIVE dual does not take the VIP back (no preemption).
            (
                Init,
                PRIMARY,
                Event::Initialised { dual: dual(Active) },
                Standby,
                vec![],
            ),
            // ACTIVE -> STANDBY on SWITCH, only with a STANDBY dual.
            (
                Active,
                PRIMARY,
                Event::Switch {
                    dual: dual(Standby),
                },
                Standby,
                vec![Deactivate],
            ),
            (
                Active,
                PRIMARY,
                Event::Switch { dual: None },
                Active,
                vec![Refuse("no STANDBY dual to take over")],
            ),
            (
                Active,
                PRIMARY,
                Event::Switch {
                    dual: dual(Maintenance),
                },
                Active,
                vec![Refuse("no STANDBY dual to take over")],
            ),
            // An INHIBITED node never becomes ACTIVE.
            (Standby, INHIBITED, Event::DualLost, Standby, vec![]),
            (
                Standby,
                INHIBITED,
                Event::DualState(Dual {
                    id: 9,
                    state: Failed,
                    primary: true,
                    inhibited: false,
                }),
                Standby,
                vec![],
            ),
            (
                Standby,
                INHIBITED,
                Event::Switch { dual: dual(Active) },
                Standby,
                vec![Refuse("this node is INHIBITED")],
            ),
            // The non-forced SHUTDOWN refuses to stop the only ACTIVE instance.
            (
                Active,
                PRIMARY,
                Event::Shutdown {
                    forced: false,
                    restart: false,
                    dual: None,
                },
                Active,
                vec![Refuse(
                    "ACTIVE with no STANDBY dual: use SHUTDOWN-F to force",
                )],
            ),
            (
                Active,
                PRIMARY,
                Event::Shutdown {
                    forced: false,
                    restart: false,
                    dual: dual(Failed),
                },
                Active,
                vec![Refuse(
                    "ACTIVE with no STANDBY dual: use SHUTDOWN-F to force",
                )],
            ),
            // RESTART's refusal names RESTART-F, the command that forces it.
            (
                Active,
                PRIMARY,
                Event::Shutdown {
                    forced: false,
                    restart: true,
                    dual: None,
                },
                Active,
                vec![Refuse(
                    "ACTIVE with no STANDBY dual: use RESTART-F to force",
                )],
            ),
            // DISABLE / DISABLE-F / ENABLE and INHIBIT / UNINHIBIT.
            (
                Standby,
                BACKUP,
                Event::Disable {
                    forced: false,
                    dual: dual(Active),
                },
                Maintenance,
                vec![SetInhibited(true)],
            ),
            (
                Active,
                PRIMARY,
                Event::Disable {
                    forced: false,
                    dual: None,
                },
                Active,
                vec![Refuse(
                    "ACTIVE with no STANDBY dual: use DISABLE-F to force",
                )],
            ),
            (
                Active,
                PRIMARY,
                Event::Disable {
                    forced: true,
                    dual: None,
                },
                Maintenance,
                vec![Deactivate, SetInhibited(true)],
            ),
            (
                Maintenance,
                BACKUP,
                Event::Enable,
                Standby,
                vec![SetInhibited(false)],
            ),
            (
                Standby,
                BACKUP,
                Event::Inhibit,
                Standby,
                vec![SetInhibited(true)],
            ),
            (
                Standby,
                INHIBITED,
                Event::Uninhibit,
                Standby,
                vec![SetInhibited(false)],
            ),
            // An application that does not come up in INIT is killed; elsewhere the timeout
            // is stale news.
            (Init, PRIMARY, Event::InitTimedOut, Init, vec![KillApp]),
            (Standby, BACKUP, Event::InitTimedOut, Standby, vec![]),
            (Active, PRIMARY, Event::InitTimedOut, Active, vec![]),
            (Failed, PRIMARY, Event::InitTimedOut, Failed, vec![]),
            // A failed application can be started again.
            (Failed, BACKUP, Event::Started, Init, vec![StartApp]),
            // Commands in the wrong state are refused, and change nothing.
            (
                Active,
                PRIMARY,
                Event::Test,
                Active,
                vec![Refuse("TEST applies to a STANDBY instance")],
            ),
            (
                Standby,
                BACKUP,
                Event::Untest,
                Standby,
                vec![Refuse("UNTEST applies to a MAINTENANCE instance")],
            ),
            (
                Maintenance,
                BACKUP,
                Event::Switch { dual: dual(Active) },
                Maintenance,
                vec![Refuse("SWITCH applies to an ACTIVE or STANDBY instance")],
            ),
            // Heartbeat news that changes nothing.
            (Active, PRIMARY, Event::DualLost, Active, vec![]),
            (Maintenance, BACKUP, Event::DualLost, Maintenance, vec![]),
            (
                Active,
                PRIMARY,
                Event::DualState(Dual {
                    id: 9,
                    state: Standby,
                    primary: false,
                    inhibited: false,
                }),
                Active,
                vec![],
            ),
        ];
        for (i, (from, node, event, to, actions)) in rows.into_iter().enumerate() {
            assert_eq!(
                step(from, &node, event),
                (to, actions),
                "row {i}: {from:?} + {event:?}"
            );
        }
    }

    #[test]
    fn with_nobody_active_exactly_one_standby_takes_over() {
        let a = Node {
            id: 1,
            primary: false,
            inhibited: false,
            fit: true,
        };
        let b = Node {
            id: 2,
            primary: false,
            inhibited: false,
            fit: true,
        };
        let seen = |n: &Node, state| Dual {
            id: n.id,
            state,
            primary: n.primary,
            inhibited: n.inhibited,
        };
        for (x, y) in [(a, b), (b, a)] {
            let (sx, _) = step(
                Standby,
                &x,
                Event::NoActive {
                    dual: Some(seen(&y, Standby)),
                },
            );
            let (sy, _) = step(
                Standby,
                &y,
                Event::NoActive {
                    dual: Some(seen(&x, Standby)),
                },
            );
            assert_eq!([sx, sy].iter().filter(|s| **s == Active).count(), 1);
        }
        // The winner inhibited: the other takes over.
        let inhibited_a = Node {
            inhibited: true,
            fit: true,
            ..a
        };
        assert_eq!(
            step(
                Standby,
                &b,
                Event::NoActive {
                    dual: Some(seen(&inhibited_a, Standby))
                }
            )
            .0,
            Active
        );
        assert_eq!(
            step(
                Standby,
                &inhibited_a,
                Event::NoActive {
                    dual: Some(seen(&b, Standby))
                }
            )
            .0,
            Standby
        );
        // The dual in MAINTENANCE or INIT does not serve: take over.
        for state in [Maintenance, Init] {
            assert_eq!(
                step(
                    Standby,
                    &b,
                    Event::NoActive {
                        dual: Some(seen(&a, state))
                    }
                ),
                (Active, vec![Activate])
            );
        }
        // Only a STANDBY reacts.
        for state in [Init, Maintenance, Failed, Offline] {
            assert_eq!(
                step(state, &a, Event::NoActive { dual: None }),
                (state, vec![])
            );
        }
    }

    #[test]
    fn a_node_the_guard_says_cannot_serve_never_becomes_active() {
        let unfit = Node {
            fit: false,
            ..BACKUP
        };
        let unfit_primary = Node {
            fit: false,
            ..PRIMARY
        };
        let failed = Dual {
            id: 9,
            state: Failed,
            primary: true,
            inhibited: false,
        };
        let rows: Vec<(State, Node, Event, State, Vec<Action>)> = vec![
            // The dual silent on every link: an isolated node holds back.
            (Standby, unfit, Event::DualLost, Standby, vec![HoldBack]),
            (
                Standby,
                unfit,
                Event::DualState(failed),
                Standby,
                vec![HoldBack],
            ),
            (
                Standby,
                unfit,
                Event::NoActive { dual: None },
                Standby,
                vec![HoldBack],
            ),
            // A PRIMARY that initialises without reaching its servers waits as STANDBY (its
            // dual's loss, or nobody ACTIVE, makes it ACTIVE once it can serve).
            (
                Init,
                unfit_primary,
                Event::Initialised { dual: None },
                Standby,
                vec![HoldBack],
            ),
            // A SWITCH to it is refused, from the operator or from the dual.
            (
                Standby,
                unfit,
                Event::Switch { dual: dual(Active) },
                Standby,
                vec![Refuse(
                    "this node cannot serve: the guard's checks fail (see query)",
                )],
            ),
            // Inhibited comes first: an inhibited node is not "held back".
            (
                Standby,
                Node {
                    inhibited: true,
                    ..unfit
                },
                Event::DualLost,
                Standby,
                vec![],
            ),
            // What the guard does not touch: an ACTIVE keeps the VIP (the agent hands it
            // over only to a STANDBY that can serve), and the same node once fit takes over.
            (Active, unfit, Event::DualLost, Active, vec![]),
            (Standby, BACKUP, Event::DualLost, Active, vec![Activate]),
        ];
        for (i, (from, node, event, to, actions)) in rows.into_iter().enumerate() {
            assert_eq!(
                step(from, &node, event),
                (to, actions),
                "row {i}: {from:?} + {event:?}"
            );
        }
    }

    #[test]
    fn switch_to_an_inhibited_standby_is_refused() {
        let d = Dual {
            id: 2,
            state: Standby,
            primary: false,
            inhibited: true,
        };
        let (s, actions) = step(Active, &PRIMARY, Event::Switch { dual: Some(d) });
        assert_eq!(s, Active);
        assert!(matches!(actions.as_slice(), [Refuse(_)]));
    }

    #[test]
    fn two_actives_converge_to_exactly_one() {
        let nodes = [
            (
                Node {
                    id: 1,
                    primary: true,
                    inhibited: false,
                    fit: true,
                },
                Node {
                    id: 2,
                    primary: false,
                    inhibited: false,
                    fit: true,
                },
            ),
            (
                Node {
                    id: 7,
                    primary: false,
                    inhibited: false,
                    fit: true,
                },
                Node {
                    id: 3,
                    primary: false,
                    inhibited: false,
                    fit: true,
                },
            ),
            (
                Node {
                    id: 4,
                    primary: true,
                    inhibited: false,
                    fit: true,
                },
                Node {
                    id: 5,
                    primary: true,
                    inhibited: false,
                    fit: true,
                },
            ),
        ];
        for (a, b) in nodes {
            let seen_by_a = Dual {
                id: b.id,
                state: Active,
                primary: b.primary,
                inhibited: false,
            };
            let seen_by_b = Dual {
                id: a.id,
                state: Active,
                primary: a.primary,
                inhibited: false,
            };
            let (sa, _) = step(Active, &a, Event::DualState(seen_by_a));
            let (sb, _) = step(Active, &b, Event::DualState(seen_by_b));
            let actives = [sa, sb].iter().filter(|s| **s == Active).count();
            assert_eq!(actives, 1, "{a:?} vs {b:?} -> {sa:?}, {sb:?}");
            let ((_, winner_does), (_, loser_does)) = if sa == Active {
                (
                    step(Active, &a, Event::DualState(seen_by_a)),
                    step(Active, &b, Event::DualState(seen_by_b)),
                )
            } else {
                (
                    step(Active, &b, Event::DualState(seen_by_b)),
                    step(Active, &a, Event::DualState(seen_by_a)),
                )
            };
            assert_eq!(winner_does, vec![Announce]);
            // The loser hands its flows over before it lets go, never after.
            assert_eq!(loser_does, vec![HandFlows, Deactivate]);
        }
    }

    #[test]
    fn states_are_named_as_operators_see_them() {
        let names: Vec<&str> = [Offline, Init, Standby, Active, Maintenance, Failed]
            .into_iter()
            .map(State::name)
            .collect();
        assert_eq!(
            names,
            [
                "OFFLINE",
                "INIT",
                "STANDBY",
                "ACTIVE",
                "MAINTENANCE",
                "FAILED"
            ]
        );
    }

    #[test]
    fn every_state_and_event_gives_an_answer_without_panicking() {
        let states = [Offline, Init, Standby, Active, Maintenance, Failed];
        let d = dual(Active);
        let events = [
            Event::Started,
            Event::Initialised { dual: d },
            Event::InitTimedOut,
            Event::DualLost,
            Event::DualState(Dual {
                id: 0,
                state: Active,
                primary: true,
                inhibited: false,
            }),
            Event::NoActive { dual: d },
            Event::NoActive { dual: None },
            Event::AppFailed,
            Event::Test,
            Event::Untest,
            Event::Switch { dual: d },
            Event::Shutdown {
                forced: false,
                restart: false,
                dual: d,
            },
            Event::Enable,
            Event::Disable {
                forced: false,
                dual: d,
            },
            Event::Inhibit,
            Event::Uninhibit,
        ];
        for s in states {
            for e in events {
                for n in [PRIMARY, BACKUP, INHIBITED] {
                    let (to, actions) = step(s, &n, e);
                    if n.inhibited {
                        assert!(
                            to != Active || s == Active,
                            "{s:?} + {e:?} made an INHIBITED node ACTIVE"
                        );
                    }
                    assert!(
                        !(actions.contains(&Activate) && to != Active),
                        "Activate without ACTIVE"
                    );
                }
            }
        }
    }
}
