//! Stateful failover against the real binaries: the two-balancer lab (amgr running slbd on
//! each node, flow replication between the two slbd), 20 long-lived TCP connections through
//! the VIP that must each send and receive on their own real server after every failover,
//! and a client making a new request every 50 ms whose gap must stay within the goal.

use std::io::Write;
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use slb_tests::held::{hold, kept};
use slb_tests::pair::{service_gap, timeline, Pair, PairOptions, Requests};
use slb_tests::*;
use slbd::wire::replication as wire;

const UP: Duration = Duration::from_secs(15);
const GOAL: Duration = Duration::from_secs(1);
const HELD: usize = 20;

fn pair(mode: &'static str) -> Pair {
    let mut p = Pair::new(PairOptions {
        mode,
        ..PairOptions::default()
    })
    .expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    p
}

fn active_of(p: &Pair) -> usize {
    if p.state(0) == "ACTIVE" {
        0
    } else {
        1
    }
}

/// Restarts crashed node `i` and waits until it is STANDBY to the other's ACTIVE.
fn rejoin(p: &mut Pair, i: usize) {
    p.start(i).unwrap();
    let mut want = ["ACTIVE", "ACTIVE"];
    want[i] = "STANDBY";
    p.wait_states(want, UP).unwrap();
}

/// One failover of `how` with requests flowing; returns the new-request gap. A crash costs a
/// gap; a planned switch makes before it breaks and must cost nothing: with a new request
/// every 20 ms, none fails and none is answered after more than 500 ms (which is what a SYN
/// the balancers lost would cost: the client retransmits it after 1 s).
fn failover(p: &mut Pair, how: &str) -> (Duration, usize) {
    let mut lost_here = 0;
    let from = active_of(p);
    let to = 1 - from;
    let every = if how == "switch" { 20 } else { 50 };
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(every));
    std::thread::sleep(Duration::from_millis(300));
    match how {
        "kill" => p.kill(from),
        "switch" => {
            let (code, out, err) = p.amgr(from, &["switch"]);
            assert_eq!(code, 0, "{out}{err}");
        }
        _ => unreachable!(),
    }
    p.wait_active(to);
    std::thread::sleep(Duration::from_millis(700));
    let attempts = reqs.finish();
    if how == "switch" {
        let lost = attempts
            .iter()
            .filter(|a| a.server.is_none() || a.took > Duration::from_millis(500))
            .count();
        if lost > 0 {
            print_counters(p);
            eprintln!(
                "switch: {lost} requests failed or slowed:\n{}",
                timeline(&attempts)
            );
        }
        lost_here = lost;
    }
    let (gap, failed_outside) = service_gap(&attempts);
    if failed_outside > 0 {
        print_counters(p);
    }
    assert!(
        attempts.last().unwrap().server.is_some(),
        "requests did not recover"
    );
    assert_eq!(
        failed_outside,
        0,
        "requests failed outside the gap:\n{}",
        timeline(&attempts)
    );
    assert!(p.has_vip(to));
    (gap, lost_here)
}

/// What each balancer dropped and took over from its dual, for whoever reads a failure.
fn print_counters(p: &Pair) {
    for i in 0..2 {
        let st = p.slbd_status(i).unwrap_or_default();
        eprintln!(
            "node {}: drops {} adopted_replies {} untracked_requests {}",
            i + 1,
            st["drops"],
            st["adopted_replies"],
            st["untracked_requests"]
        );
    }
}

