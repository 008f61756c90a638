//! The balancing decision for one queued packet: find or create its flow, choose a real server
//! for a new one (persistence first, then the service's scheduler), rewrite the packet, and
//! count the outcome. No I/O: the queue shell hands in bytes and a clock reading and carries
//! out the returned [`Verdict`]. This is the one place a packet is rewritten and a server chosen.
//!
//! Sharing between queue workers: the flow table is split into shards by the client's address
//! and port, which both directions of a flow carry (the source of a request, the destination of
//! a reply), so a flow's two directions always meet in one shard whichever queue they land on.
//!
//! Live reconfiguration: the services are a [`View`] swapped whole ([`Dataplane::update`]);
//! flows, persistence and the per-server counters outlive it. Each real server (protocol, VIP
//! port, address) gets a stable id the first time it is configured; a flow's tag is that id,
//! so a flow keeps its server and its counters whatever the view looks like now.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{Config, Mode, Service};
use crate::conntrack::wire::{tcp_state, CtEntry, EventKind, IPS_ASSURED};
use crate::core::flow::{FlowKey, FlowTable, Lookup, Phase, Reported, Timeouts};
use crate::core::net::Protocol;
use crate::core::packet::{self, tcp_flags, ChecksumState, Endpoint, Malformed};
use crate::core::persist::{PersistKey, Persistence};
use crate::core::ruleset::{offload_id, offload_mark, OffloadTarget};
use crate::core::sched::{Candidate, Scheduler};
use crate::wire::replication::Record;
/// Which rule queued the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → VIP, queued before routing: gets DNAT.
    Request,
    /// Real server → client, queued after routing: gets SNAT.
    Reply,
}

/// What to tell the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reinject the (rewritten) packet.
    Accept,
    /// Reinject the offload flow's first packet unchanged with this mark: the kernel's NAT
    /// rule for the mark binds the flow to its server.
    Offload(u32),
    Drop(DropReason),
}

/// Why a packet was dropped; each has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed(Malformed),
    /// A request for a protocol/port with no service (the rules should not queue it).
    NoService,
    /// A TCP packet other than a SYN for a flow slbd does not know, e.g. after a restart.
    /// A freshly chosen server would only answer it with a reset.
    MidStream,
    /// The same, within the grace period after this node took over from its dual: a flow the
    /// replication did not deliver. Counted apart so a takeover's losses are visible.
    AfterTakeover,
    /// A reply that matches no flow: sending it on would leak the real server's address.
    ReplyWithoutFlow,
    /// No real server of the service is in rotation.
    NoServer,
    /// The flow table is at `flows.max`.
    TableFull,
    /// The kernel handed over less than the whole packet; writing it back would truncate it.
    Truncated,
}

impl DropReason {
    pub const COUNT: usize = 7 + 8;

    fn index(self) -> usize {
        match self {
            DropReason::NoService => 0,
            DropReason::MidStream => 1,
            DropReason::ReplyWithoutFlow => 2,
            DropReason::NoServer => 3,
            DropReason::TableFull => 4,
            DropReason::Truncated => 5,
            DropReason::AfterTakeover => 6,
            DropReason::Malformed(m) => 7 + m as usize,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoService => "no_service",
            DropReason::MidStream => "mid_stream_without_flow",
            DropReason::ReplyWithoutFlow => "reply_without_flow",
            DropReason::NoServer => "no_server",
            DropReason::TableFull => "flow_table_full",
            DropReason::Truncated => "truncated",
            DropReason::AfterTakeover => "mid_stream_after_takeover",
            DropReason::Malformed(m) => m.name(),
        }
    }

    pub fn all() -> impl Iterator<Item = DropReason> {
        [
            DropReason::NoService,
            DropReason::MidStream,
            DropReason::AfterTakeover,
            DropReason::ReplyWithoutFlow,
            DropReason::NoServer,
            DropReason::TableFull,
            DropReason::Truncated,
        ]
        .into_iter()
        .chain(Malformed::ALL.into_iter().map(DropReason::Malformed))
    }
}

/// Per real server counters and health, shared by the queue workers and the health checker.
#[derive(Debug)]
pub struct ServerStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub new_flows: AtomicU64,
    pub live_flows: AtomicU64,
    /// Times the service's scheduler chose this server.
    pub scheduled: AtomicU64,
    /// Times persistence sent a client back to this server (the scheduler was not asked).
    pub persisted: AtomicU64,
    /// In rotation. Servers start up, so balancing starts before the first check completes.
    pub up: AtomicBool,
    /// Smoothed service latency in µs; 0 until measured.
    pub latency_us: AtomicU32,
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            packets_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            packets_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            new_flows: AtomicU64::new(0),
            live_flows: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
            persisted: AtomicU64::new(0),
            up: AtomicBool::new(true),
            latency_us: AtomicU32::new(0),
        }
    }
}

/// Every real server ever configured, by stable id (ids are never reused, so flows to a
/// removed server still find their counters while they drain).
#[derive(Default, Clone)]
struct Registry {
    stats: Vec<Arc<ServerStats>>,
    ids: HashMap<(Protocol, u16, SocketAddrV4), u32>,
    /// The mode of each id's service when it was last configured.
    modes: Vec<Mode>,
}

/// A service's scheduler with the candidate list it is handed, refreshed at each pick (kept
/// here so that a pick allocates nothing).
struct Picker {
    scheduler: Box<dyn Scheduler>,
    candidates: Vec<Candidate>,
}

pub(crate) struct ServiceState {
    pub(crate) service: Service,
    /// The registry id of each of `service.servers`.
    pub(crate) ids: Vec<u32>,
    picker: Mutex<Picker>,
}

/// The services in force.
pub(crate) struct View {
    pub(crate) vip: Ipv4Addr,
    pub(crate) services: Vec<ServiceState>,
}

/// Whole-dataplane counters.
#[derive(Debug)]
pub struct Counters {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl Counters {
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.drops[why.index()].load(Relaxed)
    }
}

const SHARDS: usize = 64;

/// Changes a shard holds for replication before the replication thread takes them (every
/// ~10 ms). Past this the log stops growing and is marked overflowed: replication falls
/// behind and resynchronises with a snapshot, the data path never waits.
const LOG_CAP_PER_SHARD: usize = 4096;

/// After a takeover, mid-stream TCP packets of unknown flows are counted apart for this long.
pub const TAKEOVER_GRACE_MS: u64 = 5_000;

/// A slice of the flow table with its changes not yet replicated, under one lock.
struct Shard {
    flows: FlowTable,
    log: Vec<Record>,
}

impl std::ops::Deref for Shard {
    type Target = FlowTable;
    fn deref(&self) -> &FlowTable {
        &self.flows
    }
}

impl std::ops::DerefMut for Shard {
    fn deref_mut(&mut self) -> &mut FlowTable {
        &mut self.flows
    }
}

/// The change log was full at some point since it was last taken: changes were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOverflowed;

/// What [`Dataplane::apply_replica`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaApplied {
    pub flows: u64,
    pub ended: u64,
    pub persisted: u64,
    /// Records for a service or server this node does not have, or past the table's maximum.
    pub unknown: u64,
}

pub struct Dataplane {
    view: ArcSwap<View>,
    registry: ArcSwap<Registry>,
    /// Serialises updates (the view swap itself is lock-free for readers).
    updating: Mutex<u64>,
    seed: u64,
    shards: Box<[Mutex<Shard>]>,
    persistence: Mutex<Persistence>,
    pub counters: Counters,
    /// A STANDBY is receiving changes: log them.
    logging: AtomicBool,
    log_overflowed: AtomicBool,
    /// This node carries the VIP's traffic (loaded). A STANDBY's replicated flows see no
    /// packets, so they are not expired while this is off.
    balancing: AtomicBool,
    /// Until when mid-stream packets of unknown flows count as [`DropReason::AfterTakeover`].
    grace_until_ms: AtomicU64,
}

/// Takes `n` off a server's live count (saturating: counts are advisory, never negative).
fn less_live(st: &ServerStats, n: u64) {
    let _ = st
        .live_flows
        .fetch_update(Relaxed, Relaxed, |live| Some(live.saturating_sub(n)));
}

