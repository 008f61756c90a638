//! A dying real server, as its clients see it: the real slbd in the balancer namespace with
//! the shipped health-check defaults, five real servers, a client sending a new request
//! every 50 ms; one server's process killed (its port resets SYNs), or its link cut (nothing
//! comes back at all); a server with nothing listening from the start; and a server whose
//! application resets connections after answering, which must not be taken for a dead one.

use std::time::{Duration, Instant};

use slb_tests::dying::{self, server, Death, PATIENCE};
use slb_tests::pair::timeline;
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

/// A server dies under a client's steady requests; what it cost, printed, then checked.
fn a_server_dies(mode: &'static str, death: Death) {
    let d = dying::run(mode, death).unwrap();
    let what = death.name();
    eprintln!("{what} ({mode}): {}", d.summary());
    assert!(
        d.failed() <= 1,
        "{what}: {} client requests failed (at most 1):\n{}",
        d.failed(),
        timeline(&d.attempts)
    );
    assert!(
        d.out_after <= Duration::from_secs(2),
        "{what}: out of rotation only after {:?}",
        d.out_after
    );
    assert!(
        d.down["down_reason"].is_string(),
        "status says why it is down: {}",
        d.down
    );
    assert!(
        d.attempts
            .iter()
            .filter(|a| a.at > d.out_at)
            .all(|a| a.server.as_deref() != Some("s3")),
        "no request reaches the dead server after it left rotation"
    );
}

fn status(lab: &Lab, slbd: &Slbd) -> serde_json::Value {
    dying::status(lab, slbd).unwrap()
}

fn a_killed_server_process_costs_at_most_one_request_and_leaves_rotation_within_2_s(
    mode: &'static str,
) {
    if !can_run("a_killed_server_process_costs_at_most_one_request_and_leaves_rotation_within_2_s")
    {
        return;
    }
    a_server_dies(mode, Death::ProcessKilled);
}

fn a_server_whose_link_is_cut_costs_at_most_one_request_and_leaves_rotation_within_2_s(
    mode: &'static str,
) {
    if !can_run(
        "a_server_whose_link_is_cut_costs_at_most_one_request_and_leaves_rotation_within_2_s",
    ) {
        return;
    }
    a_server_dies(mode, Death::LinkCut);
}

fn a_server_that_resets_every_syn_refuses_no_client_and_delays_one_by_one_retransmission_at_most(
    mode: &'static str,
) {
    if !can_run("a_server_that_resets_every_syn_refuses_no_client") {
        return;
    }
    let mut lab = Lab::new_in(3, mode).unwrap();
    // Nothing listens on s2 from the start; its checks are off and passive detection never
    // takes it out, so every connection it is given must be refused by it and retried.
    lab.stop_server(1);
    let mut config = lab.config(3);
    config["services"][0]["health"] =
        serde_json::json!({"enabled": false, "passive": {"fall": 100}});
    let slbd = lab.start_slbd(&config);
    let took = in_ns(&lab.client(), || {
        (0..20)
            .map(|k| {
                let started = Instant::now();
                let body = http_get(CLIENT, vip(80), "/", PATIENCE)
                    .unwrap_or_else(|e| panic!("connection {k} failed: {e}"));
                (server_name(&body), started.elapsed())
            })
            .collect::<Vec<_>>()
    });
    let st = status(&lab, &slbd);
    let retried = st["retried_handshakes"].as_u64().unwrap();
    let slowest = took.iter().map(|(_, t)| *t).max().unwrap();
    eprintln!(
        "resetting server ({mode}): 20 of 20 connected, {retried} retried, slowest {} ms",
        slowest.as_millis()
    );
    assert!(took.iter().all(|(s, _)| s != "s2"));
    assert!(
        retried >= 5,
        "s2 was given connections and refused them: {retried}"
    );
    assert!(
        slowest < Duration::from_millis(1_800),
        "one SYN retransmission (1 s) at most: {took:?}"
    );
    assert_eq!(
        server(&st, 1)["state"],
        "up",
        "passive detection was told to wait"
    );
}

fn an_application_resetting_connections_after_answering_stays_in_rotation(mode: &'static str) {
    if !can_run("an_application_resetting_connections_after_answering_stays_in_rotation") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    // As sensitive as it can be: one failed handshake would take a server out.
    config["services"][0]["health"] = serde_json::json!({"passive": {"fall": 1}});
    let slbd = lab.start_slbd(&config);
    in_ns(&lab.client(), || {
        for _ in 0..30 {
            // The answer may or may not be read before the reset; the reset is the point.
            let _ = http_get(CLIENT, vip(80), "/reset", T);
        }
    });
    let st = status(&lab, &slbd);
    for i in 0..3 {
        let s = server(&st, i);
        assert_eq!(s["state"], "up", "server {i}: {s}");
        assert!(s["new_flows"].as_u64().unwrap() >= 10, "server {i}: {s}");
    }
    assert_eq!(st["retried_handshakes"], 0);
    assert_eq!(
        spread(&lab, 30).len(),
        3,
        "every server still gets new connections"
    );
}

fn a_udp_server_whose_port_closed_leaves_rotation_by_its_icmp_and_no_question_is_lost(
    mode: &'static str,
) {
    if !can_run("a_udp_server_whose_port_closed_leaves_rotation_by_its_icmp") {
        return;
    }
    let mut lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    // Active checks a minute apart, the first passed before the port closes: only the
    // server's own ICMP port unreachable can take it out.
    config["services"][1]["health"] = serde_json::json!({"interval_ms": 60000});
    let slbd = lab.start_slbd(&config);
    std::thread::sleep(Duration::from_millis(500));
    lab.stop_server(1);
    let answered = in_ns(&lab.client(), || {
        (0..30)
            .map(|k| {
                let q = format!("question {k}");
                // A client's own retry, as a resolver's: once, after 500 ms.
                (0..2).find_map(|_| {
                    udp_ask(CLIENT, vip(53), q.as_bytes(), Duration::from_millis(500)).ok()
                })
            })
            .collect::<Vec<_>>()
    });
    let st = status(&lab, &slbd);
    let s2 = st["services"][1]["servers"][1].clone();
    let lost = answered.iter().filter(|a| a.is_none()).count();
    eprintln!(
        "closed UDP port ({mode}): s2 {} ({}), {lost} of 30 questions unanswered after one retry, \
         {} unreachables kept from the client",
        s2["state"], s2["down_reason"], st["drops"]["server_unreachable_retried"]
    );
    assert_eq!(s2["state"], "down", "{s2}");
    assert_eq!(s2["down_reason"], "passive_unreachable", "{s2}");
    assert_eq!(
        lost, 0,
        "every question answered, at most after the client's retry"
    );
    assert!(st["drops"]["server_unreachable_retried"].as_u64().unwrap() >= 1);
}

in_both_modes!(
    a_udp_server_whose_port_closed_leaves_rotation_by_its_icmp_and_no_question_is_lost,
    a_killed_server_process_costs_at_most_one_request_and_leaves_rotation_within_2_s,
    a_server_whose_link_is_cut_costs_at_most_one_request_and_leaves_rotation_within_2_s,
    a_server_that_resets_every_syn_refuses_no_client_and_delays_one_by_one_retransmission_at_most,
    an_application_resetting_connections_after_answering_stays_in_rotation,
);
