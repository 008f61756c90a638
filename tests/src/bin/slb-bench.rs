//! The benchmark: slbd beside its anchors, in one lab, in one run.
//!
//! Topology: the lab's client, balancer and 4 real servers, each server running nginx (:80),
//! an iperf3 server (:5201) and a UDP echo (:53). Variants, interleaved over the rounds, each
//! round starting one variant later (a variant's place in the round moves its figures: seen
//! with two slbd builds, whichever ran first in every round came out behind on UDP):
//! `route` (no balancing: the client talks to one server through the balancer namespace),
//! `route-queued` (the same, with every client-to-server packet through a user-space queue and
//! on unchanged: the ceiling of any design that sees every request packet, as direct routing's
//! packet mode does),
//! `nft-dnat` (the kernel balancing: `dnat to numgen inc mod 4 map`), `writeback` (kernel NAT
//! plus every packet queued and written back unchanged: the ceiling of any per-packet design),
//! `slbd` (ROUND_ROBIN), `slbd-offload` (the same with `"mode": "offload"`: slbd places each
//! new flow, conntrack carries the rest), `slbd-dr` (the same in packet mode with `"forwarding":
//! "dr"`: requests go unchanged to the server's MAC, the servers answer from the VIP on their
//! loopback through the balancer's routing, never its queue), `slbd-dr-offload` (direct routing
//! in offload mode: slbd places each new flow, the kernel's flow map carries the rest), and `haproxy` (`mode tcp`,
//! `balance roundrobin`). Bulk TCP runs both ways: upload (client to server, what every variant
//! queues) and download (`-R`, the reply direction direct routing keeps out of user space).
//! iperf3 is balanced by source (jhash, `balance source`, persistence) in every variant, since
//! its control and data connections must reach one server.
//!
//! `slb-bench [--rounds N] [--seconds S] [--variants A,B] [--out DIR]` prints a table of medians (min–max) and
//! ratios to nft-dnat, and writes `raw.csv`, `results.md` and `ratios.png` to DIR.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use slb_tests::*;

const SERVERS: usize = 4;
/// Where the SYN flood's spoofed sources come from (RFC 2544's benchmarking range).
const SPOOFED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const SPOOFED_LEN: u8 = 15;
/// Run order within a round. HAProxy goes last: right after it, the conntrack-based
/// `writeback` variant measured a third of its new-connection rate (state HAProxy leaves in
/// the balancer namespace for a while; a conntrack flush does not clear it), and by the next
/// round's turn it has decayed.
const VARIANTS: [&str; 11] = [
    "route",
    "route-queued",
    "nft-dnat",
    "writeback",
    "slbd",
    "slbd-offload",
    "slbd-dr",
    "slbd-dr-offload",
    "baseline",
    "baseline-offload",
    "haproxy",
];

