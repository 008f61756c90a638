//! What an operator watches, against the real pair: both daemons' Prometheus endpoints (slbd's
//! and amgr's, configured by `slb-node-config` like the packaged and Vagrant nodes) scraped
//! before and after real TCP and UDP traffic and a SWITCH, and the JSON log lines a log shipper
//! would read.

use std::time::Duration;

use slb_tests::pair::{Pair, PairOptions};
use slb_tests::*;

const UP: Duration = Duration::from_secs(15);

/// The sum of every sample of `name` whose labels include all of `labels`.
fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    slb_common::metrics::samples(text, name, labels).sum()
}

fn one(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    slb_common::metrics::sample(text, name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape:\n{text}"))
}

#[test]
fn both_daemons_metrics_move_with_traffic_and_failover_and_logs_are_json() {
    if !can_run("both_daemons_metrics_move_with_traffic_and_failover_and_logs_are_json") {
        return;
    }
    let mut p = Pair::new(PairOptions {
        json_logs: true,
        ..PairOptions::default()
    })
    .expect("the pair's lab");
    p.start_both().expect("amgr");
    p.wait_states(["ACTIVE", "STANDBY"], UP).unwrap();

    let s1 = p.scrape(0, false).unwrap();
    let s2 = p.scrape(1, false).unwrap();
    assert_eq!(one(&s1, "slb_balancing", &[("vip", "10.0.0.100")]), 1.0);
    assert_eq!(
        one(&s2, "slb_balancing", &[]),
        0.0,
        "the STANDBY does not balance"
    );
    let tcp = [("service", "tcp/80")];
    let new_before = total(&s1, "slb_server_new_flows_total", &tcp);
    let sched_before = total(&s1, "slb_scheduler_decisions_total", &[("by", "scheduler")]);
    let a1 = p.scrape(0, true).unwrap();
    assert_eq!(
        one(&a1, "amgr_state", &[("node", "1"), ("state", "ACTIVE")]),
        1.0
    );
    assert_eq!(one(&a1, "amgr_dual_state", &[("state", "STANDBY")]), 1.0);
    let cable = [("local", "192.168.100.1"), ("peer", "192.168.100.2")];
    let sent_before = one(&a1, "amgr_heartbeats_sent_total", &cable);
    let received_before = one(&a1, "amgr_heartbeats_received_total", &cable);
    assert_eq!(one(&a1, "amgr_heartbeat_link_up", &cable), 1.0);

    // 30 TCP requests and 10 UDP questions through the VIP.
    let spread = spread(&p.lab, 30);
    assert_eq!(spread.values().sum::<usize>(), 30, "{spread:?}");
    in_ns(&p.lab.client(), || {
        for i in 0..10 {
            udp_ask(CLIENT, vip(53), b"who", Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("UDP question {i}: {e}"));
        }
    });

    let s1 = p.scrape(0, false).unwrap();
    assert_eq!(
        total(&s1, "slb_server_new_flows_total", &tcp) - new_before,
        30.0,
        "one new flow per TCP request:\n{s1}"
    );
    assert_eq!(
        total(&s1, "slb_scheduler_decisions_total", &[("by", "scheduler")]) - sched_before,
        40.0,
        "one decision per new flow, TCP and UDP:\n{s1}"
    );
    for (k, name) in spread.keys().enumerate() {
        let server = format!("{}:{}", server_ip(k), SERVER_HTTP_PORT);
        let labels = [
            ("service", "tcp/80"),
            ("server", server.as_str()),
            ("direction", "out"),
        ];
        assert!(
            one(&s1, "slb_server_packets_total", &labels) > 0.0
                && one(&s1, "slb_server_bytes_total", &labels) > 0.0,
            "{name} answered, its reply counters must show it:\n{s1}"
        );
        assert_eq!(
            one(&s1, "slb_server_up", &labels[..2]),
            1.0,
            "{server} is in rotation"
        );
    }
    let udp = [("service", "udp/53"), ("direction", "in")];
    assert_eq!(total(&s1, "slb_server_packets_total", &udp), 10.0, "{s1}");
    assert!(total(&s1, "slb_queue_packets_total", &[]) >= 40.0 * 2.0);
    assert_eq!(total(&s1, "slb_queue_overruns_total", &[]), 0.0);
    assert!(
        s1.contains("slb_queue_kernel_dropped_packets_total{queue=\"0\",why=\"full\"} 0"),
        "the kernel's queue table is read:\n{s1}"
    );

    // Heartbeats go every 100 ms: a few must have gone both ways since the first scrape.
    std::thread::sleep(Duration::from_millis(300));
    let a1 = p.scrape(0, true).unwrap();
    assert!(one(&a1, "amgr_heartbeats_sent_total", &cable) > sent_before);
    assert!(one(&a1, "amgr_heartbeats_received_total", &cable) > received_before);

    // A SWITCH shows up in both nodes' transitions and failover counters.
    let (code, out, err) = p.amgr(0, &["switch"]);
    assert_eq!(code, 0, "{out}{err}");
    p.wait_states(["STANDBY", "ACTIVE"], UP).unwrap();
    let a1 = p.scrape(0, true).unwrap();
    let a2 = p.scrape(1, true).unwrap();
    assert_eq!(
        one(
            &a1,
            "amgr_state_transitions_total",
            &[("from", "ACTIVE"), ("to", "STANDBY")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &a2,
            "amgr_state_transitions_total",
            &[("from", "STANDBY"), ("to", "ACTIVE")]
        ),
        1.0
    );
    for a in [&a1, &a2] {
        assert_eq!(
            one(a, "amgr_failovers_total", &[("active", "2")]),
            1.0,
            "{a}"
        );
    }
    assert_eq!(one(&a2, "amgr_state", &[("state", "ACTIVE")]), 1.0);
    let s2 = p.scrape(1, false).unwrap();
    assert_eq!(one(&s2, "slb_balancing", &[]), 1.0);
    let s1 = p.scrape(0, false).unwrap();
    assert_eq!(one(&s1, "slb_balancing", &[]), 0.0);

    // Every log line of both daemons (slbd writes to amgr's stderr) is one JSON object, and
    // the events an operator greps for carry their fields.
    let log = p.log(0);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["message"].is_string()));
    let changed = events
        .iter()
        .find(|e| e["message"] == "state changed" && e["to"] == "STANDBY" && e["from"] == "ACTIVE")
        .unwrap_or_else(|| panic!("no state change ACTIVE -> STANDBY in\n{log}"));
    assert_eq!(changed["node"], 1);
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "balancing" && e["vip"] == "10.0.0.100"),
        "slbd's own lines are JSON too:\n{log}"
    );
}
