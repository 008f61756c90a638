//! slbd's data plane end to end: the real slbd binary in the balancer namespace, real nftables
//! rules and NFQUEUE, real TCP/UDP servers and clients in their own namespaces.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use sha2::{Digest, Sha256};
use slb_tests::*;

const T: Duration = Duration::from_secs(5);

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn round_robin_spreads_30_connections_10_10_10(mode: &'static str) {
    if !can_run("round_robin_spreads_30_connections_10_10_10") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let _slbd = lab.start_slbd(&lab.config(3));
    assert_eq!(
        spread(&lab, 30),
        counts(&[("s1", 10), ("s2", 10), ("s3", 10)])
    );
}

fn ratio_3_1_1_spreads_30_connections_18_6_6(mode: &'static str) {
    if !can_run("ratio_3_1_1_spreads_30_connections_18_6_6") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    config["algorithm"] = "RATIO".into();
    config["services"][0]["servers"] = json!([
        {"address": "172.16.0.2:8000", "weight": 3},
        {"address": "172.16.0.3:8000", "weight": 1},
        {"address": "172.16.0.4:8000", "weight": 1},
    ]);
    let _slbd = lab.start_slbd(&config);
    assert_eq!(
        spread(&lab, 30),
        counts(&[("s1", 18), ("s2", 6), ("s3", 6)])
    );
}

fn udp_is_balanced_and_replies_come_from_the_vip(mode: &'static str) {
    if !can_run("udp_is_balanced_and_replies_come_from_the_vip") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let _slbd = lab.start_slbd(&lab.config(3));
    let answers = in_ns(&lab.client(), || {
        (0..9)
            .map(|i| {
                let q = format!("question {i}");
                let (answer, from) = udp_ask(CLIENT, vip(53), q.as_bytes(), T)
                    .unwrap_or_else(|e| panic!("UDP question {i} got no answer: {e}"));
                let answer = String::from_utf8(answer).unwrap();
                assert!(
                    answer.ends_with(&q),
                    "the echo carries the question back: {answer:?}"
                );
                (answer.split(' ').next().unwrap().to_string(), from)
            })
            .collect::<Vec<_>>()
    });
    for (_, from) in &answers {
        assert_eq!(
            *from,
            SocketAddr::V4(vip(53)),
            "UDP replies must come from the VIP"
        );
    }
    let mut by_server = BTreeMap::new();
    for (server, _) in answers {
        *by_server.entry(server).or_insert(0) += 1;
    }
    assert_eq!(by_server, counts(&[("s1", 3), ("s2", 3), ("s3", 3)]));
}

fn bulk_100_mb_arrives_intact_both_ways_with_gso(mode: &'static str) {
    if !can_run("bulk_100_mb_arrives_intact_both_ways_with_gso") {
        return;
    }
    const SIZE: usize = 100 * 1000 * 1000;
    let lab = Lab::new_in(2, mode).unwrap();
    let config = lab.config(2);
    assert_eq!(
        config.get("queue"),
        None,
        "the default queue config has GSO on"
    );
    let slbd = lab.start_slbd(&config);
    let expected = pattern_sha256(SIZE);
    let mut chunk = vec![0u8; 1 << 16];
    in_ns(&lab.client(), || {
        // Download: 100 MB from a real server through the reply path (SNAT).
        let started = Instant::now();
        let body = http_get(
            CLIENT,
            vip(80),
            &format!("/bytes/{SIZE}"),
            Duration::from_secs(60),
        )
        .expect("download through the VIP");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(body.len(), SIZE, "download length");
        assert_eq!(
            format!("{:x}", Sha256::digest(&body)),
            expected,
            "downloaded bytes differ"
        );
        eprintln!(
            "download: {SIZE} bytes in {secs:.2} s ({:.2} Gbit/s, debug or release as built)",
            SIZE as f64 * 8.0 / secs / 1e9
        );

        // Upload: 100 MB to a real server through the request path (DNAT).
        let mut s = connect(CLIENT, vip(80), Duration::from_secs(60)).expect("connect for upload");
        write!(s, "POST /sink HTTP/1.0\r\nContent-Length: {SIZE}\r\n\r\n").unwrap();
        for off in (0..SIZE).step_by(1 << 16) {
            let len = chunk.len().min(SIZE - off);
            pattern(off as u64, &mut chunk[..len]);
            s.write_all(&chunk[..len]).expect("upload through the VIP");
        }
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let body = reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        let fields: Vec<&str> = body.split(' ').collect();
        assert_eq!(
            fields.get(1).copied(),
            Some(SIZE.to_string().as_str()),
            "server received {body:?}"
        );
        assert_eq!(
            fields.get(2).copied(),
            Some(expected.as_str()),
            "uploaded bytes differ at the server"
        );
    });
    drop(slbd);
}

