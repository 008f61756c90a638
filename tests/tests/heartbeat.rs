//! The pair's heartbeat over real UDP links between two namespaces, with the `heartbeat`
//! diagnostic binary on each side: authenticated, forgeries dropped and counted, one cut link
//! is not a lost peer, every link cut is.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use slb_tests::*;

struct Pair {
    lab: Lab,
    a: String,
    b: String,
}

fn pair() -> Pair {
    let mut lab = Lab::empty().unwrap();
    let a = lab.add_namespace("ha").unwrap();
    let b = lab.add_namespace("hb").unwrap();
    lab.veth((&a, "l1", "10.99.1.1/24"), (&b, "l1", "10.99.1.2/24"))
        .unwrap();
    lab.veth((&a, "l2", "10.99.2.1/24"), (&b, "l2", "10.99.2.2/24"))
        .unwrap();
    Pair { lab, a, b }
}

fn key_file(lab: &Lab, name: &str, bytes: &[u8], mode: u32) -> String {
    let path = lab.dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts the heartbeat tool in `ns` as node `node` on both links for `seconds`.
fn start(ns: &str, node: u32, key: &str, mine: &str, theirs: &str, seconds: f64) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(workspace_bin("slb-heartbeat"))
        .args([
            "--key",
            key,
            "--node",
            &node.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args([
            "--link",
            &format!("10.99.1.{mine}:7400=10.99.1.{theirs}:7400"),
        ])
        .args([
            "--link",
            &format!("10.99.2.{mine}:7400=10.99.2.{theirs}:7400"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting heartbeat (build it first: cargo build --bins)")
}

fn report(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "heartbeat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_nodes_hear_each_other_on_every_link() {
    if !can_run("two_nodes_hear_each_other_on_every_link") {
        return;
    }
    let p = pair();
    let key = key_file(&p.lab, "key", &[7u8; 32], 0o600);
    let a = start(&p.a, 1, &key, "1", "2", 1.5);
    let b = start(&p.b, 2, &key, "2", "1", 1.5);
    for r in [report(a), report(b)] {
        assert_eq!(r["peer"], "alive", "{r}");
        for link in 0..2 {
            assert!(
                r["accepted"][link].as_u64().unwrap() >= 5,
                "heartbeats arrive on link {link}: {r}"
            );
        }
        // Only the first exchange may go unconfirmed: the dual had not heard our boot yet.
        let rejected = r["rejected"].as_object().unwrap();
        assert!(
            rejected.keys().all(|k| k == "unconfirmed")
                && rejected
                    .get("unconfirmed")
                    .map_or(0, |n| n.as_u64().unwrap())
                    <= 4,
            "{r}"
        );
    }
}

#[test]
fn forged_heartbeats_are_dropped_and_counted() {
    if !can_run("forged_heartbeats_are_dropped_and_counted") {
        return;
    }
    let p = pair();
    let key = key_file(&p.lab, "key", &[7u8; 32], 0o600);
    let wrong = key_file(&p.lab, "wrong", &[8u8; 32], 0o600);
    let a = start(&p.a, 1, &key, "1", "2", 1.0);
    let forger = start(&p.b, 2, &wrong, "2", "1", 1.0);
    let r = report(a);
    let _ = report(forger);
    assert_eq!(r["peer"], "unknown", "a forged peer is never believed: {r}");
    assert_eq!(r["accepted"], serde_json::json!([0, 0]));
    assert!(r["rejected"]["mac"].as_u64().unwrap() >= 5, "{r}");
}

#[test]
fn one_cut_link_is_not_a_lost_peer_but_all_cut_links_are() {
    if !can_run("one_cut_link_is_not_a_lost_peer_but_all_cut_links_are") {
        return;
    }
    let p = pair();
    let key = key_file(&p.lab, "key", &[7u8; 32], 0o600);

    let a = start(&p.a, 1, &key, "1", "2", 2.0);
    let b = start(&p.b, 2, &key, "2", "1", 2.0);
    std::thread::sleep(Duration::from_millis(600));
    p.lab
        .exec(&p.a, &["ip", "link", "set", "l1", "down"])
        .unwrap();
    let r = report(a);
    let _ = report(b);
    assert_eq!(
        r["peer"], "alive",
        "one link of two still carries the heartbeat: {r}"
    );
    assert_eq!(r["links_up"], serde_json::json!([false, true]), "{r}");

    let a = start(&p.a, 1, &key, "1", "2", 2.0);
    let b = start(&p.b, 2, &key, "2", "1", 2.0);
    std::thread::sleep(Duration::from_millis(600));
    p.lab
        .exec(&p.a, &["ip", "link", "set", "l2", "down"])
        .unwrap();
    let r = report(a);
    let _ = report(b);
    assert_eq!(
        r["peer"], "lost",
        "every link silent for the dead time: {r}"
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = std::env::temp_dir().join(format!("slbkey{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, [7u8; 32]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(workspace_bin("slb-heartbeat"))
        .args([
            "--key",
            &path.to_string_lossy(),
            "--node",
            "1",
            "--seconds",
            "0",
        ])
        .args(["--link", "127.0.0.1:0=127.0.0.1:7400"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be mode 0600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
