//! The isolation guard: whether this node can serve, so that a node cut off from its real
//! servers (or from the witness both nodes can reach) never takes the VIP, and an ACTIVE that
//! loses them hands over to a STANDBY that has not. Pure: the `guard` section of amgr.json,
//! how many answers a policy needs, and the verdict on one round of checks. The ICMP echo
//! codec is `echo`; the thread that sends the checks is `probe`.
//!
//! Why ICMP echo to each real server's address: the guard asks whether the network lets this
//! node reach the servers, not whether their services are up (slbd's health checks say that,
//! and a service that is down is down for both nodes alike). One round sends one echo to each
//! distinct server address and each witness, and ends as soon as the policy is met or at the
//! round's timeout; a send the kernel refuses (no route: the server-side link is down) is an
//! answer of no.

pub mod echo;
pub mod probe;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many of the configured real servers must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    /// No guard on the servers (the witness, if any, still counts).
    None,
    /// At least one server answers.
    One,
    /// More than half of them answer.
    Majority,
    /// Every one answers.
    All,
}

impl Need {
    /// Answers needed out of `total` servers.
    pub fn needed(self, total: usize) -> usize {
        match self {
            Need::None => 0,
            Need::One => total.min(1),
            Need::Majority => total / 2 + 1,
            Need::All => total,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Need::None => "none",
            Need::One => "one",
            Need::Majority => "majority",
            Need::All => "all",
        }
    }
}

/// amgr.json's `guard` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    #[serde(default = "default_need")]
    pub servers: Need,
    /// Addresses both nodes should reach (the upstream router, a third host); one answering
    /// is enough. Empty: no witness.
    #[serde(default)]
    pub witness: Vec<String>,
    /// How long one round waits for its answers.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How often the guard checks; at most a quarter of the heartbeat's dead time is used, so
    /// a check begun once the dual's silence is certain has ended when the dead time does.
    #[serde(default = "default_every")]
    pub every_ms: u64,
    /// An ACTIVE hands over after this many rounds in a row that say it cannot serve.
    #[serde(default = "default_rounds")]
    pub unfit_rounds: u32,
}

impl Default for RawGuard {
    fn default() -> RawGuard {
        RawGuard {
            servers: default_need(),
            witness: Vec::new(),
            timeout_ms: default_timeout(),
            every_ms: default_every(),
            unfit_rounds: default_rounds(),
        }
    }
}

fn default_need() -> Need {
    Need::One
}
fn default_timeout() -> u64 {
    200
}
fn default_every() -> u64 {
    250
}
fn default_rounds() -> u32 {
    2
}

/// The checked `guard` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub servers: Need,
    pub witness: Vec<Ipv4Addr>,
    pub timeout: Duration,
    pub every: Duration,
    pub unfit_rounds: u32,
}

impl Settings {
    /// Whether there is anything to check.
    pub fn enabled(&self) -> bool {
        self.servers != Need::None || !self.witness.is_empty()
    }
}

/// Checks the section; problems go to `errors` with their field path.
pub fn validate(raw: &RawGuard, dead: Duration, errors: &mut Vec<String>) -> Settings {
    let mut witness = Vec::new();
    for (i, w) in raw.witness.iter().enumerate() {
        match w.parse::<Ipv4Addr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() => {
                errors.push(format!("guard.witness[{i}]: {ip} cannot answer an echo"))
            }
            Ok(ip) => witness.push(ip),
            Err(_) => errors.push(format!("guard.witness[{i}]: {w:?} is not an IPv4 address")),
        }
    }
    if raw.witness.len() > 8 {
        errors.push(format!(
            "guard.witness: {} given; at most 8",
            raw.witness.len()
        ));
    }
    if !(10..=5000).contains(&raw.timeout_ms) {
        errors.push(format!(
            "guard.timeout_ms: {} is outside 10-5000",
            raw.timeout_ms
        ));
    }
    if !(20..=10_000).contains(&raw.every_ms) {
        errors.push(format!(
            "guard.every_ms: {} is outside 20-10000",
            raw.every_ms
        ));
    }
    if !(1..=100).contains(&raw.unfit_rounds) {
        errors.push(format!(
            "guard.unfit_rounds: {} is outside 1-100",
            raw.unfit_rounds
        ));
    }
    let every = Duration::from_millis(raw.every_ms).min(dead / 4);
    Settings {
        servers: raw.servers,
        witness,
        timeout: Duration::from_millis(raw.timeout_ms).min(dead / 2),
        every,
        unfit_rounds: raw.unfit_rounds,
    }
}

