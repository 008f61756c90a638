//! Direct routing (`"forwarding": "dr"`) against the real slbd in both modes: the lab's real
//! servers hold the VIP on their loopback; slbd sends each request unchanged to the chosen
//! server's MAC and the server answers the client itself, so slbd's queue sees requests only
//! (packet mode), or only each flow's first packet (offload mode: the kernel's flow map
//! carries the rest).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

fn dr_config(lab: &Lab, algorithm: &str, mode: &str) -> Value {
    let servers: Vec<Value> = (0..2)
        .map(|i| format!("{}:{SERVER_HTTP_PORT}", server_ip(i)).into())
        .collect();
    let mut config = lab.config(2);
    config["services"] = json!([{
        "protocol": "tcp", "port": SERVER_HTTP_PORT, "algorithm": algorithm,
        "forwarding": "dr", "mode": mode, "servers": servers,
    }]);
    config["flows"] = json!({"tcp_closing_timeout": 2});
    config
}

#[test]
fn packet_mode_requests_are_balanced_and_answered_by_the_servers_directly_and_a_256_mib_download_is_intact(
) {
    if !can_run("packet_mode_requests_are_balanced_and_answered_by_the_servers_directly_and_a_256_mib_download_is_intact") {
        return;
    }
    balanced_direct_and_intact("packet");
}

#[test]
fn offload_mode_requests_are_balanced_answered_directly_and_only_first_packets_reach_slbd() {
    if !can_run(
        "offload_mode_requests_are_balanced_answered_directly_and_only_first_packets_reach_slbd",
    ) {
        return;
    }
    balanced_direct_and_intact("offload");
}

#[test]
fn packet_mode_a_server_put_in_maintenance_has_its_held_connections_reset_and_the_other_keeps_its_own(
) {
    if !can_run("packet_mode_a_server_put_in_maintenance_has_its_held_connections_reset_and_the_other_keeps_its_own") {
        return;
    }
    maintenance_cuts_the_servers_flows("packet");
}

#[test]
fn offload_mode_a_server_put_in_maintenance_leaves_the_flow_map_and_has_its_held_connections_reset()
{
    if !can_run("offload_mode_a_server_put_in_maintenance_leaves_the_flow_map_and_has_its_held_connections_reset") {
        return;
    }
    maintenance_cuts_the_servers_flows("offload");
}

