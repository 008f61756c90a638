//! The cluster lab's upstream router: a namespace in front of the balancers that speaks BGP
//! (BIRD 2) to a BIRD in each of them, as a cluster-mode balancer's router does, and spreads
//! the VIP's traffic over the balancers announcing it (one multipath route, ECMP).
//!
//! ```text
//!  router {id}r, AS 65000                          balancers[k], AS 65001
//!  rbr 192.168.77.1/24 ── rb{k} ══ veth ══ bgp0 192.168.77.(10+k)/24
//!  main: VIP/32 nexthop via .10, via .11, ...       table T: VIP/32 dev slb-vip (slbd's)
//! ```
//! Each balancer's BIRD runs the configuration `scripts/slb-bird-config` prints, so CI
//! exercises what a real balancer gets. Side effects: the router namespace, its bridge and the
//! veths (`ip`), the router's sysctls, and one BIRD per namespace (a lab helper, killed with
//! the lab) whose configuration, control socket, pid file and log are in the lab's directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{ip, Lab};

/// The router's AS and the balancers' (one AS for all of them, so their paths are equal and
/// the router merges them into one multipath route).
pub const ROUTER_AS: u32 = 65000;
pub const BALANCER_AS: u32 = 65001;
/// The router's address on its bridge, every balancer's BGP neighbor.
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// BFD on both sides: a silent BIRD is down after 3 x 50 ms.
const BFD_INTERVAL_MS: u32 = 50;
const BFD_MULTIPLIER: u32 = 3;
/// How long BIRD gets to bring every session up.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// A router namespace speaking BGP (BIRD) to balancers, in front of them.
pub struct Bgp {
    /// The router's namespace.
    pub router: String,
    /// The balancers' namespaces, in the order of [`Bgp::balancer_addr`].
    pub balancers: Vec<String>,
    pub vip: Ipv4Addr,
    router_bird: Bird,
    balancer_birds: Vec<Bird>,
}

impl Bgp {
    /// Adds namespace `{lab.id}r` with a bridge `rbr` at 192.168.77.1/24 (ip_forward on,
    /// ECMP on the 5-tuple, so one client's connections spread), and for each balancer namespace `balancers[k]` a veth `bgp0` in it
    /// at 192.168.77.(10+k)/24 whose peer end is enslaved to `rbr`. Runs BIRD in the router
    /// (one `protocol bgp` per balancer, BFD, the merged routes exported to the main table)
    /// and in each balancer, with the configuration `scripts/slb-bird-config` prints for
    /// kernel table `table`. Waits until every BGP session is Established, or fails with the
    /// BIRD logs after 15 s.
    pub fn in_front_of(
        lab: &mut Lab,
        balancers: &[String],
        vip: Ipv4Addr,
        table: u32,
    ) -> Result<Bgp> {
        Bgp::with_room(lab, balancers, balancers.len(), vip, table)
    }

    /// [`Bgp::in_front_of`] with a router configured for `room` balancers, so that more can
    /// [`Bgp::join`] later (their sessions wait, Active, until then).
    pub fn with_room(
        lab: &mut Lab,
        balancers: &[String],
        room: usize,
        vip: Ipv4Addr,
        table: u32,
    ) -> Result<Bgp> {
        let router = lab.add_namespace("r")?;
        ip(&["-n", &router, "link", "add", "rbr", "type", "bridge"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{ROUTER_ADDR}/24"),
            "dev",
            "rbr",
        ])?;
        ip(&["-n", &router, "link", "set", "rbr", "up"])?;
        lab.sysctl(&router, "net.ipv4.ip_forward", "1")?;
        // ECMP on the 5-tuple, read from the headers as a router box does. Policy 1 would
        // take a hash the skb already carries, and across a veth that is the sending TCP
        // socket's, which it changes for a RST or a retransmission (sk_rethink_txhash): a
        // connection's last segment then reaches another balancer. Policy 3 always dissects.
        lab.sysctl(&router, "net.ipv4.fib_multipath_hash_policy", "3")?;
        // src 0x01 | dst 0x02 | protocol 0x04 | src port 0x10 | dst port 0x20.
        lab.sysctl(&router, "net.ipv4.fib_multipath_hash_fields", "0x0037")?;
        let router_bird = Bird::new(lab, &router, "router");
        router_bird.start(lab, &router_config(&router_bird, room.max(balancers.len())))?;
        let mut bgp = Bgp {
            router,
            balancers: Vec::new(),
            vip,
            router_bird,
            balancer_birds: Vec::new(),
        };
        for ns in balancers {
            bgp.start_balancer(lab, ns, table)?;
        }
        bgp.wait_established()?;
        Ok(bgp)
    }