/// Variants measured only with `--baseline SLBD`: another slbd build (say, the last release's)
/// beside this one in the same run, so a change's cost is told apart from the machine's noise.
const BASELINE: [&str; 2] = ["baseline", "baseline-offload"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Metric {
    BulkGbps,
    BulkDownGbps,
    KeepaliveRps,
    KeepaliveP50Us,
    KeepaliveP99Us,
    CloseRps,
    UdpRps,
    UdpRttP50Us,
    UdpRttP99Us,
    BalancerCpuUsPerReq,
    MachineCpuUsPerReq,
    SlbdCpuUsPerPacket,
    SlbdQueueOverruns,
    SynfloodPps,
    SynfloodP50Us,
    SynfloodP99Us,
    SynfloodOkPct,
    SynfloodNewP50Us,
    SynfloodNewOkPct,
}

impl Metric {
    const ALL: [Metric; 19] = [
        Metric::BulkGbps,
        Metric::BulkDownGbps,
        Metric::KeepaliveRps,
        Metric::KeepaliveP50Us,
        Metric::KeepaliveP99Us,
        Metric::CloseRps,
        Metric::UdpRps,
        Metric::UdpRttP50Us,
        Metric::UdpRttP99Us,
        Metric::BalancerCpuUsPerReq,
        Metric::MachineCpuUsPerReq,
        Metric::SlbdCpuUsPerPacket,
        Metric::SlbdQueueOverruns,
        Metric::SynfloodPps,
        Metric::SynfloodP50Us,
        Metric::SynfloodP99Us,
        Metric::SynfloodOkPct,
        Metric::SynfloodNewP50Us,
        Metric::SynfloodNewOkPct,
    ];

    fn name(self) -> &'static str {
        match self {
            Metric::BulkGbps => "bulk TCP, 1 stream (Gbit/s)",
            Metric::BulkDownGbps => "bulk TCP download, 1 stream, server to client (Gbit/s)",
            Metric::KeepaliveRps => "HTTP keep-alive (req/s)",
            Metric::KeepaliveP50Us => "HTTP keep-alive p50 (µs)",
            Metric::KeepaliveP99Us => "HTTP keep-alive p99 (µs)",
            Metric::CloseRps => "HTTP new connection per request (req/s)",
            Metric::UdpRps => "UDP request/response, 4 clients (req/s)",
            Metric::UdpRttP50Us => "UDP RTT p50, 1 client (µs)",
            Metric::UdpRttP99Us => "UDP RTT p99, 1 client (µs)",
            Metric::BalancerCpuUsPerReq => "balancer process CPU per keep-alive request (µs)",
            Metric::MachineCpuUsPerReq => "whole-machine CPU per keep-alive request (µs)",
            Metric::SlbdCpuUsPerPacket => "slbd CPU per queued packet, all workloads (µs)",
            Metric::SlbdQueueOverruns => "slbd queue overruns (ENOBUFS), all workloads",
            Metric::SynfloodPps => "SYN flood: spoofed SYNs sent (packets/s)",
            Metric::SynfloodP50Us => "SYN flood: legitimate connect p50 (µs)",
            Metric::SynfloodP99Us => "SYN flood: legitimate connect p99 (µs)",
            Metric::SynfloodOkPct => "SYN flood: legitimate connects that succeeded (%)",
            Metric::SynfloodNewP50Us => "SYN flood: a new client's first connect p50 (µs)",
            Metric::SynfloodNewOkPct => "SYN flood: new clients connected within 3 s (%)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Metric::BulkGbps => "bulk_gbps",
            Metric::BulkDownGbps => "bulk_down_gbps",
            Metric::KeepaliveRps => "keepalive_rps",
            Metric::KeepaliveP50Us => "keepalive_p50_us",
            Metric::KeepaliveP99Us => "keepalive_p99_us",
            Metric::CloseRps => "close_rps",
            Metric::UdpRps => "udp_rps",
            Metric::UdpRttP50Us => "udp_rtt_p50_us",
            Metric::UdpRttP99Us => "udp_rtt_p99_us",
            Metric::BalancerCpuUsPerReq => "balancer_cpu_us_per_req",
            Metric::MachineCpuUsPerReq => "machine_cpu_us_per_req",
            Metric::SlbdCpuUsPerPacket => "slbd_cpu_us_per_packet",
            Metric::SlbdQueueOverruns => "slbd_queue_overruns",
            Metric::SynfloodPps => "synflood_pps",
            Metric::SynfloodP50Us => "synflood_connect_p50_us",
            Metric::SynfloodP99Us => "synflood_connect_p99_us",
            Metric::SynfloodOkPct => "synflood_ok_pct",
            Metric::SynfloodNewP50Us => "synflood_new_client_p50_us",
            Metric::SynfloodNewOkPct => "synflood_new_client_ok_pct",
        }
    }

    /// Whether the chart shows it (throughputs and the UDP RTT, as in the table).
    fn charted(self) -> bool {
        matches!(
            self,
            Metric::BulkGbps
                | Metric::BulkDownGbps
                | Metric::KeepaliveRps
                | Metric::CloseRps
                | Metric::UdpRttP50Us
        )
    }
}

struct Options {
    variants: Vec<&'static str>,
    /// The slbd binary the `baseline` variants run.
    baseline: Option<PathBuf>,
    rounds: usize,
    seconds: u64,
    out: PathBuf,
    /// Which workloads to measure (all by default).
    workloads: Vec<&'static str>,
    /// slbd's kernel queue length (`queue.max_len`), when not the default.
    queue_len: Option<u32>,
    /// A kernel budget of new SYNs per second to the VIP, in front of every variant (an
    /// `nft limit` rule in a table of the benchmark's own): what it costs legitimate clients.
    syn_limit: Option<u32>,
}

const WORKLOADS: [&str; 5] = ["bulk", "keepalive", "close", "udp", "synflood"];

