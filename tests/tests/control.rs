//! slbd's control plane end to end: health checks taking servers out of rotation and back,
//! and the schedulers that use live state, against the real slbd and real servers.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

/// Waits until slbd's log has a line containing every one of `parts`; returns how long it took.
fn wait_for_log(slbd: &Slbd, parts: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if slbd
            .log_text()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no log line with {parts:?} within {limit:?}; log:\n{}",
            slbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_dead_server_leaves_rotation_and_returns_when_it_recovers(mode: &'static str) {
    if !can_run("a_dead_server_leaves_rotation_and_returns_when_it_recovers") {
        return;
    }
    let mut lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    let health = json!({"interval_ms": 200, "timeout_ms": 150, "fall": 2, "rise": 2});
    config["services"][0]["health"] = health.clone();
    config["services"][1]["health"] = health;
    let slbd = lab.start_slbd(&config);
    assert_eq!(spread(&lab, 6).len(), 3, "all three serve at first");

    let (code, out, _) = lab.slbctl(&slbd, &["--status"]);
    assert_eq!(code, 0);
    let row = |out: &str, server: &str| {
        out.lines()
            .find(|l| l.contains(server))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row(&out, "172.16.0.3:8000").contains(" up "), "{out}");

    lab.stop_server(1);
    // interval × fall = 400 ms, plus one interval of phase and scheduling slack.
    let took = wait_for_log(
        &slbd,
        &[
            "server left rotation",
            "tcp/80",
            "172.16.0.3:8000",
            "state=\"down\"",
        ],
        Duration::from_secs(3),
    );
    eprintln!("s2 left tcp/80 rotation {took:?} after it died");
    assert!(
        took < Duration::from_millis(1400),
        "took {took:?}, expected about interval × fall"
    );
    wait_for_log(
        &slbd,
        &["server left rotation", "udp/53", "172.16.0.3:5300"],
        Duration::from_secs(3),
    );
    let counts = spread(&lab, 30);
    assert_eq!(
        counts.get("s2"),
        None,
        "no new flow goes to the dead server: {counts:?}"
    );
    assert_eq!(
        counts.values().sum::<usize>(),
        30,
        "every request was answered"
    );
    in_ns(&lab.client(), || {
        for i in 0..6 {
            let (answer, _) =
                udp_ask(CLIENT, vip(53), b"q", T).unwrap_or_else(|e| panic!("UDP {i}: {e}"));
            assert!(!answer.starts_with(b"s2 "), "UDP went to the dead server");
        }
    });

    lab.start_server(1).unwrap();
    let took = wait_for_log(
        &slbd,
        &["server back in rotation", "tcp/80", "172.16.0.3:8000"],
        Duration::from_secs(3),
    );
    eprintln!("s2 back in tcp/80 rotation {took:?} after it restarted");
    assert!(
        took < Duration::from_millis(1400),
        "took {took:?}, expected about interval × rise"
    );
    let counts = spread(&lab, 30);
    if counts.get("s2") != Some(&10) {
        eprintln!("LOG:\n{}", std::fs::read_to_string(&slbd.log).unwrap());
    }
    assert_eq!(
        counts.get("s2"),
        Some(&10),
        "s2 takes its share again: {counts:?}"
    );
}

fn with_every_server_down_new_flows_are_refused_cleanly(mode: &'static str) {
    if !can_run("with_every_server_down_new_flows_are_refused_cleanly") {
        return;
    }
    let mut lab = Lab::new_in(1, mode).unwrap();
    let mut config = lab.config(1);
    config["services"][0]["health"] = json!({"interval_ms": 100, "fall": 1});
    config["services"][1]["health"] = json!({"interval_ms": 100, "fall": 1});
    let mut slbd = lab.start_slbd(&config);
    lab.stop_server(0);
    wait_for_log(
        &slbd,
        &["server left rotation", "tcp/80"],
        Duration::from_secs(3),
    );
    wait_for_log(
        &slbd,
        &["server left rotation", "udp/53"],
        Duration::from_secs(3),
    );
    let (tcp, udp) = in_ns(&lab.client(), || {
        let tcp = http_get(CLIENT, vip(80), "/", Duration::from_secs(2)).unwrap_err();
        // A connected UDP socket hears the ICMP port unreachable as ECONNREFUSED.
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).unwrap();
        s.connect(vip(53)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send(b"q").unwrap();
        let udp = s.recv(&mut [0u8; 64]).unwrap_err();
        (tcp, udp)
    });
    assert_eq!(
        tcp.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "TCP is refused with a reset at once: {tcp}"
    );
    assert_eq!(
        udp.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "UDP gets port unreachable: {udp}"
    );
    slbd.signal(nix::sys::signal::Signal::SIGTERM);
    slbd.wait(T);
    let last = slbd
        .log_text()
        .lines()
        .find(|l| l.contains("final counters"))
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("no_server="),
        "refused flows are counted: {last}"
    );
}

