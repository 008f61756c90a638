//! Server health: the pure rule that turns probe results into in/out of rotation (a server
//! leaves after `fall` failures in a row and comes back after `rise` successes in a row),
//! smooths the service latency the probes measure, and names why a server is down — an active
//! check's failure or one the data path saw on its own (passive detection, which only takes a
//! server out: the active check alone brings it back). The prober that runs the probes is the
//! shell in `prober.rs`; the data path's passive count is in `balancer/health.rs`.

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
    /// What the data path's own view of the server may decide.
    pub passive: PassiveConfig,
    /// An HTTP GET instead of a bare connect (tcp services).
    pub http: Option<HttpCheck>,
    /// TLS on the checked connection: HTTPS with `http`, else a bare handshake.
    pub tls: Option<TlsCheck>,
    /// A program that decides instead of any connection check.
    pub script: Option<ScriptCheck>,
}

/// An HTTP check: `GET {path}` whose answer must have an expected status and, when asked,
/// contain a text within its first [`crate::core::http_check::MAX_BODY`] bytes of body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String,
    /// The Host header; the server's IP when absent.
    pub host: Option<String>,
    pub expect_status: ExpectStatus,
    pub expect_body: Option<String>,
}

/// The HTTP statuses an HTTP check accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectStatus {
    Codes(Vec<u16>),
    /// Inclusive.
    Range(u16, u16),
}

impl ExpectStatus {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            ExpectStatus::Codes(codes) => codes.contains(&status),
            ExpectStatus::Range(low, high) => (*low..=*high).contains(&status),
        }
    }
}

/// A TLS check. Without a CA the certificate is not verified (keepalived's SSL_GET does the
/// same): the check then says the server completes a handshake, not who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    /// PEM file of the CAs the server's certificate must chain to.
    pub ca_file: Option<std::path::PathBuf>,
    /// The name sent (SNI) and verified; the HTTP host, else the server's IP, when absent.
    pub server_name: Option<String>,
}

/// A script check: `command` (argv, no shell) exits 0 for up; see [`ScriptCheck::dynamic_weight`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCheck {
    pub command: Vec<String>,
    /// Killed past this, which counts as [`Failure::Timeout`].
    pub timeout: Duration,
    /// keepalived's misc_dynamic: exit 2 to 255 is up with weight `status - 2`, exit 0 up
    /// with the configured weight, exit 1 down. Without it any non-zero exit is down.
    pub dynamic_weight: bool,
}

/// The shipped defaults: a dead server leaves rotation within 1.5 s by active checks alone
/// (three failures 400 ms apart, the last waiting at most 300 ms), for two or three TCP
/// handshakes a second per server, which no server farm notices; a refused or unanswered
/// handshake on the data path takes it out sooner (see [`PassiveConfig`]).
impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            enabled: true,
            interval: Duration::from_millis(400),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
            udp_payload: b"slb health check\n".to_vec(),
            passive: PassiveConfig::default(),
            http: None,
            tls: None,
            script: None,
        }
    }
}

/// Passive detection: failed handshakes the data path sees take a server out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveConfig {
    pub enabled: bool,
    /// Failed handshakes in a row (with no handshake that succeeded between them).
    pub fall: u32,
    /// A client's SYN retransmitted at least this long after the flow's previous packet (its
    /// previous SYN), with no answer from the server in between, is an unanswered handshake
    /// (measured in the flow table's 100 ms ticks). Below the client's first retransmission
    /// (1 s on Linux), above any LAN server's answer.
    pub syn_timeout: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            enabled: true,
            fall: 2,
            syn_timeout: Duration::from_millis(700),
        }
    }
}

/// The successes in a row that bring a server back: the service's `rise`, or one when no
/// other server of the service is in rotation — its new flows are refused meanwhile, and a
/// server that may still flap serves better than none (a node whose server-side link was cut
/// serves again at its first passing check once the link heals, not `rise` intervals later).
pub fn rise_needed(rise: u32, another_up: bool) -> u32 {
    if another_up {
        rise
    } else {
        1
    }
}

/// Why a check failed, or why the data path counted a handshake as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    /// TCP RST, or ICMP port unreachable for UDP.
    Refused,
    /// Any other error (no route, host unreachable, ...).
    Error,
    /// An HTTP check's answer had a status it does not expect.
    Status(u16),
    /// An HTTP check's answer lacked the expected text, or was not HTTP.
    Body,
    /// A TLS check's handshake failed.
    Tls,
    /// A script check exited with this status (or was killed: 255).
    Script(u8),
    /// The data path saw the server reset a SYN.
    PassiveRst,
    /// The data path saw the server answer a flow with ICMP unreachable.
    PassiveUnreachable,
    /// The data path saw a SYN go unanswered.
    PassiveTimeout,
    /// The server's agent said `down`, `fail` or `stopped`.
    Agent,
}

