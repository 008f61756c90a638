//! The lab from the command line: `slb-lab demo` shows the active/standby pair balancing a
//! 3-server lab and failing over (with the service gap measured); `slb-lab demo-single` one
//! slbd alone; `slb-lab failover N` measures the failover gaps over N runs of each kind;
//! `slb-lab switches N [EVERY_MS] [MODE]` counts, over N `amgr switch`es (both ways) with a
//! new request every EVERY_MS (20), the requests each switch cost: failed, or answered only
//! after more than 500 ms (slowed); `slb-lab bench-bulk` measures one bulk TCP download
//! through slbd against the same download routed through the balancer namespace without slbd; `slb-lab spread` runs the original
//! thesis's test shape (14 real servers, 50 client addresses × 4 requests, persistence on) for
//! each scheduler and prints how many clients and flows each server got; `slb-lab dying N`
//! kills a real server (its process, or its link) under a request every 50 ms, N runs of each
//! in each mode, and prints what each cost and the health checks' probe traffic. All build
//! their namespaces and always remove them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use slb_tests::pair::{service_gap, timeline, Pair, PairOptions, Requests};
use slb_tests::*;

fn show(title: &str, text: &str) {
    println!("$ {title}");
    for line in text.lines() {
        println!("    {line}");
    }
}

