//! ctnetlink against the real kernel, in a network namespace of its own: offload mode's
//! injected NAT entries are dumped, listed by `conntrack -L`, replaced, and deleted by mark
//! and by tuple; a real TCP connection's events are followed from SYN to destroy.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use slb_tests::{can_run, in_ns};
use slbd::core::net::Protocol;
use slbd::shell::conntrack::{Control, EventSocket};
use slbd::wire::ctnetlink::{tcp_state, CtEntry, EventKind, Inject, IPS_DST_NAT};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 2, 3);
const MARK_BASE: u32 = 0x5b1f_0000;
const MARK_MASK: u32 = 0xffff_0000;

/// A nat chain alone does not switch tracking on in a namespace; its `dnat` rule does
/// (nft_nat_init takes conntrack for the namespace). No test packet goes to port 9.
const NFT: &[u8] = b"table ip slbct {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr 10.9.0.1 tcp dport 9 dnat to 10.9.1.2
  }
}
";

static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

/// A namespace with lo up, the test's addresses on it and an nftables nat chain with a rule
/// (so the kernel tracks connections and sets up NAT there); deleted on drop, panics included.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "slbct-{}-{}",
            std::process::id(),
            NAMESPACES.fetch_add(1, Ordering::SeqCst)
        );
        slb_tests::ip(&["netns", "add", &name]).expect("ip netns add");
        let ns = Netns(name);
        slb_tests::ip(&["-n", &ns.0, "link", "set", "lo", "up"]).expect("lo up");
        for a in [VIP, SERVER, CLIENT] {
            slb_tests::ip(&["-n", &ns.0, "addr", "add", &format!("{a}/32"), "dev", "lo"])
                .expect("address on lo");
        }
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        nft.stdin.take().unwrap().write_all(NFT).unwrap();
        assert!(
            nft.wait().unwrap().success(),
            "nft could not add the nat chain"
        );
        ns
    }

    fn exec(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Every entry the socket delivers until `done` holds for what was seen or `within` passes.
fn events_until(
    ev: &mut EventSocket,
    within: Duration,
    done: impl Fn(&[CtEntry]) -> bool,
) -> Vec<CtEntry> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        ev.recv(left, |e| seen.push(e)).expect("event receive");
    }
    seen
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn injected_nat_entries_are_dumped_replaced_and_deleted() {
    if !can_run("injected_nat_entries_are_dumped_replaced_and_deleted") {
        return;
    }
    let ns = Netns::new();
    let (mut ctl, mut ev) = in_ns(&ns.0, || {
        (
            Control::open().expect("control socket"),
            EventSocket::open(1 << 20, true).expect("event socket"),
        )
    });
    let tcp = Inject {
        protocol: Protocol::Tcp,
        client: sa(CLIENT, 40001),
        vip: sa(VIP, 80),
        server: sa(SERVER, 8080),
        mark: 0x5b1f_0003,
        established: true,
        timeout_s: 300,
    };
    let udp = Inject {
        protocol: Protocol::Udp,
        client: sa(CLIENT, 40002),
        vip: sa(VIP, 53),
        server: sa(SERVER, 5353),
        mark: 0x5b1f_0004,
        established: true,
        timeout_s: 120,
    };
    let report = ctl.inject(&[tcp, udp]).expect("inject");
    assert_eq!(
        (report.created, report.replaced, report.failed),
        (2, 0, 0),
        "injecting two flows: {:?}",
        report.errors
    );

    let mut dump = ctl.dump_marked(MARK_BASE, MARK_MASK).expect("dump");
    dump.sort_by_key(|e| e.mark);
    assert_eq!(
        dump.len(),
        2,
        "the dump holds both injected flows: {dump:#?}"
    );
    for (e, f) in dump.iter().zip([tcp, udp]) {
        eprintln!(
            "injected {} entry: status {:#x}, tcp state {:?}",
            f.protocol, e.status, e.tcp_state
        );
        assert_eq!(
            (e.kind, e.protocol, e.mark),
            (EventKind::New, f.protocol, f.mark)
        );
        assert_eq!(
            (e.orig_src, e.orig_dst),
            (f.client, f.vip),
            "original tuple"
        );
        assert_eq!(
            (e.reply_src, e.reply_dst),
            (f.server, f.client),
            "the kernel's DNAT turns the reply tuple into server -> client"
        );
        assert_ne!(
            e.status & IPS_DST_NAT,
            0,
            "status {:#x} lacks DST_NAT",
            e.status
        );
    }
    assert_eq!(dump[0].tcp_state, Some(tcp_state::ESTABLISHED));

    let listed = ns.exec(&["conntrack", "-L"]);
    for f in [tcp, udp] {
        let line = listed
            .lines()
            .find(|l| l.contains(&format!("sport={}", f.client.port())))
            .unwrap_or_else(|| panic!("conntrack -L does not list {f:?}:\n{listed}"));
        assert!(line.contains(&format!("mark={}", f.mark)), "{line}");
        assert!(
            line.contains(&format!("src={} dst={}", SERVER, CLIENT)),
            "{line}"
        );
        assert!(line.contains(&format!(
            "sport={} dport={}",
            f.server.port(),
            f.client.port()
        )));
    }

    // The same flow again: the existing entry is replaced, not duplicated.
    let report = ctl.inject(&[tcp]).expect("inject again");
    assert_eq!((report.created, report.replaced, report.failed), (1, 1, 0));
    let dump = ctl.dump_marked(MARK_BASE, MARK_MASK).expect("dump");
    assert_eq!(
        dump.iter().filter(|e| e.protocol == Protocol::Tcp).count(),
        1,
        "{dump:#?}"
    );

    // Every create was announced, the replacement as a destroy and a new entry.
    let seen = events_until(&mut ev, Duration::from_millis(200), |_| false);
    let announced = |f: &Inject, kind| {
        seen.iter()
            .filter(|e| e.kind == kind && e.orig_src == f.client && e.mark == f.mark)
            .count()
    };
    assert_eq!(announced(&tcp, EventKind::New), 2, "{seen:#?}");
    assert_eq!(announced(&tcp, EventKind::Destroy), 1, "{seen:#?}");
    assert_eq!(announced(&udp, EventKind::New), 1, "{seen:#?}");
    let new_udp = seen.iter().find(|e| e.orig_src == udp.client).unwrap();
    assert_eq!(new_udp.reply_src, udp.server);

    // The server behind mark ...0003 leaves rotation: only its entry goes.
    ctl.delete_marked(0x5b1f_0003, 0xffff_ffff)
        .expect("delete by mark");
    let seen = events_until(&mut ev, Duration::from_secs(1), |_| false);
    let destroyed: Vec<_> = seen
        .iter()
        .filter(|e| e.kind == EventKind::Destroy)
        .collect();
    assert_eq!(destroyed.len(), 1, "one destroy event: {seen:#?}");
    assert_eq!(
        (destroyed[0].protocol, destroyed[0].orig_src),
        (Protocol::Tcp, tcp.client)
    );
    let dump = ctl.dump_marked(MARK_BASE, MARK_MASK).expect("dump");
    assert_eq!(dump.len(), 1, "{dump:#?}");
    assert_eq!(
        (dump[0].protocol, dump[0].orig_src),
        (Protocol::Udp, udp.client)
    );

    assert!(ctl
        .delete(Protocol::Udp, udp.client, udp.vip)
        .expect("delete"));
    assert!(!ctl
        .delete(Protocol::Udp, udp.client, udp.vip)
        .expect("delete again"));
    assert_eq!(ctl.dump_marked(MARK_BASE, MARK_MASK).expect("dump"), []);
    ctl.delete_marked(MARK_BASE, MARK_MASK)
        .expect("deleting nothing is fine");
    assert_eq!(ev.malformed(), 0);
}