impl Failure {
    /// Whether the data path, not a check, saw this.
    pub fn passive(self) -> bool {
        matches!(
            self,
            Failure::PassiveRst | Failure::PassiveUnreachable | Failure::PassiveTimeout
        )
    }

    /// A compact code for an atomic (0 is kept for "none"): kind in the high byte, a status in
    /// the low 16 bits.
    pub fn code(self) -> u32 {
        let (kind, detail) = match self {
            Failure::Timeout => (1, 0),
            Failure::Refused => (2, 0),
            Failure::Error => (3, 0),
            Failure::Status(s) => (4, u32::from(s)),
            Failure::Body => (5, 0),
            Failure::Tls => (6, 0),
            Failure::Script(s) => (7, u32::from(s)),
            Failure::PassiveRst => (8, 0),
            Failure::PassiveUnreachable => (9, 0),
            Failure::PassiveTimeout => (10, 0),
            Failure::Agent => (11, 0),
        };
        (kind << 24) | detail
    }

    /// The failure a [`Failure::code`] stands for; `None` for 0 or a code no failure has.
    pub fn from_code(code: u32) -> Option<Failure> {
        let detail = code & 0xffff;
        Some(match code >> 24 {
            1 => Failure::Timeout,
            2 => Failure::Refused,
            3 => Failure::Error,
            4 => Failure::Status(detail as u16),
            5 => Failure::Body,
            6 => Failure::Tls,
            7 => Failure::Script(detail as u8),
            8 => Failure::PassiveRst,
            9 => Failure::PassiveUnreachable,
            10 => Failure::PassiveTimeout,
            11 => Failure::Agent,
            _ => return None,
        })
    }
}

/// The reason as logs, status and metrics name it: `refused`, `http 503`, `passive_rst`, ...
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused => f.write_str("refused"),
            Failure::Error => f.write_str("error"),
            Failure::Status(s) => write!(f, "http {s}"),
            Failure::Body => f.write_str("http body"),
            Failure::Tls => f.write_str("tls"),
            Failure::Script(s) => write!(f, "script exit {s}"),
            Failure::PassiveRst => f.write_str("passive_rst"),
            Failure::PassiveUnreachable => f.write_str("passive_unreachable"),
            Failure::PassiveTimeout => f.write_str("passive_timeout"),
            Failure::Agent => f.write_str("agent"),
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

    /// Takes the data plane's word that the server is out of rotation when the checks still
    /// had it in (passive detection took it out): from here `rise` successes bring it back.
    pub fn sync(&mut self, up_in_dataplane: bool) {
        if self.up && !up_in_dataplane {
            self.up = false;
            self.ok_streak = 0;
        }
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
    fn a_server_passive_detection_took_out_needs_rise_successes_to_come_back() {
        let mut h = Health::default();
        h.record(OK, 2, 3);
        h.sync(false);
        assert!(!h.up);
        assert_eq!(h.record(OK, 2, 3), None, "one success is not rise");
        assert_eq!(h.record(OK, 2, 3), Some(Change::CameUp));
        h.sync(true);
        assert!(
            h.up,
            "syncing to up changes nothing: only checks bring a server back"
        );
    }

    #[test]
    fn every_failure_round_trips_through_its_code_and_names_itself() {
        let all = [
            Failure::Timeout,
            Failure::Refused,
            Failure::Error,
            Failure::Status(503),
            Failure::Body,
            Failure::Tls,
            Failure::Script(7),
            Failure::PassiveRst,
            Failure::PassiveUnreachable,
            Failure::PassiveTimeout,
        ];
        for f in all {
            assert_ne!(f.code(), 0);
            assert_eq!(Failure::from_code(f.code()), Some(f));
        }
        assert_eq!(Failure::from_code(0), None);
        assert_eq!(Failure::Status(503).to_string(), "http 503");
        assert_eq!(Failure::PassiveRst.to_string(), "passive_rst");
        assert!(Failure::PassiveTimeout.passive() && !Failure::Refused.passive());
    }

    #[test]
    fn the_last_hope_of_a_service_comes_back_at_its_first_passing_check() {
        assert_eq!(rise_needed(2, true), 2);
        assert_eq!(rise_needed(5, false), 1);
        let mut h = Health::starting(false);
        assert_eq!(h.record(OK, rise_needed(2, false), 3), Some(Change::CameUp));
    }

    #[test]
    fn rise_and_fall_of_zero_act_as_one() {
        let mut h = Health::default();
        assert_eq!(h.record(BAD, 0, 0), Some(Change::WentDown));
        assert_eq!(h.record(OK, 0, 0), Some(Change::CameUp));
    }
}
