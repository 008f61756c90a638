//! A real server dying under a client's steady requests, shared by the lab tests (which assert
//! on it) and `slb-lab dying` (which prints it over many runs): five real servers with the
//! shipped health-check defaults, a new request every 50 ms, then one server's process killed
//! (its port resets SYNs) or its link cut (nothing comes back at all). Also what the checks
//! cost a server: the probe traffic it receives with no client traffic at all.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::pair::{Attempt, Requests};
use crate::{ip, Lab, Slbd};

/// The client's patience for one request: long enough that a SYN retransmission (1 s, then
/// 3 s) slows a request instead of failing it, so what fails is what a client would see fail.
pub const PATIENCE: Duration = Duration::from_secs(4);

/// Which server of the five dies (s3).
pub const VICTIM: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// The server's process is killed: its port answers SYNs with resets.
    ProcessKilled,
    /// The server's link goes down: its packets vanish, no reset, no ICMP.
    LinkCut,
}

impl Death {
    pub fn name(self) -> &'static str {
        match self {
            Death::ProcessKilled => "process killed",
            Death::LinkCut => "link cut",
        }
    }
}

/// What one death cost.
pub struct Dying {
    /// From the death to the server shown out of rotation.
    pub out_after: Duration,
    /// The server's status line then.
    pub down: Value,
    /// Every request, timed from the start of the request loop.
    pub attempts: Vec<Attempt>,
    /// When the server left rotation, on the request loop's clock.
    pub out_at: Duration,
}

impl Dying {
    pub fn failed(&self) -> usize {
        self.attempts.iter().filter(|a| a.server.is_none()).count()
    }

    /// Requests answered, but after more than 500 ms.
    pub fn slowed(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.server.is_some() && a.took > Duration::from_millis(500))
            .count()
    }

    pub fn slowest(&self) -> Duration {
        self.attempts
            .iter()
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "out of rotation after {} ms (reason {}, last check {}); {} requests, {} failed, \
             {} slowed past 500 ms, slowest {} ms",
            self.out_after.as_millis(),
            self.down["down_reason"],
            self.down["last_check"],
            self.attempts.len(),
            self.failed(),
            self.slowed(),
            self.slowest().as_millis()
        )
    }
}

/// slbd's status (`slbctl --status --json`).
pub fn status(lab: &Lab, slbd: &Slbd) -> Result<Value> {
    let (code, out, err) = lab.slbctl(slbd, &["--status", "--json"]);
    anyhow::ensure!(code == 0, "slbctl --status: {err}");
    serde_json::from_str(&out).context("status JSON")
}

/// Server `i` of the first service as status shows it.
pub fn server(st: &Value, i: usize) -> Value {
    st["services"][0]["servers"][i].clone()
}

/// Kills server [`VICTIM`] by `death` under a new request every 50 ms in a fresh lab in
/// `mode`, and measures what it cost.
pub fn run(mode: &'static str, death: Death) -> Result<Dying> {
    let mut lab = Lab::new_in(5, mode)?;
    let slbd = lab.start_slbd(&lab.config(5));
    let started = Instant::now();
    let reqs = Requests::start_with(&lab.client(), Duration::from_millis(50), PATIENCE);
    std::thread::sleep(Duration::from_secs(2));
    let died = Instant::now();
    match death {
        Death::ProcessKilled => lab.stop_server(VICTIM),
        Death::LinkCut => ip(&[
            "-n",
            &lab.balancer(),
            "link",
            "set",
            &format!("p{}", VICTIM + 1),
            "down",
        ])?,
    }
    let (out_after, down) = loop {
        let s = server(&status(&lab, &slbd)?, VICTIM);
        if s["state"] == "down" {
            break (died.elapsed(), s);
        }
        anyhow::ensure!(
            died.elapsed() < Duration::from_secs(10),
            "server s{} never left rotation: {s}",
            VICTIM + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(2));
    Ok(Dying {
        out_after,
        down,
        attempts: reqs.finish(),
        out_at: died.duration_since(started) + out_after,
    })
}

/// Packets and bytes per second each of three real servers receives from the health checks
/// alone (no client traffic), over `secs` seconds, with the shipped defaults (a TCP and a UDP
/// service, as `Lab::config` has).
pub fn probe_traffic(secs: u64) -> Result<(f64, f64)> {
    let lab = Lab::new(3)?;
    let _slbd = lab.start_slbd(&lab.config(3));
    std::thread::sleep(Duration::from_secs(1));
    let counters = |i: usize| -> Result<(u64, u64)> {
        let out = lab.exec(
            &lab.server(i),
            &[
                "cat",
                "/sys/class/net/eth0/statistics/rx_packets",
                "/sys/class/net/eth0/statistics/rx_bytes",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut n = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        Ok((n.next().unwrap_or(0), n.next().unwrap_or(0)))
    };
    let before: Vec<(u64, u64)> = (0..3).map(counters).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<(u64, u64)> = (0..3).map(counters).collect::<Result<_>>()?;
    let (p, b) = before
        .iter()
        .zip(&after)
        .fold((0u64, 0u64), |(p, b), (x, y)| {
            (p + y.0 - x.0, b + y.1 - x.1)
        });
    let per = 3.0 * secs as f64;
    Ok((p as f64 / per, b as f64 / per))
}
