//! ICMP errors about balanced flows cross the VIP both ways, in both modes (packet mode by
//! slbd's translation, offload mode by conntrack's): path-MTU discovery through a router on
//! the client side whose link is narrower than the servers', and a time-exceeded about a
//! client's datagram reaching the client's own socket as about the VIP.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use slb_tests::*;

/// The client behind the router, and the router's narrow link toward it.
const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
const NARROW_MTU: &str = "1280";

fn status(lab: &Lab, slbd: &Slbd) -> serde_json::Value {
    let (_, out, _) = lab.slbctl(slbd, &["--status", "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn path_mtu_discovery_works_through_the_vip_behind_a_narrower_router(mode: &'static str) {
    if !can_run("path_mtu_discovery_works_through_the_vip") {
        return;
    }
    // The lab's client namespace becomes a router: a far client hangs off it on a link whose
    // router end takes 1,280 bytes, while the far client's own end (and so its MSS) is 1,500.
    // The servers' 1,500-byte replies reach the router with DF set; it answers "fragmentation
    // needed" to their source, the VIP, and only a translated error reaches the server.
    let mut lab = Lab::new_in(2, mode).unwrap();
    let far = lab.add_namespace("far").unwrap();
    let router = lab.client();
    lab.veth(
        (&router, "far0", "10.0.1.1/24"),
        (&far, "eth0", "10.0.1.5/24"),
    )
    .unwrap();
    ip(&["-n", &router, "link", "set", "far0", "mtu", NARROW_MTU]).unwrap();
    ip(&["-n", &far, "route", "add", "default", "via", "10.0.1.1"]).unwrap();
    lab.sysctl(&router, "net.ipv4.ip_forward", "1").unwrap();
    ip(&[
        "-n",
        &lab.balancer(),
        "route",
        "add",
        "10.0.1.0/24",
        "via",
        "10.0.0.5",
    ])
    .unwrap();
    let slbd = lab.start_slbd(&lab.config(2));

    let n = 400_000;
    let started = Instant::now();
    let bodies: Vec<Vec<u8>> = in_ns(&far, || {
        (0..4)
            .map(|i| {
                http_get(
                    FAR_CLIENT,
                    vip(80),
                    &format!("/bytes/{n}"),
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|e| panic!("download {i} stalled (a PMTU black hole): {e}"))
            })
            .collect()
    });
    let mut want = vec![0u8; n];
    pattern(0, &mut want);
    for b in &bodies {
        assert!(
            b == &want,
            "a whole, intact body ({} of {n} bytes)",
            b.len()
        );
    }
    eprintln!(
        "{mode}: 4 x {n} bytes through a {NARROW_MTU}-byte hop in {:?}",
        started.elapsed()
    );
    if mode == "packet" {
        let st = status(&lab, &slbd);
        assert!(
            st["icmp_to_server"].as_u64().unwrap() >= 1,
            "slbd translated the router's error for the server: {st}"
        );
    }
}

fn a_ttl_that_runs_out_at_the_balancer_is_reported_to_the_client_about_the_vip(mode: &'static str) {
    if !can_run("a_ttl_that_runs_out_at_the_balancer") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let slbd = lab.start_slbd(&lab.config(2));
    // A datagram with TTL 1 dies on the balancer's forward path, after the flow was placed:
    // the balancer's "time exceeded" quotes it as it was then, client → server. The client's
    // kernel hands the error to the socket only if the quote names that socket's own flow,
    // client → VIP.
    let got = in_ns(&lab.client(), || {
        let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).unwrap();
        s.connect(vip(53)).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        s.set_ttl(1).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send(b"who is there").unwrap();
        let mut buf = [0u8; 512];
        s.recv(&mut buf).map(|_| ()).map_err(|e| e.raw_os_error())
    });
    assert_eq!(
        got,
        Err(Some(libc::EHOSTUNREACH)),
        "the client's socket heard the time exceeded (not a timeout, not an answer)"
    );
    if mode == "packet" {
        let st = status(&lab, &slbd);
        assert!(st["icmp_to_client"].as_u64().unwrap() >= 1, "{st}");
    }
}

in_both_modes!(
    path_mtu_discovery_works_through_the_vip_behind_a_narrower_router,
    a_ttl_that_runs_out_at_the_balancer_is_reported_to_the_client_about_the_vip,
);
