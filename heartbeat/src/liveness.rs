//! When the peer counts as lost: heartbeats arrive over one or more links, and the peer is
//! lost only when every link has been silent for the dead time (the original's cure for
//! split-brain was a second, redundant link). Pure: every call takes `now` in milliseconds.

/// Per link, when an accepted heartbeat last arrived.
#[derive(Debug, Clone)]
pub struct Liveness {
    dead_ms: u64,
    last: Vec<Option<u64>>,
}

/// The peer as the links see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Never heard since we started.
    Unknown,
    Alive,
    /// Every link silent for the dead time.
    Lost,
}

impl Liveness {
    /// `links` links; the peer is lost after `dead_ms` of silence on all of them (default: 3
    /// heartbeat intervals).
    pub fn new(links: usize, dead_ms: u64) -> Liveness {
        Liveness {
            dead_ms,
            last: vec![None; links],
        }
    }

    /// Records an accepted heartbeat on `link`.
    pub fn heard(&mut self, link: usize, now_ms: u64) {
        if let Some(l) = self.last.get_mut(link) {
            *l = Some(now_ms);
        }
    }

    /// Whether `link` has carried a heartbeat within the dead time.
    pub fn link_up(&self, link: usize, now_ms: u64) -> bool {
        self.last
            .get(link)
            .copied()
            .flatten()
            .is_some_and(|t| now_ms.saturating_sub(t) < self.dead_ms)
    }

    pub fn peer(&self, now_ms: u64) -> Peer {
        if self.last.iter().all(Option::is_none) {
            Peer::Unknown
        } else if (0..self.last.len()).any(|l| self.link_up(l, now_ms)) {
            Peer::Alive
        } else {
            Peer::Lost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_only_when_every_link_is_silent() {
        let mut l = Liveness::new(2, 300);
        assert_eq!(l.peer(0), Peer::Unknown);
        l.heard(0, 0);
        l.heard(1, 0);
        assert_eq!(l.peer(200), Peer::Alive);
        // Link 0 goes quiet; link 1 carries on.
        for t in (100..=2000).step_by(100) {
            l.heard(1, t);
        }
        assert!(!l.link_up(0, 2000));
        assert_eq!(
            l.peer(2000),
            Peer::Alive,
            "one silent link of two is not a lost peer"
        );
        assert_eq!(l.peer(2299), Peer::Alive);
        assert_eq!(l.peer(2300), Peer::Lost, "both silent for the dead time");
        l.heard(0, 2400);
        assert_eq!(l.peer(2400), Peer::Alive, "a healed link brings it back");
    }

    #[test]
    fn unknown_links_are_ignored() {
        let mut l = Liveness::new(1, 300);
        l.heard(5, 0);
        assert_eq!(l.peer(0), Peer::Unknown);
    }
}
