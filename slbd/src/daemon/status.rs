//! The `status` the control socket reports, built from the data plane's counters: per service
//! and server, health, smoothed latency, live and new flows, packets and bytes; and the drops.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Map, Value};

use crate::core::balancer::{Dataplane, DropReason};

pub fn status(dp: &Dataplane) -> Value {
    let services: Vec<Value> = dp
        .services()
        .iter()
        .map(|(svc, stats)| {
            let servers: Vec<Value> = svc
                .servers
                .iter()
                .zip(stats)
                .map(|(r, st)| {
                    let lat = st.latency_us.load(Relaxed);
                    json!({
                        "address": r.addr.to_string(),
                        "weight": r.weight,
                        "state": if st.up.load(Relaxed) { "up" } else { "down" },
                        "latency_us": if lat == 0 { Value::Null } else { lat.into() },
                        "live_flows": st.live_flows.load(Relaxed),
                        "new_flows": st.new_flows.load(Relaxed),
                        "packets_in": st.packets_in.load(Relaxed),
                        "bytes_in": st.bytes_in.load(Relaxed),
                        "packets_out": st.packets_out.load(Relaxed),
                        "bytes_out": st.bytes_out.load(Relaxed),
                    })
                })
                .collect();
            json!({
                "name": svc.name(),
                "algorithm": svc.algorithm.name(),
                "mode": svc.mode.name(),
                "persistence_timeout": svc.persistence_timeout.as_secs(),
                "servers": servers,
            })
        })
        .collect();
    let drops: Map<String, Value> = DropReason::all()
        .map(|d| (d.name().to_string(), dp.counters.dropped(d).into()))
        .collect();
    json!({
        "vip": dp.vip().to_string(),
        "flows": dp.flow_count(),
        "requests": dp.counters.requests.load(Relaxed),
        "replies": dp.counters.replies.load(Relaxed),
        "drops": drops,
        "services": services,
    })
}
