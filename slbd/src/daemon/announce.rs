//! SHELL: cluster mode's announcement followed. Every rotation tick (and at once when balancing
//! stops) the daemon asks [`crate::core::announce::decide`] whether this node should be
//! announced, and makes the route in the announce table say so through [`VipRoute`]. A change
//! is one log line; a failure is logged once until it changes, and retried every tick.
//! Lock order: the daemon's state first, then the announcement.
//! Side effects: those of [`crate::shell::announce`].

use super::role::Role;
use super::{Daemon, State};
use crate::core::announce::{self, Decision, Inputs};
use crate::ctl::status::{AnnounceStatus, BfdSessionStatus, BgpSessionStatus};
use crate::shell::announce::VipRoute;

/// What the announcement is now.
#[derive(Default)]
pub(super) struct Announcement {
    route: Option<VipRoute>,
    last: Option<Decision>,
    changes: u64,
    error: Option<String>,
}

impl Daemon {
    /// Puts the route where the decision says, creating (or, on a changed device or table,
    /// re-creating) the device first.
    pub(super) fn follow_announcement(&self) {
        let st = self.state.lock();
        let mut a = self.announcement.lock();
        let Some(cfg) = &st.config.announce else {
            if a.route.take().is_some() {
                tracing::info!("announce removed from the configuration: route and device deleted");
            }
            return;
        };
        let decision = announce::decide(Inputs {
            balancing: st.role == Role::Balancing,
            servers_in_rotation: self.dp.servers_in_rotation(),
            withdrawn: cfg.withdrawn,
        });
        let vip = st.config.vip;
        if a.route.as_ref().is_some_and(|r| !r.is_for(vip, cfg)) {
            a.route = None;
        }
        // The kernel held to what was decided before: a flushed table or a deleted device
        // would leave this node unannounced while it says otherwise.
        match a.route.as_mut().map(VipRoute::reassert) {
            Some(Ok(true)) => tracing::warn!(
                route = %announce::route_text(vip, cfg),
                "the announced route was removed by someone else: added again"
            ),
            Some(Err(crate::shell::announce::AnnounceError::Gone(dev))) => {
                tracing::warn!(device = %dev, "the announce device was deleted by someone else: creating it again");
                a.route = None;
            }
            Some(Err(e)) => {
                let e = format!("{e:#}");
                if a.error.as_deref() != Some(e.as_str()) {
                    tracing::error!(error = %e, "cannot check the announced route");
                }
                a.error = Some(e);
                // Tried again next tick; nothing below would get further with rtnetlink failing.
                return;
            }
            _ => {}
        }
        let result = match &mut a.route {
            Some(r) => r.set(decision.announce),
            None => VipRoute::create(vip, cfg).and_then(|mut r| {
                let set = r.set(decision.announce);
                a.route = Some(r);
                set
            }),
        };
        match result {
            Ok(()) => {
                if a.error.take().is_some() {
                    tracing::info!(route = %announce::route_text(vip, cfg), "announce route works again");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if a.error.as_deref() != Some(e.as_str()) {
                    tracing::error!(route = %announce::route_text(vip, cfg), error = %e, "cannot follow the announcement");
                }
                a.error = Some(e);
                return;
            }
        }
        if a.last.map(|l| l.announce) != Some(decision.announce) {
            a.changes += u64::from(a.last.is_some() || decision.announce);
            if decision.announce {
                tracing::info!(route = %announce::route_text(vip, cfg), reason = decision.reason, "VIP announced");
            } else {
                tracing::warn!(route = %announce::route_text(vip, cfg), reason = decision.reason, "VIP withdrawn");
            }
        }
        a.last = Some(decision);
    }

    /// Withdraws at once, before the rules go (balancing stops): routers move the flows away
    /// while this node still forwards what is in flight.
    pub(super) fn withdraw_now(&self, st: &State) {
        let mut a = self.announcement.lock();
        let Some(r) = &mut a.route else {
            return;
        };
        if !r.routed() {
            return;
        }
        match r.set(false) {
            Ok(()) => {
                a.changes += 1;
                a.last = Some(Decision {
                    announce: false,
                    reason: "not balancing",
                });
                tracing::warn!(vip = %st.config.vip, reason = "not balancing", "VIP withdrawn");
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot withdraw the VIP"),
        }
    }

    pub(super) fn announcement_status(&self, st: &State) -> Option<AnnounceStatus> {
        let cfg = st.config.announce.as_ref()?;
        let a = self.announcement.lock();
        Some(AnnounceStatus {
            route: announce::route_text(st.config.vip, cfg),
            announced: a.route.as_ref().is_some_and(VipRoute::routed),
            reason: a.last.map_or("not decided yet", |d| d.reason).into(),
            withdrawn: cfg.withdrawn,
            changes: a.changes,
            error: a.error.clone(),
            ..AnnounceStatus::default()
        })
    }

    /// The BGP daemon's sessions, asked outside every lock (it may take
    /// [`crate::shell::bird::TIMEOUT`]); None without an announcement.
    pub(super) fn daemon_sessions(&self) -> Option<DaemonSessions> {
        let socket = self
            .state
            .lock()
            .config
            .announce
            .as_ref()?
            .bird_socket
            .clone();
        Some(match crate::shell::bird::sessions(&socket) {
            Ok((bgp, bfd)) => DaemonSessions {
                bgp: bgp
                    .into_iter()
                    .map(|p| BgpSessionStatus {
                        name: p.name,
                        state: p.state,
                        info: p.info,
                    })
                    .collect(),
                bfd: bfd
                    .into_iter()
                    .map(|b| BfdSessionStatus {
                        address: b.address.to_string(),
                        interface: b.interface,
                        state: b.state,
                        since: b.since,
                    })
                    .collect(),
                error: None,
            },
            Err(e) => DaemonSessions {
                error: Some(format!("{}: {e}", socket.display())),
                ..DaemonSessions::default()
            },
        })
    }
}

/// What the BGP daemon said of its sessions.
#[derive(Default)]
pub(super) struct DaemonSessions {
    bgp: Vec<BgpSessionStatus>,
    bfd: Vec<BfdSessionStatus>,
    error: Option<String>,
}

impl DaemonSessions {
    pub(super) fn fill(self, a: &mut AnnounceStatus) {
        a.bgp = self.bgp;
        a.bfd = self.bfd;
        a.daemon_error = self.error;
    }
}
