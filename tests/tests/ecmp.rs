//! Cluster mode end to end: three balancers behind a BIRD router's ECMP, each running BIRD
//! and slbd (MAGLEV, direct routing, the VIP announced from slbd's table), five real servers
//! answering the client through the router. The figures beside the kernel-only
//! anchor (fwmark + jhash mod N on the same topology): a balancer killed or cut off costs no
//! held connection and at most one new request; one real server leaving breaks none on the
//! others (anchor: 8–14 of 20) and moves about a fifth of the tuples (anchor: 47.5 %).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use slb_tests::ecmp::{Cluster, Load, Seen};
use slb_tests::*;

const T: Duration = Duration::from_secs(10);

fn report(what: &str, seen: &Seen) {
    eprintln!(
        "{what}: {}/{} held connections kept, {} of {} new requests failed",
        seen.held - seen.broken.len(),
        seen.held,
        seen.failed.len(),
        seen.requests
    );
}

fn assert_nothing_broke(what: &str, seen: &Seen, failed_at_most: usize) {
    report(what, seen);
    assert!(
        seen.broken.is_empty(),
        "{what}: held connections broke: {:?}",
        seen.broken
    );
    assert!(
        seen.failed.len() <= failed_at_most,
        "{what}: at most {failed_at_most} new request may fail: {:?}",
        seen.failed
    );
}

#[test]
fn a_balancer_killed_then_another_cut_off_breaks_no_held_connection_and_at_most_one_request() {
    if !can_run("a_balancer_killed_then_another_cut_off_breaks_no_held_connection") {
        return;
    }
    let mut c = Cluster::new(3, 5, 3).unwrap();
    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(Duration::from_secs(1));
    let placed: Vec<u64> = (0..3).map(|k| c.placed(k)).collect();
    assert!(
        placed.iter().all(|&n| n > 0),
        "the router spreads the flows over all three balancers: {placed:?}"
    );

    // slbd killed, its BIRD left running: the route goes with slbd's device.
    c.slbds[0].as_ref().unwrap().signal(Signal::SIGKILL);
    let killed = Instant::now();
    let took = c
        .wait_next_hops(&[1, 2], Duration::from_millis(300))
        .unwrap_or_else(|e| {
            panic!("kill -9 of balancer 0's slbd: next hop gone within 300 ms: {e}")
        });
    eprintln!("kill -9 of slbd: next hop gone in {took:?}");
    std::thread::sleep(Duration::from_secs(1));
    let adopted: u64 = (1..3)
        .map(|k| c.status(k)["adopted_midstream"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "the survivors carried {adopted} segments of flows they never saw start ({:?} since the kill)",
        killed.elapsed()
    );
    c.slbds[0] = None;
    let seen = load.stop();
    assert_nothing_broke("kill -9 of one slbd", &seen, 1);

    // Balancer 1's link cut at the router: only BFD notices.
    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(Duration::from_secs(1));
    ip(&["-n", &c.bgp.router, "link", "set", "rb1", "down"]).unwrap();
    let took = c.wait_next_hops(&[2], T).unwrap();
    eprintln!("link cut: next hop gone in {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "BFD (3 x 50 ms) detects a cut link: {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.stop();
    assert_nothing_broke("a balancer's link cut", &seen, 1);
}
