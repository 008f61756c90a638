//! Cluster mode's announcement against a real BGP router: BIRD in a router namespace in front
//! of the balancer, BIRD on the balancer learning the VIP's route from the table slbd keeps
//! (`announce`), real slbd, real servers. What the router's routing table holds is what a
//! network engineer would look at: the VIP's next hop is this balancer exactly while its slbd
//! balances with a server in rotation and the operator has not withdrawn it.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use slb_tests::cluster::{self, Bgp};
use slb_tests::*;

const TABLE: u32 = 100;
const T: Duration = Duration::from_secs(10);

fn cluster_config(lab: &Lab, bgp: &Bgp) -> Value {
    let mut config = lab.config(2);
    config["announce"] = json!({"table": TABLE, "bird_socket": bgp.balancer_socket(0)});
    let health = json!({"interval_ms": 100, "timeout_ms": 100, "fall": 2, "rise": 1});
    config["services"][0]["health"] = health.clone();
    config["services"][1]["health"] = health;
    config
}

fn announce_status(lab: &Lab, slbd: &Slbd) -> Value {
    let (code, out, err) = lab.slbctl(slbd, &["--status", "--json"]);
    assert_eq!(code, 0, "slbctl --status: {err}");
    serde_json::from_str::<Value>(&out).unwrap()["announce"].clone()
}

fn next_hops_become(bgp: &Bgp, lab: &Lab, expected: &[std::net::Ipv4Addr], what: &str) -> Duration {
    bgp.wait_for(lab, expected, T)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn the_router_reaches_a_balancer_exactly_while_it_serves_and_the_operator_lets_it() {
    if !can_run("the_router_reaches_a_balancer_exactly_while_it_serves") {
        return;
    }
    let mut lab = Lab::new(2).unwrap();
    let balancers = [lab.balancer()];
    let bgp = Bgp::in_front_of(&mut lab, &balancers, VIP, TABLE).unwrap();
    let me = Bgp::balancer_addr(0);
    let mut slbd = lab.start_slbd(&cluster_config(&lab, &bgp));
    let took = next_hops_become(&bgp, &lab, &[me], "slbd balancing: announced");
    eprintln!("announced {took:?} after slbd said it balances");
    let st = announce_status(&lab, &slbd);
    assert_eq!(st["announced"], true, "{st}");
    assert_eq!(st["reason"], "serving", "{st}");
    assert_eq!(
        st["bgp"][0]["info"], "Established",
        "BIRD's session, as its socket says: {st}"
    );
    // BFD comes up on its own clock (Down, Init, Up), which may run behind BGP's route:
    // status shows each state BIRD reports, so it is asked until BIRD says Up.
    let mut st = st;
    let deadline = Instant::now() + T;
    while st["bfd"][0]["state"] != "Up" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        st = announce_status(&lab, &slbd);
    }
    assert_eq!(
        (
            st["bfd"][0]["address"].clone(),
            st["bfd"][0]["state"].clone()
        ),
        (json!(cluster::ROUTER_ADDR.to_string()), json!("Up")),
        "BIRD's BFD session with the router: {st}"
    );
    let (_, text, _) = lab.slbctl(&slbd, &["--status"]);
    assert!(
        text.contains(&format!(
            "announce: {VIP}/32 dev slb-vip table {TABLE}: announced (serving)"
        )),
        "{text}"
    );

    // The operator's withdrawal: the router stops sending, the node still serves.
    let (code, _, err) = lab.slbctl(&slbd, &["--withdraw"]);
    assert_eq!(code, 0, "{err}");
    let took = next_hops_become(&bgp, &lab, &[], "--withdraw");
    eprintln!("--withdraw: next hop gone in {took:?}");
    let (_, text, _) = lab.slbctl(&slbd, &["--status"]);
    eprintln!("{}", &text[text.find("announce:").unwrap_or(0)..]);
    let st = announce_status(&lab, &slbd);
    assert_eq!(
        (st["announced"].clone(), st["reason"].clone()),
        (json!(false), json!("withdrawn by the operator")),
        "{st}"
    );
    assert!(
        in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", T)).is_ok(),
        "a withdrawn node keeps serving what still reaches it"
    );
    let (_, shown, _) = lab.slbctl(&slbd, &["--show-config"]);
    assert!(
        shown.contains("\"withdrawn\": true"),
        "kept in the configuration: {shown}"
    );
    let (code, _, err) = lab.slbctl(&slbd, &["--rejoin"]);
    assert_eq!(code, 0, "{err}");
    let took = next_hops_become(&bgp, &lab, &[me], "--rejoin");
    eprintln!("--rejoin: next hop back in {took:?}");

    // Someone else's hands on slbd's route or device: slbd puts them back.
    let b = lab.balancer();
    for (what, cmd) in [
        (
            "the table flushed",
            vec!["ip", "route", "flush", "table", "100"],
        ),
        ("the device deleted", vec!["ip", "link", "del", "slb-vip"]),
    ] {
        let out = lab.exec(&b, &cmd).unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gone = Instant::now();
        let route = || {
            let out = lab
                .exec(&b, &["ip", "route", "show", "table", "100"])
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("{VIP} dev slb-vip"))
        };
        while !route() {
            assert!(
                gone.elapsed() < Duration::from_secs(2),
                "{what}: slbd put no route back in table 100 within 2 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let back = gone.elapsed();
        next_hops_become(&bgp, &lab, &[me], what);
        eprintln!(
            "{what}: the route back in {back:?}, at the router {:?}",
            gone.elapsed()
        );
    }

    // No server in rotation: nothing to serve a new flow with, so the routers are told.
    let down = Instant::now();
    lab.stop_server(0);
    lab.stop_server(1);
    next_hops_become(&bgp, &lab, &[], "every server down");
    eprintln!(
        "every server down: withdrawn {:?} after the kill",
        down.elapsed()
    );
    let st = announce_status(&lab, &slbd);
    assert_eq!(st["reason"], "no server in rotation", "{st}");
    lab.start_server(0).unwrap();
    next_hops_become(&bgp, &lab, &[me], "a server back");

    // slbd killed, BIRD still running: the device dies with the process, the route with it.
    slbd.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let took = bgp
        .wait_for(&lab, &[], Duration::from_millis(300))
        .unwrap_or_else(|e| panic!("kill -9 of slbd: withdrawn within 300 ms: {e}"));
    eprintln!(
        "kill -9 of slbd: next hop gone in {took:?} ({:?})",
        killed.elapsed()
    );
    let _ = slbd.wait(T);
    let links = lab.exec(&lab.balancer(), &["ip", "link", "show"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("slb-vip"),
        "the announce device went with slbd"
    );
}

#[test]
fn slbd_check_refuses_the_main_table_for_the_announcement_and_names_the_field() {
    if !can_run("slbd_check_refuses_the_main_table_for_the_announcement") {
        return;
    }
    let lab = Lab::new(1).unwrap();
    let mut config = lab.config(1);
    config["announce"] = json!({"table": 254});
    let path = lab.write_config("bad.json", &config.to_string());
    let out = std::process::Command::new(workspace_bin("slbd"))
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("announce.table"), "{err}");
}
