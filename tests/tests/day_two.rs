//! Day-two operations as an operator runs them, with the real slbd and slbctl in the lab:
//! draining a server with a deadline while connections are held on it, backup servers taking
//! over when every primary is down, slow start after maintenance, and `slbctl explain`
//! naming the server the next real connection gets.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

fn status(lab: &Lab, slbd: &Slbd) -> Value {
    let (code, out, err) = lab.slbctl(slbd, &["--status", "--json"]);
    assert_eq!(code, 0, "status: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

fn slbctl_ok(lab: &Lab, slbd: &Slbd, args: &[&str]) -> String {
    let (code, out, err) = lab.slbctl(slbd, args);
    assert_eq!(code, 0, "slbctl {args:?}: {err}");
    out + &err
}

/// Server `name` (`s1`...) of the TCP service in `st`.
fn server<'a>(st: &'a Value, name: &str) -> &'a Value {
    let i: usize = name[1..].parse::<usize>().unwrap() - 1;
    &st["services"][0]["servers"][i]
}

fn addr(name: &str) -> String {
    let i: usize = name[1..].parse::<usize>().unwrap() - 1;
    format!("{}:{SERVER_HTTP_PORT}", server_ip(i))
}

/// Held connections (lab-server's `/hold`) until `n` of them are on server `on`; the others
/// are closed.
fn hold_on(lab: &Lab, on: &str, n: usize) -> Vec<TcpStream> {
    in_ns(&lab.client(), || {
        let mut held = Vec::new();
        for _ in 0..n * 6 {
            let (s, name) = hold_connection();
            if name == on {
                held.push(s);
            }
            if held.len() == n {
                return held;
            }
        }
        panic!("could not hold {n} connections on {on}");
    })
}

fn drain_with_a_deadline_keeps_held_connections_until_it_then_resets_them(mode: &'static str) {
    if !can_run("drain_with_a_deadline_keeps_held_connections_until_it_then_resets_them") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    let mut held = hold_on(&lab, "s1", 10);
    let deadline_s = 6;
    let drained_at = Instant::now() + Duration::from_secs(deadline_s);
    slbctl_ok(
        &lab,
        &slbd,
        &[
            "--drain",
            &addr("s1"),
            "--deadline",
            &deadline_s.to_string(),
        ],
    );
    let (_, text, _) = lab.slbctl(&slbd, &["--status"]);
    eprintln!(
        "$ slbctl --status   # after --drain {} --deadline {deadline_s}\n{text}",
        addr("s1")
    );
    let st = status(&lab, &slbd);
    assert_eq!(server(&st, "s1")["admin_state"], "drain", "{st}");
    assert!(server(&st, "s1")["drain_until"].is_u64(), "{st}");

    // Meanwhile: no new flow reaches s1, and every held connection keeps working.
    let meanwhile = spread(&lab, 20);
    assert_eq!(
        meanwhile.get("s2"),
        Some(&20),
        "new flows while draining: {meanwhile:?}"
    );
    in_ns(&lab.client(), || {
        for (k, s) in held.iter().enumerate() {
            assert_eq!(echo(s, &format!("still {k}"), T).unwrap(), "s1");
        }
    });
    // Five end on their own; the drain is not done while the other five last.
    held.truncate(5);
    assert!(
        eventually(T, || server(&status(&lab, &slbd), "s1")["live_flows"] == 5),
        "the five closed flows left the live count"
    );
    let (code, _, err) = lab.slbctl(&slbd, &["--wait-drained", &addr("s1"), "--timeout", "1"]);
    assert_ne!(code, 0, "not drained yet");
    eprintln!("$ slbctl --wait-drained {} --timeout 1\n{err}", addr("s1"));
    assert!(err.contains("still holds 5 flows"), "{err}");

    // --wait-drained returns once the deadline cut the rest.
    let (code, _, err) = lab.slbctl(&slbd, &["--wait-drained", &addr("s1"), "--timeout", "20"]);
    let waited_until = Instant::now();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("drained"), "{err}");
    // The deadline is kept in whole seconds since the epoch.
    assert!(
        waited_until + Duration::from_millis(1_100) >= drained_at,
        "drained only at the deadline"
    );
    let cut: Vec<std::io::ErrorKind> = in_ns(&lab.client(), || {
        held.iter()
            .map(|s| {
                let e = echo(s, "after the deadline", T).expect_err("cut at the deadline");
                e.kind()
            })
            .collect()
    });
    eprintln!(
        "drain ({mode}): 10 held on s1 worked until the deadline, 20/20 new flows on s2, \
         {} s after the drain --wait-drained returned; the rest got {cut:?}",
        deadline_s
    );
    assert!(
        cut.iter()
            .all(|k| *k == std::io::ErrorKind::ConnectionReset),
        "each cut connection was reset, not left to time out: {cut:?}"
    );
    let st = status(&lab, &slbd);
    assert_eq!(server(&st, "s1")["admin_state"], "drained", "{st}");
    assert!(
        st["drops"]["cut_by_operator"].as_u64().unwrap() >= 5,
        "{st}"
    );

    // Maintenance then ready: out at once, then back.
    slbctl_ok(&lab, &slbd, &["--maint", "172.16.0.2"]);
    assert_eq!(server(&status(&lab, &slbd), "s1")["admin_state"], "maint");
    slbctl_ok(&lab, &slbd, &["--ready", &addr("s1")]);
    let back = spread(&lab, 10);
    assert_eq!(back.get("s1"), Some(&5), "back in rotation: {back:?}");
    // The state is kept in the file.
    slbctl_ok(&lab, &slbd, &["--drain", &addr("s1"), "--save-config"]);
    let (_, cfg, _) = lab.slbctl(&slbd, &["--show-config"]);
    assert!(cfg.contains(r#""state": "drain""#), "{cfg}");
}

fn backup_servers_serve_while_every_primary_is_down_and_hand_back_when_one_returns(
    mode: &'static str,
) {
    if !can_run("backup_servers_serve_while_every_primary_is_down_and_hand_back_when_one_returns") {
        return;
    }
    let mut lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    config["services"][0]["servers"][2] =
        serde_json::json!({"address": addr("s3"), "backup": true});
    let slbd = lab.start_slbd(&config);
    let spread1 = spread(&lab, 10);
    assert_eq!(
        spread1.get("s3"),
        None,
        "a backup idles while primaries are up: {spread1:?}"
    );
    lab.stop_server(0);
    lab.stop_server(1);
    assert!(
        eventually(Duration::from_secs(5), || status(&lab, &slbd)["services"]
            [0]["serving_backups"]
            == true),
        "the service switched to its backup"
    );
    // Every client connection is answered, by the backup.
    let spread2 = spread(&lab, 10);
    assert_eq!(spread2.get("s3"), Some(&10), "{spread2:?}");
    let held = in_ns(&lab.client(), hold_connection);
    assert_eq!(held.1, "s3");
    lab.start_server(0).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || status(&lab, &slbd)["services"]
            [0]["serving_backups"]
            == false),
        "a primary came back"
    );
    let spread3 = spread(&lab, 10);
    assert_eq!(
        spread3.get("s1"),
        Some(&10),
        "new flows go back to the primary: {spread3:?}"
    );
    in_ns(&lab.client(), || {
        assert_eq!(
            echo(&held.0, "still here", T).unwrap(),
            "s3",
            "the backup's flow goes on"
        )
    });
    // The rotation thread logs each switch at its next look (every 200 ms).
    let logged = |line: &str| slbd.log_text().matches(line).count();
    assert!(
        eventually(Duration::from_secs(2), || logged(
            "new flows go to the primaries"
        ) == 1),
        "{}",
        slbd.log_text()
    );
    assert_eq!(logged("backup servers serve"), 1, "{}", slbd.log_text());
    eprintln!(
        "backups ({mode}): {spread1:?} -> both primaries down {spread2:?} -> s1 back {spread3:?}"
    );
}

