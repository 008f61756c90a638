//! MAGLEV microbenchmark: the table's build time, a new flow's lookup cost (the keyed hash of
//! its tuple and the slot read), and the disruption when one server leaves, each beside the
//! anchor measured in the same run: `hash mod N`, what a balancer without a table does (the
//! kernel-only cluster's `jhash ... mod N`). Pure computation, no privileges:
//!
//! ```text
//! cargo run --release -p slbd --example maglev_bench [ROUNDS]
//! ```
//! Goals (issue 22): lookup ≤ 50 ns, build ≤ 5 ms at M = 65,537 with 100 servers, disruption
//! within 1 % of the ideal 1/N.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use slbd::core::sched::maglev::{server_id, HashKey, Member, Settings, Table, DEFAULT_TABLE_SIZE};

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: server_id(SocketAddrV4::new(
                Ipv4Addr::new(172, 16, (i / 250) as u8, (i % 250) as u8 + 2),
                8000,
            )),
            weight: 1,
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn clients(n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| {
            SocketAddrV4::new(
                Ipv4Addr::from(0x0a00_0000 + (i as u32).wrapping_mul(2_654_435_761) % 0x00ff_ffff),
                1024 + (i % 60_000) as u16,
            )
        })
        .collect()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(Ok(21), |s| s.parse())
        .expect("ROUNDS is a number");
    let key = HashKey::default();
    let m = DEFAULT_TABLE_SIZE;
    println!("MAGLEV, M = {m}, {rounds} rounds, medians");
    println!();
    println!("| servers | build | per slot |");
    println!("|---|---|---|");
    for n in [10usize, 100, 1000] {
        let ms = members(n);
        let times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                black_box(Table::build(key, black_box(&ms), m));
                t.elapsed()
            })
            .collect();
        let b = median(times);
        println!(
            "| {n} | {:.2} ms | {:.1} ns |",
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e9 / f64::from(m)
        );
    }

    // Lookup: a new flow's hash and slot, against hash mod N over the same hashes.
    let settings = Settings::default();
    let table = Table::build(key, &members(100), m);
    let flows = clients(1 << 16);
    let per = |f: &dyn Fn(SocketAddrV4) -> usize| {
        let times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                let mut acc = 0usize;
                for &c in &flows {
                    acc = acc.wrapping_add(f(black_box(c)));
                }
                black_box(acc);
                t.elapsed() / flows.len() as u32
            })
            .collect();
        median(times)
    };
    let maglev = per(&|c| {
        table
            .lookup(settings.flow_hash(6, c, 80))
            .expect("a full table")
    });
    let modulo = per(&|c| (settings.flow_hash(6, c, 80) % 100) as usize);
    println!();
    println!("| lookup, 100 servers | per new flow | ratio |");
    println!("|---|---|---|");
    println!("| hash mod N (anchor) | {} ns | 1.00 |", modulo.as_nanos());
    println!(
        "| MAGLEV | {} ns | {:.2} |",
        maglev.as_nanos(),
        maglev.as_secs_f64() / modulo.as_secs_f64().max(1e-12)
    );

    // Disruption: one of N servers removed; the share of slots (MAGLEV) or of hashes
    // (mod N) whose server changes, against the ideal 1/N.
    println!();
    println!("| servers, one removed | ideal 1/N | MAGLEV moved | over ideal | hash mod N moved |");
    println!("|---|---|---|---|---|");
    for n in [5usize, 10, 100] {
        let all = members(n);
        let fewer = all[..n - 1].to_vec();
        let before = Table::build(key, &all, m);
        let after = Table::build(key, &fewer, m);
        let moved = (0..u64::from(m))
            .filter(|&h| {
                let a = all[before.lookup(h).expect("full")].id;
                let b = fewer[after.lookup(h).expect("full")].id;
                a != b
            })
            .count() as f64
            / f64::from(m);
        let hashes: Vec<u64> = flows
            .iter()
            .map(|&c| settings.flow_hash(6, c, 80))
            .collect();
        let modulo_moved = hashes
            .iter()
            .filter(|&&h| h % n as u64 != h % (n as u64 - 1))
            .count() as f64
            / hashes.len() as f64;
        let ideal = 1.0 / n as f64;
        println!(
            "| {n} | {:.2} % | {:.2} % | +{:.2} points | {:.1} % |",
            ideal * 100.0,
            moved * 100.0,
            (moved - ideal) * 100.0,
            modulo_moved * 100.0
        );
    }
}