fn small_packets_with_partial_checksums_are_fixed(mode: &'static str) {
    if !can_run("small_packets_with_partial_checksums_are_fixed") {
        return;
    }
    // veth leaves TCP/UDP checksums partial (offloaded); with tx checksumming off on the
    // servers, their replies arrive with full checksums instead. Both must come out right:
    // a wrong checksum shows up as a request that never gets its answer.
    let lab = Lab::new_in(2, mode).unwrap();
    lab.exec(&lab.server(1), &["ethtool", "-K", "eth0", "tx", "off"])
        .ok();
    let _slbd = lab.start_slbd(&lab.config(2));
    in_ns(&lab.client(), || {
        for i in 0..20 {
            let body =
                http_get(CLIENT, vip(80), "/", T).unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert!(server_name(&body).starts_with('s'));
            let q = [i as u8; 1];
            udp_ask(CLIENT, vip(53), &q, T).unwrap_or_else(|e| panic!("UDP {i}: {e}"));
        }
    });
}

fn persistence_keeps_a_client_on_one_server_until_the_timeout(mode: &'static str) {
    if !can_run("persistence_keeps_a_client_on_one_server_until_the_timeout") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let mut config = lab.config(3);
    config["persistence_timeout"] = 2.into();
    config["flows"] = json!({"tcp_closing_timeout": 1});
    let _slbd = lab.start_slbd(&config);
    let (first, others, later) = in_ns(&lab.client(), || {
        let ask = |from| server_name(&http_get(from, vip(80), "/", T).expect("request"));
        let first: Vec<String> = (0..10).map(|_| ask(CLIENT)).collect();
        let others: Vec<String> = (0..2).map(|_| ask(CLIENT2)).collect();
        // Flows close, expire after the closing timeout, then persistence runs out.
        std::thread::sleep(Duration::from_secs(5));
        (first, others, ask(CLIENT))
    });
    assert!(
        first.iter().all(|s| *s == first[0]),
        "one client, one server: {first:?}"
    );
    assert!(
        others.iter().all(|s| *s != first[0]),
        "another client is balanced away: {others:?}"
    );
    assert_ne!(
        later, first[0],
        "after the timeout the client is scheduled afresh"
    );
}

/// A listener on the balancer's own sockets: it must never see VIP traffic.
fn own_sockets(lab: &Lab) -> (TcpListener, TcpListener, UdpSocket) {
    in_ns(&lab.balancer(), || {
        let a = TcpListener::bind("0.0.0.0:80").unwrap();
        let b = TcpListener::bind("0.0.0.0:2222").unwrap();
        let u = UdpSocket::bind("0.0.0.0:53").unwrap();
        for l in [&a, &b] {
            l.set_nonblocking(true).unwrap();
        }
        u.set_nonblocking(true).unwrap();
        (a, b, u)
    })
}

