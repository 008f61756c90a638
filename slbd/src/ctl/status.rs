//! What slbd's `status` answer means to an operator, in words: shared by `slbctl --status`
//! and `amgr query`, so both say the same thing. Pure.

/// One line saying what `status`'s `replication` object means to an operator (for
/// `slbctl --status` and `amgr query`). Pure.
pub fn describe_replication(r: &serde_json::Value) -> String {
    use serde_json::Value;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let mut out = match r["role"].as_str() {
        None => return "off".into(),
        Some("sender") => match &r["standby"] {
            Value::Null => "sender, no standby connected".to_string(),
            _ => format!(
                "sender to {} ({}), {} records / {} bytes sent, {} snapshots, {} overflows",
                text("standby"),
                if r["standby_has_snapshot"] == true {
                    "has the snapshot"
                } else {
                    "snapshot in progress"
                },
                n("records_sent"),
                n("bytes_sent"),
                n("snapshots_sent"),
                n("overflows"),
            ),
        },
        Some(_) => match &r["receiving_from"] {
            Value::Null => "receiver, NOT takeover-ready: not connected to the ACTIVE".to_string(),
            _ => format!(
                "receiver from {}, {}, lag {} ms, last frame {} ms ago, {} records applied",
                text("receiving_from"),
                if r["takeover_ready"] == true {
                    "takeover-ready"
                } else {
                    "NOT takeover-ready (snapshot incomplete or stream silent)"
                },
                n("lag_ms"),
                n("last_frame_ms_ago"),
                n("records_applied"),
            ),
        },
    };
    let refused: Vec<String> = r["refused"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_u64().unwrap_or(0)))
        .collect();
    if !refused.is_empty() {
        out += &format!(", refused {}", refused.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe_replication as describe;
    use serde_json::json;

    #[test]
    fn each_role_and_readiness_reads_as_one_line() {
        assert_eq!(describe(&json!(null)), "off");
        assert_eq!(
            describe(&json!({"role": "sender", "standby": null})),
            "sender, no standby connected"
        );
        assert_eq!(
            describe(&json!({"role": "sender", "standby": "192.168.100.2:5000",
                "standby_has_snapshot": true, "records_sent": 10, "bytes_sent": 300,
                "snapshots_sent": 1, "overflows": 0, "refused": {"mac": 2}})),
            "sender to 192.168.100.2:5000 (has the snapshot), 10 records / 300 bytes sent, \
             1 snapshots, 0 overflows, refused mac=2"
        );
        assert_eq!(
            describe(&json!({"role": "receiver", "receiving_from": null})),
            "receiver, NOT takeover-ready: not connected to the ACTIVE"
        );
        assert_eq!(
            describe(
                &json!({"role": "receiver", "receiving_from": "192.168.100.1:7407",
                "takeover_ready": true, "lag_ms": 3, "last_frame_ms_ago": 120,
                "records_applied": 1000, "refused": {}})
            ),
            "receiver from 192.168.100.1:7407, takeover-ready, lag 3 ms, last frame 120 ms ago, \
             1000 records applied"
        );
    }
}
