//! The active/standby pair against the real binaries: two balancer namespaces, each running
//! amgr (which runs slbd) and a real sshd; a client making a new TCP request every 50 ms.
//! Failover by crash, by links going down, by slbd alone dying, and by SWITCH (also to a node
//! slow to load slbd); TEST/UNTEST and INHIBIT; heartbeat cuts on one and on all links; forged
//! and replayed heartbeats; config sync over SSH reaching the STANDBY and used after a failover.

use std::time::{Duration, Instant};

use slb_tests::pair::{service_gap, timeline, Pair, PairOptions, Requests, HB_PORT};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);
const GOAL: Duration = Duration::from_secs(1);

fn pair() -> Pair {
    let mut p = Pair::new(PairOptions::default()).expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    p
}

fn assert_one_vip(p: &Pair, active: usize) {
    assert!(p.has_vip(active), "node {} lacks the VIP", active + 1);
    assert!(
        !p.has_vip(1 - active),
        "node {} holds the VIP too",
        2 - active
    );
}

#[test]
fn both_started_exactly_one_is_active_and_query_agrees() {
    if !can_run("both_started_exactly_one_is_active_and_query_agrees") {
        return;
    }
    let p = pair();
    assert_one_vip(&p, 0);
    let (q1, q2) = (p.query(0).unwrap(), p.query(1).unwrap());
    assert_eq!(q1["dual"]["state"], "STANDBY", "{q1}");
    assert_eq!(q2["dual"]["state"], "ACTIVE", "{q2}");
    assert_eq!(q1["peer"], "alive");
    for q in [&q1, &q2] {
        let links = q["links"].as_array().unwrap();
        assert_eq!(links.len(), 2);
        assert!(links.iter().all(|l| l["up"] == true), "{q}");
    }
    // The human form names both.
    let (code, text, _) = p.amgr(1, &["query"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("STANDBY") && text.contains("ACTIVE"),
        "{text}"
    );
    let spread = in_ns(&p.lab.client(), || {
        (0..6)
            .map(|_| server_name(&http_get(CLIENT, vip(80), "/", Duration::from_secs(2)).unwrap()))
            .collect::<std::collections::BTreeSet<_>>()
    });
    assert_eq!(spread.len(), 3, "{spread:?}");
}

/// Kills node 0's whole stack while requests flow; returns the gap.
fn crash_gap(p: &mut Pair, how: &str) -> Duration {
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    match how {
        "kill" => p.kill(0),
        "links" => p.set_links(0, false).unwrap(),
        "slbd" => {
            let pid = p.slbd_pid(0).expect("slbd pid");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
        _ => unreachable!(),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.state(1) != "ACTIVE" {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 did not take over:\n{}",
            p.log(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let attempts = reqs.finish();
    let (gap, failed_outside) = service_gap(&attempts);
    let ok = attempts.iter().filter(|a| a.server.is_some()).count();
    eprintln!(
        "{how}: gap {} ms, {ok}/{} requests ok, {failed_outside} failed outside the gap",
        gap.as_millis(),
        attempts.len()
    );
    assert!(
        attempts.last().unwrap().server.is_some(),
        "requests did not recover"
    );
    assert_eq!(failed_outside, 0, "{}", timeline(&attempts));
    assert!(p.has_vip(1));
    gap
}

#[test]
fn kill_9_of_the_active_amgr_and_slbd_fails_over_under_a_second() {
    if !can_run("kill_9_of_the_active_amgr_and_slbd_fails_over_under_a_second") {
        return;
    }
    let mut p = pair();
    let gap = crash_gap(&mut p, "kill");
    assert!(gap < GOAL, "gap {gap:?}");
    let q = p.query(1).unwrap();
    assert_eq!(q["peer"], "lost");
    assert_eq!(q["last_failover"]["active"], 2);
    // The crashed node comes back as STANDBY: no preemption, one VIP.
    p.start(0).unwrap();
    p.wait_states(["STANDBY", "ACTIVE"], UP).unwrap();
    assert_one_vip(&p, 1);
}

#[test]
fn the_active_links_going_down_fails_over_and_healing_leaves_one_active() {
    if !can_run("the_active_links_going_down_fails_over_and_healing_leaves_one_active") {
        return;
    }
    let mut p = pair();
    let gap = crash_gap(&mut p, "links");
    assert!(gap < GOAL, "gap {gap:?}");
    p.set_links(0, true).unwrap();
    // PRIMARY node 1 wins the split; exactly one ACTIVE, one VIP, and the client is served.
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let healed = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    assert_one_vip(&p, 0);
    // Node 1's checks saw every server die with its links; it serves again at its first
    // passing check (one is enough for a service with no server up), within an interval.
    let mut tries = Vec::new();
    let served = in_ns(&p.lab.client(), || loop {
        let at = healed.elapsed();
        let r = http_get(CLIENT, vip(80), "/", Duration::from_secs(2));
        tries.push(format!(
            "{}+{} ms {}",
            at.as_millis(),
            (healed.elapsed() - at).as_millis(),
            r.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())
        ));
        if r.is_ok() || healed.elapsed() > Duration::from_secs(1) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    eprintln!(
        "links: served again {} ms after healing ({})",
        healed.elapsed().as_millis(),
        tries.join(", ")
    );
    if let Err(e) = served {
        let neigh = p.lab.exec(&p.lab.client(), &["ip", "neigh"]).unwrap();
        panic!(
            "not served after healing: {e:#}\nclient's neighbours:\n{}\nnode 1:\n{}\nnode 2:\n{}",
            String::from_utf8_lossy(&neigh.stdout),
            p.log(0),
            p.log(1)
        );
    }
}

#[test]
fn slbd_dying_alone_makes_the_node_failed_and_the_dual_active() {
    if !can_run("slbd_dying_alone_makes_the_node_failed_and_the_dual_active") {
        return;
    }
    let mut p = pair();
    let gap = crash_gap(&mut p, "slbd");
    assert!(gap < GOAL, "gap {gap:?}");
    assert!(!p.has_vip(0), "the failed node kept the VIP");
    // amgr restarts slbd, and the node settles as STANDBY.
    p.wait_states(["STANDBY", "ACTIVE"], UP).unwrap();
    assert!(
        p.log(0).contains("to=\"FAILED\"") || p.log(0).contains("to=FAILED"),
        "{}",
        p.log(0)
    );
}

#[test]
fn switch_moves_the_vip_both_ways_from_either_side_and_no_request_fails() {
    if !can_run("switch_moves_the_vip_both_ways_from_either_side_and_no_request_fails") {
        return;
    }
    let p = pair();
    // From the ACTIVE (1 -> 2), from the ACTIVE again (2 -> 1), then from the STANDBY
    // (node 2 asks node 1 to hand over). Make before break: no request fails.
    for (asker, to) in [(0, 1), (1, 0), (1, 1)] {
        let reqs = Requests::start(&p.lab.client(), Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(400));
        let (code, out, err) = p.amgr(asker, &["switch"]);
        assert_eq!(code, 0, "{out}{err}");
        if asker == to {
            assert!(
                out.contains("ACTIVE"),
                "the STANDBY's SWITCH answered: {out}"
            );
        }
        std::thread::sleep(Duration::from_millis(800));
        let attempts = reqs.finish();
        let (gap, _) = service_gap(&attempts);
        eprintln!("switch to node {}: gap {} ms", to + 1, gap.as_millis());
        let failed = attempts.iter().filter(|a| a.server.is_none()).count();
        assert_eq!(failed, 0, "{}", timeline(&attempts));
        let mut want = ["STANDBY"; 2];
        want[to] = "ACTIVE";
        p.wait_states(want, UP).unwrap();
        assert_one_vip(&p, to);
    }
}

#[test]
fn a_switch_to_a_node_slow_to_load_slbd_stays_switched() {
    if !can_run("a_switch_to_a_node_slow_to_load_slbd_stays_switched") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = pair();
    // Under emulation the new ACTIVE's slbd takes seconds to load (the Vagrant bed): here
    // node 2's slbd is stopped for 1.5 s, so its take_over answers only then. Both amgrs wait
    // that long (one on slbd, one on its dual) and neither may fall silent meanwhile.
    let pid = Pid::from_raw(p.slbd_pid(1).expect("node 2's slbd"));
    kill(pid, Signal::SIGSTOP).unwrap();
    let cont = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        kill(pid, Signal::SIGCONT)
    });
    let reqs = Requests::start(&p.lab.client(), Duration::from_millis(20));
    let (code, out, err) = p.amgr(0, &["switch"]);
    cont.join().unwrap().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            [p.state(0), p.state(1)],
            ["STANDBY", "ACTIVE"],
            "the switch did not hold; node 1's log:\n{}",
            p.log(0)
        );
    }
    let attempts = reqs.finish();
    let failed = attempts.iter().filter(|a| a.server.is_none()).count();
    assert_eq!(failed, 0, "{}", timeline(&attempts));
    assert_one_vip(&p, 1);
    assert!(
        !p.log(0).contains("dual lost"),
        "node 1 thought its dual lost:\n{}",
        p.log(0)
    );
}

#[test]
fn test_untest_inhibit_and_the_guards_are_obeyed() {
    if !can_run("test_untest_inhibit_and_the_guards_are_obeyed") {
        return;
    }
    let mut p = pair();
    // TEST applies to the STANDBY only; the ACTIVE refuses it and says why.
    let (code, _, err) = p.amgr(0, &["test"]);
    assert_ne!(code, 0);
    assert!(err.contains("TEST applies to a STANDBY"), "{err}");
    assert_eq!(p.amgr(1, &["test"]).0, 0);
    p.wait_states(["ACTIVE", "MAINTENANCE"], UP).unwrap();
    // No STANDBY now: SHUTDOWN, RESTART and DISABLE of the ACTIVE are refused, SWITCH too;
    // each refusal that can be forced names its own forced form.
    for (cmd, hint) in [
        ("shutdown", Some("SHUTDOWN-F")),
        ("restart", Some("RESTART-F")),
        ("disable", Some("DISABLE-F")),
        ("switch", None),
    ] {
        let (code, _, err) = p.amgr(0, &[cmd]);
        assert_ne!(code, 0, "{cmd} was not refused");
        assert!(err.contains("STANDBY"), "{cmd}: {err}");
        if let Some(hint) = hint {
            assert!(err.contains(hint), "{cmd} should name {hint}: {err}");
        }
    }
    assert_eq!(p.state(0), "ACTIVE");
    assert_eq!(p.amgr(1, &["untest"]).0, 0);
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    // An inhibited STANDBY never takes over: SWITCH is refused, and a crash leaves no ACTIVE.
    assert_eq!(p.amgr(1, &["inhibit"]).0, 0);
    let (code, _, err) = p.amgr(0, &["switch"]);
    assert_ne!(code, 0);
    assert!(err.contains("INHIBITED"), "{err}");
    p.kill(0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.state(1), "STANDBY");
    assert!(!p.has_vip(1));
    // UNINHIBIT: it takes over at once, the dual being lost.
    assert_eq!(p.amgr(1, &["uninhibit"]).0, 0);
    p.wait_states(["DOWN", "ACTIVE"], UP).unwrap();
    assert!(p.has_vip(1));
}

#[test]
fn heartbeat_cut_on_one_link_changes_nothing_on_all_links_heals_to_one_active() {
    if !can_run("heartbeat_cut_on_one_link_changes_nothing_on_all_links_heals_to_one_active") {
        return;
    }
    let p = pair();
    for link in [0, 1] {
        p.cut_heartbeat(0, &[link]).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            [p.state(0), p.state(1)],
            ["ACTIVE", "STANDBY"],
            "cut link {link}"
        );
        let q = p.query(1).unwrap();
        assert_eq!(q["peer"], "alive");
        assert_eq!(q["links"][link]["up"], false, "{q}");
        assert_eq!(q["links"][1 - link]["up"], true, "{q}");
    }
    p.cut_heartbeat(0, &[0, 1]).unwrap();
    p.wait_states(["ACTIVE", "ACTIVE"], UP).unwrap();
    p.cut_heartbeat(0, &[]).unwrap();
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_one_vip(&p, 0);
    in_ns(&p.lab.client(), || {
        http_get(CLIENT, vip(80), "/", Duration::from_secs(2)).expect("served after healing")
    });
}

#[test]
fn forged_and_replayed_heartbeats_change_nothing() {
    if !can_run("forged_and_replayed_heartbeats_change_nothing") {
        return;
    }
    let p = pair();
    // Capture node 2's real heartbeats from the cable as node 1 sees them, and replay them
    // later; forge others with the wrong key claiming node 2 FAILED.
    let b1 = p.nodes[0].ns.clone();
    let b2 = p.nodes[1].ns.clone();
    // Forged: from node 2's own address, node 2's id, claiming FAILED, under the wrong key.
    let forged = in_ns(&b2, || {
        let s = std::net::UdpSocket::bind("192.168.100.2:0").unwrap();
        let hb = heartbeat_bytes(b"not the pair's key, but long enough", 2, 5);
        for _ in 0..20 {
            s.send_to(&hb, ("192.168.100.1", HB_PORT)).unwrap();
        }
        20
    });
    // Replayed: a real heartbeat of node 2, captured on node 1's cable, sent again.
    let captured = capture_one(&b1);
    in_ns(&b2, || {
        let s = std::net::UdpSocket::bind("192.168.100.2:0").unwrap();
        for _ in 0..10 {
            s.send_to(&captured, ("192.168.100.1", HB_PORT)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let q = p.query(0).unwrap();
    let rejected = &q["links"][1]["rejected"];
    assert!(rejected["mac"].as_u64().unwrap_or(0) >= forged, "{q}");
    assert!(rejected["replay"].as_u64().unwrap_or(0) >= 10, "{q}");
    assert_eq!([p.state(0), p.state(1)], ["ACTIVE", "STANDBY"]);
    assert_one_vip(&p, 0);
}

#[test]
fn a_dual_whose_clock_is_a_minute_off_is_heard_and_one_node_keeps_the_vip() {
    if !can_run("a_dual_whose_clock_is_a_minute_off_is_heard_and_one_node_keeps_the_vip") {
        return;
    }
    // Node 2 boots with its wall clock 75 s ahead, as a virtual machine does whose clock
    // came back from a hard stop while its dual's had drifted; no NTP.
    let mut p = Pair::new(PairOptions::default()).expect("the pair's lab");
    p.nodes[1].clock_offset_s = 75;
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!([p.state(0), p.state(1)], ["ACTIVE", "STANDBY"]);
    assert_one_vip(&p, 0);
    let q = p.query(0).unwrap();
    assert_eq!(q["peer"], "alive", "{q}");
    let offset = q["dual"]["clock_offset_ms"].as_i64().unwrap();
    assert!((74_000..76_000).contains(&offset), "{q}");
    // Then node 1 dies: node 2 takes over, clock or no clock.
    p.kill(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.state(1) != "ACTIVE" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.state(1), "ACTIVE", "{}", p.log(1));
    assert!(p.has_vip(1));
}

/// A heartbeat from `node` claiming slbd FAILED, authenticated with `key`.
fn heartbeat_bytes(key: &[u8], node: u32, seq: u64) -> Vec<u8> {
    use heartbeat::msg::{emit, App, AppState, Heartbeat};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    emit(
        &Heartbeat {
            node,
            boot: 1,
            echo: 0,
            seq,
            sent_ms: now,
            generation: 0,
            link: 1,
            apps: vec![App {
                id: 0,
                state: AppState::Failed,
                primary: false,
                inhibited: false,
            }],
        },
        key,
    )
}

/// One heartbeat datagram arriving in namespace `ns` on the cable, read from a raw socket.
fn capture_one(ns: &str) -> Vec<u8> {
    in_ns(ns, || {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: socket takes no pointers; the fd is checked, then owned by `fd`.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        assert!(fd >= 0);
        // SAFETY: a fresh, open descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: `buf` is live and writable for its whole length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n > 28);
            let n = n as usize;
            let ihl = usize::from(buf[0] & 0xf) * 4;
            let src = &buf[12..16];
            let dport = u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]);
            if src == [192, 168, 100, 2] && dport == HB_PORT {
                return buf[ihl + 8..n].to_vec();
            }
        }
    })
}

#[test]
fn save_config_on_the_active_reaches_the_standby_and_is_used_after_failover() {
    if !can_run("save_config_on_the_active_reaches_the_standby_and_is_used_after_failover") {
        return;
    }
    let mut p = Pair::new(PairOptions {
        configured: 2,
        ..PairOptions::default()
    })
    .unwrap();
    p.start_both().unwrap();
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let added = format!("{}:{}", server_ip(2), SERVER_HTTP_PORT);
    let (code, out, err) = p.slbctl(
        0,
        &["--add-server", &format!("80={added}"), "--save-config"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let t0 = std::time::Instant::now();
    let standby_conf = p.nodes[1].config_path();
    loop {
        let text = std::fs::read_to_string(&standby_conf).unwrap_or_default();
        if text.contains(&added) {
            // The peer's copy names node 1 as its backup, and is 0600.
            assert!(text.contains("192.168.100.1"), "{text}");
            let mode = std::fs::metadata(&standby_conf).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not synced in one period:\n{}",
            p.log(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("synced in {} ms", t0.elapsed().as_millis());
    let t1 = std::time::Instant::now();
    while p.query(0).unwrap()["sync"]["last_ok_ms"].is_null() {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "the push never completed: {}",
            p.query(0).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = p.query(0).unwrap();
    assert!(q["sync"]["pushes"].as_u64().unwrap() >= 1, "{q}");
    assert!(q["sync"]["last_error"].is_null(), "{q}");
    p.kill(0);
    p.wait_states(["DOWN", "ACTIVE"], UP).unwrap();
    let seen = in_ns(&p.lab.client(), || {
        (0..6)
            .map(|_| server_name(&http_get(CLIENT, vip(80), "/", Duration::from_secs(2)).unwrap()))
            .collect::<std::collections::BTreeSet<_>>()
    });
    assert!(
        seen.contains("s3"),
        "the added server is not used after failover: {seen:?}"
    );
}

#[test]
fn amgr_refuses_bad_input_and_keeps_running() {
    if !can_run("amgr_refuses_bad_input_and_keeps_running") {
        return;
    }
    let p = pair();
    // Garbage on the command socket: an error naming the problem, nothing changes.
    let socket = p.nodes[0].socket();
    for (line, why) in [
        ("hello\n", "not JSON"),
        ("{\"v\": 1, \"cmd\": \"EXPLODE\"}\n", "unknown command"),
        (
            "{\"v\": 1, \"cmd\": \"QUERY\", \"x\": 1}\n",
            "unexpected field",
        ),
        ("{\"v\": 1, \"cmd\": \"SWITCH\"", "without a newline"),
    ] {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(
            reply.contains("\"ok\":false") && reply.contains(why),
            "{line:?} -> {reply}"
        );
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // Unauthenticated junk on the peer command port is dropped.
    in_ns(&p.nodes[1].ns, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("192.168.100.1:7406").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut nonce = [0u8; 64];
        let _ = s.read(&mut nonce).unwrap();
        s.write_all(
            b"{\"body\": \"{\\\"op\\\":\\\"release\\\",\\\"from\\\":2}\", \"mac\": \"00\"}\n",
        )
        .unwrap();
        let mut rest = String::new();
        let _ = s.read_to_string(&mut rest);
        assert_eq!(rest, "", "an unauthenticated request got an answer");
    });
    assert_eq!([p.state(0), p.state(1)], ["ACTIVE", "STANDBY"]);
    assert_one_vip(&p, 0);
    // A bad amgr.json, and a key file others can read: refused with the reason, exit 1.
    let bad = p.lab.dir().join("bad-amgr.json");
    std::fs::write(
        &bad,
        r#"{"node_id": 0, "key_file": "/k", "heartbeat": {"links": []}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(workspace_bin("amgr"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node_id: must be 1 or more") && err.contains("0 links given"),
        "{err}"
    );
    let key = p.lab.dir().join("pair.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = p
        .lab
        .exec(
            &p.nodes[0].ns,
            &[
                workspace_bin("amgr").to_str().unwrap(),
                "run",
                "--config",
                p.nodes[0].dir.join("amgr.json").to_str().unwrap(),
            ],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("must be mode 0600"), "{err}");
    assert_eq!(
        p.state(0),
        "ACTIVE",
        "a refused second amgr disturbed the first"
    );
}

/// The health state node `node`'s slbd shows for real server `addr` (`slbctl --status`).
fn server_state(p: &Pair, node: usize, addr: &str) -> Option<String> {
    let status = p.slbd_status(node)?;
    status["services"]
        .as_array()?
        .iter()
        .flat_map(|svc| svc["servers"].as_array().cloned().unwrap_or_default())
        .find(|r| r["address"] == addr)
        .and_then(|r| r["state"].as_str().map(String::from))
}

#[test]
fn the_standby_checks_its_servers_too_and_shows_a_dead_one_down_then_up() {
    if !can_run("the_standby_checks_its_servers_too_and_shows_a_dead_one_down_then_up") {
        return;
    }
    let mut p = pair();
    let addr = format!("{}:{SERVER_HTTP_PORT}", server_ip(0));
    let wait_for = |p: &Pair, want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = [server_state(p, 0, &addr), server_state(p, 1, &addr)];
            if got.iter().all(|s| s.as_deref() == Some(want)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} is {got:?} on [ACTIVE, STANDBY], not {want} on both\n{}",
                p.log(1)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(&p, "up");
    p.lab.stop_server(0);
    wait_for(&p, "down");
    assert_eq!([p.state(0), p.state(1)], ["ACTIVE", "STANDBY"]);
    p.lab.start_server(0).expect("server 1 again");
    wait_for(&p, "up");
}

/// Adds `hooks` to node `i`'s amgr.json (before amgr starts).
fn with_hooks(p: &Pair, i: usize, hooks: serde_json::Value) {
    let path = p.nodes[i].dir.join("amgr.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["hooks"] = hooks;
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn hooks_run_on_a_switch_and_a_crash_with_their_variables_and_a_hanging_hook_costs_no_failover_time(
) {
    if !can_run("hooks_run_on_a_switch_and_a_crash") {
        return;
    }
    let mut p = Pair::new(PairOptions::default()).expect("the pair's lab");
    let dirs = [0, 1].map(|i| p.nodes[i].dir.clone());
    let record = |i: usize, then: &str| {
        let log = dirs[i].join("hooks.log");
        serde_json::json!({
            "command": [format!(
                "echo \"$SLB_NODE $SLB_OLD_STATE $SLB_NEW_STATE $SLB_REASON\" >> {}{then}",
                log.display()
            )],
            "shell": true,
            "timeout_ms": 60_000
        })
    };
    // Node 2's ACTIVE hook hangs for a minute (a pager that does not answer).
    for i in 0..2 {
        // `exec`: the sleep is the hook's own process, which dies with amgr at the end.
        let active = record(i, if i == 1 { "; exec sleep 60" } else { "" });
        with_hooks(
            &p,
            i,
            serde_json::json!({"active": active, "standby": record(i, "")}),
        );
    }
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();
    let logs = [0, 1].map(|i| p.nodes[i].dir.join("hooks.log"));
    let hooks_log = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    // A switch, both ways.
    for to in [1usize, 0] {
        let (code, out, err) = p.amgr(1 - to, &["switch"]);
        assert_eq!(code, 0, "{out}{err}");
        let mut want = ["STANDBY"; 2];
        want[to] = "ACTIVE";
        p.wait_states(want, UP).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (one, two) = (hooks_log(0), hooks_log(1));
    assert!(one.contains("1 ACTIVE STANDBY"), "node 1's hooks:\n{one}");
    assert!(two.contains("2 STANDBY ACTIVE"), "node 2's hooks:\n{two}");
    assert!(
        one.lines()
            .last()
            .unwrap_or("")
            .starts_with("1 STANDBY ACTIVE"),
        "node 1's hooks:\n{one}"
    );
    // A crash of node 1, while node 2's last ACTIVE hook may still hang: the takeover waits
    // for no hook.
    let before = hooks_log(1).lines().count();
    let gap = crash_gap(&mut p, "kill");
    eprintln!(
        "hooks: node 1 ran\n{one}node 2 ran\n{}crash gap with a hanging hook {} ms",
        hooks_log(1),
        gap.as_millis()
    );
    assert!(gap < GOAL, "the failover took {} ms", gap.as_millis());
    let after = hooks_log(1);
    let new: Vec<&str> = after.lines().skip(before).collect();
    assert!(
        new.iter().any(|l| l.starts_with("2 STANDBY ACTIVE ")),
        "the crash's hook ran with its variables: {new:?}"
    );
    assert!(p.log(1).contains("hook"), "hook lines in amgr's log");
}