/// The common run: hold 20 connections, then `runs` failovers of `how`, alternating between
/// the nodes (every second run is a failback to node 1, with replication running the other
/// way); after a crash the crashed node is restarted and rejoins as STANDBY, and it must be
/// takeover-ready (holding the 20 flows) before the next run. Every run must keep 20/20.
fn survive(how: &str, runs: usize, mode: &'static str) {
    let mut p = pair(mode);
    let held = hold(&p, HELD);
    let mut servers: Vec<&str> = held.iter().map(|(_, s)| s.as_str()).collect();
    servers.sort();
    servers.dedup();
    assert!(servers.len() >= 2, "held connections on {servers:?}");
    let mut gaps = Vec::new();
    let mut lost_total = 0;
    for run in 0..runs {
        let standby = 1 - active_of(&p);
        p.wait_takeover_ready(standby, HELD as u64, UP).unwrap();
        let (gap, lost) = failover(&mut p, how);
        lost_total += lost;
        // None, in either mode: in offload mode the handshake's ACK of a flow whose SYN-ACK
        // already went the new ACTIVE's way, still reaching the old one (INVALID to its
        // conntrack), is sent on by the old node's slbd itself.
        assert!(
            lost_total == 0,
            "{mode} {how} run {}: {lost_total} requests failed or slowed by the switches",
            run + 1
        );
        let n = kept(&p, &held, run);
        eprintln!(
            "{mode} {how} run {}: {n}/{HELD} kept, gap {} ms",
            run + 1,
            gap.as_millis()
        );
        if n != HELD {
            // What each balancer's kernel and logs hold, for whoever reads the failure.
            for i in 0..2 {
                let ct = p.lab.exec(&p.nodes[i].ns, &["conntrack", "-L"]).unwrap();
                eprintln!(
                    "node {} conntrack:\n{}\nnode {} log:\n{}",
                    i + 1,
                    String::from_utf8_lossy(&ct.stdout),
                    i + 1,
                    p.log(i)
                );
            }
        }
        assert_eq!(n, HELD, "{how} run {}: connections lost", run + 1);
        assert!(gap < GOAL, "{how} run {}: gap {gap:?}", run + 1);
        gaps.push(gap.as_millis());
        if how == "kill" {
            rejoin(&mut p, 1 - standby);
        }
        // Packets of flows the new ACTIVE did not know (the request client's connection in
        // flight at a crash, placed in the last batch that never left) are counted apart.
        let st = p.slbd_status(standby).unwrap();
        eprintln!(
            "{how} run {}: mid-stream packets of unknown flows after the takeover: {}",
            run + 1,
            st["drops"]["mid_stream_after_takeover"]
        );
    }
    eprintln!("{mode} {how}: gaps (ms) {gaps:?}");
}

fn held_connections_survive_kill_9_of_the_active_and_failback(mode: &'static str) {
    if !can_run("held_connections_survive_kill_9_of_the_active_and_failback") {
        return;
    }
    // 3 crashes of node 1, 3 of node 2 (failbacks).
    survive("kill", 6, mode);
}

fn held_connections_and_every_new_request_survive_20_planned_switches(mode: &'static str) {
    if !can_run("held_connections_and_every_new_request_survive_20_planned_switches") {
        return;
    }
    // 10 switches to node 2, 10 failbacks to node 1.
    survive("switch", 20, mode);
}

/// A UDP question on `sock` (kept bound, so one flow); returns the answering server.
fn ask(sock: &std::net::UdpSocket, what: &str) -> String {
    sock.send_to(what.as_bytes(), vip(53)).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("the UDP answer");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (server, echoed) = text.split_once(' ').expect("name and question");
    assert_eq!(echoed, what);
    server.to_string()
}

fn udp_flows_and_persisted_clients_stay_on_their_servers_across_failovers(mode: &'static str) {
    if !can_run("udp_flows_and_persisted_clients_stay_on_their_servers_across_failovers") {
        return;
    }
    let mut p = Pair::new(PairOptions {
        persistence_s: 300,
        mode,
        ..PairOptions::default()
    })
    .expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let c = p.lab.client();
    // A second client address, so two clients are persisted (likely to different servers).
    ip(&[
        "-n",
        &c,
        "addr",
        "add",
        &format!("{CLIENT2}/24"),
        "dev",
        "eth0",
    ])
    .unwrap();
    let (udp, tcp_servers, udp_server) = in_ns(&c, || {
        let udp = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let udp_server = ask(&udp, "before");
        let tcp: Vec<String> = [CLIENT, CLIENT2]
            .iter()
            .map(|&from| {
                let names: Vec<String> = (0..3)
                    .map(|_| server_name(&http_get(from, vip(80), "/", T).unwrap()))
                    .collect();
                assert!(names.iter().all(|n| *n == names[0]), "persisted: {names:?}");
                names[0].clone()
            })
            .collect();
        (udp, tcp, udp_server)
    });
    for (round, how) in ["kill", "switch"].iter().enumerate() {
        let standby = 1 - active_of(&p);
        // Three persistence entries (two TCP clients, one UDP) and the UDP flow at least.
        p.wait_takeover_ready(standby, 1, UP).unwrap();
        failover(&mut p, how);
        in_ns(&c, || {
            assert_eq!(
                ask(&udp, &format!("after {how}")),
                udp_server,
                "the UDP flow moved in round {round}"
            );
            // A new UDP flow from the same client: persisted to the same server.
            let fresh = std::net::UdpSocket::bind((CLIENT, 0)).unwrap();
            fresh
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            assert_eq!(ask(&fresh, "new flow"), udp_server);
            for (from, server) in [CLIENT, CLIENT2].iter().zip(&tcp_servers) {
                let now = server_name(&http_get(*from, vip(80), "/", T).unwrap());
                assert_eq!(&now, server, "{from} lost its persistence after the {how}");
            }
        });
        if *how == "kill" {
            // The crashed node rejoins and receives the state before the switch back.
            rejoin(&mut p, standby ^ 1);
        }
    }
}

const T: Duration = Duration::from_secs(2);

