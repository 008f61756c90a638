//! The cluster lab: N balancers behind one ECMP router, as the issue's kernel-only anchor was
//! measured, with slbd in each balancer instead of fwmark rules.
//!
//! ```text
//!  client {id}c 10.0.0.5 ── cl0 10.0.0.1  router {id}r (BIRD, ECMP over the balancers)
//!                                          rbr 192.168.77.1/24 (one L2 for all below)
//!  balancers {id}bK: bgp0 192.168.77.(10+K), BIRD + slbd (MAGLEV, forwarding dr, announce)
//!  real servers {id}sI: eth0 192.168.77.(20+I), the VIP on lo (slb-dr-server), gateway .1
//! ```
//! A request reaches one balancer (the router's hash of the 5-tuple), which sends it
//! unchanged to the server its MAGLEV table names; the server answers the client through the
//! router. Every balancer builds the same table (same servers, same `hash_key`), so a flow
//! that moves to another balancer (one died, one joined) stays on its server.
//! Side effects: the lab's namespaces, BIRDs, slbds and servers (all removed with it).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cluster::Bgp;
use crate::{
    echo, hold_connection, http_get, in_ns, ip, vip, workspace_bin, Lab, Slbd, CLIENT, VIP,
};

/// The kernel table slbd keeps the VIP's route in, which BIRD learns.
pub const TABLE: u32 = 100;
/// The service's port, on the VIP and on every server (direct routing rewrites nothing).
pub const PORT: u16 = 80;
/// Shared by every balancer: the same key builds the same MAGLEV table.
pub const HASH_KEY: &str = "c1a55c1a55c1a55c1a55c1a55c1a5500";

/// A router, `n` balancers (room for more to join) and real servers, each balancer running
/// BIRD and slbd.
pub struct Cluster {
    pub lab: Lab,
    pub bgp: Bgp,
    /// Each balancer's slbd; None once killed.
    pub slbds: Vec<Option<Slbd>>,
    servers: usize,
}

