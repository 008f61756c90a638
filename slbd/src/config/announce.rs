//! The checks of cluster mode's `announce` section: a routing table a BGP daemon can learn
//! from (none of the kernel's own), a device name of slbd's alone, and no amgr pair beside it
//! (cluster mode needs no flow replication: every node places flows by the same hash). Pure.

use super::checker::Checker;
use super::raw::{RawAnnounce, RawConfig};
use crate::core::announce::Announce;

/// RT_TABLE_COMPAT (252) .. RT_TABLE_LOCAL (255) and RT_TABLE_UNSPEC (0) are the kernel's.
const KERNEL_TABLES: [u64; 4] = [0, 253, 254, 255];

pub(super) fn check(c: &mut Checker, a: &RawAnnounce, raw: &RawConfig) -> Announce {
    if KERNEL_TABLES.contains(&a.table) {
        c.fail(
            "announce.table",
            format!(
                "{} is one of the kernel's tables (0 unspec, 253 default, 254 main, 255 local); \
                 pick one of the BGP daemon's own, 1 to 252 or above 255",
                a.table
            ),
        );
    } else if a.table > u64::from(u32::MAX) {
        c.fail(
            "announce.table",
            format!("{} is past the largest table number, {}", a.table, u32::MAX),
        );
    }
    let device = c.device("announce.device", &a.device);
    for (field, dev) in [
        ("address_dev", &raw.address_dev),
        ("gateway_dev", &raw.gateway_dev),
    ] {
        if *dev == device {
            c.fail(
                "announce.device",
                format!(
                    "{device:?} is {field}: slbd creates this device and deletes it when it stops, \
                     so it must be a name of its own"
                ),
            );
        }
    }
    if raw.with_redundancy {
        c.fail(
            "announce",
            "cluster mode (announce) and the amgr pair (with_redundancy) exclude each other: \
             in a cluster every balancer is active and none replicates its flows",
        );
    }
    let bird_socket = a
        .bird_socket
        .as_deref()
        .unwrap_or(crate::core::announce::DEFAULT_BIRD_SOCKET);
    if !bird_socket.starts_with('/') {
        c.fail(
            "announce.bird_socket",
            format!("{bird_socket:?} is not an absolute path"),
        );
    }
    Announce {
        table: a.table as u32,
        device,
        withdrawn: a.withdrawn,
        bird_socket: bird_socket.into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use serde_json::{json, Value};

    fn config(announce: Value, with_redundancy: bool) -> Result<Config, Vec<String>> {
        let v = json!({
            "address": "10.0.0.100", "address_dev": "eth0",
            "gateway": "172.16.0.1", "gateway_dev": "eth1",
            "cluster_network": "172.16.0.0/24",
            "services": [{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80"]}],
            "with_redundancy": with_redundancy,
            "announce": announce,
        });
        Config::from_json(&v.to_string()).map_err(|e| match e {
            ConfigError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string()],
        })
    }

    #[test]
    fn a_table_and_the_default_device_make_an_announcement() {
        let c = config(json!({"table": 100}), false).unwrap();
        let a = c.announce.unwrap();
        assert_eq!(
            (a.table, a.device.as_str(), a.withdrawn),
            (100, "slb-vip", false)
        );
        let c = config(
            json!({"table": 300, "device": "vipr", "withdrawn": true}),
            false,
        )
        .unwrap();
        let a = c.announce.unwrap();
        assert_eq!(
            (a.table, a.device.as_str(), a.withdrawn),
            (300, "vipr", true)
        );
    }

    #[test]
    fn the_kernels_tables_a_taken_device_and_a_pair_are_refused_at_their_field() {
        for table in [0, 253, 254, 255] {
            let errs = config(json!({"table": table}), false).unwrap_err();
            assert!(
                errs.iter().any(|e| e.starts_with("announce.table: ")
                    && e.contains("one of the kernel's tables")),
                "{table}: {errs:?}"
            );
        }
        let errs = config(json!({"table": 5_000_000_000u64}), false).unwrap_err();
        assert!(errs[0].starts_with("announce.table: "), "{errs:?}");
        for dev in ["eth0", "eth1"] {
            let errs = config(json!({"table": 100, "device": dev}), false).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("announce.device: ") && e.contains("a name of its own")),
                "{dev}: {errs:?}"
            );
        }
        let errs = config(json!({"table": 100, "device": "a/b"}), false).unwrap_err();
        assert!(errs[0].contains("not a network interface name"), "{errs:?}");
        let errs = config(json!({"table": 100}), true).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("announce: ") && e.contains("exclude each other")),
            "{errs:?}"
        );
        let errs = config(json!({"table": 100, "bird_socket": "bird.ctl"}), false).unwrap_err();
        assert!(
            errs[0].starts_with("announce.bird_socket: ") && errs[0].contains("absolute"),
            "{errs:?}"
        );
        let errs = config(json!({"table": 100, "tabel": 1}), false).unwrap_err();
        assert!(
            errs[0].contains("tabel"),
            "an unknown field is named: {errs:?}"
        );
    }
}