fn assert_nothing_reached(socks: &(TcpListener, TcpListener, UdpSocket), when: &str) {
    assert!(
        socks.0.accept().is_err(),
        "{when}: a VIP:80 connection reached the balancer's own socket"
    );
    assert!(
        socks.1.accept().is_err(),
        "{when}: a VIP:2222 connection reached the balancer's own socket"
    );
    let mut buf = [0u8; 16];
    assert!(
        socks.2.recv_from(&mut buf).is_err(),
        "{when}: a VIP:53 datagram reached the balancer's own socket"
    );
}

fn sigterm_removes_table_and_addresses(mode: &'static str) {
    if !can_run("sigterm_removes_table_and_addresses") {
        return;
    }
    let lab = Lab::new_in(1, mode).unwrap();
    let mut slbd = lab.start_slbd(&lab.config(1));
    assert!(lab.nft_tables().contains("table ip slb"));
    assert!(lab.balancer_addrs().contains("10.0.0.100/32"));
    assert!(lab.balancer_addrs().contains("172.16.0.1/24"));
    let held = in_ns(&lab.client(), hold_connection);
    if mode == "offload" {
        assert_eq!(
            lab.slb_conntrack().len(),
            1,
            "the held connection is in conntrack"
        );
    }
    slbd.signal(Signal::SIGTERM);
    assert_eq!(
        slbd.wait(T),
        Some(0),
        "slbd exits cleanly on SIGTERM; log:\n{}",
        slbd.log_text()
    );
    assert_eq!(lab.nft_tables(), "", "no table is left behind");
    let addrs = lab.balancer_addrs();
    assert!(!addrs.contains("10.0.0.100"), "the VIP is removed: {addrs}");
    assert!(
        !addrs.contains("172.16.0.1/"),
        "the gateway address is removed: {addrs}"
    );
    assert!(
        addrs.contains("10.0.0.1/24"),
        "addresses slbd does not own stay: {addrs}"
    );
    assert_eq!(
        lab.slb_conntrack(),
        Vec::<String>::new(),
        "no conntrack entry of slbd's is left behind"
    );
    drop(held);
}

fn sigkill_fails_closed_and_a_restarted_slbd_takes_over(mode: &'static str) {
    if !can_run("sigkill_fails_closed_and_a_restarted_slbd_takes_over") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let socks = own_sockets(&lab);
    let mut slbd = lab.start_slbd(&lab.config(2));
    let probe = |expect_ok: bool, when: &str| {
        in_ns(&lab.client(), || {
            let short = Duration::from_millis(700);
            let web = http_get(CLIENT, vip(80), "/", short);
            let udp = udp_ask(CLIENT, vip(53), b"x", short);
            let other = connect(CLIENT, vip(2222), short);
            assert_eq!(web.is_ok(), expect_ok, "{when}: VIP:80 {web:?}");
            assert_eq!(udp.is_ok(), expect_ok, "{when}: VIP:53 {udp:?}");
            assert!(other.is_err(), "{when}: VIP:2222 must not connect");
        })
    };
    probe(true, "while balancing");
    assert_nothing_reached(&socks, "while balancing");

    slbd.signal(Signal::SIGKILL);
    assert_eq!(slbd.wait(T), None);
    assert!(
        lab.balancer_addrs().contains("10.0.0.100/32"),
        "after a crash the VIP stays up (so a restart needs no ARP change)"
    );
    probe(false, "after SIGKILL");
    assert_nothing_reached(&socks, "after SIGKILL");

    let _again = lab.start_slbd(&lab.config(2));
    assert_eq!(
        lab.nft_tables().matches("table ip slb").count(),
        1,
        "the old table was taken over, not duplicated"
    );
    probe(true, "after restart");
    assert_nothing_reached(&socks, "after restart");
}

