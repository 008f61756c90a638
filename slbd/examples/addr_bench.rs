//! Address takeover microbenchmark: the time of `addr::add` then `addr::remove` of the two
//! addresses a takeover brings up (a /32 VIP and a /24 gateway address, both on DEV), many
//! times; prints the median and the 99th percentile per add+remove of both. Needs root; run it
//! in a throw-away network namespace so it touches no real interface:
//!
//! ```text
//! cargo build --release -p slbd --example addr_bench
//! ip netns add slbnl-bench
//! ip -n slbnl-bench link add veth0 type veth peer name veth1
//! ip -n slbnl-bench link set veth0 up && ip -n slbnl-bench link set veth1 up
//! ip netns exec slbnl-bench target/release/examples/addr_bench veth0 2000
//! ip netns del slbnl-bench
//! ```

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use slbd::shell::addr::{self, ManagedAddr};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dev = args
        .get(1)
        .ok_or("usage: addr_bench DEV [ITERATIONS]")?
        .clone();
    let iterations: usize = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let addrs = [
        ManagedAddr {
            dev: dev.clone(),
            ip: Ipv4Addr::new(10, 0, 0, 100),
            prefix: 32,
        },
        ManagedAddr {
            dev,
            ip: Ipv4Addr::new(172, 16, 0, 1),
            prefix: 24,
        },
    ];
    // Warm-up: first-touch costs (page faults, the kernel's first address on the device).
    for _ in 0..20 {
        addr::add(&addrs)?;
        addr::remove(&addrs)?;
    }
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        addr::add(&addrs)?;
        addr::remove(&addrs)?;
        times.push(t.elapsed());
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "add+remove of 2 addresses, {iterations} iterations: median {:.0} us, p99 {:.0} us \
         (min {:.0} us, max {:.0} us)",
        us(at(0.5)),
        us(at(0.99)),
        us(times[0]),
        us(times[times.len() - 1]),
    );
    Ok(())
}