/// What one round of checks heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Reach {
    pub servers: usize,
    pub servers_up: usize,
    pub witnesses: usize,
    pub witnesses_up: usize,
}

/// Whether `reach` lets this node serve under `need`; the reason if not.
pub fn verdict(need: Need, reach: &Reach) -> Result<(), String> {
    if satisfied(need, reach) {
        return Ok(());
    }
    let needed = need.needed(reach.servers);
    if reach.servers_up < needed {
        return Err(format!(
            "{} of {} real servers answer, {} ({}) needed",
            reach.servers_up,
            reach.servers,
            needed,
            need.name()
        ));
    }
    if reach.witnesses > 0 && reach.witnesses_up == 0 {
        return Err(format!(
            "none of the {} witness addresses answers",
            reach.witnesses
        ));
    }
    Ok(())
}

/// Whether the answers meet the policy (a round stops waiting as soon as they do).
pub fn satisfied(need: Need, reach: &Reach) -> bool {
    reach.servers_up >= need.needed(reach.servers)
        && (reach.witnesses == 0 || reach.witnesses_up > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(servers: usize, up: usize, witnesses: usize, witnesses_up: usize) -> Reach {
        Reach {
            servers,
            servers_up: up,
            witnesses,
            witnesses_up,
        }
    }

    #[test]
    fn each_policy_needs_its_share_of_the_servers() {
        let rows = [
            (Need::None, 5, 0),
            (Need::One, 5, 1),
            (Need::One, 0, 0),
            (Need::Majority, 5, 3),
            (Need::Majority, 4, 3),
            (Need::Majority, 1, 1),
            (Need::All, 5, 5),
        ];
        for (need, total, needed) in rows {
            assert_eq!(need.needed(total), needed, "{need:?} of {total}");
        }
    }

    #[test]
    fn a_node_serves_only_with_enough_servers_and_a_witness_answering() {
        let rows = [
            (Need::One, reach(3, 1, 0, 0), true),
            (Need::One, reach(3, 0, 0, 0), false),
            (Need::Majority, reach(3, 1, 0, 0), false),
            (Need::Majority, reach(3, 2, 0, 0), true),
            (Need::All, reach(3, 2, 0, 0), false),
            (Need::None, reach(3, 0, 0, 0), true),
            (Need::One, reach(3, 3, 2, 0), false),
            (Need::One, reach(3, 3, 2, 1), true),
            (Need::None, reach(3, 0, 1, 0), false),
        ];
        for (need, r, fit) in rows {
            assert_eq!(verdict(need, &r).is_ok(), fit, "{need:?} {r:?}");
        }
        assert_eq!(
            verdict(Need::Majority, &reach(5, 2, 0, 0)).unwrap_err(),
            "2 of 5 real servers answer, 3 (majority) needed"
        );
        assert_eq!(
            verdict(Need::One, &reach(5, 5, 1, 0)).unwrap_err(),
            "none of the 1 witness addresses answers"
        );
    }

    #[test]
    fn the_section_defaults_to_one_server_and_no_witness() {
        let raw: RawGuard = serde_json::from_str("{}").unwrap();
        let mut e = Vec::new();
        let s = validate(&raw, Duration::from_millis(300), &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.servers, Need::One);
        assert!(s.witness.is_empty());
        assert!(s.enabled());
        // A quarter of the dead time, so a check begun after the dual went silent ends in time.
        assert_eq!(s.every, Duration::from_millis(75));
        assert_eq!(s.timeout, Duration::from_millis(150));
    }

    #[test]
    fn bad_guard_fields_are_named() {
        let raw: RawGuard = serde_json::from_str(
            r#"{"witness": ["10.0.0.1", "router", "255.255.255.255"], "timeout_ms": 0,
                "every_ms": 1, "unfit_rounds": 0}"#,
        )
        .unwrap();
        let mut e = Vec::new();
        validate(&raw, Duration::from_millis(300), &mut e);
        assert_eq!(
            e,
            [
                "guard.witness[1]: \"router\" is not an IPv4 address",
                "guard.witness[2]: 255.255.255.255 cannot answer an echo",
                "guard.timeout_ms: 0 is outside 10-5000",
                "guard.every_ms: 1 is outside 20-10000",
                "guard.unfit_rounds: 0 is outside 1-100",
            ]
        );
        let unknown = serde_json::from_str::<RawGuard>(r#"{"servers": "most"}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown variant `most`"),
            "{unknown}"
        );
    }
}
