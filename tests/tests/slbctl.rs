//! slbctl against a running slbd in the lab: every flag, bad input refused without harm, live
//! changes that keep established connections.

use std::io::Read;
use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::Value;
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

fn ok(lab: &Lab, slbd: &Slbd, args: &[&str]) -> String {
    let (code, out, err) = lab.slbctl(slbd, args);
    assert_eq!(code, 0, "slbctl {args:?} failed: {err}");
    out
}

fn show(lab: &Lab, slbd: &Slbd) -> Value {
    serde_json::from_str(&ok(lab, slbd, &["--show-config"])).unwrap()
}

fn servers_answering(lab: &Lab, to: SocketAddrV4, n: usize) -> Vec<String> {
    in_ns(&lab.client(), || {
        let mut v: Vec<String> = (0..n)
            .map(|_| server_name(&http_get(CLIENT, to, "/", T).expect("request")))
            .collect();
        v.sort();
        v.dedup();
        v
    })
}

#[test]
fn version_and_help_need_no_slbd() {
    let out = std::process::Command::new(workspace_bin("slbctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("slbctl {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(workspace_bin("slbctl"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--load",
        "--unload",
        "--reload",
        "--with-redundancy",
        "--show-config",
        "--status",
        "--clear-config",
        "--address",
        "--address-dev",
        "--gateway",
        "--gateway-dev",
        "--cluster-network",
        "--ssh-port",
        "--credentials",
        "--backup-slb",
        "--algorithm",
        "--add-server",
        "--save-config",
        "--rm-credentials",
        "--rm-ssh-port",
        "--rm-server",
        "--rm-server-port",
        "--version",
    ] {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "--help lists {flag}"
        );
    }
    let out = std::process::Command::new(workspace_bin("slbctl"))
        .args(["--load", "--unload"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--load, --unload and --reload exclude each other, as in slbcli"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !can_run("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let lab = Lab::new(2).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    let before = show(&lab, &slbd);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--address", "10.0.0.300"],
            "--address \"10.0.0.300\": not an IPv4 address",
        ),
        (
            &["--gateway", "gw"],
            "--gateway \"gw\": not an IPv4 address",
        ),
        (&["--cluster-network", "172.16.0.1/24"], "host bits are set"),
        (&["--cluster-network", "172.16.0.0/33"], "prefix length"),
        (&["--algorithm", "FASTEST"], "invalid value 'FASTEST'"),
        (&["--add-server", "172.16.0.9"], "is not ADDRESS:PORT"),
        (&["--add-server", "172.16.0.9:70000"], "has no valid port"),
        (&["--add-server", "icmp/172.16.0.9:80"], "is not tcp or udp"),
        (&["--rm-server", "172.16.0"], "not an IPv4 address"),
        (&["--rm-server-port", "172.16.0.2"], "is not ADDRESS:PORT"),
        (&["--address-dev", "eth 0"], "not a network interface name"),
        // Valid notation, refused by slbd's whole-config validation or its state:
        (
            &["--add-server", "10.9.9.9:8000"],
            "is not inside cluster_network",
        ),
        (
            &["--rm-server", "172.16.0.99"],
            "172.16.0.99 is not a server",
        ),
        (&["--add-server", "172.16.0.2:8000"], "already a server"),
        (&["--gateway", "10.0.0.77"], "is not inside cluster_network"),
        // Valid everywhere but on this host: rolled back, the VIP stays where it was.
        (
            &["--address-dev", "eth9"],
            "no network interface named \"eth9\"",
        ),
        (
            &["--address", "10.0.0.101", "--gateway-dev", "eth9"],
            "no network interface named \"eth9\"",
        ),
        // One bad flag refuses the whole batch, good flags with it included.
        (
            &["--algorithm", "RATIO", "--add-server", "172.16.0.9:bad"],
            "has no valid port",
        ),
    ];
    for (args, want) in cases {
        let (code, _, err) = lab.slbctl(&slbd, args);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: wanted {want:?} in: {err}");
        assert_eq!(
            show(&lab, &slbd),
            before,
            "{args:?} changed the running config"
        );
    }
    assert_eq!(
        servers_answering(&lab, vip(80), 4),
        vec!["s1", "s2"],
        "traffic untouched"
    );
}

#[test]
fn every_change_flag_takes_effect_and_save_then_reload_round_trips() {
    if !can_run("every_change_flag_takes_effect_and_save_then_reload_round_trips") {
        return;
    }
    let lab = Lab::new(3).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    assert_eq!(servers_answering(&lab, vip(80), 4), vec!["s1", "s2"]);

    ok(
        &lab,
        &slbd,
        &[
            "--add-server",
            "172.16.0.4:8000,2",
            "--add-server",
            "udp/172.16.0.4:5300",
            "--algorithm",
            "RATIO",
        ],
    );
    assert_eq!(servers_answering(&lab, vip(80), 8), vec!["s1", "s2", "s3"]);
    let cfg = show(&lab, &slbd);
    assert_eq!(cfg["algorithm"], "RATIO");
    assert_eq!(
        cfg["services"][0]["servers"][2],
        serde_json::json!({"address": "172.16.0.4:8000", "weight": 2})
    );

    ok(&lab, &slbd, &["--rm-server-port", "172.16.0.2:8000"]);
    assert_eq!(servers_answering(&lab, vip(80), 6), vec!["s2", "s3"]);
    ok(&lab, &slbd, &["--rm-server", "172.16.0.3"]);
    assert_eq!(servers_answering(&lab, vip(80), 4), vec!["s3"]);
    in_ns(&lab.client(), || {
        let (answer, _) =
            udp_ask(CLIENT, vip(53), b"q", T).expect("udp/53 still has 172.16.0.2 and .4");
        assert!(!answer.starts_with(b"s2 "), "172.16.0.3 left udp/53 too");
    });

    // The network-side settings, to values that keep the lab working.
    ok(
        &lab,
        &slbd,
        &[
            "--cluster-network",
            "172.16.0.0/16",
            "--gateway",
            "172.16.0.1",
            "--gateway-dev",
            "br0",
            "--address-dev",
            "eth0",
        ],
    );
    assert!(
        lab.balancer_addrs().contains("172.16.0.1/16"),
        "the gateway address follows the cluster prefix"
    );
    ok(&lab, &slbd, &["--address", "10.0.0.101"]);
    let addrs = lab.balancer_addrs();
    assert!(
        addrs.contains("10.0.0.101/32") && !addrs.contains("10.0.0.100/32"),
        "the VIP moved: {addrs}"
    );
    assert_eq!(
        servers_answering(
            &lab,
            SocketAddrV4::new("10.0.0.101".parse().unwrap(), 80),
            2
        ),
        vec!["s3"]
    );
    ok(
        &lab,
        &slbd,
        &[
            "--address",
            "10.0.0.100",
            "--cluster-network",
            "172.16.0.0/24",
        ],
    );

    // Save, then reload: what is in force is what was saved.
    let path = slbd.log.parent().unwrap().join("slb_conf.json");
    let running = show(&lab, &slbd);
    ok(&lab, &slbd, &["--save-config"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved, running);
    ok(&lab, &slbd, &["--add-server", "172.16.0.2:8000"]);
    ok(&lab, &slbd, &["--reload"]);
    assert_eq!(
        show(&lab, &slbd),
        running,
        "--reload puts the saved file back in force"
    );

    // Unload stops balancing and takes the VIP and rules away; load brings them back.
    ok(&lab, &slbd, &["--unload"]);
    assert_eq!(lab.nft_tables(), "");
    assert!(!lab.balancer_addrs().contains("10.0.0.100"));
    assert!(ok(&lab, &slbd, &["--status"]).starts_with("slbd: unloaded"));
    ok(&lab, &slbd, &["--load"]);
    assert!(lab.nft_tables().contains("table ip slb"));
    assert_eq!(servers_answering(&lab, vip(80), 2), vec!["s3"]);
}

#[test]
fn redundancy_settings_are_kept_passwords_never_shown_and_clear_config_empties() {
    if !can_run("redundancy_settings_are_kept_passwords_never_shown_and_clear_config_empties") {
        return;
    }
    let lab = Lab::new(2).unwrap();
    let mut config = lab.config(2);
    let creds = lab.dir().join("credentials.json");
    config["credentials_file"] = creds.to_string_lossy().into_owned().into();
    let mut slbd = lab.start_slbd(&config);

    ok(
        &lab,
        &slbd,
        &[
            "--ssh-port",
            "2222",
            "--credentials",
            "slb,hunter2",
            "--backup-slb",
            "10.0.0.2,slb,s3cret,22",
            "--with-redundancy",
        ],
    );
    let shown = ok(&lab, &slbd, &["--show-config"]);
    let cfg: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(cfg["ssh_port"], 2222);
    assert_eq!(cfg["credentials"], serde_json::json!({"user": "slb"}));
    assert_eq!(
        cfg["backup_slb"],
        serde_json::json!({"address": "10.0.0.2", "user": "slb", "port": 22})
    );
    assert_eq!(cfg["with_redundancy"], true);
    let status = ok(&lab, &slbd, &["--status", "--json"]);
    for secret in ["hunter2", "s3cret"] {
        assert!(!shown.contains(secret), "--show-config shows a password");
        assert!(!status.contains(secret), "--status shows a password");
    }

    ok(&lab, &slbd, &["--save-config"]);
    let saved = std::fs::read_to_string(slbd.log.parent().unwrap().join("slb_conf.json")).unwrap();
    assert!(
        !saved.contains("hunter2") && !saved.contains("s3cret"),
        "slb_conf.json holds no password"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"local_password": "hunter2", "backup_password": "s3cret"})
    );

    ok(
        &lab,
        &slbd,
        &[
            "--rm-credentials",
            "--rm-ssh-port",
            "--backup-slb",
            "10.0.0.2,slb,22",
            "--save-config",
        ],
    );
    let cfg = show(&lab, &slbd);
    assert_eq!((cfg.get("credentials"), cfg.get("ssh_port")), (None, None));
    assert!(
        !creds.exists(),
        "with no password left the credentials file goes"
    );

    ok(&lab, &slbd, &["--clear-config"]);
    assert!(ok(&lab, &slbd, &["--status"]).starts_with("slbd: cleared"));
    assert_eq!(show(&lab, &slbd)["services"], serde_json::json!([]));
    assert_eq!(lab.nft_tables(), "", "a cleared slbd balances nothing");
    let (code, _, err) = lab.slbctl(&slbd, &["--load"]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to balance"), "{err}");
    ok(&lab, &slbd, &["--add-server", "172.16.0.3:8000", "--load"]);
    assert_eq!(
        servers_answering(&lab, SocketAddrV4::new(VIP, 8000), 2),
        vec!["s2"]
    );

    slbd.signal(nix::sys::signal::Signal::SIGTERM);
    slbd.wait(T);
    let log = slbd.log_text();
    assert!(
        !log.contains("hunter2") && !log.contains("s3cret"),
        "no password in the log"
    );
}

#[test]
fn adding_and_removing_servers_loses_no_open_connection() {
    if !can_run("adding_and_removing_servers_loses_no_open_connection") {
        return;
    }
    let lab = Lab::new(3).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    let held = in_ns(&lab.client(), || {
        (0..20).map(|_| hold_connection()).collect::<Vec<_>>()
    });
    ok(&lab, &slbd, &["--add-server", "172.16.0.4:8000"]);
    ok(&lab, &slbd, &["--rm-server-port", "172.16.0.2:8000"]);
    ok(&lab, &slbd, &["--algorithm", "LEAST_CONNECTIONS"]);
    let on_removed = held.iter().filter(|(_, server)| server == "s1").count();
    assert!(
        on_removed > 0,
        "some held connections were on the removed server"
    );
    in_ns(&lab.client(), || {
        for (i, (mut s, server)) in held.into_iter().enumerate() {
            // The /hold server echoes nothing; closing our side must bring its FIN back,
            // which only works if the connection still reaches its own server both ways.
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            s.set_read_timeout(Some(T)).unwrap();
            s.read_to_end(&mut rest)
                .unwrap_or_else(|e| panic!("connection {i} on {} was lost: {e}", server));
        }
    });
    // New flows: never the removed server.
    let now = servers_answering(&lab, vip(80), 6);
    assert!(
        !now.is_empty() && now.iter().all(|s| s == "s2" || s == "s3"),
        "{now:?}"
    );
}

#[test]
fn mode_switches_a_service_between_packet_and_offload_live() {
    if !can_run("mode_switches_a_service_between_packet_and_offload_live") {
        return;
    }
    let lab = Lab::new(2).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    let (code, _, err) = lab.slbctl(&slbd, &["--mode", "tcp/81=offload"]);
    assert_ne!(code, 0);
    assert!(err.contains("there is no service tcp/81"), "{err}");
    let (code, _, err) = lab.slbctl(&slbd, &["--mode", "80=kernel"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(r#""kernel" is not "packet" or "offload""#),
        "{err}"
    );

    // A connection opened in packet mode, held across both switches.
    let (held, server) = in_ns(&lab.client(), hold_connection);
    ok(&lab, &slbd, &["--mode", "tcp/80=offload"]);
    assert_eq!(show(&lab, &slbd)["services"][0]["mode"], "offload");
    let status = ok(&lab, &slbd, &["--status"]);
    assert!(
        status.contains("service tcp/80  ROUND_ROBIN  offload"),
        "{status}"
    );
    assert!(status.contains("conntrack: "), "{status}");
    let answered = servers_answering(&lab, vip(80), 4);
    assert_eq!(
        answered.len(),
        2,
        "new connections are balanced in offload mode"
    );
    let entries = lab.slb_conntrack();
    assert!(
        entries.len() >= 4,
        "the offload flows are in conntrack with slbd's mark: {entries:?}"
    );
    ok(&lab, &slbd, &["--mode", "tcp/80=packet"]);
    assert_eq!(servers_answering(&lab, vip(80), 4).len(), 2);
    assert_eq!(
        in_ns(&lab.client(), || echo(&held, "still there", T)).expect("the held connection"),
        server,
        "a connection from before both switches still reaches its server"
    );
}

/// Every edit commits slbd's rules; one that dropped what waits in the queue would cost a SYN
/// its retransmission (a second) or a segment its RTO. The client counts retransmissions the
/// way `ss -ti` does, on each new connection and on a held one echoing all along.
fn edits_during_a_stream_of_connections_cost_no_retransmission(mode: &'static str) {
    if !can_run("edits_during_a_stream_of_connections_cost_no_retransmission") {
        return;
    }
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let lab = Lab::new_in(3, mode).unwrap();
    let slbd = lab.start_slbd(&lab.config(3));
    let done = AtomicBool::new(false);
    let s3 = format!("{}:8000", server_ip(2));
    let (connections, retransmitted) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            in_ns(&lab.client(), || {
                let (held, _) = hold_connection();
                let (mut n, mut retrans) = (0u32, 0u32);
                while !done.load(Ordering::Relaxed) {
                    let mut s = connect(CLIENT, vip(80), T).expect("connect");
                    write!(s, "GET / HTTP/1.0\r\n\r\n").expect("request");
                    let mut body = Vec::new();
                    s.read_to_end(&mut body).expect("answer");
                    retrans += retransmissions(&s);
                    echo(&held, &format!("ping {n}"), T).expect("held connection echoes");
                    n += 1;
                }
                (n, retrans + retransmissions(&held))
            })
        });
        for _ in 0..10 {
            for flag in ["--drain", "--ready"] {
                ok(&lab, &slbd, &[flag, &s3]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        done.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    eprintln!("{connections} connections during 20 edits, {retransmitted} retransmissions");
    assert!(
        connections >= 20,
        "the client kept connecting: {connections}"
    );
    assert_eq!(
        retransmitted, 0,
        "no segment retransmitted over {connections} connections and a held one"
    );
}

in_both_modes!(edits_during_a_stream_of_connections_cost_no_retransmission);
