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
fn a_balancer_killed_restarted_cut_off_or_frozen_breaks_no_held_connection_and_at_most_one_request()
{
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

    // slbd restarted: announced again as soon as it balances (its BGP session never went down).
    let load = Load::start(&c.lab.client(), 20);
    let restarted = Instant::now();
    c.start_slbd(0).unwrap();
    c.wait_next_hops(&[0, 1, 2], T).unwrap();
    eprintln!(
        "slbd restarted: announced again {:?} after its start",
        restarted.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.stop();
    assert_nothing_broke("a killed slbd restarted", &seen, 1);

    // Balancer 1's link cut at the router: only BFD notices.
    let router = c.bgp.router.clone();
    lose_one(
        &c,
        "a balancer's link cut",
        Duration::from_secs(1),
        &[0, 2],
        || ip(&["-n", &router, "link", "set", "rb1", "down"]).unwrap(),
    );

    // Balancer 2's BIRD frozen: its sessions stay open but fall silent; BFD notices.
    lose_one(
        &c,
        "a balancer's BIRD frozen",
        Duration::from_millis(500),
        &[0],
        || c.bgp.freeze(2),
    );
    c.bgp.thaw(2);
    let took = c.wait_next_hops(&[0, 2], T).unwrap();
    eprintln!("BIRD thawed: announced again in {took:?}");
}

/// Under the load (after `settle`), `lose` takes one balancer away; the router must be left
/// with balancers `left` within BFD's detection (3 x 50 ms, 500 ms allowed), no held
/// connection may break and at most one new request fail.
fn lose_one(c: &Cluster, what: &str, settle: Duration, left: &[usize], lose: impl FnOnce()) {
    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(settle);
    lose();
    let took = c.wait_next_hops(left, T).unwrap();
    eprintln!("{what}: next hop gone in {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "{what}: BFD detects it: {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.stop();
    assert_nothing_broke(what, &seen, 1);
}

/// Where balancer `k` would place a fresh flow from each of the fixed tuples' client ports.
fn tuples(c: &Cluster, k: usize, n: u16) -> Vec<String> {
    (0..n).map(|i| c.explain(k, 20_000 + i)).collect()
}

#[test]
fn three_balancers_share_the_flows_place_each_tuple_alike_and_a_fourth_joins_breaking_nothing() {
    if !can_run("three_balancers_share_the_flows_place_each_tuple_alike") {
        return;
    }
    let mut c = Cluster::new(3, 5, 4).unwrap();
    let before: Vec<u64> = (0..3).map(|k| c.placed(k)).collect();
    let names: Vec<String> = in_ns(&c.lab.client(), || {
        (0..300)
            .map(|i| {
                server_name(
                    &http_get(CLIENT, vip(80), "/", T)
                        .unwrap_or_else(|e| panic!("request {i}: {e}")),
                )
            })
            .collect()
    });
    let spread: Vec<u64> = (0..3).map(|k| c.placed(k) - before[k]).collect();
    let servers: std::collections::BTreeSet<&String> = names.iter().collect();
    eprintln!("300 requests over the balancers: {spread:?}; servers {servers:?}");
    let adopted: Vec<u64> = (0..3)
        .map(|k| c.status(k)["adopted_midstream"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (spread.iter().sum::<u64>(), adopted),
        (300, vec![0, 0, 0]),
        "each request placed once, every segment of it reaching the balancer that placed it"
    );
    assert!(
        spread.iter().all(|&n| n >= 50),
        "the router spreads new flows over the three: {spread:?}"
    );
    assert_eq!(servers.len(), 5, "and MAGLEV over the five servers");
    let replies: Vec<u64> = (0..3)
        .map(|k| c.status(k)["replies"].as_u64().unwrap())
        .collect();
    assert_eq!(replies, [0, 0, 0], "replies never touch a balancer");

    let on: Vec<Vec<String>> = (0..3).map(|k| tuples(&c, k, 40)).collect();
    let same = (0..40)
        .filter(|&i| on[1][i] == on[0][i] && on[2][i] == on[0][i])
        .count();
    eprintln!("the same 40 tuples through each balancer: {same}/40 on the same server");
    assert_eq!(same, 40, "{on:?}");

    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(Duration::from_secs(1));
    let k = c.join().unwrap();
    let took = c.wait_next_hops(&[0, 1, 2, 3], T).unwrap();
    eprintln!("a fourth balancer announced {took:?} after its slbd balanced");
    std::thread::sleep(Duration::from_secs(1));
    let st = c.status(k);
    eprintln!(
        "the fourth carried {} segments of flows it never saw start",
        st["adopted_midstream"]
    );
    let seen = load.stop();
    assert_nothing_broke("a fourth balancer joining", &seen, 1);
    assert_eq!(
        tuples(&c, k, 40),
        on[0],
        "the fourth places the tuples alike"
    );
}

#[test]
fn a_server_leaving_or_returning_a_balancer_withdrawn_or_seeing_no_server_break_no_held_connection()
{
    if !can_run("a_server_leaving_or_returning_a_balancer_withdrawn") {
        return;
    }
    let c = Cluster::new(3, 5, 3).unwrap();
    let removed = format!("{}:80", slb_tests::ecmp::server_addr(4));
    let before = tuples(&c, 0, 200);

    // One real server of five removed on every balancer.
    let load = Load::start(&c.lab.client(), 20);
    for k in 0..3 {
        c.slbctl(k, &["--rm-server-port", &removed]);
    }
    let seen = load.stop();
    let after = tuples(&c, 0, 200);
    let moved: Vec<usize> = (0..200).filter(|&i| after[i] != before[i]).collect();
    let from_s5 = moved.iter().filter(|&&i| before[i] == removed).count();
    let on_s5 = seen.servers.iter().filter(|s| *s == "s5").count();
    let others_broken: Vec<&String> = seen
        .broken
        .iter()
        .filter(|b| !b.contains(" on s5,"))
        .collect();
    eprintln!(
        "s5 removed: {} of {} held connections on the other servers broke; {} of 200 tuples \
         moved ({} of them from s5, which held {}); anchor: 8-14 of 20 and 47.5 %",
        others_broken.len(),
        seen.held - on_s5,
        moved.len(),
        from_s5,
        before.iter().filter(|s| **s == removed).count()
    );
    assert!(others_broken.is_empty(), "{others_broken:?}");
    assert!(
        moved.len() <= 50,
        "at most a quarter of the tuples move: {}",
        moved.len()
    );
    assert_eq!(from_s5, moved.len(), "only s5's tuples move");

    let load = Load::start(&c.lab.client(), 20);
    for k in 0..3 {
        c.slbctl(k, &["--add-server", &format!("tcp/80={removed}")]);
    }
    let seen = load.stop();
    assert_nothing_broke("s5 added back", &seen, 0);
    assert_eq!(tuples(&c, 0, 200), before, "every tuple back where it was");

    // The operator withdraws balancer 1: the router moves its flows to the others.
    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(Duration::from_millis(500));
    c.slbctl(1, &["--withdraw"]);
    let took = c.wait_next_hops(&[0, 2], T).unwrap();
    eprintln!("--withdraw of balancer 1: next hop gone in {took:?}");
    let st = c.status(1);
    assert_eq!(
        st["announce"]["reason"], "withdrawn by the operator",
        "{st}"
    );
    assert_eq!(
        st["state"], "balancing",
        "a withdrawn balancer still balances: {st}"
    );
    let seen = load.stop();
    assert_nothing_broke("a balancer withdrawn by the operator", &seen, 1);
    c.slbctl(1, &["--rejoin"]);
    c.wait_next_hops(&[0, 1, 2], T).unwrap();

    // Balancer 2 stops hearing its servers' answers to its checks (its requests still go
    // out): every server is down for it, so it withdraws; the others serve.
    let load = Load::start(&c.lab.client(), 20);
    std::thread::sleep(Duration::from_millis(500));
    let b2 = c.bgp.balancers[2].clone();
    let nft = c
        .lab
        .exec(
            &b2,
            &[
                "nft",
                "table ip checks_blocked { chain input { type filter hook input priority 0; \
                 ip saddr 192.168.77.0/24 tcp sport 80 drop; }; }",
            ],
        )
        .unwrap();
    assert!(
        nft.status.success(),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );
    let took = c.wait_next_hops(&[0, 1], T).unwrap();
    eprintln!("balancer 2 seeing no server: next hop gone {took:?} after the checks began failing");
    assert_eq!(c.status(2)["announce"]["reason"], "no server in rotation");
    let seen = load.stop();
    assert_nothing_broke("a balancer with every server down for it", &seen, 1);
    c.lab
        .exec(&b2, &["nft", "delete", "table", "ip", "checks_blocked"])
        .unwrap();
    c.wait_next_hops(&[0, 1, 2], T).unwrap();
}