fn options() -> Result<Options> {
    let mut o = Options {
        variants: VARIANTS
            .into_iter()
            .filter(|v| !BASELINE.contains(v))
            .collect(),
        baseline: None,
        rounds: 3,
        seconds: 5,
        out: PathBuf::from("bench/results/latest"),
        workloads: WORKLOADS.to_vec(),
        queue_len: None,
        syn_limit: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    const USAGE: &str = "usage: slb-bench [--rounds N] [--seconds S] [--variants A,B] [--workloads A,B] [--queue-len N] [--syn-limit N] [--baseline SLBD] [--out DIR]";
    while let Some(a) = it.next() {
        if a == "--help" || a == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value; {USAGE}"))?;
        match a.as_str() {
            "--rounds" => o.rounds = v.parse().context("--rounds")?,
            "--seconds" => o.seconds = v.parse().context("--seconds")?,
            "--out" => o.out = PathBuf::from(v),
            "--baseline" => o.baseline = Some(PathBuf::from(v)),
            "--queue-len" => o.queue_len = Some(v.parse().context("--queue-len")?),
            "--syn-limit" => o.syn_limit = Some(v.parse().context("--syn-limit")?),
            "--workloads" => {
                o.workloads = v
                    .split(',')
                    .map(|name| {
                        WORKLOADS
                            .iter()
                            .copied()
                            .find(|k| *k == name)
                            .with_context(|| {
                                format!("unknown workload {name}; known: {}", WORKLOADS.join(","))
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            "--variants" => {
                o.variants = v
                    .split(',')
                    .map(|name| {
                        VARIANTS
                            .iter()
                            .copied()
                            .find(|k| *k == name)
                            .with_context(|| {
                                format!("unknown variant {name}; known: {}", VARIANTS.join(","))
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            _ => bail!("unknown flag {a}; {USAGE}"),
        }
    }
    if o.baseline.is_some() && !o.variants.iter().any(|v| BASELINE.contains(v)) {
        let at = o
            .variants
            .iter()
            .position(|v| *v == "haproxy")
            .unwrap_or(o.variants.len());
        o.variants.splice(at..at, BASELINE);
    }
    if o.baseline.is_none() && o.variants.iter().any(|v| BASELINE.contains(v)) {
        bail!("the baseline variants need --baseline SLBD");
    }
    Ok(o)
}

fn main() -> Result<()> {
    clean_up_on_signal();
    if !nix::unistd::geteuid().is_root() {
        bail!("slb-bench builds network namespaces and needs root");
    }
    let o = options()?;
    for tool in ["nginx", "iperf3", "wrk", "haproxy", "nft", "conntrack"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout
            .is_empty()
        {
            bail!("{tool} is missing: run bench/run.sh, which installs it");
        }
    }
    let started = Instant::now();
    let lab = Lab::new(SERVERS).context("building the lab")?;
    let _servers = start_servers(&lab)?;
    // `slbd-dr`'s servers hold the VIP on their loopback; the other variants address them by
    // their own addresses, which that leaves alone, so every variant runs on one topology.
    lab.direct_routing_servers()
        .context("making the servers direct-routing ones")?;
    let mut samples: BTreeMap<(&str, Metric), Vec<f64>> = BTreeMap::new();
    let mut csv = String::from("round,variant,metric,value\n");
    for round in 1..=o.rounds {
        for variant in round_order(&o.variants, round) {
            let t = Instant::now();
            let got = run_variant(&lab, variant, &o)
                .with_context(|| format!("variant {variant}, round {round}"))?;
            for (m, v) in got {
                writeln!(csv, "{round},{variant},{},{v:.3}", m.key())?;
                samples.entry((variant, m)).or_default().push(v);
            }
            eprintln!(
                "round {round}/{}: {variant} measured in {:.0} s",
                o.rounds,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let table = table(&samples, o.rounds);
    println!("\n{table}");
    std::fs::create_dir_all(&o.out)?;
    std::fs::write(o.out.join("raw.csv"), csv)?;
    let header = format!(
        "# slb benchmark\n\n{} rounds, {} s per measurement, {} real servers, run took {:.0} s. \
         Variant order rotated each round. Medians with min–max; ratio = median / nft-dnat's median (for latencies and CPU, lower is better).\n\n",
        o.rounds,
        o.seconds,
        SERVERS,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(o.out.join("results.md"), format!("{header}{table}"))?;
    chart(&samples, &o.out.join("ratios.png"))?;
    eprintln!("wrote {}/raw.csv, results.md, ratios.png", o.out.display());
    Ok(())
}

/// nginx, iperf3 and a UDP echo on port 53 in every server namespace.
fn start_servers(lab: &Lab) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for i in 0..SERVERS {
        let ns = lab.server(i);
        let prefix = lab.dir().join(format!("nginx-s{}", i + 1));
        std::fs::create_dir_all(&prefix)?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 1; pid {p}/nginx.pid; error_log {p}/error.log;\n\
                 events {{ worker_connections 8192; }}\n\
                 http {{ access_log off; keepalive_requests 10000000; keepalive_timeout 120;\n\
                   client_body_temp_path {p}; proxy_temp_path {p}; fastcgi_temp_path {p}; uwsgi_temp_path {p}; scgi_temp_path {p};\n\
                   server {{ listen 80 backlog=4096; location / {{ return 200 \"s{n}\\n\"; }} }} }}\n",
                p = prefix.display(),
                n = i + 1
            ),
        )?;
        procs.push(lab.start(
            &ns,
            &[
                "nginx",
                "-c",
                &conf.to_string_lossy(),
                "-p",
                &prefix.to_string_lossy(),
            ],
        )?);
        procs.push(lab.start(&ns, &["iperf3", "-s", "-p", "5201"])?);
        let bin = workspace_bin("lab-server");
        procs.push(lab.start(
            &ns,
            &[
                &bin.to_string_lossy(),
                "--name",
                &format!("s{}", i + 1),
                "--tcp",
                "0.0.0.0:8001",
                "--udp",
                "0.0.0.0:53",
            ],
        )?);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(procs)
}

fn servers_map(port: Option<u16>) -> String {
    (0..SERVERS)
        .map(|i| match port {
            Some(p) => format!("{i} : {} . {p}", server_ip(i)),
            None => format!("{i} : {}", server_ip(i)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sh(lab: &Lab, ns: &str, cmd: &str) -> Result<()> {
    let out = lab.exec(ns, &["sh", "-c", cmd])?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The kernel's own balancing, as the nft-dnat and writeback variants use it.
fn nft_dnat(lab: &Lab) -> Result<()> {
    let rules = format!(
        "table ip benchnat {{\n chain pre {{ type nat hook prerouting priority dstnat;\n\
           ip daddr {VIP} tcp dport 80 dnat to numgen inc mod {SERVERS} map {{ {m} }}\n\
           ip daddr {VIP} tcp dport 5201 dnat to jhash ip saddr mod {SERVERS} map {{ {m} }}\n\
           ip daddr {VIP} udp dport 53 dnat to numgen inc mod {SERVERS} map {{ {m} }}\n }}\n}}\n",
        m = servers_map(None)
    );
    let path = lab.dir().join("benchnat.nft");
    std::fs::write(&path, rules)?;
    sh(lab, &lab.balancer(), &format!("nft -f {}", path.display()))
}

/// Addresses the non-slbd variants need by hand (slbd adds its own).
fn manual_addresses(lab: &Lab, up: bool) -> Result<()> {
    let op = if up { "add" } else { "del" };
    sh(
        lab,
        &lab.balancer(),
        &format!("ip addr {op} {VIP}/32 dev eth0 && ip addr {op} 172.16.0.1/24 dev br0"),
    )
}

/// `nfq-passthrough` in the balancer namespace for packets to `to`, one queue per core, with
/// its extra argument (`requests`), once its rules are in.
fn start_passthrough(lab: &Lab, to: Ipv4Addr, extra: Option<&str>) -> Result<Proc> {
    let bin = workspace_bin("nfq-passthrough");
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let (bin, to) = (bin.to_string_lossy(), to.to_string());
    let mut args = vec![&*bin, to.as_str(), "172.16.0.0/24", &cores];
    args.extend(extra);
    let p = lab.start(&lab.balancer(), &args)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(p)
}

fn run_variant(lab: &Lab, variant: &str, o: &Options) -> Result<Vec<(Metric, f64)>> {
    let (secs, baseline) = (o.seconds, o.baseline.as_deref());
    let b = lab.balancer();
    let mut target = VIP;
    let mut balancer_pid = None;
    let mut _proc = None;
    let mut slbd = None;
    // Conntrack entries left by the previous variant (un-NATed ones from HAProxy's, say)
    // would capture reused client ports and bypass this variant's NAT.
    sh(lab, &b, "conntrack -F 2>/dev/null || true")?;
    if let Some(n) = o.syn_limit {
        sh(
            lab,
            &b,
            &format!(
                "nft 'table ip benchlimit {{ chain pre {{ type filter hook prerouting priority -350; \
                 ip daddr {VIP} tcp flags & (syn | ack) == syn limit rate over {n}/second burst 1000 packets drop; }}; }}'"
            ),
        )?;
    }
    match variant {
        "route" | "route-queued" => {
            sh(lab, &b, "ip addr add 172.16.0.1/24 dev br0")?;
            sh(
                lab,
                &lab.client(),
                "ip route replace 172.16.0.0/24 via 10.0.0.1",
            )?;
            target = server_ip(0);
            if variant == "route-queued" {
                let p = start_passthrough(lab, target, Some("requests"))?;
                balancer_pid = Some(p.pid());
                _proc = Some(p);
            }
        }
        "nft-dnat" => {
            manual_addresses(lab, true)?;
            nft_dnat(lab)?;
        }
        "haproxy" => {
            manual_addresses(lab, true)?;
            let servers = |port: u16| {
                (0..SERVERS)
                    .map(|i| format!("  server s{} {}:{port}\n", i + 1, server_ip(i)))
                    .collect::<String>()
            };
            let conf = lab.dir().join("haproxy.cfg");
            // maxconn well under this machine's file-descriptor limit (the default exceeds it).
            std::fs::write(
                &conf,
                format!(
                    "global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                     frontend web\n  bind {VIP}:80\n  default_backend web\nbackend web\n  balance roundrobin\n{}\
                     frontend bulk\n  bind {VIP}:5201\n  default_backend bulk\nbackend bulk\n  balance source\n{}",
                    servers(80),
                    servers(5201)
                ),
            )?;
            let p = lab.start(&b, &["haproxy", "-db", "-f", &conf.to_string_lossy()])?;
            balancer_pid = Some(p.pid());
            _proc = Some(p);
            std::thread::sleep(Duration::from_millis(500));
        }
        "writeback" => {
            manual_addresses(lab, true)?;
            nft_dnat(lab)?;
            // Conntrack verifies checksums before NAT; a GSO packet written back carries only
            // its pseudo-header seed (the kernel fills the rest when it segments), which
            // conntrack would call invalid. slbd keeps its flows out of conntrack, so the
            // fair ceiling does not pay for that check either.
            lab.sysctl(&b, "net.netfilter.nf_conntrack_checksum", "0")?;
            let p = start_passthrough(lab, VIP, None)?;
            balancer_pid = Some(p.pid());
            _proc = Some(p);
        }
        "slbd" | "slbd-offload" | "slbd-dr" | "slbd-dr-offload" | "baseline"
        | "baseline-offload" => {
            let mode = if variant.ends_with("offload") {
                "offload"
            } else {
                "packet"
            };
            let forwarding = if variant.starts_with("slbd-dr") {
                "dr"
            } else {
                "nat"
            };
            let servers = |port: u16| {
                (0..SERVERS)
                    .map(|i| format!("{}:{port}", server_ip(i)))
                    .collect::<Vec<_>>()
            };
            let mut config = json!({
                "address": VIP.to_string(), "address_dev": "eth0",
                "gateway": "172.16.0.1", "gateway_dev": "br0",
                "cluster_network": "172.16.0.0/24", "algorithm": "ROUND_ROBIN",
                "services": [
                    {"protocol": "tcp", "port": 80, "mode": mode, "forwarding": forwarding, "servers": servers(80)},
                    // iperf3's server takes a probe's bare connect for a broken test.
                    {"protocol": "tcp", "port": 5201, "mode": mode, "forwarding": forwarding, "persistence_timeout": 600, "health": {"enabled": false}, "servers": servers(5201)},
                    {"protocol": "udp", "port": 53, "mode": mode, "forwarding": forwarding, "servers": servers(53)}
                ]
            });
            if let Some(len) = o.queue_len {
                config["queue"] = json!({ "max_len": len });
            }
            let s = match (BASELINE.contains(&variant), baseline) {
                (true, Some(bin)) => lab.start_slbd_binary(bin, &config),
                _ => lab.start_slbd(&config),
            };
            balancer_pid = Some(s.pid());
            slbd = Some(s);
        }
        _ => bail!("unknown variant {variant}"),
    }
    // HAProxy does not balance UDP. The SYN flood is measured against the kernel's NAT and
    // slbd's two modes.
    let flood = matches!(
        variant,
        "nft-dnat"
            | "slbd"
            | "slbd-offload"
            | "slbd-dr"
            | "slbd-dr-offload"
            | "baseline"
            | "baseline-offload"
    );
    let workloads: Vec<&str> = o
        .workloads
        .iter()
        .copied()
        .filter(|w| match *w {
            // HAProxy does not balance UDP; the servers' UDP echo answers from the address
            // its route picks (bound to 0.0.0.0, as most UDP daemons are), not from the VIP a
            // direct-routing request was sent to, so the client would never take its answer.
            "udp" => variant != "haproxy" && !variant.starts_with("slbd-dr"),
            "synflood" => flood,
            _ => true,
        })
        .collect();
    let mut result = measure(lab, target, balancer_pid, secs, &workloads);
    // Tear down whatever the variant set up, whether or not the measurement worked.
    drop(_proc);
    if o.syn_limit.is_some() {
        sh(lab, &b, "nft delete table ip benchlimit")?;
    }
    if let Some(mut s) = slbd {
        let cpu = process_cpu_secs(s.pid());
        s.signal(nix::sys::signal::Signal::SIGTERM);
        s.wait(Duration::from_secs(5));
        let log = s.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("final counters")) {
            eprintln!(
                "  slbd: {}",
                line.split("final counters").nth(1).unwrap_or("").trim()
            );
            let counter = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            if let (Ok(r), Some(packets), Some(overruns)) =
                (result.as_mut(), counter("packets"), counter("overruns"))
            {
                r.push((Metric::SlbdCpuUsPerPacket, cpu * 1e6 / packets.max(1.0)));
                r.push((Metric::SlbdQueueOverruns, overruns));
            }
        }
    }
    match variant {
        "route" | "route-queued" => {
            sh(lab, &b, "ip addr del 172.16.0.1/24 dev br0")?;
            sh(
                lab,
                &lab.client(),
                "ip route del 172.16.0.0/24 via 10.0.0.1",
            )?;
        }
        "nft-dnat" | "writeback" => {
            lab.sysctl(&b, "net.netfilter.nf_conntrack_checksum", "1")?;
            sh(lab, &b, "nft delete table ip benchnat")?;
            manual_addresses(lab, false)?;
        }
        "haproxy" => manual_addresses(lab, false)?,
        _ => {}
    }
    result
}

fn measure(
    lab: &Lab,
    target: Ipv4Addr,
    balancer_pid: Option<i32>,
    secs: u64,
    workloads: &[&str],
) -> Result<Vec<(Metric, f64)>> {
    let c = lab.client();
    let mut out = Vec::new();
    if workloads.contains(&"bulk") {
        out.extend(bulk(lab, target, secs, false)?);
        out.extend(bulk(lab, target, secs, true)?);
    }
    let url = format!("http://{target}/");
    if workloads.contains(&"keepalive") {
        let cpu0 = balancer_pid.map(process_cpu_secs);
        let busy0 = machine_busy_secs();
        let w = wrk(
            lab,
            &["-t2", "-c50", &format!("-d{secs}s"), "--latency", &url],
        )?;
        let busy = machine_busy_secs() - busy0;
        let requests = w.rps * secs as f64;
        out.push((Metric::KeepaliveRps, w.rps));
        out.push((Metric::KeepaliveP50Us, w.p50_us));
        out.push((Metric::KeepaliveP99Us, w.p99_us));
        if let (Some(pid), Some(cpu0)) = (balancer_pid, cpu0) {
            out.push((
                Metric::BalancerCpuUsPerReq,
                (process_cpu_secs(pid) - cpu0) * 1e6 / requests,
            ));
        }
        out.push((Metric::MachineCpuUsPerReq, busy * 1e6 / requests));
    }
    if workloads.contains(&"close") {
        let w = wrk(
            lab,
            &[
                "-t2",
                "-c50",
                &format!("-d{secs}s"),
                "-H",
                "Connection: close",
                &url,
            ],
        )?;
        out.push((Metric::CloseRps, w.rps));
    }
    if workloads.contains(&"udp") {
        let (rps, _, _) = in_ns(&c, || udp_load(target, 4, Duration::from_secs(secs)))?;
        out.push((Metric::UdpRps, rps));
        let (_, p50, p99) = in_ns(&c, || udp_load(target, 1, Duration::from_secs(secs)))?;
        out.push((Metric::UdpRttP50Us, p50));
        out.push((Metric::UdpRttP99Us, p99));
    }
    if workloads.contains(&"synflood") {
        out.extend(synflood(lab, target, secs)?);
    }
    Ok(out)
}

/// One iperf3 stream through `target` for `secs`: client to server, or (`download`, iperf3's
/// `-R`) server to client, the direction direct routing keeps away from the balancer.
fn bulk(lab: &Lab, target: Ipv4Addr, secs: u64, download: bool) -> Result<Vec<(Metric, f64)>> {
    let (target, secs) = (target.to_string(), secs.to_string());
    let mut args = vec!["iperf3", "-c", &target, "-p", "5201", "-t", &secs, "-J"];
    if download {
        args.push("-R");
    }
    let json = lab.exec(&lab.client(), &args)?;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 failed: {}", v["error"]))?;
    let metric = if download {
        Metric::BulkDownGbps
    } else {
        Metric::BulkGbps
    };
    Ok(vec![(metric, bps / 1e9)])
}

/// The `synflood` workload: for `secs`, spoofed SYNs to :80 as fast as this machine sends
/// them (from hosts of [`SPOOFED`], routed back through the client's namespace), while a legitimate client opens
/// a new connection every 20 ms (3 s each at most: a SYN retransmitted once is already a
/// second late).
fn synflood(lab: &Lab, target: Ipv4Addr, secs: u64) -> Result<Vec<(Metric, f64)>> {
    let dur = Duration::from_secs(secs);
    let to = SocketAddrV4::new(target, 80);
    let queue_drops = || {
        in_ns(&lab.balancer(), || {
            // /proc/net is the process's namespace; this thread's is thread-self's.
            std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let f: Vec<u64> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    // queue_dropped (full), user_dropped (socket buffer).
                    (
                        f.get(5).copied().unwrap_or(0),
                        f.get(6).copied().unwrap_or(0),
                    )
                })
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
    };
    // The flood comes from beyond the client network's router, as a real one does from the
    // Internet: the balancer routes the spoofed range back through the client's namespace,
    // which drops the answers. (Spoofed hosts of a directly connected network would instead
    // have the balancer resolve each by ARP and overflow its neighbour table, a lab artifact
    // that evicts the real client's entry too.)
    let b = lab.balancer();
    sh(
        lab,
        &b,
        &format!("ip route add {SPOOFED}/{SPOOFED_LEN} via {CLIENT}"),
    )?;
    // Clients the site has never seen, one every 400 ms from 0.3 s into the flood, each from
    // an address of its own.
    let new_clients: Vec<Ipv4Addr> = (0..8).map(|i| Ipv4Addr::new(10, 0, 0, 30 + i)).collect();
    for a in &new_clients {
        sh(
            lab,
            &lab.client(),
            &format!("ip addr replace {a}/24 dev eth0"),
        )?;
    }
    let drops0 = queue_drops();
    let (flood, times, new_times) = in_ns(&lab.client(), || {
        // The legitimate client is one the site knows: it connected just before the flood
        // (slbd's SYN budget exempts clients seen past a handshake; the kernel's NAT has none).
        let _ = synflood::connects(
            CLIENT,
            to,
            Duration::from_millis(20),
            Duration::from_millis(100),
            Duration::from_secs(3),
        );
        let sender = std::thread::spawn(move || {
            synflood::flood(to, (SPOOFED, SPOOFED_LEN), 20_000_000, dur)
        });
        std::thread::sleep(Duration::from_millis(300));
        let newcomers = std::thread::spawn(move || {
            new_clients
                .into_iter()
                .map(|a| {
                    let t = synflood::connects(
                        a,
                        to,
                        Duration::from_millis(400),
                        Duration::from_millis(1),
                        Duration::from_secs(3),
                    );
                    std::thread::sleep(Duration::from_millis(400));
                    t[0]
                })
                .collect::<Vec<Option<f64>>>()
        });
        let times = synflood::connects(
            CLIENT,
            to,
            Duration::from_millis(20),
            dur - Duration::from_millis(600),
            Duration::from_secs(3),
        );
        let new_times = newcomers.join().unwrap_or_default();
        (sender.join(), times, new_times)
    });
    let flood = flood
        .map_err(|_| anyhow::anyhow!("the flood sender panicked"))?
        .context("the SYN flood's raw socket")?;
    // A failed connect counts as the whole timeout: the percentiles drop none.
    let ok = times.iter().flatten().count();
    let mut all: Vec<f64> = times.iter().map(|t| t.unwrap_or(3e6)).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if all.is_empty() {
            f64::NAN
        } else {
            all[((all.len() - 1) as f64 * p) as usize]
        }
    };
    let drops = queue_drops();
    sh(
        lab,
        &b,
        &format!("ip route del {SPOOFED}/{SPOOFED_LEN} via {CLIENT}"),
    )?;
    eprintln!(
        "  synflood: {} SYNs at {:.0}/s, {ok} of {} connects, p50 {:.0} µs, p99 {:.0} µs; \
         queue dropped {} full, {} at the socket",
        flood.sent,
        flood.rate(),
        times.len(),
        pct(0.5),
        pct(0.99),
        drops.0 - drops0.0,
        drops.1 - drops0.1
    );
    let mut new_all: Vec<f64> = new_times.iter().map(|t| t.unwrap_or(3e6)).collect();
    new_all.sort_by(|a, b| a.total_cmp(b));
    let new_ok = new_times.iter().flatten().count();
    println!("  synflood: new clients' first connects (µs, 3e6 = failed): {new_all:?}");
    Ok(vec![
        (
            Metric::SynfloodNewP50Us,
            new_all.get(new_all.len() / 2).copied().unwrap_or(f64::NAN),
        ),
        (
            Metric::SynfloodNewOkPct,
            100.0 * new_ok as f64 / new_times.len().max(1) as f64,
        ),
        (Metric::SynfloodPps, flood.rate()),
        (Metric::SynfloodP50Us, pct(0.5)),
        (Metric::SynfloodP99Us, pct(0.99)),
        (
            Metric::SynfloodOkPct,
            100.0 * ok as f64 / times.len().max(1) as f64,
        ),
    ])
}

/// `clients` clients, each its own flow, asking the UDP echo back to back; returns the rate
/// and the RTT p50/p99 in µs. The rate is taken with several clients, the RTT with one, so
/// that it measures the path rather than queueing behind the other clients.
fn udp_load(target: Ipv4Addr, clients: usize, dur: Duration) -> Result<(f64, f64, f64)> {
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
                let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0))?;
                s.connect(SocketAddrV4::new(target, 53))?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut rtts = Vec::new();
                let mut buf = [0u8; 256];
                let end = Instant::now() + dur;
                while Instant::now() < end {
                    let t = Instant::now();
                    s.send(b"bench")?;
                    if s.recv(&mut buf).is_ok() {
                        rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                Ok(rtts)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("udp client panicked"))??,
        );
    }
    if all.is_empty() {
        bail!("no UDP answer came back");
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    Ok((all.len() as f64 / dur.as_secs_f64(), pct(0.5), pct(0.99)))
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The variants in the order round `round` (from 1) runs them: rotated by one each round, so
/// over as many rounds as variants each runs once in every place.
fn round_order<'a>(variants: &[&'a str], round: usize) -> Vec<&'a str> {
    let mut order = variants.to_vec();
    if !order.is_empty() {
        let n = order.len();
        order.rotate_left((round - 1) % n);
    }
    order
}

fn table(samples: &BTreeMap<(&str, Metric), Vec<f64>>, rounds: usize) -> String {
    let mut t = String::new();
    let shown: Vec<&str> = VARIANTS
        .into_iter()
        .filter(|v| samples.keys().any(|(s, _)| s == v))
        .collect();
    let _ = writeln!(t, "| workload | {} |", shown.join(" | "));
    let _ = writeln!(t, "|---|{}", "---|".repeat(shown.len()));
    for m in Metric::ALL {
        let anchor = samples.get(&("nft-dnat", m)).map(|v| stats(v).0);
        let mut row = format!("| {} |", m.name());
        for &variant in &shown {
            match samples.get(&(variant, m)) {
                Some(v) if v.len() == rounds => {
                    let (med, lo, hi) = stats(v);
                    let ratio = anchor
                        .filter(|a| *a > 0.0 && variant != "nft-dnat")
                        .map(|a| format!(" **{:.2}×**", med / a))
                        .unwrap_or_default();
                    let _ = write!(
                        row,
                        " {} ({}–{}){ratio} |",
                        fmt_num(med),
                        fmt_num(lo),
                        fmt_num(hi)
                    );
                }
                _ => row.push_str(" — |"),
            }
        }
        let _ = writeln!(t, "{row}");
    }
    t
}

fn chart(samples: &BTreeMap<(&str, Metric), Vec<f64>>, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("DejaVuSans.ttf (fonts-dejavu-core) for the chart")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("font"))?;
    let metrics: Vec<Metric> = Metric::ALL.into_iter().filter(|m| m.charted()).collect();
    let variants: Vec<&str> = VARIANTS
        .iter()
        .copied()
        .filter(|v| *v != "nft-dnat" && samples.keys().any(|(s, _)| s == v))
        .collect();
    let root = BitMapBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = 2.0f64;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "median / nft-dnat median (1.0 = the kernel's own NAT; RTT: lower is better)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..metrics.len() as f64, 0f64..ymax)?;
    let labels: Vec<&str> = vec![
        "bulk TCP",
        "HTTP keep-alive",
        "HTTP new conn.",
        "UDP RTT p50",
    ];
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(metrics.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ratio")
        .draw()?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(230, 120, 40),
        RGBColor(90, 150, 220),
        RGBColor(40, 160, 80),
    ];
    let width = 0.8 / variants.len() as f64;
    for (vi, v) in variants.iter().enumerate() {
        let color = colors[vi % colors.len()];
        let bars: Vec<_> = metrics
            .iter()
            .enumerate()
            .filter_map(|(mi, m)| {
                let anchor = stats(samples.get(&("nft-dnat", *m))?).0;
                let med = stats(samples.get(&(*v, *m))?).0;
                let x0 = mi as f64 + 0.1 + vi as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, (med / anchor).min(ymax))],
                    color.filled(),
                ))
            })
            .collect();
        ch.draw_series(bars)?
            .label(*v)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    ch.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (metrics.len() as f64, 1.0)],
        BLACK,
    )))?;
    ch.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_as_many_rounds_as_variants_each_variant_runs_once_in_every_place() {
        let variants = ["nft-dnat", "slbd", "baseline"];
        let orders: Vec<Vec<&str>> = (1..=3).map(|r| round_order(&variants, r)).collect();
        assert_eq!(orders[0], variants, "the first round runs them as given");
        for place in 0..variants.len() {
            let mut seen: Vec<&str> = orders.iter().map(|o| o[place]).collect();
            seen.sort_unstable();
            let mut all = variants.to_vec();
            all.sort_unstable();
            assert_eq!(seen, all, "place {place} over the rounds");
        }
        assert_eq!(round_order(&variants, 4), variants, "round 4 starts again");
        assert!(round_order(&[], 2).is_empty());
    }
}
