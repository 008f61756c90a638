//! The write-back ceiling for the benchmark: queues every VIP packet and every reply from the
//! cluster network, and writes each one back unchanged, through the same queue socket slbd
//! uses. Run beside kernel NAT (which does the balancing), it measures the best any design that
//! rewrites every packet in user space can do on this machine.
//!
//! With `requests`, it queues only the packets to VIP and lets each go on as it came (no
//! payload in the verdict): the least any design costs that sees every request packet in user
//! space and leaves the replies to the kernel, as direct routing's packet mode does.
//!
//! `nfq-passthrough VIP CLUSTER_CIDR QUEUES [requests]` — installs its rules in the table
//! `ip slb` of the current network namespace, removes it on SIGTERM/SIGINT.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use slbd::core::net::Ipv4Net;
use slbd::core::ruleset::{Action, Match, QueueRange, Rule, Ruleset, REPLY_CHAIN, REQUEST_CHAIN};
use slbd::shell::nfqueue::socket::{Out, QueueSocket, RecvBatch, Setup, Verdicts};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let vip: std::net::Ipv4Addr = args.get(1).context("VIP")?.parse()?;
    let net: Ipv4Net = args
        .get(2)
        .context("CLUSTER_CIDR")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let count: u16 = args.get(3).context("QUEUES")?.parse()?;
    let requests_only = args.get(4).map(String::as_str) == Some("requests");
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;

    let q = QueueRange { first: 0, count };
    let setup = Setup {
        max_len: 8192,
        gso: true,
        rcvbuf: 64 << 20,
    };
    let sockets = (0..count)
        .map(|n| QueueSocket::open(n, setup))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut rules = vec![Rule {
        chain: REQUEST_CHAIN,
        matches: vec![Match::DaddrIs(vip)],
        actions: vec![Action::Queue(q)],
        comment: "passthrough request".into(),
    }];
    if !requests_only {
        rules.push(Rule {
            chain: REPLY_CHAIN,
            matches: vec![Match::SaddrIn(net), Match::DaddrNotIn(net)],
            actions: vec![Action::Queue(q)],
            comment: "passthrough reply".into(),
        });
    }
    let rules = Ruleset {
        rules,
        known_clients: None,
        dr_flows: None,
    };
    let backend = slbd::shell::nft::probe()?;
    slbd::shell::nft::apply(&rules, backend)?;
    for sock in sockets {
        std::thread::spawn(move || {
            let mut batch = RecvBatch::new(64);
            let mut verdicts = Verdicts::new(64);
            let mut msgs = Vec::with_capacity(64);
            loop {
                if sock.recv(&mut batch).is_err() {
                    continue;
                }
                msgs.clear();
                msgs.extend(batch.messages());
                for &(slot, m) in &msgs {
                    if let Some(p) = batch.packet(slot, &m) {
                        if requests_only {
                            verdicts.push(sock.num, &p, slot, Out::AcceptUnchanged);
                            continue;
                        }
                        // A packet written back leaves exactly as written: one that arrived
                        // with a partial checksum (and is not GSO) needs its full checksum,
                        // the least any design that writes packets back must do.
                        if !p.checksum_ready && !p.gso {
                            let buf = batch.payload_mut(slot, &p);
                            if let Ok(h) = slbd::core::packet::parse(buf) {
                                slbd::core::packet::complete_checksum(buf, &h);
                            }
                        }
                        verdicts.push(sock.num, &p, slot, Out::AcceptRewritten);
                    }
                }
                let _ = sock.send_verdicts(&mut verdicts, &batch);
            }
        });
    }
    println!("ready");
    signals.wait()?;
    slbd::shell::nft::remove()?;
    Ok(())
}
