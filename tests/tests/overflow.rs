//! Floods in front of the queue. The SYN budget of packet-mode services: spoofed SYNs beyond
//! it are dropped before the queue while a known client connects at once. A queue slbd cannot keep up with (here, slbd
//! frozen with SIGSTOP so that a short queue fills for certain): what does not fit goes on
//! without slbd. An offload flow's first packet gets a server in rotation from the kernel; a
//! packet-mode packet is dropped, never passed on unrewritten. Real slbd, rules, NFQUEUE and
//! conntrack.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use slb_tests::synflood::{flood, tcp_segment};
use slb_tests::*;

const T: Duration = Duration::from_secs(10);
/// Shorter than a SYN's first retransmission (1 s): a connect within it was answered at once.
const AT_ONCE: Duration = Duration::from_millis(700);

/// The queue length the tests run with: the shortest slbd accepts.
const MAX_LEN: usize = 16;

/// The lab's config with one queue, the shortest slbd accepts, and fast health checks.
fn short_queue(lab: &Lab, n: usize) -> Value {
    let mut config = lab.config(n);
    config["queue"] = json!({"max_len": MAX_LEN, "count": 1});
    let health = json!({"interval_ms": 200, "timeout_ms": 150, "fall": 2, "rise": 2});
    config["services"][0]["health"] = health.clone();
    config["services"][1]["health"] = health;
    config
}

/// Stops slbd's process until the guard drops (SIGCONT), and fills its queue with spoofed
/// SYNs meanwhile: every thread seen stopped first, then floods until the kernel counts the
/// queue full (a SYN slbd verdicts before it stops, or one lost on the way, would leave room
/// that the test's own connections then fill).
struct Frozen(Pid);

impl Frozen {
    fn new(lab: &Lab, slbd: &Slbd) -> Frozen {
        Frozen::flooding(lab, slbd, vip(80))
    }

    /// [`Frozen::new`], the flood's SYNs sent to `to`.
    fn flooding(lab: &Lab, slbd: &Slbd, to: SocketAddrV4) -> Frozen {
        let pid = Pid::from_raw(slbd.pid());
        kill(pid, Signal::SIGSTOP).unwrap();
        let frozen = Frozen(pid);
        let started = Instant::now();
        while !all_threads_stopped(slbd.pid()) {
            assert!(
                started.elapsed() < T,
                "slbd's threads still run {T:?} after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..5 {
            in_ns(&lab.client(), || {
                flood(
                    to,
                    (Ipv4Addr::new(198, 18, 0, 0), 15),
                    200,
                    Duration::from_secs(1),
                )
                .unwrap()
            });
            if queued(lab) >= MAX_LEN {
                return frozen;
            }
        }
        panic!(
            "five floods of 200 SYNs left slbd's queue short of {MAX_LEN}: {} queued",
            queued(lab)
        );
    }
}

/// Whether every thread of `pid` is in the stopped state.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let after_name = stat.rsplit_once(") ")?.1.to_owned();
                after_name.chars().next()
            })
            .is_some_and(|state| state == 'T' || state == 't')
    })
}

/// The packets waiting in the balancer's queue 0 for slbd's verdict, as the kernel counts them.
fn queued(lab: &Lab) -> usize {
    let out = lab
        .exec(
            &lab.balancer(),
            &["cat", "/proc/net/netfilter/nfnetlink_queue"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let number: u32 = fields.next()?.parse().ok()?;
            let total: usize = fields.nth(1)?.parse().ok()?;
            (number == 0).then_some(total)
        })
        .sum()
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The client addresses the tests connect from: one each, so a hash of the source spreads.
fn sources(n: u8) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::new(10, 0, 0, 20 + i)).collect()
}

fn add_sources(lab: &Lab, addrs: &[Ipv4Addr]) {
    for a in addrs {
        lab.exec(
            &lab.client(),
            &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"],
        )
        .unwrap();
    }
}

/// One request to `to` from each of `addrs`, each given [`AT_ONCE`]: the server's name, or
/// what failed.
fn requests_from(lab: &Lab, addrs: &[Ipv4Addr], to: SocketAddrV4) -> Vec<Result<String, String>> {
    in_ns(&lab.client(), || {
        addrs
            .iter()
            .map(|&a| {
                http_get(a, to, "/", AT_ONCE)
                    .map(|body| server_name(&body))
                    .map_err(|e| format!("{a}: {e}"))
            })
            .collect()
    })
}

