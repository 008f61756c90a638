//! SHELL: the guard's thread. Every `every` it sends one ICMP echo to each distinct real-server
//! address in slb_conf.json (re-read when the file changes) and to each witness, over one raw
//! socket, and publishes what the round heard as a [`Sample`] the agent reads. It runs in every
//! state, so an ACTIVE learns it has lost its servers and a STANDBY has a check that began
//! after its dual went silent when the dead time ends.
//! Side effects: a raw ICMP socket, reading slb_conf.json, a thread.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{echo, satisfied, verdict, Reach, Settings};

/// One round of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the round began, on the agent's clock (ms since amgr started).
    pub started_ms: u64,
    pub took_ms: u64,
    pub reach: Reach,
    /// `Err(why)`: this node cannot serve.
    pub verdict: Result<(), String>,
}

/// What the agent reads: the last round and how many in a row said "cannot serve".
#[derive(Debug, Clone, Default)]
pub struct View {
    pub latest: Option<Sample>,
    pub unfit_in_row: u32,
}

/// Starts the thread; with nothing to check (servers `none`, no witness) there is none, and
/// the view stays empty (the agent reads that as "can serve").
pub fn start(
    settings: Settings,
    slbd_config: PathBuf,
    epoch: Instant,
) -> io::Result<Arc<Mutex<View>>> {
    let view = Arc::new(Mutex::new(View::default()));
    if !settings.enabled() {
        return Ok(view);
    }
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    let shared = view.clone();
    std::thread::Builder::new()
        .name("guard".into())
        .spawn(move || Prober::new(settings, slbd_config, socket).run(&shared, epoch))?;
    Ok(view)
}

struct Prober {
    settings: Settings,
    slbd_config: PathBuf,
    socket: Socket,
    id: u16,
    round: u16,
    servers: Vec<Ipv4Addr>,
    config_mtime: Option<SystemTime>,
}

impl Prober {
    fn new(settings: Settings, slbd_config: PathBuf, socket: Socket) -> Prober {
        let id = u16::from_ne_bytes(slb_common::auth::nonce::<2>().unwrap_or([0x5b, 0x1d]));
        Prober {
            settings,
            slbd_config,
            socket,
            id,
            round: 0,
            servers: Vec::new(),
            config_mtime: None,
        }
    }

    fn run(mut self, view: &Mutex<View>, epoch: Instant) {
        tracing::info!(
            servers = self.settings.servers.name(),
            witnesses = self.settings.witness.len(),
            every_ms = self.settings.every.as_millis() as u64,
            "isolation guard on"
        );
        let mut next = Instant::now();
        loop {
            self.refresh_servers();
            let started = Instant::now();
            let reach = self.round();
            let sample = Sample {
                started_ms: started.duration_since(epoch).as_millis() as u64,
                took_ms: started.elapsed().as_millis() as u64,
                verdict: verdict(self.settings.servers, &reach),
                reach,
            };
            {
                let mut v = view.lock();
                let was_fit = v.latest.as_ref().is_none_or(|s| s.verdict.is_ok());
                match &sample.verdict {
                    Ok(()) => v.unfit_in_row = 0,
                    Err(why) => {
                        v.unfit_in_row += 1;
                        if was_fit {
                            tracing::warn!(why = %why, "guard: this node cannot serve");
                        }
                    }
                }
                if sample.verdict.is_ok() && !was_fit {
                    tracing::info!(
                        servers_up = reach.servers_up,
                        "guard: this node can serve again"
                    );
                }
                v.latest = Some(sample);
            }
            next += self.settings.every;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            std::thread::sleep(next - now);
        }
    }

    /// The distinct real-server addresses of every service; the last good list is kept when
    /// the file cannot be read (amgr's sync may be writing it).
    fn refresh_servers(&mut self) {
        let mtime = std::fs::metadata(&self.slbd_config)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_none() || mtime == self.config_mtime {
            return;
        }
        match slbd::config::Config::load(&self.slbd_config) {
            Ok(c) => {
                let set: BTreeSet<Ipv4Addr> = c
                    .services
                    .iter()
                    .flat_map(|s| s.servers.iter().map(|r| *r.addr.ip()))
                    .collect();
                self.servers = set.into_iter().collect();
                self.config_mtime = mtime;
            }
            Err(e) => {
                tracing::debug!(error = %e, "guard: slb_conf.json not read; keeping the servers it had")
            }
        }
    }

    /// One echo to every target; returns once the policy is met or at the timeout.
    fn round(&mut self) -> Reach {
        self.round = self.round.wrapping_add(1);
        let witnesses = self.settings.witness.clone();
        let mut reach = Reach {
            servers: self.servers.len(),
            witnesses: witnesses.len(),
            ..Reach::default()
        };
        let need = self.settings.servers;
        let targets: BTreeSet<Ipv4Addr> = if need == super::Need::None {
            witnesses.iter().copied().collect()
        } else {
            self.servers.iter().chain(&witnesses).copied().collect()
        };
        let req = echo::request(self.id, self.round);
        for t in &targets {
            let to = SockAddr::from(SocketAddrV4::new(*t, 0));
            if let Err(e) = self.socket.send_to(&req, &to) {
                // No route (the link is down): that target is simply not answering.
                tracing::debug!(to = %t, error = %e, "guard: echo not sent");
            }
        }
        let deadline = Instant::now() + self.settings.timeout;
        let mut answered = BTreeSet::new();
        let mut buf = [0u8; 1500];
        // Stops as soon as the policy is met: a server that is down for maintenance does not
        // make every round wait for the timeout.
        while !satisfied(need, &reach) && answered.len() < targets.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if self.socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let n = match (&self.socket).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "guard: receive failed");
                    break;
                }
            };
            let Some(r) = echo::parse_reply(&buf[..n]) else {
                continue;
            };
            if r.id != self.id || r.seq != self.round || !targets.contains(&r.from) {
                continue;
            }
            if answered.insert(r.from) {
                if need != super::Need::None && self.servers.contains(&r.from) {
                    reach.servers_up += 1;
                }
                if witnesses.contains(&r.from) {
                    reach.witnesses_up += 1;
                }
            }
        }
        reach
    }
}