fn a_server_back_from_maintenance_gets_a_rising_share_over_its_slow_start(mode: &'static str) {
    if !can_run("a_server_back_from_maintenance_gets_a_rising_share_over_its_slow_start") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    config["algorithm"] = "RATIO".into();
    config["services"][0]["slow_start_s"] = 10.into();
    let slbd = lab.start_slbd(&config);
    slbctl_ok(&lab, &slbd, &["--maint", &addr("s1")]);
    slbctl_ok(&lab, &slbd, &["--ready", &addr("s1")]);
    // 200 new connections over 10 s, counted per second.
    let started = Instant::now();
    let per_second = in_ns(&lab.client(), || {
        let mut shares = vec![(0usize, 0usize); 10];
        for k in 0..200u32 {
            let at = started + Duration::from_millis(50 * u64::from(k));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let body = http_get(CLIENT, vip(80), "/", T).expect("connect");
            let s = ((Instant::now() - started).as_secs() as usize).min(9);
            shares[s].1 += 1;
            if server_name(&body) == "s1" {
                shares[s].0 += 1;
            }
        }
        shares
    });
    let curve: Vec<String> = per_second
        .iter()
        .enumerate()
        .map(|(s, (got, of))| format!("{s}s {got}/{of}"))
        .collect();
    eprintln!(
        "slow start ({mode}), s1's share per second: {}",
        curve.join(", ")
    );
    let share = |r: std::ops::Range<usize>| {
        let (got, of) = per_second[r]
            .iter()
            .fold((0, 0), |(g, o), (a, b)| (g + a, o + b));
        got as f64 / of.max(1) as f64
    };
    // Linear from 1 %: a share of (t/10)/(t/10+2), about 2 % in the first two seconds
    // and 30 % in the last two; a third at full weight.
    assert!(share(0..2) < 0.12, "first 2 s: {curve:?}");
    assert!(share(8..10) > 0.22, "last 2 s: {curve:?}");
    assert!(share(0..5) < share(5..10), "rising: {curve:?}");
}

