//! Server health: the pure rule that turns probe results into in/out of rotation (a server
//! leaves after `fall` failures in a row and comes back after `rise` successes in a row) and
//! smooths the service latency the TCP probes measure. The prober that runs the probes is the
//! shell in `prober.rs`.

use std::time::Duration;

/// How a service's servers are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// What a UDP probe sends; any reply is success.
    pub udp_payload: Vec<u8>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            udp_payload: b"slb health check\n".to_vec(),
        }
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    /// TCP RST, or ICMP port unreachable for UDP.
    Refused,
    /// Any other error (no route, host unreachable, ...).
    Error,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
            Failure::Error => "error",
        }
    }
}

/// A change of rotation state that a probe result caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    WentDown,
    CameUp,
}

/// One server's health as the checks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// Exponentially weighted moving average of the probe latency, µs.
    latency_us: Option<f64>,
}

/// Weight of a new latency sample in the average: recent enough to follow a server that slows
/// down within a few checks, smooth enough that one slow connect does not swing it.
const EWMA_ALPHA: f64 = 0.3;

impl Default for Health {
    fn default() -> Self {
        // Servers start in rotation: balancing begins before the first check completes, and
        // `fall` failures take a dead server out.
        Health {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            latency_us: None,
        }
    }
}

impl Health {
    /// Health that starts in (or out of) rotation, as a server already known is.
    pub fn starting(up: bool) -> Health {
        Health {
            up,
            ..Health::default()
        }
    }

    /// Records one probe result; returns the change it caused, if any.
    pub fn record(
        &mut self,
        result: Result<Duration, Failure>,
        rise: u32,
        fall: u32,
    ) -> Option<Change> {
        match result {
            Ok(latency) => {
                let sample = latency.as_secs_f64() * 1e6;
                self.latency_us = Some(match self.latency_us {
                    Some(avg) => avg + EWMA_ALPHA * (sample - avg),
                    None => sample,
                });
                self.fail_streak = 0;
                self.ok_streak = self.ok_streak.saturating_add(1);
                if !self.up && self.ok_streak >= rise.max(1) {
                    self.up = true;
                    return Some(Change::CameUp);
                }
            }
            Err(_) => {
                self.ok_streak = 0;
                self.fail_streak = self.fail_streak.saturating_add(1);
                if self.up && self.fail_streak >= fall.max(1) {
                    self.up = false;
                    return Some(Change::WentDown);
                }
            }
        }
        None
    }

    /// The smoothed latency in whole µs (at least 1), once measured.
    pub fn latency_us(&self) -> Option<u32> {
        self.latency_us.map(|l| (l.round() as u32).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Result<Duration, Failure> = Ok(Duration::from_micros(500));
    const BAD: Result<Duration, Failure> = Err(Failure::Timeout);

    #[test]
    fn leaves_after_fall_failures_in_a_row_and_returns_after_rise_successes() {
        let mut h = Health::default();
        assert_eq!(h.record(BAD, 2, 3), None);
        assert_eq!(h.record(BAD, 2, 3), None);
        assert_eq!(h.record(BAD, 2, 3), Some(Change::WentDown));
        assert!(!h.up);
        assert_eq!(h.record(BAD, 2, 3), None, "already down");
        assert_eq!(h.record(OK, 2, 3), None);
        assert_eq!(h.record(OK, 2, 3), Some(Change::CameUp));
        assert!(h.up);
    }

    #[test]
    fn an_interrupted_streak_starts_again() {
        let mut h = Health::default();
        h.record(BAD, 2, 3);
        h.record(BAD, 2, 3);
        h.record(OK, 2, 3);
        assert_eq!(h.record(BAD, 2, 3), None);
        assert_eq!(h.record(BAD, 2, 3), None);
        assert_eq!(h.record(BAD, 2, 3), Some(Change::WentDown));
        h.record(OK, 2, 3);
        h.record(Err(Failure::Refused), 2, 3);
        assert_eq!(h.record(OK, 2, 3), None);
        assert_eq!(h.record(OK, 2, 3), Some(Change::CameUp));
    }

    #[test]
    fn latency_is_smoothed() {
        let mut h = Health::default();
        assert_eq!(h.latency_us(), None);
        h.record(Ok(Duration::from_micros(1000)), 2, 3);
        assert_eq!(h.latency_us(), Some(1000));
        h.record(Ok(Duration::from_micros(2000)), 2, 3);
        assert_eq!(h.latency_us(), Some(1300));
        for _ in 0..30 {
            h.record(Ok(Duration::from_micros(2000)), 2, 3);
        }
        assert_eq!(h.latency_us(), Some(2000));
        // A failure does not touch the latency.
        h.record(BAD, 2, 3);
        assert_eq!(h.latency_us(), Some(2000));
    }

    #[test]
    fn rise_and_fall_of_zero_act_as_one() {
        let mut h = Health::default();
        assert_eq!(h.record(BAD, 0, 0), Some(Change::WentDown));
        assert_eq!(h.record(OK, 0, 0), Some(Change::CameUp));
    }
}