fn shard_of(client: SocketAddrV4) -> usize {
    // Fibonacci hashing of address and port: cheap, and spreads sequential clients.
    let x = (u64::from(u32::from(*client.ip())) << 16) | u64::from(client.port());
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

fn end_record(e: &crate::core::flow::Ended) -> Record {
    Record::End {
        protocol: e.protocol,
        client: e.client,
        vip_port: e.vip.port(),
    }
}

fn flow_record(key: &FlowKey, server: SocketAddrV4) -> Record {
    Record::Flow {
        protocol: key.protocol,
        client: key.src,
        vip_port: key.dst.port(),
        server,
        established: true,
    }
}

fn persist_record(key: &PersistKey, server: SocketAddrV4, ttl_ms: u64) -> Record {
    Record::Persist {
        protocol: key.protocol,
        client: key.client,
        vip_port: key.port,
        server,
        ttl_ms: ttl_ms.min(u64::from(u32::MAX)) as u32,
    }
}

fn timeouts(config: &Config) -> Timeouts {
    Timeouts {
        tcp: config.flows.tcp_timeout,
        tcp_closing: config.flows.tcp_closing_timeout,
        udp: config.flows.udp_timeout,
    }
}

impl Dataplane {
    /// A data plane for `config`; `seed` feeds the randomised schedulers.
    pub fn new(config: &Config, seed: u64) -> Dataplane {
        let per_shard = config.flows.max.div_ceil(SHARDS as u32);
        let dp = Dataplane {
            view: ArcSwap::from_pointee(View {
                vip: config.vip,
                services: Vec::new(),
            }),
            registry: ArcSwap::from_pointee(Registry::default()),
            updating: Mutex::new(0),
            seed,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        flows: FlowTable::new(timeouts(config), per_shard),
                        log: Vec::new(),
                    })
                })
                .collect(),
            persistence: Mutex::new(Persistence::new(config.flows.max as usize)),
            counters: Counters {
                requests: AtomicU64::new(0),
                replies: AtomicU64::new(0),
                drops: std::array::from_fn(|_| AtomicU64::new(0)),
            },
            logging: AtomicBool::new(false),
            log_overflowed: AtomicBool::new(false),
            balancing: AtomicBool::new(true),
            grace_until_ms: AtomicU64::new(0),
        };
        dp.update(config);
        dp
    }

    /// Puts `config`'s services in force for new flows. Established flows keep their server
    /// (a removed server's flows drain: they run until they end, as long as their service
    /// remains; a removed service's flows end with it); counters and health of servers that
    /// stay are kept. Flow limits other than the timeouts apply from a restart.
    pub fn update(&self, config: &Config) {
        let mut generation = self.updating.lock();
        *generation += 1;
        let mut registry = Registry::clone(&self.registry.load());
        let services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ids: Vec<u32> = s
                    .servers
                    .iter()
                    .map(|r| {
                        let key = (s.protocol, s.port, r.addr);
                        let id = *registry.ids.entry(key).or_insert_with(|| {
                            registry.stats.push(Arc::new(ServerStats::default()));
                            registry.modes.push(s.mode);
                            (registry.stats.len() - 1) as u32
                        });
                        registry.modes[id as usize] = s.mode;
                        id
                    })
                    .collect();
                let seed = self
                    .seed
                    .wrapping_add(*generation << 16)
                    .wrapping_add(i as u64);
                ServiceState {
                    picker: Mutex::new(Picker {
                        scheduler: s.algorithm.scheduler(seed),
                        candidates: s
                            .servers
                            .iter()
                            .map(|r| Candidate {
                                weight: r.weight,
                                up: true,
                                live: 0,
                                latency_us: None,
                            })
                            .collect(),
                    }),
                    ids,
                    service: s.clone(),
                }
            })
            .collect();
        self.registry.store(Arc::new(registry));
        self.view.store(Arc::new(View {
            vip: config.vip,
            services,
        }));
        for shard in self.shards.iter() {
            shard.lock().set_timeouts(timeouts(config));
        }
    }

    /// Decides a queued packet and rewrites `buf` in place when the verdict is Accept.
    /// `whole` is false when the kernel copied only part of the packet.
    pub fn handle(
        &self,
        dir: Direction,
        buf: &mut [u8],
        whole: bool,
        csum: ChecksumState,
        now_ms: u64,
    ) -> Verdict {
        let verdict = if !whole {
            Err(DropReason::Truncated)
        } else {
            match dir {
                Direction::Request => self.request(buf, csum, now_ms),
                Direction::Reply => self.reply(buf, csum, now_ms).map(|()| None),
            }
        };
        match verdict {
            Ok(offload) => {
                let c = match dir {
                    Direction::Request => &self.counters.requests,
                    Direction::Reply => &self.counters.replies,
                };
                c.fetch_add(1, Relaxed);
                offload.map_or(Verdict::Accept, Verdict::Offload)
            }
            Err(why) => {
                self.counters.drops[why.index()].fetch_add(1, Relaxed);
                Verdict::Drop(why)
            }
        }
    }

    /// Runs `f` on server `id`'s counters. The registry guard is arc-swap's cheap borrow, so
    /// the per-packet path takes no reference count (a shared atomic every core would bounce).
    fn with_stats(&self, id: u32, f: impl FnOnce(&ServerStats)) {
        if let Some(st) = self.registry.load().stats.get(id as usize) {
            f(st);
        }
    }

    fn stats(&self, id: u32) -> Option<Arc<ServerStats>> {
        self.registry.load().stats.get(id as usize).cloned()
    }

    /// A request: rewritten in place (packet mode, `None`) or, for an offload service's first
    /// packet, left as it is with the mark that binds its flow (`Some(mark)`).
    fn request(
        &self,
        buf: &mut [u8],
        csum: ChecksumState,
        now_ms: u64,
    ) -> Result<Option<u32>, DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        let view = self.view.load();
        let svc = view
            .services
            .iter()
            .find(|s| s.service.protocol == h.protocol && s.service.port == h.dst.port())
            .filter(|_| *h.dst.ip() == view.vip)
            .ok_or(DropReason::NoService)?;
        let key = FlowKey {
            protocol: h.protocol,
            src: h.src,
            dst: h.dst,
        };
        if svc.service.mode == Mode::Offload {
            return self
                .offload_first(&view, svc, &key, h.flags, now_ms)
                .map(Some);
        }
        let mut flows = self.shards[shard_of(h.src)].lock();
        let found = flows.lookup_request(&key, h.flags, now_ms);
        let (server, id) = match found {
            Lookup::Found(placed) => {
                if placed.closed_now {
                    self.with_stats(placed.tag, |st| less_live(st, 1));
                }
                (placed.server, placed.tag)
            }
            Lookup::Missing | Lookup::Reused(_) => {
                if let Lookup::Reused(ended) = found {
                    self.log(&mut flows, end_record(&ended));
                    self.flow_ended(&view, &ended, now_ms);
                }
                let syn = h.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
                if h.protocol == Protocol::Tcp && !syn {
                    return Err(if now_ms < self.grace_until_ms.load(Relaxed) {
                        DropReason::AfterTakeover
                    } else {
                        DropReason::MidStream
                    });
                }
                let i = self.choose(svc, h.src, now_ms, &mut flows)?;
                let (server, id) = (svc.service.servers[i].addr, svc.ids[i]);
                let displaced = flows
                    .insert(&key, server, id, now_ms)
                    .map_err(|_| DropReason::TableFull)?;
                if let Some(ended) = displaced {
                    self.log(&mut flows, end_record(&ended));
                    self.flow_ended(&view, &ended, now_ms);
                }
                // A TCP flow is replicated once its server answers (a SYN the server never saw
                // answered is retransmitted and scheduled afresh anyway); UDP at once.
                if h.protocol == Protocol::Udp {
                    self.log(
                        &mut flows,
                        Record::Flow {
                            protocol: h.protocol,
                            client: h.src,
                            vip_port: h.dst.port(),
                            server,
                            established: true,
                        },
                    );
                }
                self.with_stats(id, |st| {
                    st.new_flows.fetch_add(1, Relaxed);
                    st.live_flows.fetch_add(1, Relaxed);
                });
                (server, id)
            }
        };
        drop(flows);
        self.with_stats(id, |st| {
            st.packets_in.fetch_add(1, Relaxed);
            st.bytes_in.fetch_add(buf.len() as u64, Relaxed);
        });
        packet::rewrite(buf, &h, Endpoint::Destination, server, csum);
        Ok(None)
    }

    /// An offload flow's first packet (conntrack has no entry for it): the same choice as in
    /// packet mode, answered with the chosen server's mark instead of a rewrite. A flow the
    /// table still holds keeps its server, unless a SYN restarts it.
    fn offload_first(
        &self,
        view: &View,
        svc: &ServiceState,
        key: &FlowKey,
        flags: u8,
        now_ms: u64,
    ) -> Result<u32, DropReason> {
        let syn = flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
        let mut flows = self.shards[shard_of(key.src)].lock();
        let stale = match flows.lookup_request(key, flags, now_ms) {
            Lookup::Found(placed) if key.protocol == Protocol::Udp || !syn => {
                if placed.closed_now {
                    self.with_stats(placed.tag, |st| less_live(st, 1));
                }
                return offload_mark(placed.tag).ok_or(DropReason::NoServer);
            }
            // Conntrack forgot a flow the table kept (its end was not reported yet).
            Lookup::Found(_) => flows.remove_request(key),
            Lookup::Reused(ended) => Some(ended),
            Lookup::Missing => None,
        };
        if let Some(ended) = stale {
            self.log(&mut flows, end_record(&ended));
            self.flow_ended(view, &ended, now_ms);
        }
        if key.protocol == Protocol::Tcp && !syn {
            return Err(if now_ms < self.grace_until_ms.load(Relaxed) {
                DropReason::AfterTakeover
            } else {
                DropReason::MidStream
            });
        }
        let i = self.choose(svc, key.src, now_ms, &mut flows)?;
        let (server, id) = (svc.service.servers[i].addr, svc.ids[i]);
        let mark = offload_mark(id).ok_or(DropReason::NoServer)?;
        let displaced = flows
            .insert_kernel(key, server, id, now_ms, false)
            .map_err(|_| DropReason::TableFull)?;
        if let Some(ended) = displaced {
            self.log(&mut flows, end_record(&ended));
            self.flow_ended(view, &ended, now_ms);
        }
        if key.protocol == Protocol::Udp {
            self.log(&mut flows, flow_record(key, server));
        }
        self.with_stats(id, |st| {
            st.new_flows.fetch_add(1, Relaxed);
            st.live_flows.fetch_add(1, Relaxed);
        });
        Ok(mark)
    }

    /// Follows conntrack's report on an entry (an event, or a dump line with `kind` New):
    /// confirms offload flows, tracks their TCP state for the live counts and replication,
    /// removes the ones that ended, and adopts ones the table lost. Reports on entries slbd
    /// did not place are ignored, and so is everything while this node is not balancing (a
    /// STANDBY's flows are the ACTIVE's, not its own kernel's).
    pub fn conntrack_report(&self, e: &CtEntry, now_ms: u64) {
        if !self.balancing.load(Relaxed) {
            return;
        }
        let Some(id) = offload_id(e.mark) else { return };
        let registry = self.registry.load();
        let known = registry
            .ids
            .get(&(e.protocol, e.orig_dst.port(), e.reply_src));
        if known != Some(&id) {
            return;
        }
        let view = self.view.load();
        let key = FlowKey {
            protocol: e.protocol,
            src: e.orig_src,
            dst: e.orig_dst,
        };
        let phase = match (e.protocol, e.tcp_state) {
            (Protocol::Udp, _) => Some(Phase::Established),
            // Flows that report only assurance and end: assured means established.
            (Protocol::Tcp, None) if e.status & IPS_ASSURED != 0 => Some(Phase::Established),
            (Protocol::Tcp, None) => None,
            (Protocol::Tcp, Some(tcp_state::ESTABLISHED)) => Some(Phase::Established),
            (Protocol::Tcp, Some(s)) if (tcp_state::FIN_WAIT..=tcp_state::CLOSE).contains(&s) => {
                Some(Phase::Closing)
            }
            (Protocol::Tcp, Some(_)) => Some(Phase::Opening),
        };
        let stats = &registry.stats[id as usize];
        let mut flows = self.shards[shard_of(key.src)].lock();
        if e.kind == EventKind::Destroy {
            if let Some(ended) = flows.remove_reported(&key, e.reply_src) {
                self.log(&mut flows, end_record(&ended));
                drop(flows);
                self.flow_ended(&view, &ended, now_ms);
                if let Some(c) = e.counters {
                    stats.packets_in.fetch_add(c.orig_packets, Relaxed);
                    stats.bytes_in.fetch_add(c.orig_bytes, Relaxed);
                    stats.packets_out.fetch_add(c.reply_packets, Relaxed);
                    stats.bytes_out.fetch_add(c.reply_bytes, Relaxed);
                }
            }
            return;
        }
        match flows.report_kernel(&key, e.reply_src, phase) {
            Reported::Known {
                established_now,
                closed_now,
            } => {
                if established_now && key.protocol == Protocol::Tcp {
                    self.log(&mut flows, flow_record(&key, e.reply_src));
                }
                if closed_now {
                    less_live(stats, 1);
                }
            }
            // The table lost it (an unconfirmed flow expired, or events were lost): adopt it.
            Reported::Unknown if phase != Some(Phase::Closing) => {
                if let Ok(displaced) = flows.insert_kernel(&key, e.reply_src, id, now_ms, true) {
                    if let Some(d) = displaced {
                        self.log(&mut flows, end_record(&d));
                        self.flow_ended(&view, &d, now_ms);
                    }
                    if phase == Some(Phase::Established) {
                        flows.report_kernel(&key, e.reply_src, phase);
                        self.log(&mut flows, flow_record(&key, e.reply_src));
                    }
                    stats.live_flows.fetch_add(1, Relaxed);
                }
            }
            Reported::Unknown => {}
        }
    }

    /// Conntrack's whole list of slbd's entries (after lost events, or a restart): offload
    /// flows it no longer holds end, and the ones it holds are adopted or updated.
    pub fn conntrack_resync(&self, entries: &[CtEntry], now_ms: u64) {
        if !self.balancing.load(Relaxed) {
            return;
        }
        let held: std::collections::HashSet<(Protocol, SocketAddrV4, SocketAddrV4)> = entries
            .iter()
            .map(|e| (e.protocol, e.orig_src, e.orig_dst))
            .collect();
        let view = self.view.load();
        for shard in self.shards.iter() {
            let mut t = shard.lock();
            let gone =
                t.remove_where(|f| f.kernel && !held.contains(&(f.protocol, f.client, f.vip)));
            for e in &gone {
                self.log(&mut t, end_record(e));
            }
            drop(t);
            for e in &gone {
                self.flow_ended(&view, e, now_ms);
            }
        }
        for e in entries {
            self.conntrack_report(e, now_ms);
        }
    }

    /// On taking over: the offload flows the table holds (replicated from the dual), each
    /// handed to the kernel as a flow conntrack carries. The caller commits them to conntrack
    /// before the VIP comes up. Returns (flow, its mark, established).
    pub fn offload_takeover(&self) -> Vec<(crate::core::flow::Ended, u32, bool)> {
        let view = self.view.load();
        let offload = |e: &crate::core::flow::Ended| {
            view.services.iter().any(|s| {
                s.service.mode == Mode::Offload
                    && s.service.protocol == e.protocol
                    && s.service.port == e.vip.port()
            }) && offload_mark(e.tag).is_some()
        };
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (e, established) in shard.lock().hand_to_kernel(offload) {
                if let Some(mark) = offload_mark(e.tag) {
                    out.push((e, mark, established));
                }
            }
        }
        out
    }

    /// The servers of offload services in force, each with the mark that binds a flow to it.
    pub fn offload_targets(&self) -> Vec<OffloadTarget> {
        let view = self.view.load();
        let mut out: Vec<OffloadTarget> = view
            .services
            .iter()
            .filter(|s| s.service.mode == Mode::Offload)
            .flat_map(|s| {
                s.service.servers.iter().zip(&s.ids).filter_map(|(r, id)| {
                    Some(OffloadTarget {
                        mark: offload_mark(*id)?,
                        protocol: s.service.protocol,
                        server: r.addr,
                        every_state: s.service.algorithm
                            == crate::core::sched::Algorithm::LeastConnections,
                    })
                })
            })
            .collect();
        out.sort_by_key(|t| t.mark);
        out
    }

    /// Persistence first, when on and its server is still in rotation; else the scheduler.
    /// `shard` is the client's, held by the caller: persistence changes are logged there.
    fn choose(
        &self,
        svc: &ServiceState,
        client: SocketAddrV4,
        now_ms: u64,
        shard: &mut Shard,
    ) -> Result<usize, DropReason> {
        let registry = self.registry.load();
        let up = |i: usize| registry.stats[svc.ids[i] as usize].up.load(Relaxed);
        let timeout = svc.service.persistence_timeout.as_millis() as u64;
        let pkey = PersistKey {
            client: *client.ip(),
            protocol: svc.service.protocol,
            port: svc.service.port,
        };
        if timeout > 0 {
            let mut persisted = self.persistence.lock();
            let remembered = persisted.get(&pkey, now_ms).and_then(|addr| {
                svc.service
                    .servers
                    .iter()
                    .position(|s| s.addr == addr)
                    .filter(|&i| up(i))
            });
            if let Some(i) = remembered {
                persisted.remember(pkey, svc.service.servers[i].addr, now_ms + timeout);
                drop(persisted);
                self.log(
                    shard,
                    persist_record(&pkey, svc.service.servers[i].addr, timeout),
                );
                registry.stats[svc.ids[i] as usize]
                    .persisted
                    .fetch_add(1, Relaxed);
                return Ok(i);
            }
        }
        let i = {
            let mut p = svc.picker.lock();
            let Picker {
                scheduler,
                candidates,
            } = &mut *p;
            for (c, id) in candidates.iter_mut().zip(&svc.ids) {
                let st = &registry.stats[*id as usize];
                c.up = st.up.load(Relaxed);
                c.live = st.live_flows.load(Relaxed).min(u64::from(u32::MAX)) as u32;
                c.latency_us = Some(st.latency_us.load(Relaxed)).filter(|l| *l > 0);
            }
            scheduler.pick(candidates).ok_or(DropReason::NoServer)?
        };
        registry.stats[svc.ids[i] as usize]
            .scheduled
            .fetch_add(1, Relaxed);
        if timeout > 0 {
            let server = svc.service.servers[i].addr;
            self.persistence
                .lock()
                .remember(pkey, server, now_ms + timeout);
            self.log(shard, persist_record(&pkey, server, timeout));
        }
        Ok(i)
    }

    fn reply(&self, buf: &mut [u8], csum: ChecksumState, now_ms: u64) -> Result<(), DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        let key = FlowKey {
            protocol: h.protocol,
            src: h.src,
            dst: h.dst,
        };
        let mut shard = self.shards[shard_of(h.dst)].lock();
        let r = shard
            .lookup_reply(&key, h.flags, now_ms)
            .ok_or(DropReason::ReplyWithoutFlow)?;
        if r.established_now {
            self.log(
                &mut shard,
                Record::Flow {
                    protocol: h.protocol,
                    client: h.dst,
                    vip_port: r.vip.port(),
                    server: h.src,
                    established: true,
                },
            );
        }
        drop(shard);
        self.with_stats(r.tag, |st| {
            st.packets_out.fetch_add(1, Relaxed);
            st.bytes_out.fetch_add(buf.len() as u64, Relaxed);
            if r.closed_now {
                less_live(st, 1);
            }
        });
        packet::rewrite(buf, &h, Endpoint::Source, r.vip, csum);
        Ok(())
    }

    /// Expires idle flows, a bounded slice of each shard per call, and keeps persistence for
    /// clients whose flows just ended. Returns how many flows ended.
    /// A STANDBY (not balancing) expires only persistence: its flows end when the ACTIVE
    /// says so.
    pub fn expire(&self, now_ms: u64) -> usize {
        if !self.balancing.load(Relaxed) {
            self.persistence.lock().expire(now_ms);
            return 0;
        }
        let mut n = 0;
        let view = self.view.load();
        for shard in self.shards.iter() {
            let ended = {
                let mut t = shard.lock();
                let budget = 4096.max(t.len() / 8);
                let ended = t.expire(now_ms, budget);
                for e in &ended {
                    self.log(&mut t, end_record(e));
                }
                ended
            };
            n += ended.len();
            for e in ended {
                self.flow_ended(&view, &e, now_ms);
            }
        }
        self.persistence.lock().expire(now_ms);
        n
    }

    /// Bookkeeping for a flow that left the table: its server's live count, and persistence
    /// kept for the client from the flow's end.
    fn flow_ended(&self, view: &View, e: &crate::core::flow::Ended, now_ms: u64) {
        // A closed flow left the live count when it closed.
        if !e.was_closing {
            self.with_stats(e.tag, |st| less_live(st, 1));
        }
        let timeout = view
            .services
            .iter()
            .find(|s| s.service.protocol == e.protocol && s.service.port == e.vip.port())
            .map_or(0, |s| s.service.persistence_timeout.as_millis() as u64);
        if timeout > 0 {
            let key = PersistKey {
                client: *e.client.ip(),
                protocol: e.protocol,
                port: e.vip.port(),
            };
            self.persistence
                .lock()
                .touch(&key, e.server, now_ms + timeout);
        }
    }

    /// Appends a change to `shard`'s replication log, while a STANDBY is listening.
    fn log(&self, shard: &mut Shard, r: Record) {
        if !self.logging.load(Relaxed) {
            return;
        }
        if shard.log.len() < LOG_CAP_PER_SHARD {
            shard.log.push(r);
        } else {
            self.log_overflowed.store(true, Relaxed);
        }
    }

    /// Starts logging changes for a STANDBY, from empty logs. Call before taking the
    /// snapshot: a change that lands in both is applied twice, which is harmless (records
    /// are idempotent); one in neither cannot happen.
    pub fn start_change_log(&self) {
        self.logging.store(true, Relaxed);
        for shard in self.shards.iter() {
            shard.lock().log.clear();
        }
        self.log_overflowed.store(false, Relaxed);
    }

    /// Stops logging and drops what was not taken.
    pub fn stop_change_log(&self) {
        self.logging.store(false, Relaxed);
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            s.log.clear();
            s.log.shrink_to(LOG_CAP_PER_SHARD / 16);
        }
    }

    /// Moves the logged changes into `out` (each shard's in the order they happened). An
    /// error means some were lost since the last call: the STANDBY needs a new snapshot.
    pub fn take_changes(&self, out: &mut Vec<Record>) -> Result<(), LogOverflowed> {
        for shard in self.shards.iter() {
            out.append(&mut shard.lock().log);
        }
        if self.log_overflowed.swap(false, Relaxed) {
            return Err(LogOverflowed);
        }
        Ok(())
    }

    /// Whether this node carries traffic. Turning it on restarts every flow's idle clock
    /// (a STANDBY's replicated flows saw no packets here) and, for a `takeover` from a dual,
    /// opens the grace period for mid-stream packets of unknown flows.
    pub fn set_balancing(&self, on: bool, takeover: bool, now_ms: u64) {
        let was = self.balancing.swap(on, Relaxed);
        if on && !was {
            for shard in self.shards.iter() {
                shard.lock().touch_all(now_ms);
            }
            if takeover {
                self.grace_until_ms
                    .store(now_ms + TAKEOVER_GRACE_MS, Relaxed);
            }
        }
    }

    /// Forgets every flow and persistence entry: a STANDBY about to apply a new snapshot.
    pub fn clear_replica(&self) {
        let registry = self.registry.load();
        for shard in self.shards.iter() {
            let ended = shard.lock().remove_where(|_| true);
            for e in ended.iter().filter(|e| !e.was_closing) {
                if let Some(st) = registry.stats.get(e.tag as usize) {
                    less_live(st, 1);
                }
            }
        }
        self.persistence.lock().clear();
    }

    /// Every flow and persistence entry, as replication records: what a STANDBY that joins
    /// receives before it may take over.
    pub fn replica_snapshot(&self, now_ms: u64) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.flow_count());
        for shard in self.shards.iter() {
            let t = shard.lock();
            out.extend(t.flows().map(|f| Record::Flow {
                protocol: f.protocol,
                client: f.client,
                vip_port: f.vip.port(),
                server: f.server,
                established: t.is_established(&FlowKey {
                    protocol: f.protocol,
                    src: f.client,
                    dst: f.vip,
                }) == Some(true),
            }));
        }
        let p = self.persistence.lock();
        out.extend(p.entries(now_ms).map(|(k, server, until)| Record::Persist {
            protocol: k.protocol,
            client: k.client,
            vip_port: k.port,
            server,
            ttl_ms: (until - now_ms).min(u64::from(u32::MAX)) as u32,
        }));
        out
    }

    /// Applies replicated records (on the STANDBY, so that a takeover finds every flow on the
    /// server the ACTIVE gave it). Records naming a service or server this node does not have
    /// are skipped and counted: the configurations differ (the sync has not caught up).
    pub fn apply_replica(&self, records: &[Record], now_ms: u64) -> ReplicaApplied {
        let view = self.view.load();
        let registry = self.registry.load();
        let mut done = ReplicaApplied::default();
        for r in records {
            match *r {
                Record::Flow {
                    protocol,
                    client,
                    vip_port,
                    server,
                    established,
                } => {
                    let Some(&id) = registry.ids.get(&(protocol, vip_port, server)) else {
                        done.unknown += 1;
                        continue;
                    };
                    let key = FlowKey {
                        protocol,
                        src: client,
                        dst: SocketAddrV4::new(view.vip, vip_port),
                    };
                    let mut flows = self.shards[shard_of(client)].lock();
                    if let Some(old) = flows.remove_request(&key) {
                        self.flow_ended(&view, &old, now_ms);
                    }
                    match flows.insert(&key, server, id, now_ms) {
                        Ok(displaced) => {
                            if let Some(d) = displaced {
                                self.flow_ended(&view, &d, now_ms);
                            }
                            if established {
                                flows.set_established(&key);
                            }
                            self.with_stats(id, |st| {
                                st.live_flows.fetch_add(1, Relaxed);
                            });
                            done.flows += 1;
                        }
                        Err(_) => done.unknown += 1,
                    }
                }
                Record::End {
                    protocol,
                    client,
                    vip_port,
                } => {
                    let key = FlowKey {
                        protocol,
                        src: client,
                        dst: SocketAddrV4::new(view.vip, vip_port),
                    };
                    let ended = self.shards[shard_of(client)].lock().remove_request(&key);
                    if let Some(e) = ended {
                        self.flow_ended(&view, &e, now_ms);
                        done.ended += 1;
                    }
                }
                Record::Persist {
                    protocol,
                    client,
                    vip_port,
                    server,
                    ttl_ms,
                } => {
                    self.persistence.lock().remember(
                        PersistKey {
                            client,
                            protocol,
                            port: vip_port,
                        },
                        server,
                        now_ms + u64::from(ttl_ms),
                    );
                    done.persisted += 1;
                }
            }
        }
        done
    }

    /// The stable id of server `server` of service `service` in the view in force.
    pub fn server_id(&self, service: usize, server: usize) -> Option<u32> {
        self.view
            .load()
            .services
            .get(service)?
            .ids
            .get(server)
            .copied()
    }

    /// Whether server `id` belongs to an offload service.
    pub fn is_offload(&self, id: u32) -> bool {
        self.registry.load().modes.get(id as usize) == Some(&Mode::Offload)
    }

    /// Whether server `id` is in rotation.
    pub fn is_up(&self, id: u32) -> bool {
        self.stats(id).is_some_and(|st| st.up.load(Relaxed))
    }

    /// Records a server's health. When it leaves rotation its flows are forgotten at once
    /// (the stated policy: their next packets are dropped, TCP as mid-stream and a UDP flow's
    /// next datagram is scheduled afresh to a server that is up). Returns how many flows ended.
    pub fn set_health(&self, id: u32, up: bool, latency_us: Option<u32>) -> usize {
        let Some(st) = self.stats(id) else { return 0 };
        if let Some(l) = latency_us {
            st.latency_us.store(l.max(1), Relaxed);
        }
        let was_up = st.up.swap(up, Relaxed);
        if up || !was_up {
            return 0;
        }
        let mut n = 0;
        let mut open = 0;
        for shard in self.shards.iter() {
            let mut t = shard.lock();
            let ended = t.remove_where(|e| e.tag == id);
            for e in &ended {
                self.log(&mut t, end_record(e));
            }
            drop(t);
            n += ended.len();
            open += ended.iter().filter(|e| !e.was_closing).count();
        }
        less_live(&st, open as u64);
        n
    }

    /// Server ports (protocol, port) of servers no longer configured that still have flows:
    /// their replies must keep reaching slbd while they drain.
    pub fn draining_ports(&self) -> Vec<(Protocol, u16)> {
        let view = self.view.load();
        let registry = self.registry.load();
        let mut ports: Vec<(Protocol, u16)> = registry
            .ids
            .iter()
            .filter(|(_, id)| {
                registry.stats[**id as usize].live_flows.load(Relaxed) > 0
                    && registry.modes[**id as usize] == Mode::Packet
                    && !view.services.iter().any(|s| s.ids.contains(id))
            })
            .map(|((p, _, addr), _)| (*p, addr.port()))
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// Flows tracked now.
    pub fn flow_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Heap bytes held by the flow tables.
    pub fn flow_memory(&self) -> usize {
        self.shards.iter().map(|s| s.lock().memory_bytes()).sum()
    }

    /// Each service in force with its servers' counters, for status and tests.
    pub fn services(&self) -> Vec<(Service, Vec<Arc<ServerStats>>)> {
        let view = self.view.load();
        let registry = self.registry.load();
        view.services
            .iter()
            .map(|s| {
                (
                    s.service.clone(),
                    s.ids
                        .iter()
                        .map(|id| registry.stats[*id as usize].clone())
                        .collect(),
                )
            })
            .collect()
    }

    /// The VIP in force.
    pub fn vip(&self) -> Ipv4Addr {
        self.view.load().vip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packet::fixtures::{checksums_ok, make_partial, tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, FIN, SYN};

    impl Dataplane {
        fn for_test(config: &Config) -> Dataplane {
            Dataplane::new(config, 42)
        }
    }

    fn config(extra: &str) -> Config {
        Config::from_json(&format!(
            r#"{{
            "address": "10.0.0.100", "address_dev": "eth0",
            "gateway": "172.16.0.1", "gateway_dev": "eth1",
            "cluster_network": "172.16.0.0/24",
            {extra}
            "services": [
              {{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:8080"]}},
              {{"protocol": "udp", "port": 53, "algorithm": "RATIO",
                "servers": [{{"address": "172.16.0.2:53", "weight": 3}}, "172.16.0.3:53", "172.16.0.4:53"]}}
            ]}}"#
        ))
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn dst_of(buf: &[u8]) -> SocketAddrV4 {
        packet::parse(buf).unwrap().dst
    }

    #[test]
    fn new_tcp_flows_are_spread_round_robin_and_rewritten() {
        let dp = Dataplane::for_test(&config(""));
        let mut seen = Vec::new();
        for port in 40000..40006 {
            let mut p = tcp(
                sa(&format!("10.0.0.5:{port}")),
                sa("10.0.0.100:80"),
                SYN,
                b"",
                &[],
            );
            assert_eq!(
                dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0),
                Verdict::Accept
            );
            assert!(checksums_ok(&p));
            seen.push(dst_of(&p));
        }
        let expected: Vec<_> = ["172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:8080"]
            .iter()
            .cycle()
            .take(6)
            .map(|s| sa(s))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(dp.flow_count(), 6);
    }

    #[test]
    fn a_flow_keeps_its_server_and_replies_come_from_the_vip() {
        let dp = Dataplane::for_test(&config(""));
        let client = sa("10.0.0.5:40000");
        let mut syn = tcp(client, sa("10.0.0.100:80"), SYN, b"", &[]);
        dp.handle(
            Direction::Request,
            &mut syn,
            true,
            ChecksumState::Complete,
            0,
        );
        let server = dst_of(&syn);
        // Another flow moves the round robin on; this flow's next packet must not move.
        let mut other = tcp(sa("10.0.0.6:1"), sa("10.0.0.100:80"), SYN, b"", &[]);
        dp.handle(
            Direction::Request,
            &mut other,
            true,
            ChecksumState::Complete,
            1,
        );
        let mut data = tcp(client, sa("10.0.0.100:80"), ACK, b"GET /", &[]);
        dp.handle(
            Direction::Request,
            &mut data,
            true,
            ChecksumState::Complete,
            2,
        );
        assert_eq!(dst_of(&data), server);

        let mut reply = tcp(server, client, SYN | ACK, b"", &[]);
        make_partial(&mut reply);
        assert_eq!(
            dp.handle(
                Direction::Reply,
                &mut reply,
                true,
                ChecksumState::Partial,
                3
            ),
            Verdict::Accept
        );
        let h = packet::parse(&reply).unwrap();
        assert_eq!(h.src, sa("10.0.0.100:80"));
        assert_eq!(h.dst, client);
        assert!(checksums_ok(&reply));
    }

    #[test]
    fn udp_ratio_spreads_by_weight() {
        let dp = Dataplane::for_test(&config(""));
        let mut counts = std::collections::HashMap::new();
        for port in 1..=30 {
            let mut p = udp(sa(&format!("10.0.0.5:{port}")), sa("10.0.0.100:53"), b"q");
            dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
            *counts.entry(*dst_of(&p).ip()).or_insert(0) += 1;
        }
        assert_eq!(counts[&"172.16.0.2".parse::<Ipv4Addr>().unwrap()], 18);
        assert_eq!(counts[&"172.16.0.3".parse::<Ipv4Addr>().unwrap()], 6);
        assert_eq!(counts[&"172.16.0.4".parse::<Ipv4Addr>().unwrap()], 6);
    }

    fn live_total(dp: &Dataplane) -> u64 {
        dp.services()[0]
            .1
            .iter()
            .map(|s| s.live_flows.load(Relaxed))
            .sum()
    }

    #[test]
    fn a_standby_given_the_snapshot_forwards_established_flows_to_their_servers() {
        let c = config(r#""persistence_timeout": 30,"#);
        let (active, standby) = (Dataplane::for_test(&c), Dataplane::for_test(&c));
        let req = |dp: &Dataplane, client: &str, flags: u8| {
            let mut p = tcp(sa(client), sa("10.0.0.100:80"), flags, b"x", &[]);
            let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 5);
            (v, dst_of(&p))
        };
        let clients: Vec<String> = (0..6).map(|i| format!("10.0.0.{}:4000", 5 + i)).collect();
        let placed: Vec<SocketAddrV4> = clients.iter().map(|c| req(&active, c, SYN).1).collect();
        // The server answered the first client's SYN: that flow is established.
        let mut synack = tcp(placed[0], sa("10.0.0.5:4000"), SYN | ACK, b"", &[]);
        active.handle(
            Direction::Reply,
            &mut synack,
            true,
            ChecksumState::Complete,
            6,
        );
        let records = active.replica_snapshot(10);
        assert_eq!(records.len(), 6 + 6, "six flows, six persisted clients");
        assert!(records.contains(&Record::Flow {
            protocol: Protocol::Tcp,
            client: sa("10.0.0.5:4000"),
            vip_port: 80,
            server: placed[0],
            established: true,
        }));

        // Before the snapshot a mid-stream packet has no flow on the standby.
        assert_eq!(
            req(&standby, &clients[1], ACK).0,
            Verdict::Drop(DropReason::MidStream)
        );
        let done = standby.apply_replica(&records, 20);
        assert_eq!((done.flows, done.persisted, done.unknown), (6, 6, 0));
        assert_eq!(standby.flow_count(), 6);
        for (client, server) in clients.iter().zip(&placed) {
            assert_eq!(
                req(&standby, client, ACK),
                (Verdict::Accept, *server),
                "{client}"
            );
        }
        // Replies come back from the VIP, and live counts follow the flows.
        let mut reply = tcp(placed[1], sa(&clients[1]), ACK, b"y", &[]);
        assert_eq!(
            standby.handle(
                Direction::Reply,
                &mut reply,
                true,
                ChecksumState::Complete,
                21
            ),
            Verdict::Accept
        );
        let live = live_total(&standby);
        assert_eq!(live, 6);
        // A persisted client's new connection goes where the ACTIVE sent it.
        assert_eq!(req(&standby, "10.0.0.5:4001", SYN).1, placed[0]);

        // An end removes the flow; a record for a server this node lacks is counted, not applied.
        let done = standby.apply_replica(
            &[
                Record::End {
                    protocol: Protocol::Tcp,
                    client: sa(&clients[2]),
                    vip_port: 80,
                },
                Record::Flow {
                    protocol: Protocol::Tcp,
                    client: sa("10.0.0.99:1"),
                    vip_port: 80,
                    server: sa("172.16.0.9:80"),
                    established: true,
                },
            ],
            30,
        );
        assert_eq!((done.ended, done.unknown), (1, 1));
        assert_eq!(
            req(&standby, &clients[2], ACK).0,
            Verdict::Drop(DropReason::MidStream)
        );
        // Applying the same flow twice does not count it twice.
        standby.apply_replica(&records[..1], 40);
        let live = live_total(&standby);
        assert_eq!(live, 6, "5 left + 1 new from the persisted client");
    }

    #[test]
    fn the_change_log_carries_what_a_standby_needs_and_nothing_while_off() {
        let c = config(r#""persistence_timeout": 30,"#);
        let (active, standby) = (Dataplane::for_test(&c), Dataplane::for_test(&c));
        standby.set_balancing(false, false, 0);
        let send = |dp: &Dataplane, dir: Direction, mut p: Vec<u8>, now: u64| {
            let v = dp.handle(dir, &mut p, true, ChecksumState::Complete, now);
            (v, p)
        };
        let vip = sa("10.0.0.100:80");
        // Nothing is logged before a STANDBY listens.
        send(
            &active,
            Direction::Request,
            tcp(sa("10.0.0.9:1"), vip, SYN, b"", &[]),
            1,
        );
        let mut out = Vec::new();
        active.take_changes(&mut out).unwrap();
        assert!(out.is_empty());

        active.start_change_log();
        let (_, p) = send(
            &active,
            Direction::Request,
            tcp(sa("10.0.0.5:4000"), vip, SYN, b"", &[]),
            2,
        );
        let server = dst_of(&p);
        // A SYN alone: only the persistence entry; the flow once the server answers.
        active.take_changes(&mut out).unwrap();
        assert!(
            matches!(out[..], [Record::Persist { ttl_ms: 30_000, .. }]),
            "{out:?}"
        );
        out.clear();
        send(
            &active,
            Direction::Reply,
            tcp(server, sa("10.0.0.5:4000"), SYN | ACK, b"", &[]),
            3,
        );
        send(
            &active,
            Direction::Request,
            tcp(sa("10.0.0.5:4000"), vip, ACK, b"", &[]),
            4,
        );
        let (_, q) = send(
            &active,
            Direction::Request,
            udp(sa("10.0.0.6:5353"), sa("10.0.0.100:53"), b"q"),
            4,
        );
        let udp_server = dst_of(&q);
        active.take_changes(&mut out).unwrap();
        // (Each shard keeps its own order; across shards there is none to keep.)
        assert_eq!(out.len(), 3, "{out:?}");
        for want in [
            Record::Flow {
                protocol: Protocol::Tcp,
                client: sa("10.0.0.5:4000"),
                vip_port: 80,
                server,
                established: true,
            },
            Record::Flow {
                protocol: Protocol::Udp,
                client: sa("10.0.0.6:5353"),
                vip_port: 53,
                server: udp_server,
                established: true,
            },
        ] {
            assert!(out.contains(&want), "{want:?} in {out:?}");
        }
        standby.apply_replica(&out, 5);
        out.clear();
        // The standby forwards both to the same servers.
        let (v, p) = send(
            &standby,
            Direction::Request,
            tcp(sa("10.0.0.5:4000"), vip, ACK, b"x", &[]),
            6,
        );
        assert_eq!((v, dst_of(&p)), (Verdict::Accept, server));
        let (v, p) = send(
            &standby,
            Direction::Request,
            udp(sa("10.0.0.6:5353"), sa("10.0.0.100:53"), b"q"),
            6,
        );
        assert_eq!((v, dst_of(&p)), (Verdict::Accept, udp_server));

        // The standby does not expire what it holds, however long it waits; the active's
        // expiry is what ends flows there.
        standby.expire(10_000_000);
        assert_eq!(standby.flow_count(), 2);
        active.expire(61_000);
        active.take_changes(&mut out).unwrap();
        // (The SYN-only flow from before the log started ends too: an end the standby, which
        // never had it, ignores.)
        assert!(out.contains(&Record::End {
            protocol: Protocol::Udp,
            client: sa("10.0.0.6:5353"),
            vip_port: 53,
        }));
        standby.apply_replica(&out, 61_000);
        assert_eq!(standby.flow_count(), 1);

        // Off again: nothing logged, nothing kept.
        active.stop_change_log();
        send(
            &active,
            Direction::Request,
            tcp(sa("10.0.0.7:1"), vip, SYN, b"", &[]),
            62_000,
        );
        out.clear();
        active.take_changes(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_flood_overflows_the_log_without_blocking_and_says_so() {
        let active = Dataplane::for_test(&config(""));
        active.start_change_log();
        let vip = sa("10.0.0.100:53");
        let n = (LOG_CAP_PER_SHARD * SHARDS) as u32 + 5000;
        for i in 0..n {
            let client = SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + i), 1000);
            let mut p = udp(client, vip, b"q");
            assert_eq!(
                active.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 1),
                Verdict::Accept
            );
        }
        let mut out = Vec::new();
        assert_eq!(active.take_changes(&mut out), Err(LogOverflowed));
        assert!(out.len() <= LOG_CAP_PER_SHARD * SHARDS);
        // Taken: the log is usable again.
        out.clear();
        assert_eq!(active.take_changes(&mut out), Ok(()));
    }

    #[test]
    fn a_takeover_keeps_quiet_flows_and_counts_unknown_mid_stream_packets_apart() {
        let c = config("");
        let standby = Dataplane::for_test(&c);
        standby.set_balancing(false, false, 0);
        let flow = Record::Flow {
            protocol: Protocol::Tcp,
            client: sa("10.0.0.5:4000"),
            vip_port: 80,
            server: sa("172.16.0.3:80"),
            established: true,
        };
        standby.apply_replica(&[flow], 0);
        let ack = |client: &str, now: u64| {
            let mut p = tcp(sa(client), sa("10.0.0.100:80"), ACK, b"x", &[]);
            standby.handle(
                Direction::Request,
                &mut p,
                true,
                ChecksumState::Complete,
                now,
            )
        };
        // The takeover comes an hour later: the flow's idle clock starts then.
        let t = 3_600_000;
        standby.set_balancing(true, true, t);
        standby.expire(t + 1000);
        assert_eq!(ack("10.0.0.5:4000", t + 1000), Verdict::Accept);
        assert_eq!(
            ack("10.0.0.8:4000", t + 1000),
            Verdict::Drop(DropReason::AfterTakeover)
        );
        assert_eq!(
            ack("10.0.0.8:4000", t + TAKEOVER_GRACE_MS),
            Verdict::Drop(DropReason::MidStream)
        );
        assert_eq!(standby.counters.dropped(DropReason::AfterTakeover), 1);
        // A new snapshot replaces everything held, live counts included.
        standby.clear_replica();
        assert_eq!((standby.flow_count(), live_total(&standby)), (0, 0));
    }

    #[test]
    fn persistence_keeps_a_client_on_its_server_until_the_timeout() {
        let dp = Dataplane::for_test(&config(r#""persistence_timeout": 10,"#));
        let first = |port: u16, now: u64| {
            let mut p = tcp(
                SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                sa("10.0.0.100:80"),
                SYN,
                b"",
                &[],
            );
            dp.handle(
                Direction::Request,
                &mut p,
                true,
                ChecksumState::Complete,
                now,
            );
            dst_of(&p)
        };
        let s = first(1000, 0);
        for port in 1001..1010 {
            assert_eq!(first(port, 1_000), s, "a returning client stays");
        }
        // Another client is balanced normally.
        let mut p = tcp(sa("10.0.0.9:1000"), sa("10.0.0.100:80"), SYN, b"", &[]);
        dp.handle(
            Direction::Request,
            &mut p,
            true,
            ChecksumState::Complete,
            1_000,
        );
        assert_ne!(dst_of(&p), s);
        // Flows' ends refresh it; after the timeout with no flows, the client may move.
        dp.expire(2_000_000);
        let moved = (0..3)
            .map(|k| first(2000 + k, 2_100_000))
            .collect::<Vec<_>>();
        assert!(moved.iter().all(|m| *m == moved[0]));
    }

    #[test]
    fn drops_what_it_cannot_balance_and_counts_why() {
        let dp = Dataplane::for_test(&config(""));
        let cases: Vec<(Direction, Vec<u8>, DropReason)> = vec![
            (
                Direction::Request,
                vec![0x45, 0, 0],
                DropReason::Malformed(Malformed::TooShort),
            ),
            (
                Direction::Request,
                tcp(sa("10.0.0.5:1"), sa("10.0.0.100:81"), SYN, b"", &[]),
                DropReason::NoService,
            ),
            (
                Direction::Request,
                tcp(sa("10.0.0.5:1"), sa("10.0.0.101:80"), SYN, b"", &[]),
                DropReason::NoService,
            ),
            (
                Direction::Request,
                tcp(sa("10.0.0.5:1"), sa("10.0.0.100:80"), ACK, b"x", &[]),
                DropReason::MidStream,
            ),
            (
                Direction::Request,
                tcp(sa("10.0.0.5:1"), sa("10.0.0.100:80"), FIN | ACK, b"", &[]),
                DropReason::MidStream,
            ),
            (
                Direction::Reply,
                tcp(sa("172.16.0.2:80"), sa("10.0.0.5:1"), ACK, b"", &[]),
                DropReason::ReplyWithoutFlow,
            ),
        ];
        for (dir, mut p, why) in cases {
            let before = p.clone();
            assert_eq!(
                dp.handle(dir, &mut p, true, ChecksumState::Complete, 0),
                Verdict::Drop(why)
            );
            assert_eq!(p, before, "a dropped packet is not touched");
        }
        for (why, n) in [
            (DropReason::Malformed(Malformed::TooShort), 1),
            (DropReason::NoService, 2),
            (DropReason::MidStream, 2),
            (DropReason::ReplyWithoutFlow, 1),
        ] {
            assert_eq!(dp.counters.dropped(why), n, "{}", why.name());
        }
        let mut p = tcp(sa("10.0.0.5:1"), sa("10.0.0.100:80"), SYN, b"", &[]);
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut p,
                false,
                ChecksumState::Complete,
                0
            ),
            Verdict::Drop(DropReason::Truncated)
        );
        assert_eq!(dp.flow_count(), 0);
    }

    #[test]
    fn a_full_table_refuses_new_flows_but_keeps_old_ones() {
        let dp = Dataplane::for_test(&config(r#""flows": {"max": 64},"#));
        let mut accepted = 0;
        for port in 1..=2000u16 {
            let mut p = udp(
                SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                sa("10.0.0.100:53"),
                b"q",
            );
            if dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0)
                == Verdict::Accept
            {
                accepted += 1;
            }
        }
        // One slot per shard: as many flows as shards that clients hashed into, never more.
        assert!(accepted <= 64 && accepted > 0, "{accepted}");
        assert_eq!(dp.counters.dropped(DropReason::TableFull), 2000 - accepted);
    }

    #[test]
    fn live_flow_counts_fall_when_flows_expire() {
        let dp = Dataplane::for_test(&config(""));
        for port in 1..=9u16 {
            let mut p = udp(
                SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                sa("10.0.0.100:53"),
                b"q",
            );
            dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        }
        let live = |dp: &Dataplane| {
            dp.services()
                .iter()
                .map(|(_, s)| s.iter().map(|x| x.live_flows.load(Relaxed)).sum::<u64>())
                .sum::<u64>()
        };
        assert_eq!(live(&dp), 9);
        assert_eq!(dp.expire(61_000), 9);
        assert_eq!(live(&dp), 0);
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use crate::core::packet::fixtures::{tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, SYN};

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn dp() -> Dataplane {
        let c = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [
                  {"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                  {"protocol": "udp", "port": 53, "servers": ["172.16.0.2:53", "172.16.0.3:53"]}]}"#,
        )
        .unwrap();
        Dataplane::new(&c, 1)
    }

    fn send(dp: &Dataplane, mut p: Vec<u8>) -> (Verdict, SocketAddrV4) {
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        (v, packet::parse(&p).unwrap().dst)
    }

    #[test]
    fn a_down_server_gets_no_new_flows_and_its_flows_end() {
        let dp = dp();
        let (_, first) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(first, sa("172.16.0.2:80"));
        assert_eq!(dp.set_health(dp.server_id(0, 0).unwrap(), false, None), 1);
        // The flow's next packet is mid-stream now: dropped, not moved.
        let (v, _) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), ACK, b"x", &[]),
        );
        assert_eq!(v, Verdict::Drop(DropReason::MidStream));
        for port in 2000..2010 {
            let (v, to) = send(
                &dp,
                tcp(
                    SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                    sa("10.0.0.100:80"),
                    SYN,
                    b"",
                    &[],
                ),
            );
            assert_eq!((v, to), (Verdict::Accept, sa("172.16.0.3:80")));
        }
        dp.set_health(dp.server_id(0, 0).unwrap(), true, Some(300));
        let picks: Vec<_> = (3000..3004)
            .map(|port| {
                send(
                    &dp,
                    tcp(
                        SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
                        sa("10.0.0.100:80"),
                        SYN,
                        b"",
                        &[],
                    ),
                )
                .1
            })
            .collect();
        assert!(
            picks.contains(&sa("172.16.0.2:80")),
            "back in rotation: {picks:?}"
        );
    }

    #[test]
    fn a_udp_flow_moves_when_its_server_goes_down() {
        let dp = dp();
        let q = || udp(sa("10.0.0.5:5000"), sa("10.0.0.100:53"), b"q");
        assert_eq!(send(&dp, q()).1, sa("172.16.0.2:53"));
        dp.set_health(dp.server_id(1, 0).unwrap(), false, None);
        assert_eq!(send(&dp, q()), (Verdict::Accept, sa("172.16.0.3:53")));
    }

    #[test]
    fn with_every_server_down_new_flows_are_refused_and_counted() {
        let dp = dp();
        dp.set_health(dp.server_id(0, 0).unwrap(), false, None);
        dp.set_health(dp.server_id(0, 1).unwrap(), false, None);
        let (v, _) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoServer));
        assert_eq!(dp.counters.dropped(DropReason::NoServer), 1);
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::{ACK, SYN};

    fn config(servers: &[&str], algorithm: &str) -> Config {
        let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        Config::from_json(&format!(
            r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24", "algorithm": "{algorithm}",
                "services": [{{"protocol": "tcp", "port": 80, "servers": [{}]}}]}}"#,
            servers.join(",")
        ))
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn send(dp: &Dataplane, port: u16, flags: u8) -> (Verdict, SocketAddrV4) {
        let mut p = tcp(
            SocketAddrV4::new("10.0.0.5".parse().unwrap(), port),
            sa("10.0.0.100:80"),
            flags,
            b"",
            &[],
        );
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        (v, packet::parse(&p).unwrap().dst)
    }

    #[test]
    fn an_added_server_takes_new_flows_while_old_flows_stay_put() {
        let dp = Dataplane::new(&config(&["172.16.0.2:80"], "ROUND_ROBIN"), 1);
        assert_eq!(send(&dp, 1000, SYN).1, sa("172.16.0.2:80"));
        dp.update(&config(&["172.16.0.2:80", "172.16.0.3:80"], "ROUND_ROBIN"));
        let news: Vec<_> = (2000..2004).map(|p| send(&dp, p, SYN).1).collect();
        assert_eq!(
            news.iter().filter(|s| **s == sa("172.16.0.3:80")).count(),
            2,
            "{news:?}"
        );
        assert_eq!(
            send(&dp, 1000, ACK),
            (Verdict::Accept, sa("172.16.0.2:80")),
            "the old flow keeps its server"
        );
        // Counters of a server that stays survive the update.
        let (_, stats) = &dp.services()[0];
        assert_eq!(stats[0].new_flows.load(Relaxed), 3);
    }

    #[test]
    fn a_removed_server_drains() {
        let dp = Dataplane::new(
            &config(&["172.16.0.2:8080", "172.16.0.3:80"], "ROUND_ROBIN"),
            1,
        );
        assert_eq!(send(&dp, 1000, SYN).1, sa("172.16.0.2:8080"));
        dp.update(&config(&["172.16.0.3:80"], "ROUND_ROBIN"));
        assert_eq!(
            send(&dp, 1000, ACK),
            (Verdict::Accept, sa("172.16.0.2:8080")),
            "its flow continues"
        );
        assert!(
            (2000..2010).all(|p| send(&dp, p, SYN).1 == sa("172.16.0.3:80")),
            "no new flow goes to it"
        );
        assert_eq!(
            dp.draining_ports(),
            vec![(Protocol::Tcp, 8080)],
            "its replies must still be queued"
        );
        dp.expire(10_000_000);
        assert_eq!(dp.draining_ports(), vec![], "drained");
    }

    #[test]
    fn a_new_algorithm_applies_to_new_flows() {
        let dp = Dataplane::new(
            &config(&["172.16.0.2:80", "172.16.0.3:80"], "ROUND_ROBIN"),
            1,
        );
        // Two long flows on .2 and .3, then one more on .2.
        for p in 1000..1003 {
            send(&dp, p, SYN);
        }
        dp.update(&config(
            &["172.16.0.2:80", "172.16.0.3:80"],
            "LEAST_CONNECTIONS",
        ));
        assert_eq!(
            send(&dp, 2000, SYN).1,
            sa("172.16.0.3:80"),
            "the less loaded server"
        );
    }
}