fn explain_names_the_server_the_next_connection_gets(mode: &'static str) {
    if !can_run("explain_names_the_server_the_next_connection_gets") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let slbd = lab.start_slbd(&lab.config(3));
    slbctl_ok(&lab, &slbd, &["--set", "tcp/80:persistence_timeout=30"]);
    let explain = |client: &str| -> Value {
        let (_, words, _) = lab.slbctl(&slbd, &["explain", client, "tcp/80"]);
        eprintln!("$ slbctl explain {client} tcp/80\n{words}");
        let (code, out, err) = lab.slbctl(&slbd, &["explain", client, "tcp/80", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let get = |from| {
        in_ns(&lab.client(), || {
            server_name(&http_get(from, vip(80), "/", T).expect("connect"))
        })
    };
    // A fresh client: the scheduler's choice.
    let fresh = explain(&CLIENT2.to_string());
    assert_eq!(fresh["decided_by"], "scheduler", "{fresh}");
    let got = get(CLIENT2);
    assert_eq!(fresh["server"], addr(&got), "fresh client: {fresh}");
    // A persisted client: its remembered server.
    let first = get(CLIENT);
    let persisted = explain(&CLIENT.to_string());
    assert_eq!(persisted["decided_by"], "persistence", "{persisted}");
    assert_eq!(persisted["server"], addr(&first));
    assert_eq!(get(CLIENT), first);
    // Its server draining: the scheduler again, the drained server skipped and why.
    slbctl_ok(&lab, &slbd, &["--drain", &addr(&first)]);
    let draining = explain(&CLIENT.to_string());
    assert_eq!(draining["decided_by"], "scheduler", "{draining}");
    assert_eq!(draining["persistence"]["used"], false, "{draining}");
    let i: usize = first[1..].parse::<usize>().unwrap() - 1;
    assert_eq!(draining["servers"][i]["standing"], "draining", "{draining}");
    let next = get(CLIENT);
    assert_eq!(draining["server"], addr(&next), "{draining}");
    assert_ne!(next, first);
    eprintln!(
        "explain ({mode}): fresh {} -> {got}; persisted -> {first}; {first} draining -> {next}",
        fresh["server"]
    );
    let (code, _, err) = lab.slbctl(&slbd, &["explain", "10.0.0.5", "udp/99"]);
    assert_ne!(code, 0);
    assert!(err.contains("there is no service udp/99"), "{err}");
}

fn an_agent_on_the_server_sets_its_weight_then_drains_it_then_readies_it(mode: &'static str) {
    if !can_run("an_agent_on_the_server_sets_its_weight_then_drains_it_then_readies_it") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let says = lab.dir().join("agent-says");
    std::fs::write(&says, "50%\n").unwrap();
    // A second lab-server in s1's namespace, as its agent (HAProxy's agent-check protocol).
    let _agent = lab
        .start(
            &lab.server(0),
            &[
                workspace_bin("lab-server").to_str().unwrap(),
                "--name",
                "agent",
                "--tcp",
                "0.0.0.0:8100",
                "--agent",
                "0.0.0.0:5555",
                "--agent-file",
                says.to_str().unwrap(),
            ],
        )
        .unwrap();
    let mut config = lab.config(2);
    config["algorithm"] = "RATIO".into();
    config["services"][0]["servers"] = serde_json::json!([
        {"address": addr("s1"), "weight": 10, "agent": {"port": 5555, "interval_ms": 300}},
        {"address": addr("s2"), "weight": 10},
    ]);
    let slbd = lab.start_slbd(&config);
    let interval = Duration::from_millis(300);
    let settle = || std::thread::sleep(interval * 2);
    settle();
    let half = spread(&lab, 30);
    assert_eq!(
        half.get("s1"),
        Some(&10),
        "50 %: weight 5 against 10: {half:?}"
    );
    assert_eq!(server(&status(&lab, &slbd), "s1")["dynamic_weight"], 5);
    std::fs::write(&says, "drain #deploy\n").unwrap();
    settle();
    let st = status(&lab, &slbd);
    assert_eq!(server(&st, "s1")["admin_state"], "drained", "{st}");
    let drained = spread(&lab, 10);
    assert_eq!(drained.get("s2"), Some(&10), "{drained:?}");
    std::fs::write(&says, "ready 100% bogus\n").unwrap();
    settle();
    let back = spread(&lab, 20);
    assert_eq!(back.get("s1"), Some(&10), "{back:?}");
    assert_eq!(server(&status(&lab, &slbd), "s1")["admin_state"], "ready");
    let log = slbd.log_text();
    assert_eq!(
        log.matches("word=bogus").count(),
        1,
        "unknown words logged once: {log}"
    );
    eprintln!("agent ({mode}): 50% {half:?}, drain {drained:?}, ready 100% {back:?}");
}

in_both_modes!(
    an_agent_on_the_server_sets_its_weight_then_drains_it_then_readies_it,
    drain_with_a_deadline_keeps_held_connections_until_it_then_resets_them,
    backup_servers_serve_while_every_primary_is_down_and_hand_back_when_one_returns,
    a_server_back_from_maintenance_gets_a_rising_share_over_its_slow_start,
    explain_names_the_server_the_next_connection_gets,
);