#[test]
fn a_real_connection_is_followed_from_syn_to_destroy() {
    if !can_run("a_real_connection_is_followed_from_syn_to_destroy") {
        return;
    }
    let ns = Netns::new();
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
    let (mut ctl, mut ev, client, server) = in_ns(&ns.0, || {
        let ctl = Control::open().expect("control socket");
        let ev = EventSocket::open(1 << 20, true).expect("event socket");
        let listener = TcpListener::bind(sa(SERVER, 0)).expect("listen");
        let server = match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let mut c = slb_tests::connect(CLIENT, server, Duration::from_secs(2)).expect("connect");
        let (mut s, _) = listener.accept().expect("accept");
        c.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        let client = match c.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        (ctl, ev, client, server)
    });
    let ours = |e: &CtEntry| e.protocol == Protocol::Tcp && e.orig_src == client;
    let has = |seen: &[CtEntry], kind: EventKind, state: u8| {
        seen.iter()
            .any(|e| ours(e) && e.kind == kind && e.tcp_state == Some(state))
    };
    let seen = events_until(&mut ev, Duration::from_secs(2), |s| {
        has(s, EventKind::New, tcp_state::SYN_SENT)
            && has(s, EventKind::Update, tcp_state::ESTABLISHED)
    });
    let states: Vec<_> = seen
        .iter()
        .filter(|e| ours(e))
        .map(|e| (e.kind, e.tcp_state))
        .collect();
    eprintln!("events of {client} -> {server}: {states:?}");
    assert!(
        has(&seen, EventKind::New, tcp_state::SYN_SENT),
        "no New event in SYN_SENT: {seen:#?}"
    );
    assert!(
        has(&seen, EventKind::Update, tcp_state::ESTABLISHED),
        "no Update to ESTABLISHED: {seen:#?}"
    );
    let new = seen.iter().find(|e| ours(e)).unwrap();
    assert_eq!(
        (new.orig_dst, new.reply_src, new.reply_dst),
        (server, server, client)
    );
    assert_eq!(new.mark, 0);

    assert_eq!(
        ctl.dump_marked(MARK_BASE, MARK_MASK).expect("dump"),
        [],
        "an unmarked connection is not one of slbd's entries"
    );

    assert!(ctl.delete(Protocol::Tcp, client, server).expect("delete"));
    let seen = events_until(&mut ev, Duration::from_secs(1), |s| {
        s.iter().any(|e| ours(e) && e.kind == EventKind::Destroy)
    });
    let destroy = seen
        .iter()
        .find(|e| ours(e) && e.kind == EventKind::Destroy)
        .unwrap_or_else(|| panic!("no Destroy event after the delete: {seen:#?}"));
    let c = destroy
        .counters
        .expect("nf_conntrack_acct=1, so a destroy carries counters");
    eprintln!("destroyed with counters {c:?}");
    assert!(c.orig_packets >= 3 && c.reply_packets >= 2, "{c:?}");
}

