//! A test helper that makes a real server slow to accept connections: in the server's own
//! network namespace it queues the TCP SYN-ACKs it sends from PORT and releases each after
//! DELAY_MS (other packets pass at once). The kernel here has no netem qdisc, so this is how
//! the lab gives LOWER_LATENCY a slow server; it uses slbd's queue socket and nft code.
//!
//! `nfq-delay PORT DELAY_MS QUEUE` — removes its table on SIGTERM/SIGINT.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use slbd::core::net::Protocol;
use slbd::core::ruleset::{Action, Match, QueueRange, Rule, Ruleset, REPLY_CHAIN};
use slbd::shell::nfqueue::socket::{Out, QueueSocket, RecvBatch, Setup, Verdicts};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).context("PORT")?.parse()?;
    let delay = Duration::from_millis(args.get(2).context("DELAY_MS")?.parse()?);
    let num: u16 = args.get(3).context("QUEUE")?.parse()?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;

    let sock = Arc::new(QueueSocket::open(
        num,
        Setup {
            max_len: 4096,
            gso: true,
            rcvbuf: 8 << 20,
        },
    )?);
    let rules = Ruleset {
        rules: vec![Rule {
            chain: REPLY_CHAIN,
            matches: vec![
                Match::L4Proto(Protocol::Tcp),
                Match::Sport(Protocol::Tcp, port),
            ],
            actions: vec![Action::Queue(QueueRange {
                first: num,
                count: 1,
            })],
            comment: "nfq-delay".into(),
        }],
        known_clients: None,
        dr_flows: None,
    };
    slbd::shell::nft::apply(&rules, slbd::shell::nft::probe()?)?;

    let (tx, rx) = mpsc::channel::<(Instant, slbd::wire::nfqueue::Packet)>();
    let releaser = sock.clone();
    std::thread::spawn(move || {
        let empty = RecvBatch::new(0);
        let mut v = Verdicts::new(1);
        // In arrival order, and every entry waits the same delay: a FIFO is enough.
        for (at, p) in rx {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            v.push(releaser.num, &p, 0, Out::AcceptUnchanged);
            let _ = releaser.send_verdicts(&mut v, &empty);
        }
    });
    std::thread::spawn(move || {
        let mut batch = RecvBatch::new(16);
        let mut v = Verdicts::new(16);
        let mut msgs = Vec::new();
        loop {
            if sock.recv(&mut batch).is_err() {
                continue;
            }
            msgs.clear();
            msgs.extend(batch.messages());
            for &(slot, m) in &msgs {
                let Some(p) = batch.packet(slot, &m) else {
                    continue;
                };
                let payload = &batch.payload_mut(slot, &p)[..];
                let syn_ack =
                    slbd::core::packet::parse(payload).is_ok_and(|h| h.flags & 0x12 == 0x12);
                if syn_ack {
                    let _ = tx.send((Instant::now() + delay, p));
                } else {
                    v.push(sock.num, &p, slot, Out::AcceptUnchanged);
                }
            }
            let _ = sock.send_verdicts(&mut v, &batch);
        }
    });
    println!("ready");
    signals.wait()?;
    slbd::shell::nft::remove()?;
    Ok(())
}
