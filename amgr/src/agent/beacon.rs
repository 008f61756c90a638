//! SHELL: our heartbeat on every link, sent by a thread of its own every interval.
//! The agent's loop waits on slbd (a load, a reload, a take-over: seconds under emulation) and
//! on the dual (a planned switch): a heartbeat sent from that loop fell silent for as long,
//! and a dual that heard nothing for the dead time took the VIP in the middle of a switch.
//! The agent publishes what the heartbeat says ([`Beacon::publish`]) and that it still runs
//! ([`Beacon::alive`], every tick); a beacon not told for [`STALLED`] stops, so a hung agent
//! still lets its dual take over.
//! Side effects: one UDP send per link per interval; the `beacon` thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use heartbeat::msg::{App as HbApp, AppState, Heartbeat};
use heartbeat::socket::Link;
use parking_lot::Mutex;

use super::unix_ms;

/// A beacon not told [`Beacon::alive`] for this long falls silent. Longer than the agent's
/// longest legitimate wait: a hand-over is slbd's `hand_over` (5 s), the dual's TakeOver
/// answer (7 s) and slbd's unload (5 s).
pub(super) const STALLED: Duration = Duration::from_secs(20);

/// What the heartbeat says about this node's application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Said {
    pub(super) app: HbApp,
    pub(super) generation: u64,
}

/// One link's send counters.
#[derive(Default)]
struct Sent {
    ok: AtomicU64,
    errors: AtomicU64,
}

struct Beat {
    /// Nothing is sent before the agent's first state.
    said: Option<Said>,
    seq: u64,
    /// Set by a hand-over: the dual is asked to take over as of `seq`; none of our heartbeats
    /// after it may still say ACTIVE.
    quiet: bool,
    last_sent: Instant,
    alive_until: Instant,
    stalled_logged: bool,
}

struct Inner {
    node: u32,
    boot: u64,
    /// The dual's boot as the receiving threads last learned it.
    echo: Arc<AtomicU64>,
    key: Vec<u8>,
    links: Vec<Link>,
    sent: Vec<Sent>,
    beat: Mutex<Beat>,
}

/// The sending half of the heartbeat links.
pub struct Beacon {
    inner: Arc<Inner>,
}

impl Beacon {
    /// Starts the `beacon` thread; once the agent publishes, it sends every `interval` on
    /// `links`.
    pub fn start(
        node: u32,
        boot: u64,
        echo: Arc<AtomicU64>,
        key: Vec<u8>,
        links: Vec<Link>,
        interval: Duration,
    ) -> std::io::Result<Beacon> {
        let now = Instant::now();
        let inner = Arc::new(Inner {
            node,
            boot,
            echo,
            key,
            sent: links.iter().map(|_| Sent::default()).collect(),
            links,
            beat: Mutex::new(Beat {
                said: None,
                seq: 0,
                quiet: false,
                last_sent: now,
                alive_until: now + STALLED,
                stalled_logged: false,
            }),
        });
        let thread = inner.clone();
        std::thread::Builder::new()
            .name("beacon".into())
            .spawn(move || loop {
                let due = thread.beat.lock().last_sent + interval;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let mut beat = thread.beat.lock();
                if beat.last_sent + interval <= Instant::now() {
                    thread.send(&mut beat, false);
                }
            })?;
        Ok(Beacon { inner })
    }

    /// Says `said` from now on, sent at once when it changed. Saying anything but ACTIVE
    /// ends a [`Beacon::quiet`].
    pub(super) fn publish(&self, said: Said) {
        let mut beat = self.inner.beat.lock();
        if said.app.state != AppState::Active {
            beat.quiet = false;
        }
        if beat.said != Some(said) {
            beat.said = Some(said);
            self.inner.send(&mut beat, false);
        }
    }

    /// The agent still runs: the beacon goes on for another [`STALLED`].
    pub(super) fn alive(&self) {
        let mut beat = self.inner.beat.lock();
        beat.alive_until = Instant::now() + STALLED;
        if beat.stalled_logged {
            beat.stalled_logged = false;
            tracing::info!(
                node = self.inner.node,
                "agent running again: heartbeats resume"
            );
        }
    }

    /// Stops sending until [`Beacon::resume`] or a state other than ACTIVE is published;
    /// returns the sequence number of the last
    /// heartbeat sent, which the hand-over's TakeOver carries.
    pub(super) fn quiet(&self) -> u64 {
        let mut beat = self.inner.beat.lock();
        beat.quiet = true;
        beat.seq
    }

    pub(super) fn resume(&self) {
        let mut beat = self.inner.beat.lock();
        beat.quiet = false;
        self.inner.send(&mut beat, false);
    }

    /// The last words before amgr exits: sent even when quiet or stalled.
    pub(super) fn last(&self, said: Said) {
        let mut beat = self.inner.beat.lock();
        beat.said = Some(said);
        self.inner.send(&mut beat, true);
    }

    /// Link `i`'s heartbeats sent and send errors.
    pub(super) fn sent(&self, i: usize) -> (u64, u64) {
        self.inner
            .sent
            .get(i)
            .map_or((0, 0), |s| (s.ok.load(Relaxed), s.errors.load(Relaxed)))
    }
}

impl Inner {
    /// One heartbeat on every link, with the next sequence number; under the lock, so the
    /// agent's sends and the thread's never reorder.
    fn send(&self, beat: &mut Beat, always: bool) {
        let now = Instant::now();
        beat.last_sent = now;
        let Some(said) = beat.said else { return };
        if !always && beat.quiet {
            return;
        }
        if !always && now >= beat.alive_until {
            if !beat.stalled_logged {
                beat.stalled_logged = true;
                tracing::error!(
                    node = self.node,
                    stalled_s = STALLED.as_secs(),
                    "agent stalled: heartbeats stop so the dual can take over"
                );
            }
            return;
        }
        beat.seq += 1;
        let echo = self.echo.load(Relaxed);
        for (i, link) in self.links.iter().enumerate() {
            let hb = Heartbeat {
                node: self.node,
                boot: self.boot,
                echo,
                seq: beat.seq,
                sent_ms: unix_ms(SystemTime::now()),
                generation: said.generation,
                link: i as u8,
                apps: vec![said.app],
            };
            match link.send(&hb, &self.key) {
                Ok(()) => {
                    self.sent[i].ok.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    // A link that is down fails here every interval: count, log at debug.
                    self.sent[i].errors.fetch_add(1, Relaxed);
                    tracing::debug!(link = i, error = %e, "heartbeat not sent");
                }
            }
        }
    }
}