/// Every request of [`requests_from`] was answered at once, by s1 and s2 (in rotation) and
/// never by the stopped s3.
fn served_at_once_by_s1_and_s2(answered: &[Result<String, String>]) {
    let failed: Vec<&String> = answered.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "with slbd frozen and its queue full, every new connection is served at once: {failed:?}"
    );
    let names: std::collections::BTreeSet<&str> =
        answered.iter().filter_map(|r| r.as_deref().ok()).collect();
    assert_eq!(
        names,
        ["s1", "s2"].into_iter().collect(),
        "the kernel spreads over both servers in rotation and never the stopped one"
    );
}

fn offload_nat_chain(lab: &Lab) -> String {
    let out = lab
        .exec(
            &lab.balancer(),
            &["nft", "list", "chain", "ip", "slb", "offload_nat"],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_queue_has_the_kernel_place_new_offload_connections_on_the_servers_in_rotation_only() {
    if !can_run("a_full_queue_has_the_kernel_place_new_offload_connections") {
        return;
    }
    let mut lab = Lab::new_in(3, "offload").unwrap();
    let slbd = lab.start_slbd(&short_queue(&lab, 3));
    let addrs = sources(40);
    add_sources(&lab, &addrs);
    lab.stop_server(2);
    let started = Instant::now();
    loop {
        let chain = offload_nat_chain(&lab);
        if !chain.contains("queue full, to 172.16.0.4:")
            && chain.contains("queue full, to 172.16.0.3:")
        {
            break;
        }
        assert!(
            started.elapsed() < T,
            "the kernel's spread still names the stopped server s3 after {T:?}:\n{chain}\nlog:\n{}",
            slbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let frozen = Frozen::new(&lab, &slbd);
    let answered = requests_from(&lab, &addrs, vip(80));
    drop(frozen);
    served_at_once_by_s1_and_s2(&answered);
    // slbd, running again, balances as before.
    assert!(in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", T)).is_ok());
}

#[test]
fn a_full_queue_has_the_kernel_place_new_offload_dr_connections_in_rotation_which_slbd_then_adopts()
{
    if !can_run("a_full_queue_has_the_kernel_place_new_offload_dr_connections") {
        return;
    }
    let mut lab = Lab::new(3).unwrap();
    lab.direct_routing_servers().unwrap();
    let mut config = short_queue(&lab, 3);
    let servers: Vec<Value> = (0..3)
        .map(|i| format!("{}:{SERVER_HTTP_PORT}", server_ip(i)).into())
        .collect();
    let health = config["services"][0]["health"].clone();
    config["services"] = json!([{
        "protocol": "tcp", "port": SERVER_HTTP_PORT, "forwarding": "dr", "mode": "offload",
        "servers": servers, "health": health,
    }]);
    let slbd = lab.start_slbd(&config);
    let addrs = sources(20);
    add_sources(&lab, &addrs);
    lab.stop_server(2);
    let dr_chain = || {
        let out = lab
            .exec(
                &lab.balancer(),
                &["nft", "list", "chain", "ip", "slb", "dr"],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = Instant::now();
    loop {
        let chain = dr_chain();
        if !chain.contains("queue full, to 172.16.0.4:")
            && chain.contains("queue full, to 172.16.0.3:")
        {
            break;
        }
        assert!(
            started.elapsed() < T,
            "the kernel's spread still names the stopped server s3 after {T:?}:\n{chain}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let to = vip(SERVER_HTTP_PORT);
    let frozen = Frozen::flooding(&lab, &slbd, to);
    // Whole requests, and one connection held open, while slbd cannot see a packet.
    let answered = requests_from(&lab, &addrs[1..], to);
    let (held, on) = in_ns(&lab.client(), || hold_connection_from(addrs[0], to));
    assert_eq!(
        in_ns(&lab.client(), || echo(&held, "frozen", T)).unwrap(),
        on,
        "the held connection works with slbd frozen"
    );
    drop(frozen);
    served_at_once_by_s1_and_s2(&answered);
    // Running again, slbd adopts the held flow from the kernel's map and counts it.
    let live = || {
        let (_, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
        let st: Value = serde_json::from_str(&out).unwrap();
        let i: usize = on[1..].parse::<usize>().unwrap() - 1;
        st["services"][0]["servers"][i]["live_flows"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        eventually(T, || live() >= 1),
        "slbd counts the held flow on {on}"
    );
    assert_eq!(
        in_ns(&lab.client(), || echo(&held, "thawed", T)).unwrap(),
        on,
        "the held connection goes on once slbd runs again"
    );
    eprintln!(
        "dr offload, queue full: {} new connections served at once over s1 and s2; the held one on {on} adopted",
        answered.len()
    );
}

/// A raw socket in the calling thread's namespace that sees every TCP packet it receives.
fn tcp_sniffer() -> OwnedFd {
    // SAFETY: socket takes no pointers; the descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is live for the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    fd
}

/// The source addresses of the TCP packets `sniffer` receives within `wait`.
fn sources_seen(sniffer: &OwnedFd, wait: Duration) -> Vec<Ipv4Addr> {
    let mut seen = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        // SAFETY: `buf` is live and its length is passed.
        let n = unsafe { libc::recv(sniffer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 20 {
            seen.push(Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]));
        }
    }
    seen
}

#[test]
fn a_full_queue_in_packet_mode_lets_no_request_reach_a_server_nor_a_reply_reach_the_client_unrewritten(
) {
    if !can_run("a_full_queue_in_packet_mode_lets_nothing_through_unrewritten") {
        return;
    }
    let lab = Lab::new_in(2, "packet").unwrap();
    let slbd = lab.start_slbd(&short_queue(&lab, 2));
    assert!(in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", T)).is_ok());

    let frozen = Frozen::new(&lab, &slbd);
    let refused = in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", AT_ONCE));
    assert!(
        refused.is_err(),
        "a packet-mode request the full queue passes on reaches nobody: {refused:?}"
    );
    // A server's packet to the client, as a reply the full queue passes on unrewritten.
    let server = SocketAddrV4::new(server_ip(0), SERVER_HTTP_PORT);
    let leaked = std::thread::scope(|scope| {
        let client = lab.client();
        let sniff = scope.spawn(move || {
            in_ns(&client, || {
                let s = tcp_sniffer();
                sources_seen(&s, Duration::from_millis(1500))
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        in_ns(&lab.server(0), || {
            let replies: Vec<Vec<u8>> = (0..20u16)
                .map(|i| {
                    tcp_segment(server, SocketAddrV4::new(CLIENT, 40000 + i), 0, 0x12).to_vec()
                })
                .collect();
            send_raw_ipv4(&replies).unwrap()
        });
        sniff.join().unwrap()
    });
    drop(frozen);
    assert!(
        !leaked.contains(server.ip()),
        "no packet with a real server's address reaches the client: saw {leaked:?}"
    );
    assert!(
        in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", T)).is_ok(),
        "slbd, running again, balances as before"
    );
}

/// Packet mode only: offload services have no budget (their overflow goes to the kernel).
#[test]
fn a_known_client_connects_at_once_while_spoofed_syns_beyond_the_budget_never_reach_slbd() {
    if !can_run("a_known_client_connects_at_once_while_spoofed_syns_beyond_the_budget") {
        return;
    }
    let lab = Lab::new_in(2, "packet").unwrap();
    let mut config = lab.config(2);
    config["syn_flood"] = json!({"budget": 50});
    let slbd = lab.start_slbd(&config);
    // New flows slbd placed, over every server of every service.
    let placed = || {
        let (_, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
        let st: Value = serde_json::from_str(&out).unwrap();
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["servers"].as_array().unwrap().iter())
            .map(|r| r["new_flows"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(in_ns(&lab.client(), || http_get(CLIENT, vip(80), "/", T)).is_ok());
    let set = lab
        .exec(
            &lab.balancer(),
            &["nft", "list", "set", "ip", "slb", "known_clients"],
        )
        .unwrap();
    let set = String::from_utf8_lossy(&set.stdout).into_owned();
    assert!(
        set.contains(&CLIENT.to_string()),
        "the client is known after its handshake:\n{set}"
    );
    let before = placed();

    let (sent, answered) = in_ns(&lab.client(), || {
        let f = flood(vip(80), (Ipv4Addr::new(198, 18, 0, 0), 15), 2000, T).unwrap();
        let answered = (0..5)
            .filter(|_| http_get(CLIENT, vip(80), "/", AT_ONCE).is_ok())
            .count();
        (f.sent, answered)
    });
    assert_eq!(sent, 2000);
    assert_eq!(
        answered, 5,
        "the known client connects at once through the flood"
    );
    let placed = placed() - before;
    // The 5 connects, the budget's burst (5) and its rate for as long as the flood lasted.
    assert!(
        (5..=100).contains(&placed),
        "of 2,000 spoofed SYNs, the budget let {placed} flows reach slbd; log:\n{}",
        slbd.log_text()
    );
}
