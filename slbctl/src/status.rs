//! Renders slbd's `status` reply as the table `slbctl --status` prints. Pure.

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Bytes in a short human form.
fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => b.to_string(),
    }
}

pub fn render(st: &Value) -> String {
    let mut out = format!(
        "slbd: {}  VIP {} ({})  gateway {} ({})  cluster {}\nflows {}  requests {}  replies {}  queue: {}, overruns {}\n",
        s(&st["state"]),
        s(&st["vip"]),
        s(&st["address_dev"]),
        s(&st["gateway"]),
        s(&st["gateway_dev"]),
        s(&st["cluster_network"]),
        n(&st["flows"]),
        n(&st["requests"]),
        n(&st["replies"]),
        s(&st["queue"]["backend"]),
        n(&st["queue"]["overruns"]),
    );
    for svc in st["services"].as_array().into_iter().flatten() {
        let persist = n(&svc["persistence_timeout"]);
        out.push_str(&format!(
            "\nservice {}  {}  {}{}\n",
            s(&svc["name"]),
            s(&svc["algorithm"]),
            match svc["mode"].as_str() {
                Some("offload") => "offload (conntrack carries established flows)",
                _ => "packet",
            },
            if persist > 0 {
                format!("  persistence {persist}s")
            } else {
                String::new()
            }
        ));
        out.push_str(&format!(
            "  {:<21} {:>6} {:>5} {:>10} {:>6} {:>8} {:>10} {:>8} {:>10} {:>8}\n",
            "SERVER",
            "WEIGHT",
            "STATE",
            "LATENCY",
            "LIVE",
            "NEW",
            "PKTS IN",
            "BYTES IN",
            "PKTS OUT",
            "BYTES OUT"
        ));
        for r in svc["servers"].as_array().into_iter().flatten() {
            let latency = r["latency_us"].as_u64().map_or("-".to_string(), |us| {
                format!("{:.2} ms", us as f64 / 1000.0)
            });
            out.push_str(&format!(
                "  {:<21} {:>6} {:>5} {:>10} {:>6} {:>8} {:>10} {:>8} {:>10} {:>8}\n",
                s(&r["address"]),
                n(&r["weight"]),
                s(&r["state"]),
                latency,
                n(&r["live_flows"]),
                n(&r["new_flows"]),
                n(&r["packets_in"]),
                bytes(n(&r["bytes_in"])),
                n(&r["packets_out"]),
                bytes(n(&r["bytes_out"])),
            ));
        }
    }
    let drops: Vec<String> = st["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| n(v) > 0)
        .map(|(k, v)| format!("{k}={}", n(v)))
        .collect();
    if !drops.is_empty() {
        out.push_str(&format!("\ndropped: {}\n", drops.join(" ")));
    }
    let offload = st["services"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s["mode"] == "offload"));
    if offload {
        let c = &st["conntrack"];
        out.push_str(&format!(
            "\nconntrack: {} events, {} overruns, {} resyncs, {} flows committed at takeovers ({} failed), {} cuts\n",
            n(&c["events"]),
            n(&c["overruns"]),
            n(&c["resyncs"]),
            n(&c["committed"]),
            n(&c["commit_failed"]),
            n(&c["cuts"]),
        ));
    }
    if !st["replication"].is_null() {
        out.push_str(&format!(
            "\nreplication: {}\n",
            slbd::ctl::status::describe_replication(&st["replication"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_services_servers_and_drops() {
        let st = json!({
            "state": "balancing", "vip": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
            "gateway_dev": "br0", "cluster_network": "172.16.0.0/24", "flows": 3, "requests": 10, "replies": 9,
            "queue": {"backend": "xtables NFQUEUE target (nft_compat)", "overruns": 0},
            "drops": {"no_server": 2, "fragment": 0},
            "services": [{"name": "tcp/80", "algorithm": "ROUND_ROBIN", "persistence_timeout": 0, "servers": [
                {"address": "172.16.0.2:8000", "weight": 1, "state": "up", "latency_us": 310, "live_flows": 2,
                 "new_flows": 5, "packets_in": 40, "bytes_in": 3000, "packets_out": 30, "bytes_out": 2_000_000},
                {"address": "172.16.0.3:8000", "weight": 1, "state": "down", "latency_us": null, "live_flows": 0,
                 "new_flows": 0, "packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}]}]
        });
        let text = render(&st);
        assert!(
            text.starts_with("slbd: balancing  VIP 10.0.0.100 (eth0)"),
            "{text}"
        );
        assert!(
            text.contains("service tcp/80  ROUND_ROBIN  packet\n"),
            "{text}"
        );
        let up = text
            .lines()
            .find(|l| l.contains("172.16.0.2:8000"))
            .unwrap();
        assert!(
            up.contains(" up ") && up.contains("0.31 ms") && up.contains("1.9M"),
            "{up}"
        );
        let down = text
            .lines()
            .find(|l| l.contains("172.16.0.3:8000"))
            .unwrap();
        assert!(down.contains(" down ") && down.contains(" - "), "{down}");
        assert!(text.contains("dropped: no_server=2\n"), "{text}");
        assert!(!text.contains("fragment"), "zero counters are not listed");
    }
}
