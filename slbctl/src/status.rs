//! Renders slbd's status answer as the table `slbctl --status` prints. Pure.

use slbd::ctl::status::Status;

/// Bytes in a short human form.
fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => b.to_string(),
    }
}

pub fn render(st: &Status) -> String {
    let mut out = format!(
        "slbd: {}  VIP {} ({})  gateway {} ({})  cluster {}\nflows {}  requests {}  replies {}  queue: {}, overruns {}\n",
        st.state,
        st.vip,
        st.address_dev,
        st.gateway,
        st.gateway_dev,
        st.cluster_network,
        st.flows,
        st.requests,
        st.replies,
        st.queue.backend,
        st.queue.overruns,
    );
    for svc in &st.services {
        let persist = svc.persistence_timeout;
        out.push_str(&format!(
            "\nservice {}  {}  {}{}\n",
            svc.name,
            svc.algorithm,
            match svc.mode.as_str() {
                "offload" => "offload (conntrack carries established flows)",
                _ => "packet",
            },
            if persist > 0 {
                format!("  persistence {persist}s")
            } else {
                String::new()
            }
        ));
        if svc.serving_backups {
            out.push_str("  SERVING FROM BACKUP SERVERS: no primary server is in rotation\n");
        }
        out.push_str(&format!(
            "  {:<21} {:>6} {:<14} {:<20} {:<16} {:>10} {:>6} {:>8} {:>10} {:>8} {:>10} {:>8}\n",
            "SERVER",
            "WEIGHT",
            "STATE",
            "DOWN BECAUSE",
            "LAST CHECK",
            "LATENCY",
            "LIVE",
            "NEW",
            "PKTS IN",
            "BYTES IN",
            "PKTS OUT",
            "BYTES OUT"
        ));
        for r in &svc.servers {
            let latency = r.latency_us.map_or("-".to_string(), |us| {
                format!("{:.2} ms", f64::from(us) / 1000.0)
            });
            // A weight a check set is marked, so it is not mistaken for the configured one.
            let weight = r
                .dynamic_weight
                .map_or(r.weight.to_string(), |w| format!("{w}*"));
            // The operator's state and the backup role read with health, as `up/drain`.
            let mut state = r.state.clone();
            if r.admin_state != "ready" {
                state = format!("{state}/{}", r.admin_state);
            }
            if r.backup {
                state += " (backup)";
            }
            out.push_str(&format!(
                "  {:<21} {:>6} {:<14} {:<20} {:<16} {:>10} {:>6} {:>8} {:>10} {:>8} {:>10} {:>8}\n",
                r.address,
                weight,
                state,
                r.down_reason.as_deref().unwrap_or("-"),
                r.last_check.as_deref().unwrap_or("-"),
                latency,
                r.live_flows,
                r.new_flows,
                r.packets_in,
                bytes(r.bytes_in),
                r.packets_out,
                bytes(r.bytes_out),
            ));
        }
    }
    let drops: Vec<String> = st
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if !drops.is_empty() {
        out.push_str(&format!("\ndropped: {}\n", drops.join(" ")));
    }
    if st.retried_handshakes > 0 {
        out.push_str(&format!(
            "handshakes a server failed, retried on another: {}\n",
            st.retried_handshakes
        ));
    }
    if st.adopted_midstream > 0 {
        out.push_str(&format!(
            "connections placed elsewhere, carried on by the MAGLEV table: {}\n",
            st.adopted_midstream
        ));
    }
    if st.icmp_to_client + st.icmp_to_server > 0 {
        out.push_str(&format!(
            "ICMP errors translated: {} to clients, {} to servers\n",
            st.icmp_to_client, st.icmp_to_server
        ));
    }
    if st
        .services
        .iter()
        .flat_map(|s| &s.servers)
        .any(|r| r.dynamic_weight.is_some())
    {
        out.push_str("* weight set by a health check\n");
    }
    if st.services.iter().any(|s| s.mode == "offload") {
        let c = &st.conntrack;
        out.push_str(&format!(
            "\nconntrack: {} events, {} overruns, {} resyncs, {} flows committed at takeovers ({} failed), {} cuts\n",
            c.events, c.overruns, c.resyncs, c.committed, c.commit_failed, c.cuts,
        ));
    }
    if let Some(r) = &st.replication {
        out.push_str(&format!(
            "\nreplication: {}\n",
            slbd::ctl::status::describe_replication(Some(r))
        ));
    }
    if let Some(a) = &st.announce {
        out.push_str(&format!(
            "\nannounce: {}\n",
            slbd::ctl::status::describe_announce(a)
        ));
    }
    out
}