#[test]
fn an_injected_udp_entry_carries_the_flow_to_its_server() {
    if !can_run("an_injected_udp_entry_carries_the_flow_to_its_server") {
        return;
    }
    let ns = Netns::new();
    let flow = Inject {
        protocol: Protocol::Udp,
        client: sa(CLIENT, 40003),
        vip: sa(VIP, 53),
        server: sa(SERVER, 5353),
        mark: 0x5b1f_0005,
        established: true,
        timeout_s: 60,
    };
    let (answer, from) = in_ns(&ns.0, || {
        let mut ctl = Control::open().expect("control socket");
        let report = ctl.inject(&[flow]).expect("inject");
        assert_eq!(report.created, 1, "{:?}", report.errors);
        let server = std::net::UdpSocket::bind(flow.server).expect("server socket");
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = std::net::UdpSocket::bind(flow.client).expect("client socket");
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"ask", flow.vip).unwrap();
        let mut buf = [0u8; 16];
        let (n, peer) = server
            .recv_from(&mut buf)
            .expect("the VIP's datagram reaches the server the entry names");
        assert_eq!(&buf[..n], b"ask");
        server.send_to(b"answer", peer).unwrap();
        let (n, from) = client.recv_from(&mut buf).expect("the answer comes back");
        (buf[..n].to_vec(), from)
    });
    assert_eq!(answer, b"answer");
    assert_eq!(
        from,
        std::net::SocketAddr::V4(flow.vip),
        "the answer comes from the VIP"
    );
}

#[test]
fn an_event_overrun_surfaces_as_enobufs() {
    if !can_run("an_event_overrun_surfaces_as_enobufs") {
        return;
    }
    let ns = Netns::new();
    let (mut ctl, mut ev) = in_ns(&ns.0, || {
        (
            Control::open().expect("control socket"),
            // The smallest buffer the kernel allows: a few events fill it.
            EventSocket::open(0, true).expect("event socket"),
        )
    });
    let flows: Vec<Inject> = (0..200)
        .map(|i| Inject {
            protocol: Protocol::Udp,
            client: sa(CLIENT, 20000 + i),
            vip: sa(VIP, 53),
            server: sa(SERVER, 5353),
            mark: 0x5b1f_0006,
            established: false,
            timeout_s: 60,
        })
        .collect();
    let report = ctl.inject(&flows).expect("inject");
    assert_eq!(report.created, 200, "{:?}", report.errors);
    let mut got = Ok(true);
    let mut read = 0;
    while let Ok(true) = got {
        got = ev.recv(Duration::from_millis(100), |_| read += 1);
    }
    let err = got.expect_err("200 creates overflow the smallest receive buffer");
    assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS), "{err}");
    eprintln!("{read} events read before the overrun was reported");
    // The socket keeps working after the overrun.
    ctl.delete_marked(0x5b1f_0006, 0xffff_ffff).expect("delete");
    assert!(ev
        .recv(Duration::from_secs(1), |_| {})
        .expect("recv after the overrun"));
}