/// Raises this process's open-file limit to its hard limit (1 000 held connections).
fn more_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

fn a_standby_started_late_is_ready_only_with_the_snapshot_and_keeps_1000_flows(mode: &'static str) {
    if !can_run("a_standby_started_late_is_ready_only_with_the_snapshot_and_keeps_1000_flows") {
        return;
    }
    more_files();
    let mut p = Pair::new(PairOptions {
        mode,
        ..PairOptions::default()
    })
    .expect("the pair's lab");
    p.start(0).unwrap();
    p.wait_active(0);
    let t0 = Instant::now();
    let held = hold(&p, 1000);
    eprintln!("1000 held in {:?}", t0.elapsed());
    let st = p.slbd_status(0).unwrap();
    assert!(st["flows"].as_u64().unwrap() >= 1000, "{st}");
    assert_eq!(
        st["replication"]["role"], "sender",
        "the ACTIVE serves replication: {st}"
    );

    // The STANDBY joins: every status it gives before the snapshot is complete says not
    // ready, and once ready it holds all 1000 flows.
    p.start(1).unwrap();
    let t0 = Instant::now();
    let deadline = Instant::now() + UP;
    let mut samples = 0;
    let ready = loop {
        if let Some(st) = p.slbd_status(1) {
            samples += 1;
            let flows = st["flows"].as_u64().unwrap_or(0);
            if st["replication"]["takeover_ready"] == true {
                assert!(flows >= 1000, "ready with only {flows} flows: {st}");
                break st;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never became ready:\n{}",
            p.log(1)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!(
        "node 2 ready after {:?}, {samples} status samples: {}",
        t0.elapsed(),
        ready["replication"]
    );
    assert!(ready["replication"]["records_applied"].as_u64().unwrap() >= 1000);
    let q = p.query(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut q = q;
    while q["replication"]["takeover_ready"] != true {
        assert!(Instant::now() < deadline, "amgr query never showed it: {q}");
        std::thread::sleep(Duration::from_millis(200));
        q = p.query(1).unwrap();
    }
    let (_, text, _) = p.amgr(1, &["query"]);
    assert!(text.contains(", takeover-ready"), "{text}");

    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let t0 = Instant::now();
    failover(&mut p, "kill");
    eprintln!("failover in {:?}", t0.elapsed());
    let t0 = Instant::now();
    let n = kept(&p, &held, 0);
    eprintln!("1000 echoed in {:?}", t0.elapsed());
    assert_eq!(n, 1000, "flows lost at the takeover");
}

mod forged {
    //! Frames made by the test with the wire format's own functions: the test holds the lab's
    //! pair key, so it can also play a legitimate STANDBY once and record what it is sent.
    use std::io::{Read, Write};
    use std::net::{SocketAddrV4, TcpStream};
    use std::time::Duration;

    use slbd::wire::replication::{self as wire, NONCE_LEN};

    pub fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        let mut header = [0u8; wire::HEADER_LEN];
        s.read_exact(&mut header)?;
        let rest = wire::remaining_after_header(&header).map_err(std::io::Error::other)?;
        let mut frame = header.to_vec();
        frame.resize(wire::HEADER_LEN + rest, 0);
        s.read_exact(&mut frame[wire::HEADER_LEN..])?;
        Ok(frame)
    }

    pub fn connect(from: std::net::Ipv4Addr, to: SocketAddrV4) -> TcpStream {
        let s = slb_tests::connect(from, to, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    }

    /// Whether the other side closed without answering.
    pub fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    }

    /// A whole legitimate session start as a STANDBY: returns the frames it sent and the
    /// Welcome it got.
    pub fn legit(
        key: &[u8],
        s: &mut TcpStream,
        nonce_r: [u8; NONCE_LEN],
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let hello = wire::hello(key, &nonce_r);
        s.write_all(&hello).unwrap();
        let welcome = read_frame(s).unwrap();
        let nonce_s = wire::check_welcome(key, &nonce_r, &welcome).unwrap();
        let start = wire::start(key, &nonce_r, &nonce_s);
        s.write_all(&start).unwrap();
        // The snapshot follows: the ACTIVE accepted us.
        let first = read_frame(s).unwrap();
        assert_eq!(first[5], wire::Kind::Snapshot as u8, "a snapshot frame");
        (hello, start, welcome)
    }
}

/// The next connection on any of `listeners`.
fn accept_either(listeners: &[std::net::TcpListener]) -> TcpStream {
    for l in listeners {
        l.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for l in listeners {
            if let Ok((s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                return s;
            }
        }
        assert!(Instant::now() < deadline, "node 2 did not connect");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn forged_and_replayed_replication_frames_change_nothing() {
    if !can_run("forged_and_replayed_replication_frames_change_nothing") {
        return;
    }
    let mut p = pair("packet");
    let held = hold(&p, HELD);
    p.wait_takeover_ready(1, HELD as u64, UP).unwrap();
    let key = std::fs::read(p.lab.dir().join("pair.key")).unwrap();
    let active_addr = SocketAddrV4::new("192.168.100.1".parse().unwrap(), 7407);
    let standby_ip: std::net::Ipv4Addr = "192.168.100.2".parse().unwrap();
    let refused = |i: usize, why: &str| {
        p.slbd_status(i).unwrap()["replication"]["refused"][why]
            .as_u64()
            .unwrap_or(0)
    };
    let flows0 = p.slbd_status(0).unwrap()["flows"].as_u64().unwrap();

    // At the ACTIVE, from the STANDBY's own address: a Hello under another key; a legitimate
    // session recorded; its Hello and Start replayed on a new connection; garbage.
    let t0 = Instant::now();
    let recorded_welcome = in_ns(&p.nodes[1].ns, || {
        let mut s = forged::connect(standby_ip, active_addr);
        s.write_all(&wire::hello(b"not the pair's key, 16+ bytes", &[5; 16]))
            .unwrap();
        assert!(forged::closed(&mut s), "a wrong-key Hello was answered");
        let mut s = forged::connect(standby_ip, active_addr);
        let (hello, start, welcome) = forged::legit(&key, &mut s, [6; 16]);
        drop(s);
        let mut s = forged::connect(standby_ip, active_addr);
        s.write_all(&hello).unwrap();
        let _fresh_welcome = forged::read_frame(&mut s).unwrap();
        s.write_all(&start).unwrap();
        assert!(forged::closed(&mut s), "a replayed Start was accepted");
        let mut s = forged::connect(standby_ip, active_addr);
        s.write_all(&[0x5a; 64]).unwrap();
        assert!(forged::closed(&mut s), "garbage was answered");
        welcome
    });
    assert!(
        refused(0, "mac") >= 2,
        "{}",
        p.slbd_status(0).unwrap()["replication"]
    );
    assert!(refused(0, "garbage") >= 1);
    // The ACTIVE's flows are untouched, and its real STANDBY is back and ready.
    assert_eq!(p.slbd_status(0).unwrap()["flows"].as_u64().unwrap(), flows0);
    p.wait_takeover_ready(1, HELD as u64, UP).unwrap();
    let flows1 = p.slbd_status(1).unwrap()["flows"].as_u64().unwrap();

    eprintln!("at the ACTIVE: {:?}", t0.elapsed());
    let t0 = Instant::now();
    // At the STANDBY: node 2 INHIBITED so it stays STANDBY when node 1 dies; the test then
    // answers its connections in node 1's place, with the recorded Welcome (replayed) and
    // one made under another key.
    let (code, out, err) = p.amgr(1, &["inhibit"]);
    assert_eq!(code, 0, "{out}{err}");
    p.kill(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.state(1), "STANDBY");
    in_ns(&p.nodes[0].ns, || {
        let listeners: Vec<std::net::TcpListener> = ["192.168.100.1:7407", "172.16.0.252:7407"]
            .iter()
            .map(|a| std::net::TcpListener::bind(a).expect("bind in node 1's place"))
            .collect();
        let mut answered = 0;
        for (k, welcome) in [
            recorded_welcome.clone(),
            wire::welcome(b"not the pair's key, 16+ bytes", &[7; 16], &[8; 16]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = accept_either(&listeners);
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let hello = forged::read_frame(&mut s).unwrap();
            assert!(wire::check_hello(&key, &hello).is_ok(), "node 2's Hello");
            s.write_all(&welcome).unwrap();
            assert!(forged::closed(&mut s), "welcome {k} was accepted");
            answered += 1;
        }
        assert_eq!(answered, 2);
    });
    let st = p.slbd_status(1).unwrap();
    assert!(
        st["replication"]["refused"]["mac"].as_u64().unwrap_or(0) >= 2,
        "{}",
        st["replication"]
    );
    assert_eq!(
        st["flows"].as_u64().unwrap(),
        flows1,
        "the STANDBY's flows changed"
    );

    eprintln!("at the STANDBY: {:?}", t0.elapsed());
    // Node 2 takes over with what it held: every connection still works.
    let (code, out, err) = p.amgr(1, &["uninhibit"]);
    assert_eq!(code, 0, "{out}{err}");
    p.wait_active(1);
    assert_eq!(kept(&p, &held, 0), HELD);
}

in_both_modes!(
    held_connections_survive_kill_9_of_the_active_and_failback,
    held_connections_and_every_new_request_survive_20_planned_switches,
    udp_flows_and_persisted_clients_stay_on_their_servers_across_failovers,
    a_standby_started_late_is_ready_only_with_the_snapshot_and_keeps_1000_flows,
);