#[test]
fn a_broken_config_is_refused_and_changes_nothing() {
    if !can_run("a_broken_config_is_refused_and_changes_nothing") {
        return;
    }
    let lab = Lab::new(1).unwrap();
    let mut bad = lab.config(1);
    bad["services"][0]["servers"] = json!(["172.16.0.300:80"]);
    let cases = [
        (
            serde_json::to_string(&bad).unwrap(),
            r#"services[0].servers[0]: "172.16.0.300:80" is not an IPv4 address"#,
        ),
        (
            "{\"address\": \"10.0.0.100\",".to_string(),
            "not valid slb_conf.json",
        ),
        (String::new(), "not valid slb_conf.json"),
        // Valid, but the gateway's interface does not exist here: nothing may stay up.
        (
            {
                let mut c = lab.config(1);
                c["gateway_dev"] = "eth9".into();
                serde_json::to_string(&c).unwrap()
            },
            "no network interface named \"eth9\"",
        ),
    ];
    for (text, message) in cases {
        let path = lab.write_config("bad.json", &text);
        let mut slbd = lab.spawn_slbd(&path);
        assert_eq!(slbd.wait(T), Some(1), "slbd must refuse {text:?}");
        let log = slbd.log_text();
        assert!(
            log.contains(message),
            "the error names the problem ({message}); got:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(lab.nft_tables(), "");
        assert!(!lab.balancer_addrs().contains("10.0.0.100"));
    }
}

/// Sends hand-made IPv4 packets to the VIP through a raw socket.
fn send_raw(packets: &[Vec<u8>]) {
    // SAFETY: socket takes no pointers; the fd is checked and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket");
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(VIP).to_be(),
        },
        sin_zero: [0; 8],
    };
    for p in packets {
        // SAFETY: the packet and the address are live for the call, with their true lengths.
        unsafe {
            libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&addr) as u32,
            );
        }
    }
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
}