fn least_connections_sends_new_flows_away_from_a_busy_server(mode: &'static str) {
    if !can_run("least_connections_sends_new_flows_away_from_a_busy_server") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    config["algorithm"] = "LEAST_CONNECTIONS".into();
    let _slbd = lab.start_slbd(&config);
    let counts = in_ns(&lab.client(), || {
        // 12 long-lived connections spread 4/4/4; keep s1's, close the others.
        let held: Vec<(TcpStream, String)> = (0..12).map(|_| hold_connection()).collect();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for (_, n) in &held {
            *per.entry(n.clone()).or_insert(0) += 1;
        }
        assert_eq!(
            per.values().copied().collect::<Vec<_>>(),
            vec![4, 4, 4],
            "{per:?}"
        );
        let kept: Vec<_> = held.into_iter().filter(|(_, n)| n == "s1").collect();
        // A closed connection stops counting at its first FIN (the closing timeout is 30 s).
        std::thread::sleep(Duration::from_millis(300));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let extra: Vec<_> = (0..12).map(|_| hold_connection()).collect();
        for (_, n) in &extra {
            *counts.entry(n.clone()).or_insert(0) += 1;
        }
        drop(kept);
        counts
    });
    // s1 holds 4; the next 8 go to s2 and s3 until all hold 4, then they take turns.
    let s1 = counts.get("s1").copied().unwrap_or(0);
    assert!(
        s1 <= 2,
        "the busy server got {s1} of 12 new flows: {counts:?}"
    );
    assert!(
        counts.get("s2").copied().unwrap_or(0) >= 5 && counts.get("s3").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
}

/// One raw line to the control socket and the reply line.
fn raw_request(socket: &std::path::Path, line: &[u8]) -> String {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .expect("a reply line");
    reply
}

#[test]
fn the_control_socket_is_root_only_and_refuses_garbage_without_harm() {
    if !can_run("the_control_socket_is_root_only_and_refuses_garbage_without_harm") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new(2).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    let mode = std::fs::metadata(&slbd.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the control socket is root-only");

    let garbage: Vec<(Vec<u8>, &str)> = vec![
        (b"hello\n".to_vec(), "not JSON"),
        (
            b"{\"v\":1,\"cmd\":\"reboot\"}\n".to_vec(),
            "unknown command",
        ),
        (
            b"{\"v\":7,\"cmd\":\"status\"}\n".to_vec(),
            "protocol version 7",
        ),
        (b"{\"cmd\":\"status\"}\n".to_vec(), "protocol version"),
        (vec![b'x'; 70 * 1024], "longer than"),
        (b"\xff\xfe\x00\n".to_vec(), "not JSON"),
    ];
    for (line, want) in garbage {
        let reply = raw_request(&slbd.socket, &line);
        let v: serde_json::Value = serde_json::from_str(&reply).expect("the reply is JSON");
        assert_eq!(v["ok"], false, "{reply}");
        assert!(
            v["error"].as_str().unwrap().contains(want),
            "{want}: {reply}"
        );
    }
    let reply = raw_request(&slbd.socket, b"{\"v\":1,\"cmd\":\"status\"}\n");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(v["ok"], true, "{reply}");
    assert_eq!(
        v["result"]["services"][0]["servers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Traffic is untouched.
    in_ns(&lab.client(), || {
        http_get(CLIENT, vip(80), "/", T).expect("still balancing")
    });
}

#[test]
fn slbctl_shows_config_and_status_and_says_when_slbd_is_not_running() {
    if !can_run("slbctl_shows_config_and_status_and_says_when_slbd_is_not_running") {
        return;
    }
    let lab = Lab::new(2).unwrap();
    let config = lab.config(2);
    let mut slbd = lab.start_slbd(&config);
    in_ns(&lab.client(), || {
        http_get(CLIENT, vip(80), "/", T).expect("a request")
    });

    let (code, out, err) = lab.slbctl(&slbd, &["--show-config"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["address"], config["address"]);
    assert_eq!(
        shown["services"][0]["servers"],
        config["services"][0]["servers"]
    );

    let (code, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["state"], "balancing");
    let new_flows: u64 = st["services"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["new_flows"].as_u64().unwrap())
        .sum();
    assert_eq!(new_flows, 1, "the one request is counted: {out}");

    slbd.signal(nix::sys::signal::Signal::SIGTERM);
    slbd.wait(T);
    assert!(!slbd.socket.exists(), "the socket file is removed on exit");
    let (code, _, err) = lab.slbctl(&slbd, &["--status"]);
    assert_ne!(code, 0);
    assert!(err.contains("slbd is not running"), "{err}");
}

fn lower_latency_sends_a_slow_server_fewer_flows_without_starving_it(mode: &'static str) {
    if !can_run("lower_latency_sends_a_slow_server_fewer_flows_without_starving_it") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    // s3 answers SYNs 8 ms late (netem is not in this kernel; see nfq-delay).
    let _slow = lab
        .start(
            &lab.server(2),
            &[
                &workspace_bin("nfq-delay").to_string_lossy(),
                "8000",
                "8",
                "0",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut config = lab.config(3);
    config["algorithm"] = "LOWER_LATENCY".into();
    config["services"][0]["health"] = json!({"interval_ms": 100, "timeout_ms": 90});
    let slbd = lab.start_slbd(&config);
    // Let a few checks measure every server.
    std::thread::sleep(Duration::from_millis(800));
    let (_, out, _) = lab.slbctl(&slbd, &["--status"]);
    let latency_ms = |server: &str| -> f64 {
        let row = out.lines().find(|l| l.contains(server)).unwrap_or_default();
        row.split_whitespace()
            .zip(row.split_whitespace().skip(1))
            .find(|(_, u)| *u == "ms")
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        latency_ms("172.16.0.4:8000") > 5.0,
        "the slow server's latency is measured:\n{out}"
    );
    let counts = spread(&lab, 120);
    eprintln!("LOWER_LATENCY over 120 new connections, s3 slowed by 8 ms: {counts:?}");
    let (s1, s2, s3) = (
        counts.get("s1").copied().unwrap_or(0),
        counts.get("s2").copied().unwrap_or(0),
        counts.get("s3").copied().unwrap_or(0),
    );
    assert!(s3 >= 1, "the slow server is not starved: {counts:?}");
    assert!(
        s3 * 2 < s1 && s3 * 2 < s2,
        "the slow server gets measurably fewer: {counts:?}"
    );
    assert!(
        s1.abs_diff(s2) < 40,
        "the two fast ones share evenly, no herding: {counts:?}"
    );
}

in_both_modes!(
    a_dead_server_leaves_rotation_and_returns_when_it_recovers,
    with_every_server_down_new_flows_are_refused_cleanly,
    least_connections_sends_new_flows_away_from_a_busy_server,
    lower_latency_sends_a_slow_server_fewer_flows_without_starving_it,
);
