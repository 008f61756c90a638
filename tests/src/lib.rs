//! The network-namespace lab that the tests and the demo share: a client, a balancer and N real
//! servers, each in a namespace this process creates under a unique name and always removes
//! (the [`Lab`] guard kills what runs inside and deletes the namespaces on drop, panics included).
//!
//! Topology (addresses are only ever inside these namespaces):
//! ```text
//!  client 10.0.0.5,.6/24 ──eth0── eth0 10.0.0.1/24 [+ VIP 10.0.0.100/32 by slbd]
//!                                  balancer
//!                                  br0 [gateway 172.16.0.1/24 by slbd] ── sI eth0 172.16.0.(I+1)/24
//!                                                                          default via 172.16.0.1
//! ```
//! Each real server runs `lab-server`: HTTP on :8000 naming itself, UDP echo on :5300.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
pub const SERVER_HTTP_PORT: u16 = 8000;
pub const SERVER_UDP_PORT: u16 = 5300;

/// Deterministic bytes for bulk transfers: each 8-byte word at stream offset `8w` is a hash of
/// `w`, so any reordered, dropped or corrupted segment changes the stream's digest.
pub fn pattern(offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let pos = offset + i as u64;
        let (w, k) = (word(pos / 8), (pos % 8) as usize);
        let n = (8 - k).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[k..k + n]);
        i += n;
    }
}

/// The SHA-256, in hex, of the first `size` bytes of [`pattern`]: what a bulk transfer of
/// that size must arrive as.
pub fn pattern_sha256(size: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    let mut chunk = vec![0u8; 1 << 16];
    for off in (0..size).step_by(1 << 16) {
        let len = chunk.len().min(size - off);
        pattern(off as u64, &mut chunk[..len]);
        digest.update(&chunk[..len]);
    }
    format!("{:x}", digest.finalize())
}

fn word(w: u64) -> [u8; 8] {
    (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (w >> 3)).to_le_bytes()
}

/// Address of real server `i` (0-based).
pub fn server_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 0, 2 + i as u8)
}

pub mod cluster;
pub mod dying;
pub mod ecmp;
pub mod held;
pub mod pair;
pub mod synflood;

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Runs each named lab test, a `fn name(mode: &'static str)`, in both data-path modes: as the
/// tests `name::packet` and `name::offload`.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn packet() {
                    super::$name("packet")
                }
                #[test]
                fn offload() {
                    super::$name("offload")
                }
            }
        )*
    };
}

/// True when this process may build namespaces. Outside CI a test without root skips; in CI
/// (which runs as root) a missing privilege is a failure, not a skip.
pub fn can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run the lab tests as root"
    );
    eprintln!("skipping {test}: network namespaces need root");
    false
}

/// The path of a workspace binary built next to the running test or demo binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Runs `ip` with `args`; its stderr is the error.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A running slbd in the lab's balancer namespace.
pub struct Slbd {
    child: Child,
    pub log: PathBuf,
    /// Its control socket (one per slbd, so that parallel labs do not meet).
    pub socket: PathBuf,
}

impl Slbd {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for slbd to exit, returning its exit code (None if killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "slbd did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Slbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper process that is killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system, all threads) a process has used.
pub fn process_cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat; `rest` starts at field 3 and
    // the state letter (field 3) does not parse as a number.
    let (utime, stime) = (
        f.get(10).copied().unwrap_or(0),
        f.get(11).copied().unwrap_or(0),
    );
    (utime + stime) as f64 / clock_ticks()
}

/// CPU seconds the whole machine has spent busy (all cores; idle and iowait excluded).
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// The namespaces of one lab, removed on drop.
pub struct Lab {
    pub id: String,
    namespaces: Vec<String>,
    /// The lab-server of each real server; None while stopped.
    servers: Vec<Option<Child>>,
    dir: PathBuf,
    helpers: Mutex<Vec<Child>>,
    /// The data-path mode [`Lab::config`] gives its services: "packet" or "offload".
    pub mode: &'static str,
}

impl Lab {
    /// Builds the topology with `n` real servers, each running `lab-server`.
    pub fn new(n: usize) -> Result<Lab> {
        Lab::new_in(n, "packet")
    }

