//! A split and its heal against the real binaries: the two-balancer lab with every heartbeat
//! path cut, so both nodes go ACTIVE; 20 held connections opened through each node (the
//! client and the servers pinned to it, as the two halves of a real split each reach one
//! node), then the links restored. The PRIMARY (node 1) keeps the VIP; node 2 hands its
//! flows over (slbd's merge) before it lets go, and every connection must go on echoing on
//! its own real server.

use std::time::{Duration, Instant};

use slb_tests::held::{hold, kept, pin};
use slb_tests::pair::{Pair, PairOptions};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
const HELD: usize = 20;
const RUNS: usize = 5;

fn connections_opened_on_both_sides_of_a_split_survive_its_heal(mode: &'static str) {
    if !can_run("connections_opened_on_both_sides_of_a_split_survive_its_heal") {
        return;
    }
    let opts = PairOptions {
        mode,
        ..PairOptions::default()
    };
    let servers = opts.servers;
    let mut p = Pair::new(opts).expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let mut kept_per_run = Vec::new();
    for run in 1..=RUNS {
        p.cut_heartbeat(0, &[0, 1]).unwrap();
        p.wait_states(["ACTIVE", "ACTIVE"], UP).unwrap();
        pin(&p, Some(1), servers).unwrap();
        let on_loser = hold(&p, HELD);
        pin(&p, Some(0), servers).unwrap();
        let on_winner = hold(&p, HELD);
        pin(&p, None, servers).unwrap();

        let healed = Instant::now();
        p.cut_heartbeat(0, &[]).unwrap();
        p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
        let converged = healed.elapsed();
        let loser_kept = kept(&p, &on_loser, run);
        let winner_kept = kept(&p, &on_winner, run);
        let merged = p.slbd_status(0).map(|s| s["replication"].clone());
        eprintln!(
            "{mode} heal run {run}: converged in {} ms; kept {loser_kept}/{HELD} opened on node 2 \
             (gave up the VIP), {winner_kept}/{HELD} opened on node 1; node 1's merges: {}",
            converged.as_millis(),
            merged.map_or("?".into(), |r| format!(
                "{} ({} flows taken, {} conflicts)",
                r["merges"], r["merged_flows"], r["merge_conflicts"]
            ))
        );
        if loser_kept + 1 < HELD || winner_kept < HELD {
            eprintln!("node 1 log:\n{}\nnode 2 log:\n{}", p.log(0), p.log(1));
        }
        assert!(
            loser_kept + 1 >= HELD,
            "{mode} run {run}: {loser_kept}/{HELD} of node 2's connections survived the heal"
        );
        assert_eq!(
            winner_kept, HELD,
            "{mode} run {run}: node 1's connections lost at the heal"
        );
        kept_per_run.push((loser_kept, winner_kept));
        // The next split starts from a STANDBY that holds node 1's flows again.
        p.wait_takeover_ready(1, 2 * HELD as u64, UP).unwrap();
    }
    eprintln!("{mode} heal: kept (node 2's, node 1's) per run {kept_per_run:?}");
}

in_both_modes!(connections_opened_on_both_sides_of_a_split_survive_its_heal);
