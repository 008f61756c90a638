//! The pair's TCP listeners under a connection flood, against the real binaries: strangers
//! that connect and never authenticate, hundreds at a time, on the ACTIVE's peer command port
//! (7406) and replication port (7407). What is asserted is what an operator would see go
//! wrong otherwise: a failover, a SWITCH that fails, a STANDBY no longer takeover-ready, or
//! the ACTIVE's amgr and slbd growing a thread per stranger.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use slb_tests::pair::{Pair, PairOptions};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
/// The ACTIVE's address on link 0 (the server-side network), the one a stranger on that
/// network can reach.
const ACTIVE_LINK0: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 252);
/// The dual's address on the same network: a stranger there passes the address filter.
const DUAL_LINK0: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 253);
/// Connections each flooder keeps open (re-opening those the listener closes).
const PER_FLOODER: usize = 125;
/// The cap on a pair port's listening address (`slb_common::serve::CAP_PAIR`).
const CAP: u64 = slb_common::serve::CAP_PAIR as u64;

/// One stranger: from `from` in namespace `ns`, keeps `PER_FLOODER` connections to `to` open
/// and silent, re-opening each one the listener closes.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(ns: &str, from: Ipv4Addr, to: SocketAddrV4) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, o, ns) = (stop.clone(), opened.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            let handle = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace");
            nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut held: Vec<TcpStream> = Vec::with_capacity(PER_FLOODER);
            while !s.load(Relaxed) {
                held.retain(|c| !closed_by_peer(c));
                while held.len() < PER_FLOODER && !s.load(Relaxed) {
                    match connect(from, to, Duration::from_millis(500)) {
                        Ok(c) => {
                            o.fetch_add(1, Relaxed);
                            held.push(c);
                        }
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    /// Stops it (closing what it holds); the connections it opened in all.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.opened.load(Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Whether the listener has closed (or reset) the connection.
fn closed_by_peer(c: &TcpStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: c.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a socket this function borrows, and a zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// A process's thread count, from /proc/PID/status.
fn threads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no thread count for pid {pid}"))
}

/// amgr's and slbd's pids on node `i`.
fn pids(p: &Pair, i: usize) -> (i32, i32) {
    let (code, out, err) = p.amgr(i, &["--json", "getpid"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["amgr"].as_i64().unwrap() as i32,
        v["slbd"].as_i64().unwrap() as i32,
    )
}

/// Checks for `within` that the nodes stay `want`, sampling node 1's amgr and slbd thread
/// counts; returns their highest.
fn steady(p: &Pair, want: [&str; 2], within: Duration, (amgr, slbd): (i32, i32)) -> (u64, u64) {
    let (mut most_amgr, mut most_slbd) = (0, 0);
    let until = Instant::now() + within;
    while Instant::now() < until {
        let got = [p.state(0), p.state(1)];
        assert_eq!(got, want, "a failover happened during the flood");
        most_amgr = most_amgr.max(threads(amgr));
        most_slbd = most_slbd.max(threads(slbd));
        std::thread::sleep(Duration::from_millis(100));
    }
    (most_amgr, most_slbd)
}

fn refused(p: &Pair, i: usize, why: &str) -> u64 {
    p.slbd_status(i).unwrap()["replication"]["refused"][why]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_flood_of_unauthenticated_connections_costs_bounded_threads_and_no_failover_or_switch() {
    if !can_run(
        "a_flood_of_unauthenticated_connections_costs_bounded_threads_and_no_failover_or_switch",
    ) {
        return;
    }
    let mut p = Pair::new(PairOptions::default()).expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    p.wait_takeover_ready(1, 0, UP).unwrap();
    let active = pids(&p, 0);
    let before = (threads(active.0), threads(active.1));

    // Strangers on the server-side network: a real server's namespace (refused by address)
    // and the dual's own namespace with its own address (admitted up to the cap), each on
    // both ports of the ACTIVE's link-0 address.
    let server_ns = p.lab.server(0);
    let floods: Vec<Flood> = [7406, 7407]
        .into_iter()
        .flat_map(|port| {
            let to = SocketAddrV4::new(ACTIVE_LINK0, port);
            [
                Flood::start(&server_ns, server_ip(0), to),
                Flood::start(&p.nodes[1].ns, DUAL_LINK0, to),
            ]
        })
        .collect();
    let t0 = Instant::now();

    let during = steady(&p, ["ACTIVE", "STANDBY"], Duration::from_secs(3), active);
    assert!(
        p.slbd_status(1).unwrap()["replication"]["takeover_ready"] == true,
        "the STANDBY stopped being takeover-ready: {}",
        p.slbd_status(1).unwrap()["replication"]
    );

    // SWITCH from the STANDBY asks the flooded peer port to release; then from the new
    // ACTIVE, which asks it to take over.
    let started = Instant::now();
    let (code, out, err) = p.amgr(1, &["switch"]);
    let there = started.elapsed();
    assert_eq!(
        code, 0,
        "SWITCH to node 2 failed during the flood: {out}{err}"
    );
    p.wait_states(["STANDBY", "ACTIVE"], UP).unwrap();
    p.wait_takeover_ready(0, 0, UP).unwrap();
    let started = Instant::now();
    let (code, out, err) = p.amgr(1, &["switch"]);
    let back = started.elapsed();
    assert_eq!(
        code, 0,
        "SWITCH back to node 1 failed during the flood: {out}{err}"
    );
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    // Node 2 now needs node 1's flooded replication listener for its session.
    let ready = Instant::now();
    p.wait_takeover_ready(1, 0, UP).unwrap();
    let ready = ready.elapsed();
    let after = steady(&p, ["ACTIVE", "STANDBY"], Duration::from_secs(2), active);
    let flood_s = t0.elapsed();

    let opened: Vec<u64> = floods.into_iter().map(Flood::finish).collect();
    let most = (during.0.max(after.0), during.1.max(after.1));
    eprintln!(
        "threads amgr/slbd: before {before:?}, highest during the flood {most:?}; \
         connections opened by each flooder {opened:?} in {flood_s:?}; \
         switch there {there:?}, back {back:?}; takeover-ready again in {ready:?}; \
         replication refused {}",
        p.slbd_status(0).unwrap()["replication"]["refused"]
    );
    assert!(
        opened.iter().all(|&n| n > 2 * PER_FLOODER as u64),
        "the flood did not keep re-opening what was closed: {opened:?}"
    );
    // One listening address per port is flooded: at most CAP strangers' threads each, plus
    // a few for the pair's own connections and threads still exiting.
    let slack = 6;
    assert!(
        most.0 <= before.0 + CAP + slack,
        "the ACTIVE's amgr went from {} to {} threads",
        before.0,
        most.0
    );
    assert!(
        most.1 <= before.1 + CAP + slack,
        "the ACTIVE's slbd went from {} to {} threads",
        before.1,
        most.1
    );
    assert!(
        refused(&p, 0, "unknown_peer") > 0,
        "no stranger refused by address"
    );
    assert!(
        refused(&p, 0, "cap") > 0,
        "no connection refused by the cap"
    );
    let log = p.log(0);
    for reason in ["reason=address", "reason=cap"] {
        assert!(
            log.lines().any(|l| l.contains("connections refused")
                && l.contains("peer")
                && l.contains(reason)),
            "amgr logged no peer-port refusal with {reason}"
        );
    }
}
