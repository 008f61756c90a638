//! Long-lived TCP connections through the pair's VIP, each echoing on its own real server:
//! opened before a failover or a split, counted after it. And which balancer the client and
//! the servers send to, pinned for a split (both nodes hold the VIP and the gateway then, and
//! ARP alone decides which one a packet reaches).

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::pair::Pair;
use crate::{echo, hold_connection_to, in_ns, ip};

/// Opens `n` held connections through the VIP; each has answered once.
pub fn hold(p: &Pair, n: usize) -> Vec<(TcpStream, String)> {
    hold_to(p, n, 80)
}

/// [`hold`] through the VIP's `port`.
pub fn hold_to(p: &Pair, n: usize, port: u16) -> Vec<(TcpStream, String)> {
    in_ns(&p.lab.client(), || {
        (0..n)
            .map(|i| {
                let (s, server) = hold_connection_to(crate::vip(port));
                let echoed = echo(&s, &format!("hello {i}"), Duration::from_secs(2))
                    .expect("the held connection answers");
                assert_eq!(echoed, server);
                (s, server)
            })
            .collect()
    })
}

/// How many held connections still reach their own server, both ways.
pub fn kept(p: &Pair, held: &[(TcpStream, String)], round: usize) -> usize {
    in_ns(&p.lab.client(), || {
        held.iter()
            .enumerate()
            .filter(|(i, (s, server))| {
                match echo(
                    s,
                    &format!("round {round} conn {i}"),
                    Duration::from_secs(3),
                ) {
                    Ok(got) if got == *server => true,
                    other => {
                        eprintln!("connection {i} on {server} lost in round {round}: {other:?}");
                        false
                    }
                }
            })
            .count()
    })
}

/// The MAC address of `dev` in namespace `ns`.
fn mac(p: &Pair, ns: &str, dev: &str) -> Result<String> {
    let out = p
        .lab
        .exec(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
    let mac = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if mac.is_empty() {
        bail!("no MAC for {dev} in {ns}");
    }
    Ok(mac)
}

/// Makes the client send to node `i` for the VIP and every real server send to node `i` for
/// the gateway (permanent neighbour entries); `None` removes the pins, so ARP decides again.
pub fn pin(p: &Pair, i: Option<usize>, servers: usize) -> Result<()> {
    let mut entries = vec![(p.lab.client(), crate::VIP.to_string(), "eth0", "eth0")];
    for k in 0..servers {
        entries.push((p.lab.server(k), "172.16.0.1".to_string(), "eth0", "eth1"));
    }
    for (ns, addr, dev, balancer_dev) in entries {
        match i {
            Some(i) => {
                let lladdr = mac(p, &p.nodes[i].ns, balancer_dev)?;
                ip(&[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &lladdr,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
            None => {
                let _ = ip(&["-n", &ns, "neigh", "del", &addr, "dev", dev]);
            }
        }
    }
    Ok(())
}
