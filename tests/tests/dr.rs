//! Direct routing (`"forwarding": "dr"`) against the real slbd in packet mode: the lab's real
//! servers hold the VIP on their loopback; slbd sends each request unchanged to the chosen
//! server's MAC and the server answers the client itself, so slbd's queue sees requests only.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

fn dr_config(lab: &Lab, algorithm: &str) -> Value {
    let servers: Vec<Value> = (0..2)
        .map(|i| format!("{}:{SERVER_HTTP_PORT}", server_ip(i)).into())
        .collect();
    let mut config = lab.config(2);
    config["services"] = json!([{
        "protocol": "tcp", "port": SERVER_HTTP_PORT, "algorithm": algorithm,
        "forwarding": "dr", "servers": servers,
    }]);
    config
}

#[test]
fn requests_are_balanced_and_answered_by_the_servers_directly_and_a_256_mib_download_is_intact() {
    if !can_run("requests_are_balanced_and_answered_by_the_servers_directly_and_a_256_mib_download_is_intact") {
        return;
    }
    const SIZE: usize = 256 << 20;
    let lab = Lab::new(2).unwrap();
    lab.direct_routing_servers().unwrap();
    let slbd = lab.start_slbd(&dr_config(&lab, "ROUND_ROBIN"));
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
        "dr: 20 requests {s1}/{}; {SIZE} bytes in {secs:.2} s ({:.2} Gbit/s); slbd saw {} requests, {} replies",
        names.len() - s1,
        SIZE as f64 * 8.0 / secs / 1e9,
        st["requests"],
        st["replies"]
    );
    assert!(
        st["requests"].as_u64().unwrap() > 20,
        "the requests went through slbd: {}",
        st["requests"]
    );
    assert_eq!(st["replies"], 0, "no reply reached slbd's queue");
}
