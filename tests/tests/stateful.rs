//! Stateful failover against the real binaries: the two-balancer lab (amgr running slbd on
//! each node, flow replication between the two slbd), 20 long-lived TCP connections through
//! the VIP that must each send and receive on their own real server after every failover,
//! and a client making a new request every 50 ms whose gap must stay within the goal.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use slb_tests::pair::{service_gap, Pair, PairOptions, Requests};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
const GOAL: Duration = Duration::from_secs(1);
const HELD: usize = 20;
const RUNS: usize = 5;

fn pair() -> Pair {
    let mut p = Pair::new(PairOptions::default()).expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    p
}

/// Opens `n` held connections through the VIP; each has answered once.
fn hold(p: &Pair, n: usize) -> Vec<(TcpStream, String)> {
    in_ns(&p.lab.client(), || {
        (0..n)
            .map(|i| {
                let (s, server) = hold_connection();
                let echoed = echo(&s, &format!("hello {i}"), Duration::from_secs(2))
                    .expect("the held connection answers");
                assert_eq!(echoed, server);
                (s, server)
            })
            .collect()
    })
}

/// How many held connections still reach their own server, both ways.
fn kept(p: &Pair, held: &[(TcpStream, String)], round: usize) -> usize {
    in_ns(&p.lab.client(), || {
        held.iter()
            .enumerate()
            .filter(|(i, (s, server))| {
                match echo(
                    s,
                    &format!("round {round} conn {i}"),
                    Duration::from_secs(3),
                ) {
                    Ok(got) if got == *server => true,
                    other => {
                        eprintln!("connection {i} on {server} lost in round {round}: {other:?}");
                        false
                    }
                }
            })
            .count()
    })
}

fn active_of(p: &Pair) -> usize {
    if p.state(0) == "ACTIVE" {
        0
    } else {
        1
    }
}

fn wait_active(p: &Pair, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.state(i) != "ACTIVE" {
        assert!(
            Instant::now() < deadline,
            "node {} did not take over:\n{}",
            i + 1,
            p.log(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One failover of `how` with requests flowing; returns the new-request gap.
fn failover(p: &mut Pair, how: &str) -> Duration {
    let from = active_of(p);
    let to = 1 - from;
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    match how {
        "kill" => p.kill(from),
        "switch" => {
            let (code, out, err) = p.amgr(from, &["switch"]);
            assert_eq!(code, 0, "{out}{err}");
        }
        _ => unreachable!(),
    }
    wait_active(p, to);
    std::thread::sleep(Duration::from_millis(700));
    let attempts = reqs.finish();
    let (gap, failed_outside) = service_gap(&attempts);
    assert!(
        attempts.last().unwrap().server.is_some(),
        "requests did not recover"
    );
    assert_eq!(failed_outside, 0, "requests failed outside the gap");
    assert!(p.has_vip(to));
    gap
}

/// The common run: hold 20 connections, then `RUNS` failovers of `how`; after a crash the
/// crashed node is restarted and rejoins as STANDBY, and it must be takeover-ready (holding
/// the 20 flows) before the next run. Every run must keep 20/20.
fn survive(how: &str) {
    let mut p = pair();
    let held = hold(&p, HELD);
    let mut servers: Vec<&str> = held.iter().map(|(_, s)| s.as_str()).collect();
    servers.sort();
    servers.dedup();
    assert!(servers.len() >= 2, "held connections on {servers:?}");
    let mut gaps = Vec::new();
    for run in 0..RUNS {
        let standby = 1 - active_of(&p);
        p.wait_takeover_ready(standby, HELD as u64, UP).unwrap();
        let gap = failover(&mut p, how);
        let n = kept(&p, &held, run);
        eprintln!(
            "{how} run {}: {n}/{HELD} kept, gap {} ms",
            run + 1,
            gap.as_millis()
        );
        assert_eq!(n, HELD, "{how} run {}: connections lost", run + 1);
        assert!(gap < GOAL, "{how} run {}: gap {gap:?}", run + 1);
        gaps.push(gap.as_millis());
        if how == "kill" {
            p.start(1 - standby).unwrap();
            p.wait_states(
                if standby == 0 {
                    ["ACTIVE", "STANDBY"]
                } else {
                    ["STANDBY", "ACTIVE"]
                },
                UP,
            )
            .unwrap();
        }
        let st = p.slbd_status(standby).unwrap();
        assert_eq!(
            st["drops"]["mid_stream_after_takeover"], 0,
            "no held connection's packet was missing from the new ACTIVE: {st}"
        );
    }
    eprintln!("{how}: gaps (ms) {gaps:?}");
}

#[test]
fn held_connections_survive_kill_9_of_the_active_and_failback() {
    if !can_run("held_connections_survive_kill_9_of_the_active_and_failback") {
        return;
    }
    survive("kill");
}

#[test]
fn held_connections_survive_planned_switches_both_ways() {
    if !can_run("held_connections_survive_planned_switches_both_ways") {
        return;
    }
    survive("switch");
}
