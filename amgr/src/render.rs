//! The text `amgr query` prints: both instances, the heartbeat links, the last failover and
//! the config sync, from the agent's JSON answer. Pure.

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ago(now_ms: u64, at: &Value) -> String {
    at.as_u64().map_or("never".into(), |t| {
        format!("{:.1} s ago", now_ms.saturating_sub(t) as f64 / 1000.0)
    })
}

fn flags(v: &Value) -> String {
    let mut f = vec![];
    if v["primary"] == true {
        f.push("PRIMARY");
    }
    if v["inhibited"] == true {
        f.push("INHIBITED");
    }
    f.join(",")
}

/// `q` is the QUERY result; `now_ms` the Unix time in ms, for the ages.
pub fn query(q: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let n = &q["node"];
    out += &format!(
        "this node  {:<4} {:<12} {:<18} slbd pid {}\n",
        s(&n["id"]),
        s(&n["state"]),
        flags(n),
        s(&n["slbd_pid"])
    );
    match &q["dual"] {
        Value::Null => out += "dual       never heard\n",
        d => {
            out += &format!(
                "dual       {:<4} {:<12} {:<18} heard {} ms ago, peer {}{}{}\n",
                s(&d["id"]),
                s(&d["state"]),
                flags(d),
                s(&d["heard_ms_ago"]),
                s(&q["peer"]),
                if q["peer"] == "lost" {
                    " (its state as last heard)"
                } else {
                    ""
                },
                match d["clock_offset_ms"].as_i64() {
                    Some(ms) if ms.abs() >= 1000 => {
                        format!(", its clock {:+.1} s from ours", ms as f64 / 1000.0)
                    }
                    _ => String::new(),
                }
            );
            out += &format!(
                "config     {} (this node {}, dual {})\n",
                if d["config_in_sync"] == true {
                    "in sync"
                } else {
                    "DIFFERS"
                },
                s(&n["config_generation"]),
                s(&d["config_generation"])
            );
        }
    }
    for (i, l) in q["links"].as_array().into_iter().flatten().enumerate() {
        let rejected = l["rejected"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        out += &format!(
            "link {i}     {} -> {}  {}  sent {} received {} rejected {}\n",
            s(&l["local"]),
            s(&l["peer"]),
            if l["up"] == true { "up  " } else { "DOWN" },
            s(&l["sent"]),
            s(&l["received"]),
            if rejected.is_empty() {
                "0".into()
            } else {
                rejected
            }
        );
    }
    match &q["last_failover"] {
        Value::Null => out += "failover   none since amgr started\n",
        f => {
            out += &format!(
                "failover   node {} became ACTIVE {} ({})\n",
                s(&f["active"]),
                ago(now_ms, &f["at_ms"]),
                s(&f["reason"])
            )
        }
    }
    if !q["replication"].is_null() {
        out += &format!(
            "replication {}\n",
            slbd::ctl::status::describe_replication(
                serde_json::from_value(q["replication"].clone())
                    .ok()
                    .as_ref()
            )
        );
    }
    out += &guard(&q["guard"]);
    let sy = &q["sync"];
    out += &format!(
        "sync       to {}: last ok {}, {} pushes, {} failures{}\n",
        s(&sy["peer"]),
        ago(now_ms, &sy["last_ok_ms"]),
        s(&sy["pushes"]),
        s(&sy["failures"]),
        match &sy["last_error"] {
            Value::Null => String::new(),
            e => format!(", last error: {}", s(e)),
        }
    );
    out
}

/// The isolation guard's line: whether this node can serve, and why not.
fn guard(g: &Value) -> String {
    if g.is_null() {
        return String::new();
    }
    if g["enabled"] == false {
        return "guard      off (servers: none, no witness)\n".into();
    }
    let c = &g["last_check"];
    let checked = if c.is_null() {
        "no check yet".to_string()
    } else {
        format!(
            "{} of {} servers and {} of {} witnesses answered {} ms ago",
            s(&c["servers_answered"]),
            s(&c["servers"]),
            s(&c["witnesses_answered"]),
            s(&c["witnesses"]),
            s(&c["ms_ago"])
        )
    };
    let verdict = match (&g["can_serve"], &g["why_not"]) {
        (Value::Bool(true), _) => "can serve".to_string(),
        (Value::Bool(false), why) => format!("CANNOT serve: {}", s(why)),
        _ => "not checked yet".to_string(),
    };
    let held = match &g["held_back"] {
        Value::Null => String::new(),
        why => format!("; held back from taking over: {}", s(why)),
    };
    format!(
        "guard      {verdict} (needs {}; {checked}){held}\n",
        s(&g["servers_needed"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn query_shows_both_nodes_links_failover_and_sync() {
        let q = json!({
            "node": {"id": 1, "state": "ACTIVE", "primary": true, "inhibited": false,
                     "slbd_pid": 42, "config_generation": "00000000000000aa"},
            "dual": {"id": 2, "state": "STANDBY", "primary": false, "inhibited": true,
                     "heard_ms_ago": 30, "clock_offset_ms": -23_400,
                     "config_generation": "00000000000000aa", "config_in_sync": true},
            "peer": "alive",
            "links": [{"local": "192.168.1.1", "peer": "192.168.1.2", "up": true, "sent": 10,
                       "received": 9, "rejected": {"mac": 2}},
                      {"local": "10.1.1.1", "peer": "10.1.1.2", "up": false, "sent": 10,
                       "received": 0, "rejected": {}}],
            "last_failover": {"at_ms": 10_000, "active": 1, "reason": "dual lost"},
            "sync": {"peer": "root@192.168.1.2:22", "last_ok_ms": 11_000, "last_error": null,
                     "pushes": 3, "failures": 0},
            "guard": {"enabled": true, "servers_needed": "one", "can_serve": false,
                      "why_not": "0 of 3 real servers answer, 1 (one) needed",
                      "last_check": {"ms_ago": 40, "servers": 3, "servers_answered": 0,
                                     "witnesses": 1, "witnesses_answered": 1},
                      "held_back": "0 of 3 real servers answer, 1 (one) needed"},
        });
        let text = query(&q, 12_500);
        for want in [
            "this node  1    ACTIVE       PRIMARY",
            "dual       2    STANDBY      INHIBITED",
            "peer alive, its clock -23.4 s from ours",
            "config     in sync",
            "link 0     192.168.1.1 -> 192.168.1.2  up    sent 10 received 9 rejected mac=2",
            "link 1     10.1.1.1 -> 10.1.1.2  DOWN",
            "failover   node 1 became ACTIVE 2.5 s ago (dual lost)",
            "sync       to root@192.168.1.2:22: last ok 1.5 s ago, 3 pushes, 0 failures",
            "guard      CANNOT serve: 0 of 3 real servers answer, 1 (one) needed (needs one; \
             0 of 3 servers and 1 of 1 witnesses answered 40 ms ago); held back from taking \
             over: 0 of 3 real servers answer, 1 (one) needed",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let alone = query(
            &json!({"node": {"id": 1, "state": "INIT"}, "dual": null}),
            0,
        );
        assert!(alone.contains("dual       never heard"), "{alone}");
        assert!(alone.contains("failover   none"), "{alone}");
    }
}
