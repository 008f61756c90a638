//! The isolation guard against the real binaries (the pair's lab: two balancers, three real
//! servers, a client making a new TCP request every 20 or 50 ms). A STANDBY cut off from its
//! dual and from its servers, or from its dual and the witness, keeps off the VIP; an ACTIVE
//! that loses its server side hands over to the STANDBY.

use std::time::{Duration, Instant};

use slb_tests::pair::{service_gap, timeline, Pair, PairOptions, Requests};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
/// How long a cut lasts: ten times the dead time, long enough for any takeover to show.
const HOLD: Duration = Duration::from_secs(3);

fn pair(opts: PairOptions) -> Pair {
    let mut p = Pair::new(opts).expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    p
}

/// Watches node `i` for `HOLD`: whether it ever held the VIP or left STANDBY.
fn watch_standby(p: &Pair, i: usize) -> (bool, Vec<String>) {
    let until = Instant::now() + HOLD;
    let (mut vip, mut states) = (false, Vec::new());
    while Instant::now() < until {
        vip |= p.has_vip(i);
        let s = p.state(i);
        if states.last() != Some(&s) {
            states.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (vip, states)
}

#[test]
fn a_standby_cut_off_from_its_dual_and_its_servers_keeps_off_the_vip_and_no_request_fails() {
    if !can_run(
        "a_standby_cut_off_from_its_dual_and_its_servers_keeps_off_the_vip_and_no_request_fails",
    ) {
        return;
    }
    let p = pair(PairOptions::default());
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    // The STANDBY loses the cable and its server-side port (heartbeat link 0): its dual is
    // silent on every link, and its client side still answers ARP.
    p.set_link(1, "hb0", false).unwrap();
    p.set_link(1, "eth1", false).unwrap();
    let (vip, states) = watch_standby(&p, 1);
    let q = p.query(1).unwrap();
    p.set_link(1, "eth1", true).unwrap();
    p.set_link(1, "hb0", true).unwrap();
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let attempts = reqs.finish();
    assert!(
        !vip,
        "the isolated STANDBY brought the VIP up:\n{}",
        p.log(1)
    );
    assert_eq!(states, ["STANDBY"], "{}", p.log(1));
    let g = &q["guard"];
    assert_eq!(g["can_serve"], false, "{q}");
    assert!(
        g["held_back"]
            .as_str()
            .is_some_and(|w| w.contains("0 of 3 real servers answer")),
        "query does not say why: {g}"
    );
    assert!(
        p.amgr(1, &["query"]).1.contains("guard      can serve"),
        "the guard did not recover"
    );
    let failed = attempts.iter().filter(|a| a.server.is_none()).count();
    assert_eq!(failed, 0, "requests failed:\n{}", timeline(&attempts));
}

#[test]
fn a_standby_cut_off_from_its_dual_and_the_witness_keeps_off_the_vip() {
    if !can_run("a_standby_cut_off_from_its_dual_and_the_witness_keeps_off_the_vip") {
        return;
    }
    // The client stands in for the upstream router both nodes reach.
    let p = pair(PairOptions {
        witness: vec![CLIENT],
        ..PairOptions::default()
    });
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    // Every heartbeat path dropped, the servers still reachable: without a witness this is a
    // split. The STANDBY's echoes to the witness are dropped as well.
    let ns = &p.nodes[1].ns;
    let witness = CLIENT.to_string();
    for cmd in [
        &["add", "table", "ip", "slbwitness"][..],
        &[
            "add",
            "chain",
            "ip",
            "slbwitness",
            "out",
            "{",
            "type",
            "filter",
            "hook",
            "output",
            "priority",
            "-500",
            ";",
            "}",
        ],
        &[
            "add",
            "rule",
            "ip",
            "slbwitness",
            "out",
            "ip",
            "daddr",
            &witness,
            "icmp",
            "type",
            "echo-request",
            "drop",
        ],
    ] {
        let out = p.lab.exec(ns, &[&["nft"][..], cmd].concat()).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p.cut_heartbeat(1, &[0, 1]).unwrap();
    let (vip, states) = watch_standby(&p, 1);
    let q = p.query(1).unwrap();
    p.cut_heartbeat(1, &[]).unwrap();
    let _ = p
        .lab
        .exec(ns, &["nft", "delete", "table", "ip", "slbwitness"]);
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let attempts = reqs.finish();
    assert!(!vip, "the STANDBY brought the VIP up:\n{}", p.log(1));
    assert_eq!(states, ["STANDBY"], "{}", p.log(1));
    assert!(
        q["guard"]["held_back"]
            .as_str()
            .is_some_and(|w| w.contains("witness")),
        "query does not name the witness: {q}"
    );
    let failed = attempts.iter().filter(|a| a.server.is_none()).count();
    assert_eq!(failed, 0, "requests failed:\n{}", timeline(&attempts));
}

/// The ACTIVE's server-side port goes down (the cable still carries the heartbeat): it hands
/// over to the STANDBY, which can reach the servers, and does not take the VIP back when the
/// port returns.
fn an_active_losing_its_server_side_hands_over(mode: &'static str) {
    let p = pair(PairOptions {
        mode,
        ..PairOptions::default()
    });
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    p.set_link(0, "eth1", false).unwrap();
    p.wait_states(["STANDBY", "ACTIVE"], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", p.log(0)));
    std::thread::sleep(Duration::from_millis(700));
    let attempts = reqs.finish();
    let (gap, failed_outside) = service_gap(&attempts);
    eprintln!(
        "{mode}: server side lost on the ACTIVE: gap {} ms",
        gap.as_millis()
    );
    assert!(p.has_vip(1) && !p.has_vip(0));
    assert!(
        attempts.last().unwrap().server.is_some(),
        "requests did not recover"
    );
    assert_eq!(failed_outside, 0, "{}", timeline(&attempts));
    // Under the crash gap's goal (1 s): two checks that fail, a ping, the switch.
    assert!(
        gap < Duration::from_secs(1),
        "gap {gap:?}\n{}",
        timeline(&attempts)
    );
    p.set_link(0, "eth1", true).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.state(0), "STANDBY");
    assert_eq!(p.state(1), "ACTIVE");
}

#[test]
fn an_active_losing_its_server_side_hands_over_to_the_standby_within_a_second() {
    if !can_run("an_active_losing_its_server_side_hands_over_to_the_standby_within_a_second") {
        return;
    }
    for mode in ["packet", "offload"] {
        an_active_losing_its_server_side_hands_over(mode);
    }
}