/// `explain`'s answer in words: the decision first, then what it saw of each server.
pub fn render_explanation(e: &slbd::core::balancer::Explanation) -> String {
    let mut out = format!(
        "service {}  {}  client {}\n",
        e.service, e.algorithm, e.client
    );
    out += &match (&e.server, e.decided_by.as_str()) {
        (Some(s), "existing_flow") => format!("-> {s}: the client's flow is already there\n"),
        (Some(s), "persistence") => format!("-> {s}: by persistence\n"),
        (Some(s), _) => format!("-> {s}: the scheduler's choice\n"),
        (None, _) => "-> refused: no server is in rotation\n".to_string(),
    };
    if let Some(f) = &e.flow {
        out += &format!(
            "flow: on {}, {}{}\n",
            f.server,
            f.state,
            if f.kernel {
                ", carried by conntrack"
            } else {
                ""
            }
        );
    }
    if let Some(p) = &e.persistence {
        out += &format!(
            "persistence: {} for {:.1} s more{}\n",
            p.server,
            p.expires_in_ms as f64 / 1000.0,
            if p.used {
                ""
            } else {
                " (not used: that server is not in rotation)"
            }
        );
    }
    out += &format!(
        "  {:<21} {:<12} {:<8} {:>6} {:>9} {:>10} {:>6} {:>10}\n",
        "SERVER", "STANDING", "ADMIN", "WEIGHT", "EFFECTIVE", "SLOW START", "LIVE", "LATENCY"
    );
    for r in &e.servers {
        let latency = r.latency_us.map_or("-".to_string(), |us| {
            format!("{:.2} ms", f64::from(us) / 1000.0)
        });
        out += &format!(
            "  {:<21} {:<12} {:<8} {:>6} {:>9.2} {:>9.0}% {:>6} {:>10}{}\n",
            r.address,
            r.standing,
            r.admin_state,
            r.weight,
            r.effective_weight,
            r.slow_start_factor * 100.0,
            r.live_flows,
            latency,
            if r.backup { "  backup" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_services_servers_and_drops() {
        let st: Status = serde_json::from_value(json!({
            "state": "balancing", "vip": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
            "gateway_dev": "br0", "cluster_network": "172.16.0.0/24", "algorithm": "ROUND_ROBIN",
            "flows": 3, "requests": 10, "replies": 9, "icmp_to_server": 2,
            "queue": {"backend": "xtables NFQUEUE target (nft_compat)", "packets": 19, "overruns": 0, "verdict_errors": 0},
            "conntrack": {"events": 0, "overruns": 0, "resyncs": 0, "committed": 0, "commit_failed": 0, "cuts": 0},
            "replication": null,
            "drops": {"no_server": 2, "fragment": 0},
            "services": [{"name": "tcp/80", "algorithm": "ROUND_ROBIN", "mode": "packet", "persistence_timeout": 0, "servers": [
                {"address": "172.16.0.2:8000", "weight": 1, "state": "up", "latency_us": 310, "live_flows": 2,
                 "new_flows": 5, "packets_in": 40, "bytes_in": 3000, "packets_out": 30, "bytes_out": 2_000_000},
                {"address": "172.16.0.3:8000", "weight": 1, "state": "down", "latency_us": null, "live_flows": 0,
                 "last_check": "http 503", "down_reason": "passive_rst", "dynamic_weight": 4,
                 "new_flows": 0, "packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}]}]
        }))
        .unwrap();
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
        assert!(
            down.contains("passive_rst") && down.contains("http 503") && down.contains(" 4* "),
            "the reason it is down, its last check and the weight its check set: {down}"
        );
        assert!(
            up.contains(" - ") && !up.contains('*'),
            "an up server has no reason and its configured weight: {up}"
        );
        assert!(text.contains("dropped: no_server=2\n"), "{text}");
        assert!(!text.contains("fragment"), "zero counters are not listed");
        assert!(
            text.contains("ICMP errors translated: 0 to clients, 2 to servers\n"),
            "{text}"
        );
    }
}