    /// [`Lab::new`] whose default configuration runs its services in `mode`.
    pub fn new_in(n: usize, mode: &'static str) -> Result<Lab> {
        let mut lab = Lab::empty()?;
        lab.mode = mode;
        lab.build(n)?;
        Ok(lab)
    }

    /// A scratch directory of this lab's, removed with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A lab with no topology, for tests that build their own (`add_namespace`, `veth`).
    pub fn empty() -> Result<Lab> {
        sweep_stale_labs();
        let id = format!(
            "slb{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        Ok(Lab {
            id,
            namespaces: Vec::new(),
            servers: Vec::new(),
            dir,
            helpers: Mutex::new(Vec::new()),
            mode: "packet",
        })
    }

    /// Adds a namespace named after the lab and `suffix`; returns its name.
    pub fn add_namespace(&mut self, suffix: &str) -> Result<String> {
        let name = format!("{}{suffix}", self.id);
        self.add_ns(name.clone())?;
        Ok(name)
    }

    /// A veth pair between two of the lab's namespaces, both ends up and addressed.
    pub fn veth(&self, a: (&str, &str, &str), b: (&str, &str, &str)) -> Result<()> {
        let ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)) = (a, b);
        ip(&[
            "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ])?;
        for (ns, dev, addr) in [(ns_a, if_a, addr_a), (ns_b, if_b, addr_b)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    pub fn client(&self) -> String {
        format!("{}c", self.id)
    }

    pub fn balancer(&self) -> String {
        format!("{}b", self.id)
    }

    pub fn server(&self, i: usize) -> String {
        format!("{}s{}", self.id, i + 1)
    }

    fn add_ns(&mut self, name: String) -> Result<()> {
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])
    }

    fn build(&mut self, n: usize) -> Result<()> {
        let (c, b) = (self.client(), self.balancer());
        self.add_ns(c.clone())?;
        self.add_ns(b.clone())?;
        ip(&[
            "-n", &b, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &c,
        ])?;
        ip(&["-n", &b, "addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
        ip(&["-n", &b, "link", "set", "eth0", "up"])?;
        ip(&["-n", &b, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &b, "link", "set", "br0", "up"])?;
        for a in [CLIENT, CLIENT2] {
            ip(&["-n", &c, "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        ip(&["-n", &c, "link", "set", "eth0", "up"])?;
        self.sysctl(&b, "net.ipv4.ip_forward", "1")?;
        for i in 0..n {
            let s = self.server(i);
            self.add_ns(s.clone())?;
            let port = format!("p{}", i + 1);
            ip(&[
                "-n", &b, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &s,
            ])?;
            ip(&["-n", &b, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &s,
                "addr",
                "add",
                &format!("{}/24", server_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &s, "link", "set", "eth0", "up"])?;
            ip(&["-n", &s, "route", "add", "default", "via", "172.16.0.1"])?;
            self.servers.push(None);
            self.start_server(i)?;
        }
        Ok(())
    }

    /// Starts real server `i`'s lab-server (HTTP and UDP echo) and waits until it listens.
    pub fn start_server(&mut self, i: usize) -> Result<()> {
        let s = self.server(i);
        let server_bin = workspace_bin("lab-server");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &s])
            .arg(&server_bin)
            .args(["--name", &format!("s{}", i + 1)])
            .args(["--tcp", &format!("0.0.0.0:{SERVER_HTTP_PORT}")])
            .args(["--udp", &format!("0.0.0.0:{SERVER_UDP_PORT}")])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", server_bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        self.servers[i] = Some(child);
        if line.trim() != "ready" {
            bail!("lab-server s{} did not start", i + 1);
        }
        Ok(())
    }

    /// Kills real server `i`'s lab-server: its ports then refuse connections.
    pub fn stop_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Makes the lab's real servers direct-routing servers (forwarding `dr`) with
    /// `scripts/slb-dr-server`, as a real server is made one: each holds the VIP on its loopback and neither answers nor announces it in ARP (`arp_ignore=1`,
    /// `arp_announce=2`), so it accepts requests sent to its MAC with the VIP as destination
    /// and answers from the VIP. The balancer, their gateway here, routes those answers to
    /// the clients: from one of its own addresses, so it must accept them (`accept_local`).
    pub fn direct_routing_servers(&self) -> Result<()> {
        for i in 0..self.servers.len() {
            self.direct_routing_server(&self.server(i))?;
        }
        let b = self.balancer();
        self.sysctl(&b, "net.ipv4.conf.br0.accept_local", "1")?;
        self.sysctl(&b, "net.ipv4.conf.all.rp_filter", "0")?;
        self.sysctl(&b, "net.ipv4.conf.br0.rp_filter", "0")
    }

    /// Runs `scripts/slb-dr-server --apply VIP` in namespace `ns`, as a real server is made a
    /// direct-routing one.
    pub fn direct_routing_server(&self, ns: &str) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slb-dr-server");
        let out = self.exec(
            ns,
            &[&script.to_string_lossy(), "--apply", &VIP.to_string()],
        )?;
        if !out.status.success() {
            bail!(
                "slb-dr-server in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let out = self.exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        if !out.status.success() {
            bail!(
                "sysctl {key} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs a command in a namespace and returns its output.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .output()
            .with_context(|| format!("running {cmd:?} in {ns}"))
    }

    /// Starts a process in a namespace; it is stopped when the returned [`Proc`] is dropped.
    pub fn start(&self, ns: &str, cmd: &[&str]) -> Result<Proc> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?} in {ns}"))?;
        Ok(Proc(child))
    }

    /// Starts a helper process in a namespace; it is killed when the lab is dropped.
    pub fn spawn(&self, ns: &str, cmd: &[&str]) -> Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.helpers.lock().unwrap().push(child);
        Ok(())
    }

    /// The lab's default configuration: one TCP service on VIP:80 and one UDP service on
    /// VIP:53 over all `n` servers (whose ports differ from the VIP's, so ports are rewritten).
    pub fn config(&self, n: usize) -> Value {
        let servers = |port: u16| {
            (0..n)
                .map(|i| Value::from(format!("{}:{port}", server_ip(i))))
                .collect::<Vec<_>>()
        };
        json!({
            "address": VIP.to_string(),
            "address_dev": "eth0",
            "gateway": "172.16.0.1",
            "gateway_dev": "br0",
            "cluster_network": "172.16.0.0/24",
            "algorithm": "ROUND_ROBIN",
            "services": [
                {"protocol": "tcp", "port": 80, "mode": self.mode, "servers": servers(SERVER_HTTP_PORT)},
                {"protocol": "udp", "port": 53, "mode": self.mode, "servers": servers(SERVER_UDP_PORT)}
            ]
        })
    }

    /// Writes `config` to a file and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts slbd in the balancer namespace without waiting for it.
    pub fn spawn_slbd(&self, config: &Path) -> Slbd {
        self.spawn_slbd_binary(&workspace_bin("slbd"), config)
    }

    /// [`Lab::spawn_slbd`] with another slbd binary (the benchmark's baseline build).
    pub fn spawn_slbd_binary(&self, binary: &Path, config: &Path) -> Slbd {
        self.spawn_slbd_in(&self.balancer(), binary, config)
    }

    /// [`Lab::spawn_slbd_binary`] in namespace `ns` (a cluster has several balancers).
    pub fn spawn_slbd_in(&self, ns: &str, binary: &Path, config: &Path) -> Slbd {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("slbd-{n}.log"));
        let socket = self.dir.join(format!("slbd-{n}.sock"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .env("SLB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("starting slbd (build it first: cargo build --bins)");
        Slbd { child, log, socket }
    }

    /// Runs slbctl against `slbd` with `args`; returns (exit code, stdout, stderr).
    pub fn slbctl(&self, slbd: &Slbd, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(workspace_bin("slbctl"))
            .arg("--socket")
            .arg(&slbd.socket)
            .args(args)
            .output()
            .expect("running slbctl (build it first: cargo build --bins)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts slbd with `config` and waits until it says it is balancing.
    pub fn start_slbd(&self, config: &Value) -> Slbd {
        self.start_slbd_binary(&workspace_bin("slbd"), config)
    }

    /// [`Lab::start_slbd`] with another slbd binary (the benchmark's baseline build).
    pub fn start_slbd_binary(&self, binary: &Path, config: &Value) -> Slbd {
        self.start_slbd_in(&self.balancer(), binary, "slb_conf.json", config)
    }

    /// [`Lab::start_slbd_binary`] in namespace `ns`, its configuration in file `name`.
    pub fn start_slbd_in(&self, ns: &str, binary: &Path, name: &str, config: &Value) -> Slbd {
        let path = self.write_config(name, &serde_json::to_string_pretty(config).unwrap());
        let mut slbd = self.spawn_slbd_in(ns, binary, &path);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if slbd.log_text().contains("balancing") {
                return slbd;
            }
            if let Ok(Some(status)) = slbd.child.try_wait() {
                panic!(
                    "slbd exited ({status}) instead of balancing; log:\n{}",
                    slbd.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "slbd did not start balancing; log:\n{}",
                slbd.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The balancer's conntrack entries that carry slbd's offload mark, one line each.
    pub fn slb_conntrack(&self) -> Vec<String> {
        let out = self
            .exec(
                &self.balancer(),
                &["conntrack", "-L", "-m", "0x5b1f0000/0xffff0000"],
            )
            .expect("conntrack -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `nft list tables` in the balancer namespace.
    pub fn nft_tables(&self) -> String {
        let out = self
            .exec(&self.balancer(), &["nft", "list", "tables"])
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The IPv4 addresses on the balancer's interfaces.
    pub fn balancer_addrs(&self) -> String {
        let out = self
            .exec(&self.balancer(), &["ip", "-4", "-o", "addr"])
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .helpers
            .lock()
            .unwrap()
            .iter_mut()
            .chain(self.servers.iter_mut().flatten())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes namespaces left by a lab whose process died without dropping it (killed by a
/// signal): their names carry the dead process's pid.
fn sweep_stale_labs() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            if of_dead_lab(name) {
                remove_namespace(name);
            }
        }
    }
    // Their scratch directories, likewise named after the dead pid.
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for d in dir.flatten() {
            if of_dead_lab(&d.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

/// Whether `name` (`slb<pid>x…`) belongs to a lab whose process no longer exists.
fn of_dead_lab(name: &str) -> bool {
    let pid = name
        .strip_prefix("slb")
        .and_then(|r| r.split('x').next())
        .and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// For the command-line tools (demo, benchmarks): on SIGINT or SIGTERM, remove this
/// process's lab namespaces and exit, since a signal skips the `Lab` guard's drop. Call it
/// first thing in `main`, before any thread starts, so the signals reach only its thread.
pub fn clean_up_on_signal() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        let sig = set.wait();
        let prefix = format!("slb{}x", std::process::id());
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for name in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
            {
                if name.starts_with(&prefix) {
                    remove_namespace(name);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
            for d in dir.flatten() {
                if d.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        eprintln!("stopped by {sig:?}; lab removed");
        std::process::exit(130);
    });
}

/// Kills what runs in a namespace (which would keep it alive) and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        let pids = String::from_utf8_lossy(&out.stdout);
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// Runs `f` on a thread that has entered network namespace `ns`; the caller's thread is not
/// moved. Sockets made inside `f` live in `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let handle = File::open(format!("/run/netns/{ns}")).expect("namespace handle");
                nix::sched::setns(handle, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// One HTTP/1.0 GET to `to` from `from` (0 port = any); returns the body.
pub fn http_get(
    from: Ipv4Addr,
    to: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = connect(from, to, timeout)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    read_body(s)
}

/// Connects from a chosen local address.
pub fn connect(from: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> std::io::Result<TcpStream> {
    connect_from(SocketAddrV4::new(from, 0), to, timeout)
}

/// Connects from a chosen local address and port (0: any), so a test can name the tuple.
pub fn connect_from(
    from: SocketAddrV4,
    to: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect as nconnect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::{FromRawFd, IntoRawFd};
    // Close-on-exec: a process a test starts later (slbd, restarted) must not keep the
    // client's connection open after the test closes it.
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(from),
    )?;
    // SAFETY: `fd` is an open TCP socket this function owns; into_raw_fd gives its
    // ownership to the stream, so it is closed once.
    let s = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
    // Connect with a deadline: non-blocking connect, then wait for writability.
    s.set_nonblocking(true)?;
    match nconnect(std::os::fd::AsRawFd::as_raw_fd(&s), &SockaddrIn::from(to)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut pfd = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&s),
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: `pfd` is a live array of one pollfd, and the count says one.
    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 1, timeout.as_millis() as i32) };
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {to} timed out"),
        ));
    }
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    s.peer_addr()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// How many segments the kernel retransmitted on `s` (TCP_INFO's total, SYNs included): what
/// `ss -ti` shows as `retrans`. A connection through a balancer that drops nothing has none.
pub fn retransmissions(s: &TcpStream) -> u32 {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable tcp_info of `len` bytes and `s` an open TCP socket; the
    // kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // SAFETY: zero-initialised, then (partly) written by the kernel: every bit pattern is a
    // valid tcp_info.
    unsafe { info.assume_init() }.tcpi_total_retrans
}

fn read_body(mut s: TcpStream) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP header end")
        })?;
    Ok(all.split_off(at + 4))
}

/// Sends one UDP datagram from `from` to `to` and waits for the answer; returns the answer and
/// the address it came from.
pub fn udp_ask(
    from: Ipv4Addr,
    to: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    let s = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(payload, to)?;
    let mut buf = vec![0u8; 65536];
    let (n, peer) = s.recv_from(&mut buf)?;
    buf.truncate(n);
    Ok((buf, peer))
}

/// Sends whole IPv4 packets as they are (headers included) from a raw socket in the calling
/// thread's namespace; the kernel fills in only the header checksum.
pub fn send_raw_ipv4(packets: &[Vec<u8>]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket takes no pointers; the descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for p in packets {
        // SAFETY: sockaddr_in is plain data; zero is valid for every field.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
        // SAFETY: `p` and `to` are live for the call and their lengths are passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The fragments of one UDP datagram from `src` to `dst` carrying `payload`: each
/// `(offset, len)` is a slice of the datagram (UDP header included; offsets in bytes, multiples
/// of 8), the last one without more-fragments.
pub fn udp_fragments(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    id: u16,
    pieces: &[(usize, usize)],
) -> Vec<Vec<u8>> {
    let mut dgram = Vec::with_capacity(8 + payload.len());
    dgram.extend_from_slice(&src.port().to_be_bytes());
    dgram.extend_from_slice(&dst.port().to_be_bytes());
    dgram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    dgram.extend_from_slice(&[0, 0]); // no UDP checksum (RFC 768 allows it)
    dgram.extend_from_slice(payload);
    pieces
        .iter()
        .enumerate()
        .map(|(i, &(off, len))| {
            let data = &dgram[off..(off + len).min(dgram.len())];
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&id.to_be_bytes());
            let mf: u16 = if i + 1 < pieces.len() { 0x2000 } else { 0 };
            p[6..8].copy_from_slice(&(mf | (off / 8) as u16).to_be_bytes());
            p[8] = 64;
            p[9] = 17;
            p[12..16].copy_from_slice(&src.ip().octets());
            p[16..20].copy_from_slice(&dst.ip().octets());
            p.extend_from_slice(data);
            p
        })
        .collect()
}

/// VIP:`port`.
pub fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

/// `n` new TCP connections from the client to VIP:80, counted by the server that answered.
pub fn spread(lab: &Lab, n: usize) -> std::collections::BTreeMap<String, usize> {
    in_ns(&lab.client(), || {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..n {
            let body = http_get(CLIENT, vip(80), "/", Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("request {i} to the VIP failed: {e}"));
            *counts.entry(server_name(&body)).or_insert(0) += 1;
        }
        counts
    })
}

/// Polls `f` every 100 ms until it holds or `within` passes; whether it held.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Opens a long-lived connection through VIP:80 (lab-server's `/hold`); returns it and the
/// server that holds it. Call it inside the client namespace.
pub fn hold_connection() -> (TcpStream, String) {
    hold_connection_to(vip(80))
}

/// [`hold_connection`] through `to`.
pub fn hold_connection_to(to: SocketAddrV4) -> (TcpStream, String) {
    hold_connection_from(CLIENT, to)
}

/// [`hold_connection_to`] from the client's address `from`.
pub fn hold_connection_from(from: Ipv4Addr, to: SocketAddrV4) -> (TcpStream, String) {
    let mut s = connect(from, to, Duration::from_secs(5)).expect("connect");
    write!(s, "GET /hold HTTP/1.0\r\n\r\n").expect("send /hold");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut name = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("hold response");
        if line == "\r\n" {
            reader.read_line(&mut name).expect("server name");
            break;
        }
    }
    (s, name.trim().to_string())
}

/// Sends `line` on a held connection and reads the echo (`<server> <line>`); returns the
/// server's name. Call it inside the client namespace.
pub fn echo(s: &TcpStream, line: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = s;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.last() != Some(&b'\n') {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got);
    match text.trim_end().split_once(' ') {
        Some((server, echoed)) if echoed == line => Ok(server.to_string()),
        _ => Err(std::io::Error::other(format!(
            "echo {text:?} does not answer {line:?}"
        ))),
    }
}

/// What one wrk run reported.
pub struct Wrk {
    /// Requests completed.
    pub requests: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs wrk with `args` in the lab's client namespace and reads its report.
pub fn wrk(lab: &Lab, args: &[&str]) -> Result<Wrk> {
    let mut cmd = vec!["wrk"];
    cmd.extend_from_slice(args);
    let out = lab.exec(&lab.client(), &cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let rps: f64 = field("Requests/sec:")
        .with_context(|| format!("wrk printed no rate:\n{text}"))?
        .parse()?;
    let latency = |p: &str| field(p).map(|v| duration_us(&v)).unwrap_or(f64::NAN);
    if text.contains("Socket errors") {
        eprintln!("  wrk: {}", field("Socket errors:").unwrap_or_default());
    }
    let requests: f64 = text
        .lines()
        .find_map(|l| {
            l.split_once(" requests in ")
                .map(|(n, _)| n.trim().to_string())
        })
        .with_context(|| format!("wrk printed no request count:\n{text}"))?
        .parse()?;
    Ok(Wrk {
        requests,
        rps,
        p50_us: latency("50%"),
        p99_us: latency("99%"),
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`.
fn duration_us(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => f64::NAN,
    }
}

/// Which server answered an HTTP request, from the body `sN\n`.
pub fn server_name(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        pattern(3, &mut whole);
        for cut in [0usize, 1, 5, 8, 13, 500, 999] {
            let (mut a, mut b) = (vec![0u8; cut], vec![0u8; 1000 - cut]);
            pattern(3, &mut a);
            pattern(3 + cut as u64, &mut b);
            a.extend(b);
            assert_eq!(a, whole, "cut at {cut}");
        }
    }
}