impl Cluster {
    /// Builds the topology with `balancers` balancers (and room at the router for `room`),
    /// `servers` real servers, and starts every BIRD and slbd; returns once each balancer is
    /// the router's next hop.
    pub fn new(balancers: usize, servers: usize, room: usize) -> Result<Cluster> {
        let mut lab = Lab::empty()?;
        let client = lab.add_namespace("c")?;
        let names: Vec<String> = (0..balancers)
            .map(|k| lab.add_namespace(&format!("b{k}")))
            .collect::<Result<_>>()?;
        let bgp = Bgp::with_room(&mut lab, &names, room, VIP, TABLE)?;
        ip(&[
            "-n",
            &client,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "cl0",
            "netns",
            &bgp.router,
        ])?;
        ip(&[
            "-n",
            &bgp.router,
            "addr",
            "add",
            "10.0.0.1/24",
            "dev",
            "cl0",
        ])?;
        ip(&["-n", &bgp.router, "link", "set", "cl0", "up"])?;
        ip(&[
            "-n",
            &client,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &client, "link", "set", "eth0", "up"])?;
        // The VIP is in the client's own /24, but reached through the router.
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            "10.0.0.1",
        ])?;
        for i in 0..servers {
            let ns = lab.server(i);
            lab.add_ns(ns.clone())?;
            bgp.add_server(&ns, &format!("rs{i}"), server_addr(i))?;
            lab.direct_routing_server(&ns)?;
            lab.servers.push(None);
        }
        let mut c = Cluster {
            lab,
            bgp,
            slbds: Vec::new(),
            servers,
        };
        for i in 0..servers {
            c.start_server(i)?;
        }
        for k in 0..balancers {
            c.start_slbd(k)?;
        }
        c.wait_next_hops(&(0..balancers).collect::<Vec<_>>(), Duration::from_secs(10))?;
        Ok(c)
    }

    /// Starts real server `i`'s lab-server (HTTP on the service's port) and waits until it
    /// listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.lab.server(i)])
            .arg(workspace_bin("lab-server"))
            .args(["--name", &format!("s{}", i + 1)])
            .args(["--tcp", &format!("0.0.0.0:{PORT}")])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting lab-server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        self.lab.servers[i] = Some(child);
        if line.trim() != "ready" {
            bail!("lab-server s{} did not start", i + 1);
        }
        Ok(())
    }

    /// Balancer `k`'s configuration: one MAGLEV service in direct routing over every server,
    /// announced through table [`TABLE`].
    pub fn config(&self, k: usize) -> Value {
        let servers: Vec<Value> = (0..self.servers)
            .map(|i| format!("{}:{PORT}", server_addr(i)).into())
            .collect();
        json!({
            "address": VIP.to_string(),
            // The VIP need not answer ARP anywhere: the router routes it to the balancers.
            "address_dev": "lo",
            // An address of its own beside bgp0's, so slbd removing it never cuts BGP.
            "gateway": format!("192.168.77.{}", 100 + k),
            "gateway_dev": "bgp0",
            "cluster_network": "192.168.77.0/24",
            "hash_key": HASH_KEY,
            "announce": {"table": TABLE, "bird_socket": self.bgp.balancer_socket(k)},
            "services": [{
                "protocol": "tcp", "port": PORT, "algorithm": "MAGLEV", "forwarding": "dr",
                "health": {"interval_ms": 200, "timeout_ms": 150, "fall": 2, "rise": 2},
                "servers": servers,
            }],
        })
    }

    /// Starts balancer `k`'s slbd (again, after a kill) and waits until it balances.
    pub fn start_slbd(&mut self, k: usize) -> Result<()> {
        let ns = self.bgp.balancers[k].clone();
        self.lab.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        let config = self.config(k);
        let slbd = self.lab.start_slbd_in(
            &ns,
            &workspace_bin("slbd"),
            &format!("slb_conf-{k}.json"),
            &config,
        );
        if k < self.slbds.len() {
            self.slbds[k] = Some(slbd);
        } else {
            self.slbds.push(Some(slbd));
        }
        Ok(())
    }

    /// A fourth (or later) balancer: namespace, BGP session, slbd.
    pub fn join(&mut self) -> Result<usize> {
        let k = self.bgp.balancers.len();
        let ns = self.lab.add_namespace(&format!("b{k}"))?;
        self.bgp.join(&self.lab, &ns, TABLE)?;
        self.start_slbd(k)?;
        Ok(k)
    }

    /// Balancer `k`'s slbd.
    pub fn slbd(&self, k: usize) -> &Slbd {
        self.slbds[k].as_ref().expect("a running slbd")
    }

    /// `slbctl ARGS` against balancer `k`; its stdout, or a panic with its stderr.
    pub fn slbctl(&self, k: usize, args: &[&str]) -> String {
        let (code, out, err) = self.lab.slbctl(self.slbd(k), args);
        assert_eq!(code, 0, "slbctl {args:?} on balancer {k}: {err}");
        out
    }

    /// Balancer `k`'s `--status --json`.
    pub fn status(&self, k: usize) -> Value {
        serde_json::from_str(&self.slbctl(k, &["--status", "--json"])).expect("status JSON")
    }

    /// The server balancer `k`'s decision names for a new flow from CLIENT:`port`.
    pub fn explain(&self, k: usize, port: u16) -> String {
        let client = format!("{CLIENT}:{port}");
        let v: Value = serde_json::from_str(
            &self.slbctl(k, &["explain", &client, &format!("tcp/{PORT}"), "--json"]),
        )
        .expect("explain JSON");
        v["server"].as_str().unwrap_or("none").to_string()
    }

    /// Flows balancer `k` placed so far (its servers' new flows).
    pub fn placed(&self, k: usize) -> u64 {
        self.status(k)["services"][0]["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["new_flows"].as_u64().unwrap_or(0))
            .sum()
    }

    /// Waits until the router's next hops for the VIP are exactly balancers `ks`.
    pub fn wait_next_hops(&self, ks: &[usize], timeout: Duration) -> Result<Duration> {
        let hops: Vec<Ipv4Addr> = ks.iter().map(|&k| Bgp::balancer_addr(k)).collect();
        self.bgp
            .wait_for(&self.lab, &hops, timeout)
            .map_err(anyhow::Error::msg)
    }
}