fn ipv4(proto: u8, l4: &[u8], frag: u16) -> Vec<u8> {
    let total = 20 + l4.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        (frag >> 8) as u8,
        frag as u8,
        64,
        proto,
        0,
        0,
    ];
    p.extend_from_slice(&CLIENT.octets());
    p.extend_from_slice(&VIP.octets());
    let sum = p
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn garbage_packets_do_not_crash_slbd(mode: &'static str) {
    if !can_run("garbage_packets_do_not_crash_slbd") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let mut slbd = lab.start_slbd(&lab.config(2));
    let mut packets = Vec::new();
    // TCP to VIP:80 with a header cut short, and with a data offset past the end.
    packets.push(ipv4(6, &[0x9c, 0x40, 0, 80, 0, 0, 0, 1], 0));
    let mut bad_offset = vec![
        0x9c, 0x41, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xf0, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    packets.push(ipv4(6, &bad_offset, 0));
    bad_offset[12] = 0x10; // data offset 4 words: below the minimum
    packets.push(ipv4(6, &bad_offset, 0));
    // UDP to VIP:53 whose length field runs past the packet, and one shorter than its header.
    packets.push(ipv4(17, &[0x9c, 0x42, 0, 53, 0x04, 0x00, 0, 0, b'x'], 0));
    packets.push(ipv4(17, &[0x9c, 0x43, 0, 53, 0, 4, 0, 0], 0));
    // A first fragment (more-fragments set) of a TCP SYN, and a mid-stream ACK with no flow.
    let syn = [
        0x9c, 0x44, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    packets.push(ipv4(6, &syn, 0x2000));
    let mut ack = syn;
    ack[13] = 0x10;
    packets.push(ipv4(6, &ack, 0));
    // Random junk after a valid IPv4 header.
    for n in 0..50u8 {
        let junk: Vec<u8> = (0..(n as usize % 40))
            .map(|i| (i as u8).wrapping_mul(n).wrapping_add(7))
            .collect();
        packets.push(ipv4(if n % 2 == 0 { 6 } else { 17 }, &junk, 0));
    }
    in_ns(&lab.client(), || {
        send_raw(&packets);
        std::thread::sleep(Duration::from_millis(300));
        let body = http_get(CLIENT, vip(80), "/", T).expect("slbd still balances after garbage");
        assert!(server_name(&body).starts_with('s'));
    });
    slbd.signal(Signal::SIGTERM);
    assert_eq!(slbd.wait(T), Some(0));
    let log = slbd.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let last = log
        .lines()
        .find(|l| l.contains("final counters"))
        .expect("final counters line");
    // In offload mode conntrack sees the packets first and marks all of these INVALID (bad
    // headers, and checksums: the test leaves them 0), so the guard drops them before slbd.
    let reasons: &[&str] = match mode {
        "packet" => &["l4_too_short", "mid_stream_without_flow"],
        _ => &[],
    };
    for reason in reasons {
        assert!(last.contains(reason), "{reason} counted: {last}");
    }
}

fn a_second_slbd_refuses_to_start_and_the_first_keeps_balancing(mode: &'static str) {
    if !can_run("a_second_slbd_refuses_to_start_and_the_first_keeps_balancing") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let _first = lab.start_slbd(&lab.config(2));
    let path = lab.write_config("second.json", &lab.config(2).to_string());
    let mut second = lab.spawn_slbd(&path);
    assert_eq!(
        second.wait(T),
        Some(1),
        "the second slbd must refuse to start"
    );
    let log = second.log_text();
    assert!(log.contains("is another slbd"), "the error says why: {log}");
    assert_eq!(lab.nft_tables().matches("table ip slb").count(), 1);
    assert!(
        lab.balancer_addrs().contains("10.0.0.100/32"),
        "the first slbd's VIP stays"
    );
    in_ns(&lab.client(), || {
        for _ in 0..4 {
            http_get(CLIENT, vip(80), "/", T).expect("the first slbd still balances");
        }
    });
}

#[test]
fn the_vip_is_announced_with_gratuitous_arp() {
    if !can_run("the_vip_is_announced_with_gratuitous_arp") {
        return;
    }
    let lab = Lab::new(1).unwrap();
    // The client believes the VIP is at another MAC, as it would after a failover.
    let stale = "02:00:00:00:00:99";
    let out = lab
        .exec(
            &lab.client(),
            &[
                "ip",
                "neigh",
                "replace",
                "10.0.0.100",
                "lladdr",
                stale,
                "dev",
                "eth0",
                "nud",
                "stale",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mac_out = lab
        .exec(&lab.balancer(), &["cat", "/sys/class/net/eth0/address"])
        .unwrap();
    let balancer_mac = String::from_utf8_lossy(&mac_out.stdout).trim().to_string();
    let _slbd = lab.start_slbd(&lab.config(1));
    let neigh = || {
        let out = lab
            .exec(&lab.client(), &["ip", "neigh", "show", "10.0.0.100"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !neigh().contains(&balancer_mac) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Without sending a single packet to the VIP, the client learned the balancer's MAC.
    let now = neigh();
    assert!(
        now.contains(&balancer_mac) && !now.contains(stale),
        "client's entry: {now} (balancer {balancer_mac})"
    );
}

fn a_fragmented_udp_datagram_reaches_its_server_and_its_fragmented_answer_comes_back(
    mode: &'static str,
) {
    if !can_run("a_fragmented_udp_datagram_reaches_its_server") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    // 4,000 bytes over 1,500-byte links: the client's kernel sends three fragments, and the
    // server's echo of them comes back in three too.
    let question: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let answers = in_ns(&lab.client(), || {
        (0..4)
            .map(|_| udp_ask(CLIENT, vip(53), &question, T))
            .collect::<Vec<_>>()
    });
    for a in &answers {
        let (answer, from) = a.as_ref().expect("a fragmented datagram got no answer");
        assert_eq!(*from, SocketAddr::V4(vip(53)), "answered from the VIP");
        assert!(answer.ends_with(&question), "the whole datagram came back");
    }
    let (_, status, _) = lab.slbctl(&slbd, &["--status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        st["drops"]["fragment"], 0,
        "no fragment dropped: {}",
        st["drops"]
    );
}

fn overlapping_fragments_are_dropped_and_counted_while_a_clean_train_is_answered(
    mode: &'static str,
) {
    if !can_run("overlapping_fragments_are_dropped_and_counted") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let _slbd = lab.start_slbd(&lab.config(2));
    let reasm_fails = || {
        in_ns(&lab.balancer(), || {
            let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
            let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
            let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
            let at = names
                .split_whitespace()
                .position(|n| n == "ReasmFails")
                .unwrap();
            values
                .split_whitespace()
                .nth(at)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
    };
    let payload: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    // Sent by hand from a raw socket, answered (or not) to a UDP socket on the same port.
    let ask = |id: u16, pieces: &[(usize, usize)]| {
        in_ns(&lab.client(), || {
            let s = UdpSocket::bind((CLIENT, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let src = match s.local_addr().unwrap() {
                SocketAddr::V4(a) => a,
                _ => unreachable!(),
            };
            send_raw_ipv4(&udp_fragments(src, vip(53), &payload, id, pieces)).unwrap();
            let mut buf = [0u8; 4096];
            s.recv(&mut buf).ok()
        })
    };
    assert!(
        ask(7001, &[(0, 1480), (1480, 528)]).is_some(),
        "a clean two-fragment train is answered"
    );
    let before = reasm_fails();
    // The second fragment rewrites bytes 1000..1480 of the first: RFC 5722's overlap, which
    // Linux refuses for IPv4 too (the whole train is dropped).
    assert_eq!(
        ask(7002, &[(0, 1480), (1000, 1008)]),
        None,
        "an overlapping train reaches nobody"
    );
    assert!(reasm_fails() > before, "counted as ReasmFails");
}

fn a_full_table_holds_exactly_flows_max_and_a_new_tcp_client_is_still_served(mode: &'static str) {
    if !can_run("a_full_table_holds_exactly_flows_max") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let mut config = lab.config(2);
    config["flows"] = json!({"max": 2000});
    let slbd = lab.start_slbd(&config);
    let answered = in_ns(&lab.client(), || {
        (0..5000)
            .filter(|_| udp_ask(CLIENT, vip(53), b"q", T).is_ok())
            .count()
    });
    assert_eq!(
        answered, 5000,
        "every UDP flow was served, older ones evicted"
    );
    let status = || {
        let (_, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let st = status();
    assert_eq!(st["flows"], 2000, "flows.max is exact");
    // (Fewer than 3,000: the client's kernel reuses some ephemeral ports, and a reused
    // 5-tuple is a flow the table already holds.)
    assert!(
        st["evicted_flows"].as_u64().unwrap() > 1000,
        "{}",
        st["evicted_flows"]
    );
    let served = in_ns(&lab.client(), || {
        (0..5)
            .filter(|_| http_get(CLIENT, vip(80), "/", T).is_ok())
            .count()
    });
    assert_eq!(
        served, 5,
        "new TCP clients find room: the oldest idle UDP flows make it"
    );
    assert_eq!(status()["flows"], 2000);
}

in_both_modes!(
    a_full_table_holds_exactly_flows_max_and_a_new_tcp_client_is_still_served,
    a_fragmented_udp_datagram_reaches_its_server_and_its_fragmented_answer_comes_back,
    overlapping_fragments_are_dropped_and_counted_while_a_clean_train_is_answered,
    round_robin_spreads_30_connections_10_10_10,
    ratio_3_1_1_spreads_30_connections_18_6_6,
    udp_is_balanced_and_replies_come_from_the_vip,
    bulk_100_mb_arrives_intact_both_ways_with_gso,
    small_packets_with_partial_checksums_are_fixed,
    persistence_keeps_a_client_on_one_server_until_the_timeout,
    sigterm_removes_table_and_addresses,
    sigkill_fails_closed_and_a_restarted_slbd_takes_over,
    garbage_packets_do_not_crash_slbd,
    a_second_slbd_refuses_to_start_and_the_first_keeps_balancing,
);
