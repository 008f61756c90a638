//! The two-balancer lab: two balancer namespaces sharing a client-side and a server-side
//! bridge, a dedicated heartbeat cable between them, three real servers and a client; each
//! balancer runs amgr (which runs slbd) and a real OpenSSH sshd with generated host keys, and
//! the pair syncs `slb_conf.json` over SSH with a generated user key.
//!
//! ```text
//!  client 10.0.0.5 ── brc ─┬─ b1 eth0 10.0.0.2 ─┐ hb0 192.168.100.1 ═══ hb0 192.168.100.2 ┌─ b2 eth0 10.0.0.3
//!                          └────────────────────┼──────────────────────────────────────┘
//!            VIP 10.0.0.100 on the ACTIVE's eth0│
//!  sI 172.16.0.(I+1) ── brs ─┬─ b1 eth1 172.16.0.252 ... b2 eth1 172.16.0.253
//!                    gateway 172.16.0.1 on the ACTIVE's eth1
//! ```
//! Heartbeat link 0 runs over the server-side network (172.16.0.252 ↔ .253), link 1 over the
//! dedicated cable; the peer command connection and SSH use the cable first.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{http_get, in_ns, ip, server_ip, server_name, vip, workspace_bin, Lab, CLIENT};

pub const HB_PORT: u16 = 7405;
const BALANCER_CLIENT_SIDE: [&str; 2] = ["10.0.0.2/24", "10.0.0.3/24"];
const BALANCER_SERVER_SIDE: [&str; 2] = ["172.16.0.252", "172.16.0.253"];
const BALANCER_CABLE: [&str; 2] = ["192.168.100.1", "192.168.100.2"];

/// Options for [`Pair::new`].
#[derive(Debug, Clone)]
pub struct PairOptions {
    pub servers: usize,
    /// Real servers in the initial configuration (the rest can be added later).
    pub configured: usize,
    pub sync_period_s: u64,
    /// amgr and slbd log JSON lines (`--log-format json`) instead of text.
    pub json_logs: bool,
    /// Client persistence on every service (seconds; 0: off).
    pub persistence_s: u64,
    /// Every service's data path: "packet" or "offload".
    pub mode: &'static str,
    /// The TCP service's forwarding: "nat", or "dr" (direct routing: the service moves to the
    /// servers' port, they hold the VIP on their loopback, and each balancer takes their
    /// answers from the VIP as the gateway).
    pub forwarding: &'static str,
    /// The isolation guard's witness addresses (amgr's `guard.witness`).
    pub witness: Vec<Ipv4Addr>,
}

impl Default for PairOptions {
    fn default() -> PairOptions {
        PairOptions {
            servers: 3,
            configured: 3,
            sync_period_s: 10,
            json_logs: false,
            persistence_s: 0,
            mode: "packet",
            forwarding: "nat",
            witness: Vec::new(),
        }
    }
}

pub struct Node {
    pub ns: String,
    pub dir: PathBuf,
    amgr: Option<Child>,
    sshd: Option<Child>,
    /// Seconds this node's wall clock is set off the machine's (libfaketime); 0: none.
    pub clock_offset_s: i64,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("amgr.sock")
    }
    pub fn slbd_socket(&self) -> PathBuf {
        self.dir.join("slbd.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("slb_conf.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("amgr.log")
    }
}

pub struct Pair {
    pub lab: Lab,
    pub nodes: [Node; 2],
    json_logs: bool,
}

/// The script that writes a pair node's configuration: the same one the Debian package
/// installs and the Vagrant provisioning runs.
pub fn node_config_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/slb-node-config"
    ))
}

/// Where each balancer's slbd and amgr serve metrics, inside the balancer's own namespace.
pub const SLBD_METRICS: &str = "127.0.0.1:9405";
pub const AMGR_METRICS: &str = "127.0.0.1:9406";

