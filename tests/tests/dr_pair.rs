//! Direct routing with the amgr pair, in both data-path modes: connections held through the
//! VIP survive a planned switch and a `kill -9` of the ACTIVE (its amgr and slbd), carried by
//! the flows the STANDBY's slbd holds from replication. The servers answer clients directly
//! through the gateway address, which moves with the VIP.

use std::time::Duration;

use slb_tests::held::{hold_to, kept};
use slb_tests::pair::{Pair, PairOptions};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
const HELD: usize = 10;

fn active_of(p: &Pair) -> usize {
    usize::from(p.state(0) != "ACTIVE")
}

fn held_connections_survive_a_switch_and_a_kill_9(mode: &'static str) {
    let mut p = Pair::new(PairOptions {
        mode,
        forwarding: "dr",
        ..PairOptions::default()
    })
    .expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let held = hold_to(&p, HELD, SERVER_HTTP_PORT);
    let mut servers: Vec<&str> = held.iter().map(|(_, s)| s.as_str()).collect();
    servers.sort();
    servers.dedup();
    assert!(servers.len() >= 2, "held connections on {servers:?}");
    for (round, how) in ["switch", "kill"].into_iter().enumerate() {
        let from = active_of(&p);
        let to = 1 - from;
        p.wait_takeover_ready(to, HELD as u64, UP).unwrap();
        match how {
            "switch" => {
                let (code, out, err) = p.amgr(from, &["switch"]);
                assert_eq!(code, 0, "{out}{err}");
            }
            _ => p.kill(from),
        }
        p.wait_active(to);
        let n = kept(&p, &held, round);
        eprintln!("dr {mode} {how}: {n}/{HELD} held connections kept");
        assert_eq!(n, HELD, "dr {mode} {how}: held connections lost");
        let st = p.slbd_status(to).expect("the new ACTIVE's status");
        assert_eq!(st["replies"], 0, "no reply reached the new ACTIVE's queue");
    }
}

#[test]
fn packet_mode_dr_held_connections_survive_a_switch_and_a_kill_9_of_the_active() {
    if !can_run("packet_mode_dr_held_connections_survive_a_switch_and_a_kill_9_of_the_active") {
        return;
    }
    held_connections_survive_a_switch_and_a_kill_9("packet");
}

#[test]
fn offload_mode_dr_held_connections_survive_a_switch_and_a_kill_9_of_the_active() {
    if !can_run("offload_mode_dr_held_connections_survive_a_switch_and_a_kill_9_of_the_active") {
        return;
    }
    held_connections_survive_a_switch_and_a_kill_9("offload");
}