/// `--maint` of s1 while each server holds three connections: s1's are reset at their next
/// segment (offload: the kernel's flow map no longer sends them to s1), s2's go on.
fn maintenance_cuts_the_servers_flows(mode: &str) {
    let lab = Lab::new(2).unwrap();
    lab.direct_routing_servers().unwrap();
    let slbd = lab.start_slbd(&dr_config(&lab, "ROUND_ROBIN", mode));
    let held: Vec<(std::net::TcpStream, String)> = in_ns(&lab.client(), || {
        (0..6)
            .map(|_| hold_connection_to(vip(SERVER_HTTP_PORT)))
            .collect()
    });
    let on = |name: &str| held.iter().filter(|(_, n)| n == name).count();
    assert_eq!((on("s1"), on("s2")), (3, 3), "round robin over two");
    let map = || {
        let out = lab
            .exec(
                &lab.balancer(),
                &["nft", "list", "map", "netdev", "slb", "dr_flows"],
            )
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The map's entries naming server `i`: nft prints the mark's bytes, the address, as one
    // hex number.
    let entries_of = |i: usize| {
        map()
            .matches(&format!(": {:#010x}", u32::from(server_ip(i))))
            .count()
    };
    if mode == "offload" {
        assert!(
            eventually(T, || (entries_of(0), entries_of(1)) == (3, 3)),
            "the kernel carries the held flows, three on each server:\n{}",
            map()
        );
    }
    let (code, _, err) = lab.slbctl(&slbd, &["--maint", &server_ip(0).to_string()]);
    assert_eq!(code, 0, "{err}");
    if mode == "offload" {
        assert!(
            eventually(T, || entries_of(0) == 0),
            "s1's entries leave the flow map:\n{}",
            map()
        );
        assert_eq!(entries_of(1), 3, "s2's entries stay:\n{}", map());
    }
    let after: Vec<Result<String, std::io::ErrorKind>> = in_ns(&lab.client(), || {
        held.iter()
            .map(|(s, _)| echo(s, "after maint", T).map_err(|e| e.kind()))
            .collect()
    });
    eprintln!("dr {mode}: after --maint of s1, the held connections (s1 s1 s1 s2 s2 s2 in some order) gave {after:?}");
    for ((_, name), got) in held.iter().zip(&after) {
        if name == "s1" {
            assert_eq!(
                got,
                &Err(std::io::ErrorKind::ConnectionReset),
                "a connection on s1 is reset, not left to time out"
            );
        } else {
            assert_eq!(got, &Ok("s2".to_string()), "a connection on s2 goes on");
        }
    }
}

fn balanced_direct_and_intact(mode: &str) {
    const SIZE: usize = 256 << 20;
    let lab = Lab::new(2).unwrap();
    lab.direct_routing_servers().unwrap();
    let config = dr_config(&lab, "ROUND_ROBIN", mode);
    let slbd = lab.start_slbd(&config);
    let to = vip(SERVER_HTTP_PORT);
    let names: Vec<String> = in_ns(&lab.client(), || {
        (0..20)
            .map(|i| {
                server_name(
                    &http_get(CLIENT, to, "/", T).unwrap_or_else(|e| panic!("request {i}: {e}")),
                )
            })
            .collect()
    });
    let s1 = names.iter().filter(|n| *n == "s1").count();
    assert_eq!(
        (s1, names.len() - s1),
        (10, 10),
        "round robin over two: {names:?}"
    );

    let expected = pattern_sha256(SIZE);
    let (len, digest, secs) = in_ns(&lab.client(), || {
        let started = Instant::now();
        let body = http_get(
            CLIENT,
            to,
            &format!("/bytes/{SIZE}"),
            Duration::from_secs(120),
        )
        .expect("download through the VIP");
        (
            body.len(),
            format!("{:x}", Sha256::digest(&body)),
            started.elapsed().as_secs_f64(),
        )
    });
    assert_eq!(len, SIZE, "download length");
    assert_eq!(digest, expected, "downloaded bytes differ");
    let (code, out, err) = lab.slbctl(&slbd, &["--status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    eprintln!(
        "dr {mode}: 20 requests {s1}/{}; {SIZE} bytes in {secs:.2} s ({:.2} Gbit/s); slbd saw {} requests, {} replies",
        names.len() - s1,
        SIZE as f64 * 8.0 / secs / 1e9,
        st["requests"],
        st["replies"]
    );
    let queued = st["requests"].as_u64().unwrap();
    assert_eq!(st["replies"], 0, "no reply reached slbd's queue");
    if mode == "packet" {
        // Every request packet: the download alone sends thousands of ACKs.
        assert!(queued > 1000, "the requests went through slbd: {queued}");
        return;
    }
    // 21 flows: each one's SYN and the segment after it (placed, it enters the kernel's map),
    // and a segment or two the client sent before the entry was made; never the download's
    // thousands of ACKs.
    assert!(
        (42..=84).contains(&queued),
        "only each flow's first packets reached slbd's queue: {queued}"
    );
    let mut slbd =
        held_flow_outlives_slbd_and_is_counted_while_the_kernel_carries_it(&lab, slbd, &config);
    let tables = lab.nft_tables();
    assert!(
        tables.contains("table ip slb") && tables.contains("table netdev slb"),
        "{tables}"
    );
    slbd.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(slbd.wait(T), Some(0), "slbd stops cleanly");
    assert_eq!(
        lab.nft_tables(),
        "",
        "both of slbd's tables go when it stops"
    );
}

/// A connection the kernel's flow map carries stays counted on its server past the time an
/// unconfirmed flow would expire, keeps working through a `kill -9` of slbd and its restart
/// (which adopts it from the map), and leaves the count once it closes. Returns the slbd
/// running at the end.
fn held_flow_outlives_slbd_and_is_counted_while_the_kernel_carries_it(
    lab: &Lab,
    first: Slbd,
    config: &Value,
) -> Slbd {
    let mut slbd = first;
    // Live flows on server `name` (`s1`, `s2`), or on all with "".
    let live = |slbd: &Slbd, name: &str| -> u64 {
        let (code, out, err) = lab.slbctl(slbd, &["--status", "--json"]);
        assert_eq!(code, 0, "{err}");
        let st: Value = serde_json::from_str(&out).unwrap();
        st["services"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(i, _)| name.is_empty() || name == format!("s{}", i + 1))
            .map(|(_, s)| s["live_flows"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        eventually(Duration::from_secs(10), || live(&slbd, "") == 0),
        "the 21 closed flows leave the count: {}",
        live(&slbd, "")
    );
    let (held, server) = in_ns(&lab.client(), || hold_connection_to(vip(SERVER_HTTP_PORT)));
    {
        assert!(
            eventually(T, || live(&slbd, &server) == 1),
            "the held flow is counted on {server}"
        );
        // Past the closing timeout (2 s), by which an unconfirmed flow would have gone.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(
            live(&slbd, &server),
            1,
            "the held flow is still counted on {server}"
        );
        assert_eq!(echo(&held, "still there", T).unwrap(), server);
        // slbd dies: the kernel carries the flow on; started again, slbd adopts it.
        slbd.signal(nix::sys::signal::Signal::SIGKILL);
        slbd.wait(T);
        assert_eq!(echo(&held, "slbd gone", T).unwrap(), server);
        slbd = lab.start_slbd(config);
        assert!(
            eventually(T, || live(&slbd, &server) == 1),
            "the restarted slbd counts the held flow on {server}"
        );
        assert_eq!(echo(&held, "slbd back", T).unwrap(), server);
        drop(held);
        assert!(
            eventually(Duration::from_secs(10), || live(&slbd, "") == 0),
            "the closed flow leaves the count: {}",
            live(&slbd, "")
        );
    }
    // Closed, the flows leave the kernel's map within the closing timeout (2 s), and the flow
    // table with them.
    let flows = || {
        let (_, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
        serde_json::from_str::<Value>(&out).unwrap()["flows"]
            .as_u64()
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(8), || flows() == 0),
        "closed flows left in the table: {}",
        flows()
    );
    slbd
}
