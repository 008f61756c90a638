//! Flow-table microbenchmark: bytes per flow and lookup time at 10 k, 100 k and 1 M flows.
//! `cargo run --release -p slbd --example flow_table`

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use slbd::core::flow::{FlowKey, FlowTable, Timeouts};
use slbd::core::net::Protocol;

fn key(i: u32) -> FlowKey {
    FlowKey {
        protocol: Protocol::Tcp,
        src: SocketAddrV4::new(
            Ipv4Addr::from(0x0a00_0000 + (i >> 10)),
            1024 + (i & 0x3ff) as u16,
        ),
        dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80),
    }
}

fn main() {
    let t = Timeouts {
        tcp: Duration::from_secs(900),
        tcp_closing: Duration::from_secs(30),
        tcp_syn: Duration::from_secs(5),
        udp: Duration::from_secs(60),
    };
    let server = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 80);
    println!(
        "{:>9} {:>12} {:>10} {:>14} {:>14}",
        "flows", "heap MiB", "bytes/flow", "insert ns/op", "lookup ns/op"
    );
    for n in [10_000u32, 100_000, 1_000_000] {
        let mut table = FlowTable::new(t, n);
        let started = Instant::now();
        for i in 0..n {
            table.insert(&key(i), server, 0, 0).unwrap();
        }
        let insert = started.elapsed().as_nanos() as f64 / f64::from(n);
        let lookups = 2_000_000u32;
        let started = Instant::now();
        for j in 0..lookups {
            let i = j.wrapping_mul(2_654_435_761) % n;
            black_box(table.lookup_request(&key(i), 0x10, 1));
        }
        let lookup = started.elapsed().as_nanos() as f64 / f64::from(lookups);
        let bytes = table.memory_bytes();
        println!(
            "{:>9} {:>12.1} {:>10} {:>14.0} {:>14.0}",
            n,
            bytes as f64 / (1 << 20) as f64,
            bytes / n as usize,
            insert,
            lookup
        );
    }
}