/// The anchor's load: held connections pinged every 200 ms, and a new request every 50 ms,
/// from the client, while something happens to the cluster.
pub struct Load {
    stop: Arc<AtomicBool>,
    pinger: std::thread::JoinHandle<Vec<String>>,
    requester: std::thread::JoinHandle<(usize, Vec<String>)>,
    /// Each held connection's server, as it answered first.
    pub servers: Vec<String>,
}

/// What the load saw.
#[derive(Debug)]
pub struct Seen {
    pub requests: usize,
    /// New requests not answered within 1 s (the SYN's first retransmission), with why.
    pub failed: Vec<String>,
    pub held: usize,
    /// Each held connection's server.
    pub servers: Vec<String>,
    /// Held connections that stopped answering, or answered from another server, with why.
    pub broken: Vec<String>,
}

impl Load {
    /// Opens `held` connections through the VIP (each answered once) and starts both loops.
    pub fn start(client_ns: &str, held: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = client_ns.to_string();
        let flag = stop.clone();
        let pinger = std::thread::spawn(move || {
            in_ns(&ns, || {
                let conns: Vec<(TcpStream, String)> = (0..held)
                    .map(|i| {
                        let (s, server) = hold_connection();
                        let echoed = echo(&s, &format!("hello {i}"), Duration::from_secs(2))
                            .expect("a held connection answers");
                        assert_eq!(echoed, server);
                        (s, server)
                    })
                    .collect();
                tx.send(conns.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>())
                    .expect("the test waits");
                let mut broken: Vec<Option<String>> = vec![None; conns.len()];
                let mut round = 0;
                while !flag.load(Relaxed) {
                    round += 1;
                    for (i, (s, server)) in conns.iter().enumerate() {
                        if broken[i].is_some() {
                            continue;
                        }
                        match echo(s, &format!("round {round}"), Duration::from_secs(2)) {
                            Ok(got) if got == *server => {}
                            other => {
                                broken[i] = Some(format!(
                                    "connection {i} on {server}, round {round}: {other:?}"
                                ))
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                broken.into_iter().flatten().collect()
            })
        });
        let servers = rx.recv().expect("the held connections opened");
        let ns = client_ns.to_string();
        let flag = stop.clone();
        let requester = std::thread::spawn(move || {
            in_ns(&ns, || {
                let (mut n, mut failed) = (0, Vec::new());
                let started = Instant::now();
                while !flag.load(Relaxed) {
                    n += 1;
                    let at = started.elapsed();
                    if let Err(e) = http_get(CLIENT, vip(PORT), "/", Duration::from_secs(1)) {
                        failed.push(format!("request {n} at {at:?}: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (n, failed)
            })
        });
        Load {
            stop,
            pinger,
            requester,
            servers,
        }
    }

    /// Stops both loops (after one more round of pings) and says what they saw.
    pub fn stop(self) -> Seen {
        std::thread::sleep(Duration::from_millis(400));
        self.stop.store(true, Relaxed);
        let broken = self.pinger.join().expect("the pinger");
        let (requests, failed) = self.requester.join().expect("the requester");
        Seen {
            requests,
            failed,
            held: self.servers.len(),
            servers: self.servers,
            broken,
        }
    }
}

/// Real server `i`'s address on the router's bridge.
pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        192,
        168,
        77,
        20 + u8::try_from(i).expect("at most 80 servers"),
    )
}