/// Requests every 50 ms while `act` runs; waits until node `to` is ACTIVE and serving; returns
/// the service gap in ms and the requests that failed outside it.
fn measured(
    pair: &mut Pair,
    to: usize,
    act: impl FnOnce(&mut Pair) -> Result<()>,
) -> Result<(u128, usize)> {
    let reqs = Requests::start(&pair.lab.client(), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(500));
    act(pair)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while pair.state(to) != "ACTIVE" {
        if Instant::now() > deadline {
            bail!("node {} did not become ACTIVE:\n{}", to + 1, pair.log(to));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let attempts = reqs.finish();
    if attempts.last().is_none_or(|a| a.server.is_none()) {
        bail!("requests did not recover");
    }
    let (gap, outside) = service_gap(&attempts);
    Ok((gap.as_millis(), outside))
}

/// Sorts `v` and gives its (min, median, max); `v` is not empty.
fn min_median_max<T: Ord + Copy>(v: &mut [T]) -> (T, T, T) {
    v.sort_unstable();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// `runs` planned switches, alternating direction, under a new request every `every`: per
/// switch, the requests that failed and those answered only after more than 500 ms.
fn switch_losses(runs: usize, every: Duration, mode: &'static str) -> Result<()> {
    if runs == 0 || every.is_zero() {
        bail!("slb-lab switches N EVERY_MS: N and EVERY_MS are at least 1");
    }
    let mut pair = Pair::new(PairOptions {
        mode,
        ..PairOptions::default()
    })
    .context("building the pair's lab")?;
    pair.start_both()?;
    pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    let slow = Duration::from_millis(500);
    let (mut failed, mut late, mut sent) = (Vec::new(), Vec::new(), 0);
    for k in 0..runs {
        let (from, to) = if k % 2 == 0 { (0, 1) } else { (1, 0) };
        let reqs = Requests::start(&pair.lab.client(), every);
        std::thread::sleep(Duration::from_millis(500));
        let (code, out, err) = pair.amgr(from, &["switch"]);
        if code != 0 {
            bail!("switch {}: {out}{err}", k + 1);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while pair.state(to) != "ACTIVE" || pair.state(from) != "STANDBY" {
            if Instant::now() > deadline {
                bail!("switch {}: node {} did not become ACTIVE", k + 1, to + 1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let attempts = reqs.finish();
        sent += attempts.len();
        let f = attempts.iter().filter(|a| a.server.is_none()).count();
        let l = attempts
            .iter()
            .filter(|a| a.server.is_some() && a.took > slow)
            .count();
        let failed_took: Vec<String> = attempts
            .iter()
            .filter(|a| a.server.is_none())
            .map(|a| format!("{} ms", a.took.as_millis()))
            .collect();
        eprintln!(
            "switch {} (b{} -> b{}): {f} failed{}, {l} over 500 ms",
            k + 1,
            from + 1,
            to + 1,
            if failed_took.is_empty() {
                String::new()
            } else {
                format!(" (after {})", failed_took.join(", "))
            }
        );
        failed.push(f);
        late.push(l);
    }
    let (fs, ls) = (failed.iter().sum::<usize>(), late.iter().sum::<usize>());
    let (fmin, fmed, fmax) = min_median_max(&mut failed);
    let (lmin, lmed, lmax) = min_median_max(&mut late);
    println!(
        "{runs} switches ({mode}), a new request every {} ms, {sent} requests:",
        every.as_millis()
    );
    println!("  failed:        {fs} in all; per switch min {fmin} median {fmed} max {fmax}");
    println!("  over 500 ms:   {ls} in all; per switch min {lmin} median {lmed} max {lmax}");
    for i in 0..2 {
        // What each node took over from its dual's last flows (packet and offload replies,
        // offload requests conntrack did not translate): since its slbd last started.
        if let Some(st) = pair.slbd_status(i) {
            println!(
                "  b{}: adopted replies {}, untracked requests sent on {}",
                i + 1,
                st["adopted_replies"],
                st["untracked_requests"]
            );
        }
    }
    Ok(())
}

/// `runs` times: the STANDBY (b2) loses its heartbeat cable and its server-side port while its
/// client side stays up, for `hold`, then gets them back; per run, whether it took the VIP and
/// how many of the requests (one every 20 ms) failed, from the cut until the pair is ACTIVE /
/// STANDBY again.
fn isolated_standby(runs: usize, hold: Duration) -> Result<()> {
    if runs == 0 {
        bail!("slb-lab isolated N: N is at least 1");
    }
    let mut pair = Pair::new(PairOptions::default()).context("building the pair's lab")?;
    pair.start_both()?;
    pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    let (mut failed, mut took_vip) = (Vec::new(), 0);
    for k in 0..runs {
        let reqs = Requests::start(&pair.lab.client(), Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(500));
        for dev in ["eth1", "hb0"] {
            ip(&["-n", &pair.nodes[1].ns, "link", "set", dev, "down"])?;
        }
        let until = Instant::now() + hold;
        let mut vip = false;
        while Instant::now() < until {
            vip |= pair.has_vip(1);
            std::thread::sleep(Duration::from_millis(50));
        }
        for dev in ["eth1", "hb0"] {
            ip(&["-n", &pair.nodes[1].ns, "link", "set", dev, "up"])?;
        }
        pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
        std::thread::sleep(Duration::from_millis(1000));
        let attempts = reqs.finish();
        let f = attempts.iter().filter(|a| a.server.is_none()).count();
        eprintln!(
            "run {}: the isolated STANDBY {} the VIP, {f} of {} requests failed",
            k + 1,
            if vip { "took" } else { "did not take" },
            attempts.len()
        );
        if f > 0 {
            // The cut was 500 ms in; the links came back `hold` later.
            eprintln!("{}", timeline(&attempts));
        }
        failed.push(f);
        took_vip += usize::from(vip);
    }
    let all = failed.iter().sum::<usize>();
    let (min, median, max) = min_median_max(&mut failed);
    println!(
        "{runs} isolations of the STANDBY for {} ms, a request every 20 ms:",
        hold.as_millis()
    );
    println!("  took the VIP:  {took_vip} of {runs} runs");
    println!("  failed:        {all} in all; per run min {min} median {median} max {max}");
    Ok(())
}

fn pair_demo() -> Result<()> {
    let mut pair = Pair::new(PairOptions::default()).context("building the pair's lab")?;
    println!(
        "lab {}: client {CLIENT}, VIP {VIP}, balancers b1 (PRIMARY) and b2 (BACKUP), real servers 172.16.0.2-4",
        pair.lab.id
    );
    println!("each balancer runs amgr (which runs slbd) and sshd; heartbeats over two links\n");
    pair.start_both()?;
    pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    show("amgr query   (on b1)", &pair.amgr(0, &["query"]).1);
    let seen: Vec<String> = in_ns(&pair.lab.client(), || {
        (0..6)
            .map(|_| {
                http_get(CLIENT, vip(80), "/", Duration::from_secs(2))
                    .map(|b| server_name(&b))
                    .unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect()
    });
    println!("\n6 requests to {VIP}:80 answered by {}\n", seen.join(" "));

    println!("a client sends a new TCP request every 50 ms; kill -9 b1's amgr and slbd ...");
    let (gap, outside) = measured(&mut pair, 1, |pair| {
        pair.kill(0);
        Ok(())
    })?;
    println!("b2 took over: service gap {gap} ms (last success before -> first after), {outside} failures outside it\n");
    show("amgr query   (on b2)", &pair.amgr(1, &["query"]).1);

    println!("\nrestarting b1's amgr: it comes back as STANDBY (no preemption) ...");
    pair.start(0)?;
    pair.wait_states(["STANDBY", "ACTIVE"], Duration::from_secs(15))?;
    println!("amgr switch  (on b2), requests still flowing ...");
    let (gap, outside) = measured(&mut pair, 0, |pair| {
        let (code, out, err) = pair.amgr(1, &["switch"]);
        if code != 0 {
            bail!("switch: {out}{err}");
        }
        Ok(())
    })?;
    println!("b1 is ACTIVE again: service gap {gap} ms, {outside} failures outside it\n");
    show("amgr query   (on b1)", &pair.amgr(0, &["query"]).1);
    drop(pair);
    println!("\nlab removed");
    Ok(())
}

/// `runs` failovers of each kind on one pair, node 1 made ACTIVE again between runs.
fn failover_runs(runs: usize) -> Result<()> {
    let mut pair = Pair::new(PairOptions::default()).context("building the pair's lab")?;
    pair.start_both()?;
    pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    let mut table: Vec<(&str, Vec<u128>, usize)> = Vec::new();
    for kind in ["kill -9 amgr+slbd", "links down", "slbd killed", "switch"] {
        let mut gaps = Vec::new();
        let mut outside_total = 0;
        for _ in 0..runs {
            let (gap, outside) = measured(&mut pair, 1, |pair| {
                match kind {
                    "kill -9 amgr+slbd" => pair.kill(0),
                    "links down" => pair.set_links(0, false)?,
                    "slbd killed" => {
                        let pid = pair.slbd_pid(0).context("slbd's pid")?;
                        nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        )?;
                    }
                    _ => {
                        let (code, out, err) = pair.amgr(0, &["switch"]);
                        if code != 0 {
                            bail!("switch: {out}{err}");
                        }
                    }
                }
                Ok(())
            })?;
            gaps.push(gap);
            outside_total += outside;
            // Back to b1 ACTIVE, b2 STANDBY.
            match kind {
                "kill -9 amgr+slbd" => pair.start(0)?,
                "links down" => pair.set_links(0, true)?,
                _ => {}
            }
            pair.wait_states(["STANDBY", "ACTIVE"], Duration::from_secs(20))
                .or_else(|_| pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(1)))?;
            if pair.state(0) != "ACTIVE" {
                let (code, out, err) = pair.amgr(1, &["switch"]);
                if code != 0 {
                    bail!("switching back: {out}{err}");
                }
                pair.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(10))?;
            }
            eprintln!("{kind}: {gap} ms");
        }
        table.push((kind, gaps, outside_total));
    }
    println!("service gap (ms) over {runs} runs, a new request every 50 ms:");
    println!(
        "{:<20} {:>6} {:>6} {:>6}  failures outside the gap",
        "failover", "min", "median", "max"
    );
    for (kind, mut gaps, outside) in table {
        let (min, median, max) = min_median_max(&mut gaps);
        println!("{kind:<20} {min:>6} {median:>6} {max:>6}  {outside}");
    }
    Ok(())
}

/// What one wrk run of new connections cost.
struct LoadRun {
    flows: f64,
    rate: f64,
    active_cpu_s: f64,
    standby_cpu_s: Option<f64>,
    change_bytes: Option<f64>,
    change_records: Option<f64>,
    lags_ms: Vec<u64>,
}

fn repl_figure(p: &Pair, i: usize, key: &str) -> f64 {
    p.slbd_status(i)
        .and_then(|s| s["replication"][key].as_f64())
        .unwrap_or(0.0)
}

/// Bytes node `i` sent for changes and snapshots: its replication bytes less its keepalives
/// (each a bare header and MAC).
fn change_bytes_sent(p: &Pair, i: usize) -> f64 {
    let keepalive = (slbd::wire::replication::HEADER_LEN + slbd::wire::replication::MAC_LEN) as f64;
    repl_figure(p, i, "bytes_sent") - keepalive * repl_figure(p, i, "keepalives_sent")
}

/// The benchmark's new-connection load (wrk, 2 threads, 50 connections, `Connection: close`)
/// for `secs` against the pair's VIP, with or without a STANDBY receiving the flows.
fn new_connection_load(p: &Pair, secs: u64, with_standby: bool) -> Result<LoadRun> {
    let active = p.slbd_pid(0).context("node 1's slbd")?;
    let standby = if with_standby {
        Some(p.slbd_pid(1).context("node 2's slbd")?)
    } else {
        None
    };
    let bytes0 = change_bytes_sent(p, 0);
    let records0 = repl_figure(p, 0, "records_sent");
    let cpu0 = (process_cpu_secs(active), standby.map(process_cpu_secs));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = with_standby.then(|| {
        let stop = stop.clone();
        let sock = p.nodes[1].slbd_socket();
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(st) = slbd::ctl::client::call(
                    &sock,
                    &slbd::ctl::proto::Command::Status,
                    Duration::from_secs(1),
                ) {
                    if let Some(l) = st["replication"]["lag_ms"].as_u64() {
                        lags.push(l);
                    }
                }
            }
            lags
        })
    });
    let w = wrk(
        &p.lab,
        &[
            "-t2",
            "-c50",
            &format!("-d{secs}s"),
            "-H",
            "Connection: close",
            &format!("http://{VIP}/"),
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let w = w?;
    // Let the last batch go out before counting.
    std::thread::sleep(Duration::from_millis(200));
    let lags_ms = sampler
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    Ok(LoadRun {
        flows: w.requests,
        rate: w.rps,
        active_cpu_s: process_cpu_secs(active) - cpu0.0,
        standby_cpu_s: standby
            .zip(cpu0.1)
            .map(|(pid, c)| process_cpu_secs(pid) - c),
        change_bytes: with_standby.then(|| change_bytes_sent(p, 0) - bytes0),
        change_records: with_standby.then(|| repl_figure(p, 0, "records_sent") - records0),
        lags_ms,
    })
}

/// Flow replication's cost under the benchmark's new-connection load, interleaved rounds
/// with and without a STANDBY attached: bytes on the wire per new flow, the ACTIVE's slbd CPU
/// per 10 k new flows/s against the same load without replication (the anchor), the
/// STANDBY's, and the STANDBY's lag sampled every 100 ms.
fn replication_cost(rounds: usize) -> Result<()> {
    let mut p = Pair::new(PairOptions::default()).context("building the pair's lab")?;
    p.start_both()?;
    p.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    let secs = 5;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        p.wait_takeover_ready(1, 0, Duration::from_secs(15))?;
        let r = new_connection_load(&p, secs, true)?;
        eprintln!("round {}: with a standby {:.0} flows/s", round + 1, r.rate);
        with.push(r);
        // No STANDBY: node 2 stopped; node 1 stays ACTIVE with nobody to replicate to.
        p.kill(1);
        std::thread::sleep(Duration::from_millis(800));
        let r = new_connection_load(&p, secs, false)?;
        eprintln!("round {}: alone {:.0} flows/s", round + 1, r.rate);
        without.push(r);
        p.start(1)?;
        p.wait_states(["ACTIVE", "STANDBY"], Duration::from_secs(15))?;
    }
    let per10k = |cpu: f64, flows: f64| cpu / flows * 10_000.0;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let a_with = median(
        with.iter()
            .map(|r| per10k(r.active_cpu_s, r.flows))
            .collect(),
    );
    let a_without = median(
        without
            .iter()
            .map(|r| per10k(r.active_cpu_s, r.flows))
            .collect(),
    );
    let s_with = median(
        with.iter()
            .map(|r| per10k(r.standby_cpu_s.unwrap_or(0.0), r.flows))
            .collect(),
    );
    let bytes = median(
        with.iter()
            .map(|r| r.change_bytes.unwrap_or(0.0) / r.flows)
            .collect(),
    );
    let records = median(
        with.iter()
            .map(|r| r.change_records.unwrap_or(0.0) / r.flows)
            .collect(),
    );
    let mut lags: Vec<u64> = with.iter().flat_map(|r| r.lags_ms.clone()).collect();
    lags.sort_unstable();
    println!("flow replication under the benchmark's new-connection load (wrk -t2 -c50, Connection: close, {secs} s), {rounds} rounds, medians:");
    println!(
        "  new flows/s                 with a standby {:>8.0}   alone {:>8.0}   ratio {:.2}",
        median(with.iter().map(|r| r.rate).collect()),
        median(without.iter().map(|r| r.rate).collect()),
        median(with.iter().map(|r| r.rate).collect())
            / median(without.iter().map(|r| r.rate).collect())
    );
    println!(
        "  ACTIVE slbd CPU per 10k new flows/s (cores)   with {a_with:.3}   alone {a_without:.3}   ratio {:.2}   replication {:+.3}",
        a_with / a_without,
        a_with - a_without
    );
    println!("  STANDBY slbd CPU per 10k new flows/s (cores)  {s_with:.3}");
    println!("  on the wire per new flow    {bytes:.1} bytes, {records:.2} records (ends follow when flows expire: 10 bytes each)");
    if !lags.is_empty() {
        println!(
            "  STANDBY lag (send to apply, {} samples)  median {} ms, p99 {} ms, max {} ms",
            lags.len(),
            lags[lags.len() / 2],
            lags[(lags.len() * 99 / 100).min(lags.len() - 1)],
            lags[lags.len() - 1]
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    clean_up_on_signal();
    let cmd = std::env::args().nth(1).unwrap_or_default();
    if !nix::unistd::geteuid().is_root() {
        bail!("slb-lab builds network namespaces and needs root");
    }
    match cmd.as_str() {
        "demo" => pair_demo(),
        "demo-single" => demo(),
        "failover" => failover_runs(
            std::env::args()
                .nth(2)
                .map_or(Ok(5), |n| n.parse())
                .context("slb-lab failover N: N is a number of runs")?,
        ),
        "switches" => {
            let arg = |i: usize| std::env::args().nth(i);
            let runs = arg(2).map_or(Ok(20), |n| n.parse());
            let every = arg(3).map_or(Ok(20), |n| n.parse());
            let mode = match arg(4).as_deref() {
                None | Some("packet") => "packet",
                Some("offload") => "offload",
                Some(m) => bail!("slb-lab switches: mode {m:?} is packet or offload"),
            };
            switch_losses(
                runs.context("slb-lab switches N: N is a number of switches")?,
                Duration::from_millis(every.context("slb-lab switches N EVERY_MS: a number")?),
                mode,
            )
        }
        "isolated" => {
            let arg = |i: usize| std::env::args().nth(i);
            let runs = arg(2).map_or(Ok(5), |n| n.parse());
            let hold = arg(3).map_or(Ok(3000), |n| n.parse());
            isolated_standby(
                runs.context("slb-lab isolated N: N is a number of runs")?,
                Duration::from_millis(hold.context("slb-lab isolated N HOLD_MS: a number")?),
            )
        }
        "bench-bulk" => bench_bulk(),
        "replication" => replication_cost(
            std::env::args()
                .nth(2)
                .map_or(Ok(3), |n| n.parse())
                .context("slb-lab replication N: N is a number of rounds")?,
        ),
        "spread" => spread(),
        "dying" => dying_runs(
            std::env::args()
                .nth(2)
                .map_or(Ok(5), |n| n.parse())
                .context("slb-lab dying N: N is a number of runs")?,
        ),
        _ => bail!(
            "usage: slb-lab demo | demo-single | failover [RUNS] | switches [N] [EVERY_MS] [packet|offload] | isolated [N] [HOLD_MS] | bench-bulk | spread | replication [ROUNDS] | dying [RUNS]"
        ),
    }
}

/// `slb-lab dying N`: with the shipped health-check defaults, N runs of each way a server
/// dies in each mode (a request every 50 ms, five servers), then the probe traffic a server
/// receives from the checks alone.
fn dying_runs(runs: usize) -> Result<()> {
    use slb_tests::dying::{probe_traffic, run, Death};
    println!("a new request every 50 ms to five real servers; s3 dies; shipped health defaults");
    for death in [Death::ProcessKilled, Death::LinkCut] {
        for mode in ["packet", "offload"] {
            for k in 1..=runs {
                let d = run(mode, death)?;
                println!("{} ({mode}) run {k}: {}", death.name(), d.summary());
            }
        }
    }
    let (pps, bps) = probe_traffic(10)?;
    println!(
        "probe traffic per server, no client traffic, 10 s: {pps:.1} packets/s, {bps:.0} bytes/s"
    );
    Ok(())
}

fn demo() -> Result<()> {
    let lab = Lab::new(3).context("building the lab")?;
    println!(
        "lab {}: client {CLIENT}, balancer VIP {VIP}, real servers 172.16.0.2-4",
        lab.id
    );
    let slbd = lab.start_slbd(&lab.config(3));
    println!("slbd is balancing tcp/80 -> :{SERVER_HTTP_PORT} and udp/53 -> :{SERVER_UDP_PORT} (ROUND_ROBIN)\n");
    let t = Duration::from_secs(3);
    in_ns(&lab.client(), || -> Result<()> {
        for i in 1..=9 {
            let body = http_get(CLIENT, SocketAddrV4::new(VIP, 80), "/", t)?;
            println!(
                "HTTP request {i} to {VIP}:80 answered by {}",
                server_name(&body)
            );
        }
        for i in 1..=3 {
            let (answer, from) = udp_ask(
                CLIENT,
                SocketAddrV4::new(VIP, 53),
                format!("ping {i}").as_bytes(),
                t,
            )?;
            println!(
                "UDP datagram {i} to {VIP}:53 answered by {} (reply from {from})",
                String::from_utf8_lossy(&answer)
                    .split(' ')
                    .next()
                    .unwrap_or("")
            );
        }
        Ok(())
    })?;
    let (_, status, _) = lab.slbctl(&slbd, &["--status"]);
    println!("\n$ slbctl --status\n{status}");
    slbd.signal(nix::sys::signal::Signal::SIGTERM);
    let mut slbd = slbd;
    slbd.wait(Duration::from_secs(5));
    println!(
        "\nslbd stopped; nftables tables left in the balancer: {:?}",
        lab.nft_tables().trim()
    );
    println!("\nslbd's log:\n{}", slbd.log_text());
    drop(lab);
    println!("lab removed");
    Ok(())
}

const BULK: usize = 2_000_000_000;

fn download(lab: &Lab, to: SocketAddrV4) -> Result<f64> {
    in_ns(&lab.client(), || {
        let started = Instant::now();
        let body = http_get(
            CLIENT,
            to,
            &format!("/bytes/{BULK}"),
            Duration::from_secs(120),
        )?;
        if body.len() != BULK {
            bail!("short download: {} bytes", body.len());
        }
        Ok(BULK as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
    })
}

fn bench_bulk() -> Result<()> {
    let lab = Lab::new(1)?;
    let mut route = Vec::new();
    let mut slb = Vec::new();
    for round in 1..=3 {
        // Route only: the gateway address by hand, no slbd; the client reaches the server
        // directly through the balancer namespace.
        let b = lab.balancer();
        lab.exec(&b, &["ip", "addr", "add", "172.16.0.1/24", "dev", "br0"])?;
        lab.exec(
            &lab.client(),
            &["ip", "route", "replace", "172.16.0.0/24", "via", "10.0.0.1"],
        )?;
        route.push(download(
            &lab,
            SocketAddrV4::new(server_ip(0), SERVER_HTTP_PORT),
        )?);
        lab.exec(&b, &["ip", "addr", "del", "172.16.0.1/24", "dev", "br0"])?;
        let mut slbd = lab.start_slbd(&lab.config(1));
        slb.push(download(&lab, SocketAddrV4::new(VIP, 80))?);
        slbd.signal(nix::sys::signal::Signal::SIGTERM);
        slbd.wait(Duration::from_secs(5));
        println!(
            "round {round}: route {:.2} Gbit/s, slbd {:.2} Gbit/s",
            route[round - 1],
            slb[round - 1]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (r, s) = (median(&mut route), median(&mut slb));
    println!(
        "\nsingle TCP stream, {} MB download, median of 3 interleaved rounds:",
        BULK / 1_000_000
    );
    println!("  route only (no slbd): {r:.2} Gbit/s");
    println!(
        "  through slbd (NAT):   {s:.2} Gbit/s  ({:.2} x route)",
        s / r
    );
    Ok(())
}

fn spread() -> Result<()> {
    const SERVERS: usize = 14;
    const CLIENTS: u8 = 50;
    let lab = Lab::new(SERVERS)?;
    let clients: Vec<Ipv4Addr> = (0..CLIENTS)
        .map(|i| Ipv4Addr::new(10, 0, 0, 10 + i))
        .collect();
    for c in &clients {
        lab.exec(
            &lab.client(),
            &["ip", "addr", "add", &format!("{c}/24"), "dev", "eth0"],
        )?;
    }
    println!("{SERVERS} real servers, {CLIENTS} client addresses x 4 new connections each, persistence 60 s\n");
    println!(
        "{:<18} {:>22} {:>22}",
        "algorithm", "clients/server min-max", "flows/server min-max"
    );
    for algorithm in [
        "ROUND_ROBIN",
        "RATIO",
        "RANDOM",
        "LEAST_CONNECTIONS",
        "LOWER_LATENCY",
    ] {
        let mut config = lab.config(SERVERS);
        config["algorithm"] = algorithm.into();
        config["persistence_timeout"] = 60.into();
        config["services"][0]["health"] = serde_json::json!({"interval_ms": 200});
        let mut slbd = lab.start_slbd(&config);
        std::thread::sleep(Duration::from_millis(700));
        let per_server = in_ns(&lab.client(), || -> Result<Vec<(String, Ipv4Addr)>> {
            let mut got = Vec::new();
            for c in &clients {
                for _ in 0..4 {
                    let body =
                        http_get(*c, SocketAddrV4::new(VIP, 80), "/", Duration::from_secs(3))?;
                    got.push((server_name(&body), *c));
                }
            }
            Ok(got)
        })?;
        let mut flows = std::collections::BTreeMap::new();
        let mut clients_of: std::collections::BTreeMap<
            String,
            std::collections::BTreeSet<Ipv4Addr>,
        > = Default::default();
        for i in 1..=SERVERS {
            flows.insert(format!("s{i}"), 0usize);
            clients_of.insert(format!("s{i}"), Default::default());
        }
        for (s, c) in per_server {
            *flows.entry(s.clone()).or_default() += 1;
            clients_of.entry(s).or_default().insert(c);
        }
        let range = |v: Vec<usize>| {
            format!(
                "{}-{}",
                v.iter().min().unwrap_or(&0),
                v.iter().max().unwrap_or(&0)
            )
        };
        println!(
            "{algorithm:<18} {:>22} {:>22}",
            range(clients_of.values().map(|s| s.len()).collect()),
            range(flows.values().copied().collect())
        );
        slbd.signal(nix::sys::signal::Signal::SIGTERM);
        slbd.wait(Duration::from_secs(5));
    }
    Ok(())
}