/// Writes node `i`'s slb_conf.json and amgr.json with `slb-node-config`: the lab's services
/// over the first `opts.configured` servers, heartbeat link 0 over the server-side network and
/// link 1 over the cable, the sync to the other node over the cable.
fn node_config(
    i: usize,
    me: &Node,
    peer: &Node,
    dir: &std::path::Path,
    opts: &PairOptions,
) -> Result<()> {
    let servers = |port: u16| {
        (0..opts.configured)
            .map(|k| format!("{}:{port}", server_ip(k)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cmd = Command::new(node_config_script());
    cmd.env("SLBD", workspace_bin("slbd"))
        .env("AMGR", workspace_bin("amgr"))
        .args(["--node", &(i + 1).to_string()])
        .arg("--out")
        .arg(&me.dir)
        .args(["--vip", &crate::VIP.to_string(), "--vip-dev", "eth0"])
        .args(["--gateway", "172.16.0.1", "--gateway-dev", "eth1"])
        .args(["--cluster-network", "172.16.0.0/24"])
        .args([
            "--service",
            &format!("tcp:80={}", servers(crate::SERVER_HTTP_PORT)),
        ])
        .args([
            "--service",
            &format!("udp:53={}", servers(crate::SERVER_UDP_PORT)),
        ])
        .args([
            "--link",
            &format!(
                "{}={}",
                BALANCER_SERVER_SIDE[i],
                BALANCER_SERVER_SIDE[1 - i]
            ),
        ])
        .args([
            "--link",
            &format!("{}={}", BALANCER_CABLE[i], BALANCER_CABLE[1 - i]),
        ])
        .args(["--peer-ssh", BALANCER_CABLE[1 - i]])
        .arg("--key-file")
        .arg(dir.join("pair.key"))
        .arg("--identity")
        .arg(dir.join("id_ed25519"))
        .arg("--remote-config")
        .arg(peer.config_path())
        .arg("--state-file")
        .arg(me.dir.join("state.json"))
        .arg("--amgr-socket")
        .arg(me.socket())
        .arg("--slbd-socket")
        .arg(me.slbd_socket())
        .arg("--slbd-binary")
        .arg(workspace_bin("slbd"))
        .args(["--sync-period", &opts.sync_period_s.to_string()])
        .args(["--persistence", &opts.persistence_s.to_string()])
        .args(["--mode", opts.mode])
        .args(["--metrics", SLBD_METRICS, "--amgr-metrics", AMGR_METRICS]);
    for w in &opts.witness {
        cmd.args(["--witness", &w.to_string()]);
    }
    run(&mut cmd).context("slb-node-config")
}

/// Node `me` (namespace `ns`) as a direct-routing balancer: its TCP service forwards by
/// `dr` on the servers' own port, and its server side takes their answers, which come from
/// the VIP, a local address.
fn direct_routing(lab: &Lab, me: &Node, ns: &str) -> Result<()> {
    let path = me.config_path();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    for svc in config["services"].as_array_mut().into_iter().flatten() {
        if svc["protocol"] == "tcp" {
            svc["port"] = crate::SERVER_HTTP_PORT.into();
            svc["forwarding"] = "dr".into();
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    lab.sysctl(ns, "net.ipv4.conf.eth1.accept_local", "1")?;
    lab.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
    lab.sysctl(ns, "net.ipv4.conf.eth1.rp_filter", "0")
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Pair {
    /// Builds the topology, the keys and both nodes' configuration, and starts both sshd.
    pub fn new(opts: PairOptions) -> Result<Pair> {
        let mut lab = Lab::empty()?;
        let c = lab.add_namespace("c")?;
        let sw = lab.add_namespace("sw")?;
        let b = [lab.add_namespace("b1")?, lab.add_namespace("b2")?];
        for br in ["brc", "brs"] {
            ip(&["-n", &sw, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", br, "up"])?;
        }
        // A port on switch bridge `br` whose other end is `dev` in `ns`.
        let plug = |port: &str, br: &str, ns: &str, dev: &str, addr: &str| -> Result<()> {
            ip(&[
                "-n", &sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns,
            ])?;
            ip(&["-n", &sw, "link", "set", port, "master", br, "up"])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])
        };
        plug("c0", "brc", &c, "eth0", &format!("{CLIENT}/24"))?;
        for (i, ns) in b.iter().enumerate() {
            plug(
                &format!("b{}c", i + 1),
                "brc",
                ns,
                "eth0",
                BALANCER_CLIENT_SIDE[i],
            )?;
            plug(
                &format!("b{}s", i + 1),
                "brs",
                ns,
                "eth1",
                &format!("{}/24", BALANCER_SERVER_SIDE[i]),
            )?;
            lab.sysctl(ns, "net.ipv4.ip_forward", "1")?;
        }
        lab.veth(
            (&b[0], "hb0", &format!("{}/24", BALANCER_CABLE[0])),
            (&b[1], "hb0", &format!("{}/24", BALANCER_CABLE[1])),
        )?;
        for i in 0..opts.servers {
            let s = lab.server(i);
            lab.add_ns(s.clone())?;
            let dr = opts.forwarding == "dr";
            plug(
                &format!("s{}", i + 1),
                "brs",
                &s,
                "eth0",
                &format!("{}/24", server_ip(i)),
            )?;
            ip(&["-n", &s, "route", "add", "default", "via", "172.16.0.1"])?;
            if dr {
                lab.direct_routing_server(&s)?;
            }
            lab.servers.push(None);
            lab.start_server(i)?;
        }

        let dir = lab.dir().to_path_buf();
        let key = dir.join("pair.key");
        std::fs::write(&key, b"the lab pair's shared heartbeat key, 0600")?;
        chmod600(&key)?;
        let identity = dir.join("id_ed25519");
        keygen(&identity)?;
        std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))?;
        std::fs::create_dir_all("/run/sshd")?;

        let mut nodes = Vec::new();
        for (i, ns) in b.iter().enumerate() {
            let ndir = dir.join(format!("b{}", i + 1));
            std::fs::create_dir_all(&ndir)?;
            keygen(&ndir.join("host_ed25519"))?;
            nodes.push(Node {
                ns: ns.clone(),
                dir: ndir,
                amgr: None,
                sshd: None,
                clock_offset_s: 0,
            });
        }
        for i in 0..2 {
            let (me, peer) = (&nodes[i], &nodes[1 - i]);
            let host_pub = std::fs::read_to_string(peer.dir.join("host_ed25519.pub"))?;
            let mut fields = host_pub.split_whitespace();
            let (kind, blob) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            std::fs::write(
                me.dir.join("known_hosts"),
                format!("{} {kind} {blob}\n", BALANCER_CABLE[1 - i]),
            )?;
            node_config(i, me, peer, &dir, &opts)?;
            if opts.forwarding == "dr" {
                direct_routing(&lab, me, &b[i])?;
            }
            // SHLVL=1 keeps bash from sourcing root's ~/.bashrc for the sync's command (bash
            // does for commands run by sshd at shell level 1): the lab logs in as root, and a
            // machine's root rc file (this one's hangs outside the host namespace) is not ours.
            std::fs::write(
                me.dir.join("sshd_config"),
                format!(
                    "Port 22\nListenAddress {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                     StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\nUsePAM no\nSetEnv SHLVL=1\n",
                    BALANCER_CABLE[i],
                    me.dir.join("host_ed25519").display(),
                    me.dir.join("sshd.pid").display(),
                    dir.join("authorized_keys").display()
                ),
            )?;
        }
        let mut pair = Pair {
            lab,
            nodes: nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?,
            json_logs: opts.json_logs,
        };
        for i in 0..2 {
            pair.start_sshd(i)?;
        }
        Ok(pair)
    }

    fn start_sshd(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(n.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(n.dir.join("sshd.log"))?)
            .spawn()
            .context("starting sshd (apt install openssh-server)")?;
        self.nodes[i].sshd = Some(child);
        Ok(())
    }

    /// Starts node `i`'s amgr (which starts its slbd).
    pub fn start(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let log = File::options().create(true).append(true).open(n.log())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.ns]);
        if n.clock_offset_s != 0 {
            // Only the wall clock: the timers run on the monotonic one, as after an NTP-less
            // boot whose real-time clock was off.
            cmd.args(["faketime", "-f", &format!("{:+}s", n.clock_offset_s)])
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .arg(workspace_bin("amgr"))
            .args(["run", "--config"])
            .arg(n.dir.join("amgr.json"))
            .args(["--log-format", if self.json_logs { "json" } else { "text" }])
            .env(
                "SLB_LOG",
                std::env::var("SLB_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting amgr (build it first: cargo build --bins)")?;
        self.nodes[i].amgr = Some(child);
        Ok(())
    }

    pub fn start_both(&mut self) -> Result<()> {
        self.start(0)?;
        self.start(1)
    }

    pub fn amgr_pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].amgr.as_ref().map(|c| c.id() as i32)
    }

    /// `kill -9` node `i`'s amgr and its slbd, at once.
    pub fn kill(&mut self, i: usize) {
        let slbd = self.slbd_pid(i);
        if let Some(mut c) = self.nodes[i].amgr.take() {
            if let Some(p) = slbd {
                kill9(p);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (at most 10 s) until node `i` is ACTIVE; panics with its log otherwise.
    pub fn wait_active(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state(i) != "ACTIVE" {
            assert!(
                Instant::now() < deadline,
                "node {} did not take over:\n{}",
                i + 1,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// slbd's pid on node `i`, from amgr's GETPID.
    pub fn slbd_pid(&self, i: usize) -> Option<i32> {
        let (code, out, _) = self.amgr(i, &["--json", "getpid"]);
        if code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&out).ok()?;
        v["slbd"].as_i64().map(|p| p as i32)
    }

    /// Runs `amgr ARGS` against node `i`'s socket: (exit code, stdout, stderr).
    pub fn amgr(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(workspace_bin("amgr"))
            .arg("--socket")
            .arg(self.nodes[i].socket())
            .args(args)
            .output()
            .expect("running amgr");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs slbctl against node `i`'s slbd.
    pub fn slbctl(&self, i: usize, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(workspace_bin("slbctl"))
            .arg("--socket")
            .arg(self.nodes[i].slbd_socket())
            .args(args)
            .output()
            .expect("running slbctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Node `i`'s slbd status (`slbctl --status --json`).
    pub fn slbd_status(&self, i: usize) -> Option<Value> {
        let (code, out, _) = self.slbctl(i, &["--status", "--json"]);
        (code == 0)
            .then(|| serde_json::from_str(&out).ok())
            .flatten()
    }

    /// Waits until node `i`'s slbd is takeover-ready holding at least `flows` flows.
    pub fn wait_takeover_ready(&self, i: usize, flows: u64, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.slbd_status(i);
            if let Some(st) = &st {
                if st["replication"]["takeover_ready"] == true
                    && st["flows"].as_u64().unwrap_or(0) >= flows
                {
                    return Ok(st.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not takeover-ready with {flows} flows: {st:?}\n{}",
                    i + 1,
                    self.log(i)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn query(&self, i: usize) -> Option<Value> {
        let (code, out, _) = self.amgr(i, &["--json", "query"]);
        (code == 0)
            .then(|| serde_json::from_str(&out).ok())
            .flatten()
    }

    /// Node `i`'s state as its amgr reports it ("DOWN" when amgr does not answer).
    pub fn state(&self, i: usize) -> String {
        self.query(i)
            .and_then(|q| q["node"]["state"].as_str().map(String::from))
            .unwrap_or_else(|| "DOWN".into())
    }

    /// Waits until the nodes report `want` (e.g. `["ACTIVE", "STANDBY"]`; "DOWN" for a node
    /// whose amgr does not answer).
    pub fn wait_states(&self, want: [&str; 2], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = [self.state(0), self.state(1)];
            if got[0] == want[0] && got[1] == want[1] {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nodes are {got:?}, not {want:?} after {timeout:?}\n--- b1 log:\n{}\n--- b2 log:\n{}",
                    self.log(0),
                    self.log(1)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether node `i` holds the VIP on its client-side interface.
    pub fn has_vip(&self, i: usize) -> bool {
        let out = self
            .lab
            .exec(
                &self.nodes[i].ns,
                &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
            )
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}/", crate::VIP))
    }

    /// One scrape of node `i`'s slbd (`amgr` false) or amgr metrics, from inside its namespace.
    pub fn scrape(&self, i: usize, amgr: bool) -> Result<String> {
        let addr = if amgr { AMGR_METRICS } else { SLBD_METRICS };
        let addr: std::net::SocketAddr = addr.parse()?;
        in_ns(&self.nodes[i].ns, || {
            slb_common::metrics::http::scrape(addr, Duration::from_secs(3))
        })
        .with_context(|| format!("scraping node {}'s {addr}", i + 1))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log()).unwrap_or_default()
    }

    /// Drops the heartbeat on node `i`'s `links` (0: server-side network, 1: the cable), both
    /// directions, with an nftables table of the test's own; `&[]` heals.
    pub fn cut_heartbeat(&self, i: usize, links: &[usize]) -> Result<()> {
        let ns = &self.nodes[i].ns;
        let _ = self
            .lab
            .exec(ns, &["nft", "delete", "table", "inet", "slbtest"]);
        if links.is_empty() {
            return Ok(());
        }
        let devs: Vec<&str> = links.iter().map(|l| ["eth1", "hb0"][*l]).collect();
        let set = devs
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let rules = format!(
            "table inet slbtest {{\n chain in {{ type filter hook input priority -500; \
             iifname {{ {set} }} udp dport {HB_PORT} drop; }}\n chain out {{ type filter hook \
             output priority -500; oifname {{ {set} }} udp dport {HB_PORT} drop; }}\n}}\n"
        );
        let file = self.nodes[i].dir.join("cut.nft");
        std::fs::write(&file, rules)?;
        let out = self
            .lab
            .exec(ns, &["nft", "-f", file.to_str().unwrap_or("")])?;
        if !out.status.success() {
            bail!("nft: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `ip link set … down` (or up) on every interface of node `i`.
    pub fn set_links(&self, i: usize, up: bool) -> Result<()> {
        for dev in ["eth0", "eth1", "hb0"] {
            self.set_link(i, dev, up)?;
        }
        Ok(())
    }

    /// `ip link set DEV down` (or up) on node `i`: eth0 the client side, eth1 the server
    /// side (and heartbeat link 0), hb0 the cable (heartbeat link 1).
    pub fn set_link(&self, i: usize, dev: &str, up: bool) -> Result<()> {
        ip(&[
            "-n",
            &self.nodes[i].ns,
            "link",
            "set",
            dev,
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            for c in [n.amgr.take(), n.sshd.take()].into_iter().flatten() {
                let mut c = c;
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn chmod600(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn keygen(path: &std::path::Path) -> Result<()> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "slb-lab", "-f"])
        .arg(path))
}

/// One attempt of the client's request loop.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Since the loop started, taken just before the connection was opened.
    pub at: Duration,
    pub server: Option<String>,
    /// From the start of the request to its answer (or its failure). A request whose SYN
    /// the balancers lost fails at the 700 ms timeout, before the client's retransmission
    /// at 1 s; one answered late but under that was slowed, not lost.
    pub took: Duration,
}

/// A client in the client namespace sending a new TCP request to VIP:80 every `every`, each
/// on its own thread so a hanging one does not delay the next.
pub struct Requests {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    timeout: Duration,
}

impl Requests {
    pub fn start(client_ns: &str, every: Duration) -> Requests {
        Requests::start_with(client_ns, every, Duration::from_millis(700))
    }

    /// [`Requests::start`] whose requests each fail after `timeout` (the default 700 ms fails
    /// a request before the client's first SYN retransmission; a longer one lets a
    /// retransmission count as slowed, not lost).
    pub fn start_with(client_ns: &str, every: Duration, timeout: Duration) -> Requests {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (s, a, ns) = (stop.clone(), attempts.clone(), client_ns.to_string());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut k = 0u32;
            while !s.load(Ordering::Relaxed) {
                let (a, ns) = (a.clone(), ns.clone());
                std::thread::spawn(move || {
                    // Timed from inside the namespace, just before the SYN: under load a
                    // thread can start tens of milliseconds late, and attempts ordered by
                    // when they were planned would put a success between two failures.
                    let (at, server, took) = in_ns(&ns, || {
                        let at = t0.elapsed();
                        let server = http_get(CLIENT, vip(80), "/", timeout)
                            .ok()
                            .map(|b| server_name(&b));
                        (at, server, t0.elapsed() - at)
                    });
                    a.lock().unwrap().push(Attempt { at, server, took });
                });
                k += 1;
                let next = every * k;
                std::thread::sleep(next.saturating_sub(t0.elapsed()));
            }
        });
        Requests {
            stop,
            attempts,
            thread: Some(thread),
            timeout,
        }
    }

    /// Stops the loop and returns every attempt, in the order they started.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Let the last attempts time out.
        std::thread::sleep(self.timeout + Duration::from_millis(100));
        let mut v = self.attempts.lock().unwrap().clone();
        v.sort_by_key(|a| a.at);
        v
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The service gap: the longest time between two successful requests in a row (the last
/// success before an outage and the first after it), and how many requests failed outside
/// that gap.
pub fn service_gap(attempts: &[Attempt]) -> (Duration, usize) {
    let ok: Vec<usize> = (0..attempts.len())
        .filter(|&k| attempts[k].server.is_some())
        .collect();
    let mut worst = (Duration::ZERO, 0, 0);
    for w in ok.windows(2) {
        let gap = attempts[w[1]].at - attempts[w[0]].at;
        if gap > worst.0 {
            worst = (gap, w[0], w[1]);
        }
    }
    let failed_outside = (0..attempts.len())
        .filter(|&k| attempts[k].server.is_none() && !(worst.1 < k && k < worst.2))
        .count();
    (worst.0, failed_outside)
}

/// The failed attempts (and those answered after more than 500 ms) with their neighbours, one
/// per line (`at ms  took ms  server|-`): what an assertion on the requests prints so a red
/// run shows where they failed.
pub fn timeline(attempts: &[Attempt]) -> String {
    let bad = |a: &Attempt| a.server.is_none() || a.took > Duration::from_millis(500);
    let near_failure =
        |k: usize| (k.saturating_sub(2)..(k + 3).min(attempts.len())).any(|j| bad(&attempts[j]));
    let mut out = String::new();
    for (k, a) in attempts
        .iter()
        .enumerate()
        .filter(|(k, _)| near_failure(*k))
    {
        out += &format!(
            "{k:4} {:6} ms {:4} ms {}\n",
            a.at.as_millis(),
            a.took.as_millis(),
            a.server.as_deref().unwrap_or("-")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, ok: bool) -> Attempt {
        Attempt {
            at: Duration::from_millis(ms),
            server: ok.then(|| "s1".to_string()),
            took: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_gap_runs_from_the_last_success_to_the_first_after() {
        let a = [
            at(0, true),
            at(50, true),
            at(100, false),
            at(150, false),
            at(200, true),
            at(250, false),
            at(300, true),
        ];
        assert_eq!(service_gap(&a), (Duration::from_millis(150), 1));
        assert_eq!(
            service_gap(&[at(0, true), at(50, true)]).0,
            Duration::from_millis(50)
        );
    }
}