    /// Wires one more balancer namespace to the router and starts its BIRD; waits until its
    /// session is Established. The router must have room for it ([`Bgp::with_room`]).
    pub fn join(&mut self, lab: &Lab, ns: &str, table: u32) -> Result<()> {
        self.start_balancer(lab, ns, table)?;
        self.wait_established()
    }

    fn start_balancer(&mut self, lab: &Lab, ns: &str, table: u32) -> Result<()> {
        let k = self.balancers.len();
        wire(lab, &self.router, ns, k)?;
        let bird = Bird::new(lab, ns, &format!("balancer{k}"));
        bird.start(
            lab,
            &balancer_config(&bird, Bgp::balancer_addr(k), self.vip, table)?,
        )?;
        self.balancers.push(ns.to_string());
        self.balancer_birds.push(bird);
        Ok(())
    }

    /// Wires `ns` into the router's bridge as a real server at `addr`/24 (eth0), the router
    /// its default gateway, so it answers clients through the router, not a balancer.
    pub fn add_server(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        plug(&self.router, ns, "eth0", port, addr)?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_ADDR.to_string(),
        ])
    }

    /// The next hops the router's main table holds for vip/32 right now (one route, or one
    /// multipath route's `nexthops`), sorted.
    ///
    /// `_lab` is not needed: `ip -n` enters the namespace itself, in about 2 ms, half the time
    /// of [`Lab::exec`]'s `ip netns exec`; that is what [`Bgp::wait_for`] resolves.
    pub fn next_hops(&self, _lab: &Lab) -> Vec<Ipv4Addr> {
        let out = Command::new("ip")
            .args(["-n", &self.router, "-j", "route", "show"])
            .arg(format!("{}/32", self.vip))
            .output()
            .expect("ip route show in the router");
        assert!(
            out.status.success(),
            "ip route show in {}: {}",
            self.router,
            String::from_utf8_lossy(&out.stderr)
        );
        let routes: Value = serde_json::from_slice(&out.stdout).expect("ip -j route is JSON");
        let mut hops: Vec<Ipv4Addr> = routes
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| match r["nexthops"].as_array() {
                Some(hops) => hops.iter().map(|h| h["gateway"].clone()).collect(),
                None => vec![r["gateway"].clone()],
            })
            .filter_map(|g| g.as_str().and_then(|g| g.parse().ok()))
            .collect();
        hops.sort();
        hops
    }

    /// Polls [`Bgp::next_hops`] every millisecond (each look takes about 2 ms more) until it
    /// equals `expected`, in any order: the time that took, or, after `timeout`, what the
    /// router held instead, with the BIRD logs.
    pub fn wait_for(
        &self,
        lab: &Lab,
        expected: &[Ipv4Addr],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let mut expected = expected.to_vec();
        expected.sort();
        let start = Instant::now();
        loop {
            let seen = self.next_hops(lab);
            if seen == expected {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "after {timeout:?} the router's next hops for {}/32 are {seen:?}, not \
                     {expected:?}\n{}",
                    self.vip,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every BIRD log of this Bgp (the router's first), each under a header, for failure
    /// messages.
    pub fn logs(&self) -> String {
        std::iter::once(&self.router_bird)
            .chain(&self.balancer_birds)
            .map(|b| {
                let text = std::fs::read_to_string(&b.log)
                    .unwrap_or_else(|e| format!("(unreadable: {e})\n"));
                format!("--- BIRD of {} ({}) ---\n{text}", b.name, b.log.display())
            })
            .collect()
    }

    /// Balancer `k`'s BIRD control socket (slbd's `announce.bird_socket`).
    pub fn balancer_socket(&self, k: usize) -> &Path {
        &self.balancer_birds[k].socket
    }

    /// The address balancer `k` has on `bgp0`, its BGP next hop at the router.
    pub fn balancer_addr(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            192,
            168,
            77,
            10 + u8::try_from(k).expect("at most 245 balancers"),
        )
    }

    /// Freezes balancer `k`'s BIRD (SIGSTOP): its sessions stay open but fall silent.
    pub fn freeze(&self, k: usize) {
        self.balancer_birds[k].signal(Signal::SIGSTOP);
    }

    /// Thaws balancer `k`'s BIRD (SIGCONT).
    pub fn thaw(&self, k: usize) {
        self.balancer_birds[k].signal(Signal::SIGCONT);
    }

    /// Kills balancer `k`'s BIRD (SIGKILL): the kernel closes its sessions.
    pub fn kill(&self, k: usize) {
        self.balancer_birds[k].signal(Signal::SIGKILL);
    }

    /// Waits until every BIRD's BGP sessions are all Established.
    fn wait_established(&self) -> Result<()> {
        let deadline = Instant::now() + ESTABLISH_TIMEOUT;
        loop {
            let mut waiting = Vec::new();
            let joined: Vec<String> = (0..self.balancers.len())
                .map(|k| format!("lb{k}"))
                .collect();
            for bird in std::iter::once(&self.router_bird).chain(&self.balancer_birds) {
                match bird.sessions() {
                    Ok(s) if s.is_empty() => waiting.push(format!("{}: no BGP session", bird.name)),
                    Ok(s) => waiting.extend(
                        s.into_iter()
                            // The router's sessions to balancers yet to join wait.
                            .filter(|(name, _)| !name.starts_with("lb") || joined.contains(name))
                            .filter(|(_, row)| !row.split(' ').any(|w| w == "Established"))
                            .map(|(name, row)| format!("{} {name}: {row}", bird.name)),
                    ),
                    Err(e) => waiting.push(format!("{}: {e:#}", bird.name)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "BGP not Established after {ESTABLISH_TIMEOUT:?}: {}\n{}",
                    waiting.join("; "),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A veth from balancer `k`'s namespace `ns` (`bgp0`) into the router's bridge.
fn wire(lab: &Lab, router: &str, ns: &str, k: usize) -> Result<()> {
    plug(router, ns, "bgp0", &format!("rb{k}"), Bgp::balancer_addr(k))?;
    // The balancer answers nothing itself; what it must reach (its servers' health checks,
    // the router) is on the bridge. Its replies to clients, if any, go through the router.
    lab.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
    lab.sysctl(ns, "net.ipv4.conf.bgp0.rp_filter", "0")?;
    Ok(())
}

/// A veth from `ns`'s `dev`, up at `addr`/24, to the router's bridge, whose port is `port`.
fn plug(router: &str, ns: &str, dev: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
    ip(&[
        "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", port, "netns", router,
    ])?;
    ip(&["-n", router, "link", "set", port, "master", "rbr", "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

/// The router's bird.conf: a session per balancer, importing what it announces, and the
/// merged best routes exported to the main table.
fn router_config(bird: &Bird, balancers: usize) -> String {
    let sessions: String = (0..balancers)
        .map(|k| {
            format!(
                "
protocol bgp lb{k} {{
    local as {ROUTER_AS};
    neighbor {} as {BALANCER_AS};
    ipv4 {{
        import all;
        export none;
    }};
    bfd on;
    hold time 3;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 5;
}}
",
                Bgp::balancer_addr(k)
            )
        })
        .collect();
    format!(
        "router id {ROUTER_ADDR};
log \"{}\" all;
debug protocols {{ states, events }};

protocol device {{
    scan time 10;
}}

# Equal routes from several balancers become one multipath route (ECMP).
protocol kernel {{
    ipv4 {{
        import none;
        export all;
    }};
    merge paths on;
}}

protocol bfd {{
    interface \"*\" {{
        min rx interval {BFD_INTERVAL_MS} ms;
        min tx interval {BFD_INTERVAL_MS} ms;
        multiplier {BFD_MULTIPLIER};
    }};
}}
{sessions}",
        bird.log.display()
    )
}

/// A balancer's bird.conf, as `scripts/slb-bird-config` writes it.
fn balancer_config(bird: &Bird, addr: Ipv4Addr, vip: Ipv4Addr, table: u32) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slb-bird-config");
    let out = Command::new(&script)
        .args(["--vip", &vip.to_string(), "--table", &table.to_string()])
        .args(["--router-id", &addr.to_string()])
        .args(["--local-as", &BALANCER_AS.to_string()])
        .args(["--neighbor", &ROUTER_ADDR.to_string()])
        .args(["--neighbor-as", &ROUTER_AS.to_string()])
        .args(["--bfd-interval-ms", &BFD_INTERVAL_MS.to_string()])
        .args(["--bfd-multiplier", &BFD_MULTIPLIER.to_string()])
        .arg("--log")
        .arg(&bird.log)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "slb-bird-config for {}: {}",
            bird.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// One BIRD of the lab, its files named after it in the lab's directory. The process itself
/// is one of the lab's helpers, killed with the lab.
struct Bird {
    /// "router" or "balancerK", for the files and messages.
    name: String,
    ns: String,
    config: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Bird {
    fn new(lab: &Lab, ns: &str, name: &str) -> Bird {
        let file = |ext: &str| lab.dir().join(format!("bird-{name}.{ext}"));
        Bird {
            name: name.to_string(),
            ns: ns.to_string(),
            config: file("conf"),
            socket: file("ctl"),
            pid_file: file("pid"),
            log: file("log"),
        }
    }

    /// Writes `config`, has BIRD parse it (its stderr is the error: the lab's helpers have
    /// none) and starts it in the foreground in its namespace.
    fn start(&self, lab: &Lab, config: &str) -> Result<()> {
        std::fs::write(&self.config, config)
            .with_context(|| format!("writing {}", self.config.display()))?;
        let conf = self.config.to_string_lossy();
        let parsed = Command::new("bird")
            .args(["-p", "-c", &conf])
            .output()
            .context("running bird (Debian: apt-get install bird2)")?;
        if !parsed.status.success() {
            bail!(
                "bird -p refused {conf}: {}\n{config}",
                String::from_utf8_lossy(&parsed.stderr).trim()
            );
        }
        let (socket, pid) = (
            self.socket.to_string_lossy(),
            self.pid_file.to_string_lossy(),
        );
        lab.spawn(
            &self.ns,
            &["bird", "-f", "-c", &conf, "-s", &socket, "-P", &pid],
        )
        .with_context(|| format!("starting the BIRD of {}", self.name))
    }

    /// Each BGP protocol's name and the rest of its row in `birdc show protocols`: state,
    /// since and info ("up 18:40:44.460 Established", "start 18:40:43.676 Active Socket:
    /// Connection refused", ...).
    fn sessions(&self) -> Result<Vec<(String, String)>> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(["show", "protocols"])
            .output()
            .context("running birdc")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("BIRD") {
            bail!(
                "birdc: {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // Name Proto Table State Since Info
        Ok(text
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.get(1) == Some(&"BGP")).then(|| {
                    (
                        cols[0].to_string(),
                        cols.get(3..).unwrap_or_default().join(" "),
                    )
                })
            })
            .collect())
    }

    /// Sends `sig` to the process named in the pid file.
    fn signal(&self, sig: Signal) {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the BIRD of {} has no pid in {}",
                    self.name,
                    self.pid_file.display()
                )
            });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("{sig} to the BIRD of {} (pid {pid}): {e}", self.name));
    }
}