#[cfg(test)]
mod accounting_tests {
    use super::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::{ACK, FIN, SYN};

    #[test]
    fn live_flows_count_open_connections_only_and_a_reused_port_does_not_leak() {
        let c = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80"]}]}"#,
        )
        .unwrap();
        let dp = Dataplane::new(&c, 1);
        let send = |flags| {
            let mut p = tcp(
                "10.0.0.5:4000".parse().unwrap(),
                "10.0.0.100:80".parse().unwrap(),
                flags,
                b"",
                &[],
            );
            dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0)
        };
        for _ in 0..5 {
            assert_eq!(send(SYN), Verdict::Accept);
            assert_eq!(send(FIN | ACK), Verdict::Accept);
        }
        let live = || dp.services()[0].1[0].live_flows.load(Relaxed);
        assert_eq!(live(), 0, "five connections on one client port, all closed");
        assert_eq!(send(SYN), Verdict::Accept);
        assert_eq!(live(), 1, "a sixth, open");
    }
}

#[cfg(test)]
mod offload_tests {
    use super::*;
    use crate::conntrack::wire::{Counters, IPS_ASSURED};
    use crate::core::packet::fixtures::{tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, SYN};

    fn config(algorithm: &str) -> Config {
        Config::from_json(&format!(
            r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24", "algorithm": "{algorithm}",
                "services": [
                  {{"protocol": "tcp", "port": 80, "mode": "offload", "servers": ["172.16.0.2:80", "172.16.0.3:80"]}},
                  {{"protocol": "udp", "port": 53, "mode": "offload", "servers": ["172.16.0.2:53"]}},
                  {{"protocol": "tcp", "port": 8080, "servers": ["172.16.0.2:8081"]}}
                ]}}"#
        ))
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn syn(dp: &Dataplane, client: &str) -> Verdict {
        let mut p = tcp(sa(client), sa("10.0.0.100:80"), SYN, b"", &[]);
        let before = p.clone();
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        assert_eq!(p, before, "an offload packet is passed on unchanged");
        v
    }

    /// Conntrack's report on the TCP flow of `client`, placed on `server` with `mark`.
    fn report(
        kind: EventKind,
        client: &str,
        server: &str,
        mark: u32,
        state: Option<u8>,
    ) -> CtEntry {
        CtEntry {
            kind,
            protocol: Protocol::Tcp,
            orig_src: sa(client),
            orig_dst: sa("10.0.0.100:80"),
            reply_src: sa(server),
            reply_dst: sa(client),
            mark,
            tcp_state: state,
            status: if state == Some(tcp_state::ESTABLISHED) {
                IPS_ASSURED
            } else {
                0
            },
            counters: None,
        }
    }

    fn live(dp: &Dataplane, service: usize, server: usize) -> u64 {
        dp.services()[service].1[server].live_flows.load(Relaxed)
    }

    #[test]
    fn a_first_packet_gets_its_servers_mark_and_the_next_flows_are_spread() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let ids = [dp.server_id(0, 0).unwrap(), dp.server_id(0, 1).unwrap()];
        let marks: Vec<Verdict> = (0..4)
            .map(|i| syn(&dp, &format!("10.0.0.5:{}", 1000 + i)))
            .collect();
        let m = |i: usize| Verdict::Offload(offload_mark(ids[i]).unwrap());
        assert_eq!(marks, vec![m(0), m(1), m(0), m(1)]);
        assert_eq!((live(&dp, 0, 0), live(&dp, 0, 1)), (2, 2));
        // A queued SYN of a flow the table holds means conntrack has no entry for it: the
        // flow restarts on a server chosen anew (round robin's next), not on its old one.
        assert_eq!(syn(&dp, "10.0.0.5:1001"), m(0));
        assert_eq!(dp.flow_count(), 4);
        assert_eq!((live(&dp, 0, 0), live(&dp, 0, 1)), (3, 1));
        // A mid-stream packet of a flow slbd never placed is dropped, as in packet mode.
        let mut ack = tcp(sa("10.0.0.6:1"), sa("10.0.0.100:80"), ACK, b"x", &[]);
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut ack,
                true,
                ChecksumState::Complete,
                0
            ),
            Verdict::Drop(DropReason::MidStream)
        );
        // UDP too; the packet-mode service on the same VIP is still rewritten.
        let mut q = udp(sa("10.0.0.5:9"), sa("10.0.0.100:53"), b"q");
        let udp_mark = offload_mark(dp.server_id(1, 0).unwrap()).unwrap();
        assert_eq!(
            dp.handle(Direction::Request, &mut q, true, ChecksumState::Complete, 0),
            Verdict::Offload(udp_mark)
        );
        let mut p = tcp(sa("10.0.0.5:9"), sa("10.0.0.100:8080"), SYN, b"", &[]);
        assert_eq!(
            dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0),
            Verdict::Accept
        );
    }

    #[test]
    fn conntrack_reports_confirm_establish_close_and_end_flows() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let Verdict::Offload(mark) = syn(&dp, "10.0.0.5:1000") else {
            panic!("no mark")
        };
        dp.start_change_log();
        let server = "172.16.0.2:80";
        // Reports about flows slbd did not place, or naming another server, change nothing.
        dp.conntrack_report(
            &report(EventKind::Update, "10.0.0.5:1000", server, 0, Some(3)),
            0,
        );
        dp.conntrack_report(
            &report(
                EventKind::Destroy,
                "10.0.0.5:1000",
                "172.16.0.3:80",
                mark,
                None,
            ),
            0,
        );
        assert_eq!(dp.flow_count(), 1);
        // Assured: the flow is established and replicated once.
        let assured = CtEntry {
            status: IPS_ASSURED,
            ..report(EventKind::Update, "10.0.0.5:1000", server, mark, None)
        };
        dp.conntrack_report(&assured, 0);
        dp.conntrack_report(&assured, 0);
        let mut log = Vec::new();
        dp.take_changes(&mut log).unwrap();
        assert_eq!(
            log,
            vec![Record::Flow {
                protocol: Protocol::Tcp,
                client: sa("10.0.0.5:1000"),
                vip_port: 80,
                server: sa(server),
                established: true
            }]
        );
        // Confirmed flows never idle out: conntrack decides when they end.
        assert_eq!(dp.expire(10_000_000), 0);
        assert_eq!(live(&dp, 0, 0), 1);
        // A close stops counting at once; the end removes it, with conntrack's counters.
        dp.conntrack_report(
            &report(
                EventKind::Update,
                "10.0.0.5:1000",
                server,
                mark,
                Some(tcp_state::FIN_WAIT),
            ),
            0,
        );
        assert_eq!(live(&dp, 0, 0), 0);
        let end = CtEntry {
            counters: Some(Counters {
                orig_packets: 5,
                orig_bytes: 300,
                reply_packets: 4,
                reply_bytes: 900,
            }),
            ..report(EventKind::Destroy, "10.0.0.5:1000", server, mark, None)
        };
        dp.conntrack_report(&end, 0);
        assert_eq!(dp.flow_count(), 0);
        assert_eq!(live(&dp, 0, 0), 0, "not taken off twice");
        let st = &dp.services()[0].1[0];
        assert_eq!(st.bytes_in.load(Relaxed), 300);
        assert_eq!(st.packets_out.load(Relaxed), 4);
        log.clear();
        dp.take_changes(&mut log).unwrap();
        assert!(matches!(log[..], [Record::End { .. }]), "{log:?}");
    }

    #[test]
    fn unconfirmed_flows_expire_and_an_end_does_not_remove_a_newer_flow() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let Verdict::Offload(mark) = syn(&dp, "10.0.0.5:1000") else {
            panic!("no mark")
        };
        // Conntrack ended an older flow on the same 5-tuple after slbd placed the new one.
        dp.conntrack_report(
            &report(
                EventKind::Destroy,
                "10.0.0.5:1000",
                "172.16.0.2:80",
                mark,
                None,
            ),
            0,
        );
        assert_eq!(dp.flow_count(), 1, "the unconfirmed new flow stays");
        // Never confirmed (its SYN died after the verdict): gone after the closing timeout.
        assert_eq!(dp.expire(31_000), 1);
        assert_eq!(live(&dp, 0, 0), 0);
    }

    #[test]
    fn lost_flows_are_adopted_and_a_resync_keeps_exactly_what_conntrack_holds() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let id = dp.server_id(0, 1).unwrap();
        let mark = offload_mark(id).unwrap();
        let a = report(EventKind::New, "10.0.0.7:1", "172.16.0.3:80", mark, Some(3));
        let b = report(EventKind::New, "10.0.0.7:2", "172.16.0.3:80", mark, Some(3));
        dp.conntrack_report(&a, 0);
        dp.conntrack_report(&b, 0);
        assert_eq!((dp.flow_count(), live(&dp, 0, 1)), (2, 2));
        // A mark naming a server id that is not this server's is not slbd's flow.
        let forged = report(EventKind::New, "10.0.0.7:3", "172.16.0.9:80", mark, Some(3));
        dp.conntrack_report(&forged, 0);
        assert_eq!(dp.flow_count(), 2);
        dp.conntrack_resync(&[b], 0);
        assert_eq!((dp.flow_count(), live(&dp, 0, 1)), (1, 1));
        // A STANDBY follows its ACTIVE, not its own kernel.
        dp.set_balancing(false, false, 0);
        dp.conntrack_report(&a, 0);
        assert_eq!(dp.flow_count(), 1);
    }

    #[test]
    fn a_takeover_hands_replicated_offload_flows_to_the_kernel_with_their_marks() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        dp.set_balancing(false, false, 0);
        let flow = |client: &str, port: u16, server: &str, established| Record::Flow {
            protocol: Protocol::Tcp,
            client: sa(client),
            vip_port: port,
            server: sa(server),
            established,
        };
        dp.apply_replica(
            &[
                flow("10.0.0.8:1", 80, "172.16.0.3:80", true),
                flow("10.0.0.8:2", 80, "172.16.0.2:80", false),
                flow("10.0.0.8:3", 8080, "172.16.0.2:8081", true),
            ],
            0,
        );
        dp.set_balancing(true, true, 0);
        let mut handed = dp.offload_takeover();
        handed.sort_by_key(|(f, _, _)| f.client);
        let got: Vec<(SocketAddrV4, SocketAddrV4, u32, bool)> = handed
            .iter()
            .map(|(f, mark, est)| (f.client, f.server, *mark, *est))
            .collect();
        let mark = |i| offload_mark(dp.server_id(0, i).unwrap()).unwrap();
        assert_eq!(
            got,
            vec![
                (sa("10.0.0.8:1"), sa("172.16.0.3:80"), mark(1), true),
                (sa("10.0.0.8:2"), sa("172.16.0.2:80"), mark(0), false),
            ],
            "the packet-mode flow stays slbd's"
        );
        // Now conntrack's: no idle expiry, and its end is honoured.
        assert_eq!(
            dp.expire(10_000_000),
            1,
            "only the packet-mode flow idles out"
        );
        dp.conntrack_report(
            &report(
                EventKind::Destroy,
                "10.0.0.8:1",
                "172.16.0.3:80",
                mark(1),
                None,
            ),
            0,
        );
        assert_eq!(dp.flow_count(), 1);
    }

    #[test]
    fn only_least_connections_follows_every_tcp_state() {
        let rr = Dataplane::new(&config("ROUND_ROBIN"), 1).offload_targets();
        assert_eq!(rr.len(), 3, "the offload services' servers only");
        assert!(rr.iter().all(|t| !t.every_state));
        let lc = Dataplane::new(&config("LEAST_CONNECTIONS"), 1).offload_targets();
        assert!(lc.iter().all(|t| t.every_state));
        assert_eq!(lc[0].server, sa("172.16.0.2:80"));
    }
}
