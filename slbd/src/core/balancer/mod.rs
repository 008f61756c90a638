//! The balancer: the decision for one queued packet — find or create its flow, choose a real
//! server for a new one (persistence first, then the service's scheduler), and count the
//! outcome. No I/O: the queue shell hands in bytes and a clock reading and carries out the
//! returned [`Verdict`]. A server is chosen in one place (`Dataplane::place`, for both modes).
//!
//! - `verdict`: what the shell is told, and why packets are dropped;
//! - `stats`: the per-server counters and stable ids;
//! - `view`: the services in force, swapped whole on reconfiguration;
//! - `packet`: packet mode's rewrite path; `offload`: offload mode's first packets and
//!   conntrack's reports;
//! - `replica`: replication's change log, snapshot and apply;
//! - `health`: what a server's health means for its flows;
//! - `passive`: failed handshakes the data path sees, their retry and passive detection;
//! - `icmp`: ICMP errors about balanced flows, passive detection's first, then translated.
//! - `rotation`: who may take a new flow and with what weight (health, the operator's and an
//!   agent's state, backups, slow start), and the decision itself (persistence, then the
//!   scheduler), with the operator's cuts;
//! - `explain`: that same decision asked without being taken (`slbctl explain`).
//!
//! Sharing between queue workers: the flow table is split into shards by the client's address
//! and port, which both directions of a flow carry (the source of a request, the destination of
//! a reply), so a flow's two directions always meet in one shard whichever queue they land on.

mod explain;
mod health;
mod icmp;
mod offload;
mod packet;
mod passive;
mod replica;
mod rotation;
mod stats;
mod verdict;
mod view;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::core::flow::{tcp, Budget, Ended, FlowKey, FlowTable, Timeouts};
use crate::core::model::Config;
use crate::core::net::Protocol;
use crate::core::packet::ChecksumState;
use crate::core::persist::{PersistKey, Persistence};
use crate::core::sched::Algorithm;

pub use explain::{Explanation, FlowSeen, PersistSeen, ServerSeen};
pub use health::{FlowCut, HealthOutcome};
pub use offload::{KernelReport, Traffic};
pub use passive::{PassiveDown, PassiveWork, RETRY_MEMORY_MS};
pub use replica::{LogOverflowed, Record, ReplicaApplied};
pub use rotation::{ramp_permille, Standing, WEIGHT_SCALE};
pub use stats::{Counters, ServerStats, CHECK_PASSED};
pub use verdict::{Direction, DropReason, Verdict};

use stats::Registry;
use view::{ServiceState, View};

const SHARDS: usize = 64;

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
    passive: passive::Passive,
    /// Flows the operator cut (maintenance, a drain's deadline), answered with a reset.
    cut_flows: Mutex<rotation::CutFlows>,
}

fn shard_of(client: SocketAddrV4) -> usize {
    // Fibonacci hashing of address and port: cheap, and spreads sequential clients.
    let x = (u64::from(u32::from(*client.ip())) << 16) | u64::from(client.port());
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

/// How a new flow's server was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// The client's persistence entry named it.
    Persisted(usize),
    /// The service's scheduler chose it.
    Scheduled(usize),
}

fn persist_key(svc: &ServiceState, client: SocketAddrV4) -> PersistKey {
    PersistKey {
        client: *client.ip(),
        protocol: svc.service.protocol,
        port: svc.service.port,
    }
}

fn timeouts(config: &Config) -> Timeouts {
    Timeouts {
        tcp: config.flows.tcp_timeout,
        tcp_closing: config.flows.tcp_closing_timeout,
        tcp_syn: config.flows.syn_timeout,
        udp: config.flows.udp_timeout,
    }
}

impl Dataplane {
    /// A data plane for `config`; `seed` feeds the randomised schedulers.
    pub fn new(config: &Config, seed: u64) -> Dataplane {
        let budget = Budget::new(config.flows.max);
        let shard = || {
            Mutex::new(Shard {
                flows: FlowTable::sharing(timeouts(config), budget.clone()),
                log: Vec::new(),
            })
        };
        let dp = Dataplane {
            view: ArcSwap::from_pointee(View::empty(config.vip)),
            registry: ArcSwap::from_pointee(Registry::default()),
            updating: Mutex::new(0),
            seed,
            shards: (0..SHARDS).map(|_| shard()).collect(),
            persistence: Mutex::new(Persistence::new(config.flows.max as usize)),
            counters: Counters::default(),
            logging: AtomicBool::new(false),
            log_overflowed: AtomicBool::new(false),
            balancing: AtomicBool::new(true),
            grace_until_ms: AtomicU64::new(0),
            passive: passive::Passive::default(),
            cut_flows: Mutex::new(rotation::CutFlows::default()),
        };
        dp.update(config);
        dp
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
                // ICMP errors: to the VIP (about replies), from the server network (about
                // requests).
                Direction::Request | Direction::Reply if crate::core::icmp::is_icmp(buf) => {
                    self.icmp_error(buf, now_ms).map(|()| None)
                }
                Direction::Request => self.request(buf, csum, now_ms),
                Direction::Reply => self.reply(buf, csum, now_ms).map(|()| None),
                Direction::Untracked => self.untracked(buf, csum, now_ms).map(|()| None),
            }
        };
        match verdict {
            Ok(offload) => {
                let c = match dir {
                    Direction::Request | Direction::Untracked => &self.counters.requests,
                    Direction::Reply => &self.counters.replies,
                };
                c.fetch_add(1, Relaxed);
                offload.map_or(Verdict::Accept, Verdict::Offload)
            }
            Err(why) => {
                self.counters.drop(why);
                match why {
                    // Answered from the VIP (a reset, or a rate-limited port unreachable)
                    // rather than left to time out.
                    DropReason::NoServer | DropReason::TableFull | DropReason::Cut => {
                        Verdict::Refuse
                    }
                    _ => Verdict::Drop(why),
                }
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

    /// Places a new flow, for either mode: a TCP packet that does not open a connection is
    /// refused a server (a fresh one would reset it), the server is chosen, the flow enters
    /// `flows` (an offload flow as conntrack's, `kernel`), and the server counts it. A UDP
    /// flow is replicated at once; a TCP flow once its server answers (a SYN the server never
    /// saw is retransmitted and placed afresh anyway). Returns the server and its id.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        view: &View,
        svc: &ServiceState,
        key: &FlowKey,
        flags: u8,
        now_ms: u64,
        flows: &mut Shard,
        kernel: bool,
    ) -> Result<(SocketAddrV4, u32), DropReason> {
        // A segment without SYN that no flow knows: a connection placed elsewhere (another
        // balancer, the dual, an slbd before this one) or forgotten. A consistent-hash table
        // names the same server every balancer would, so MAGLEV carries it there; the other
        // schedulers would choose anew, most likely a server that does not know it.
        let midstream = key.protocol == Protocol::Tcp && !tcp::is_syn(flags);
        if midstream {
            if self.cut_flows.lock().contains(key, now_ms) {
                return Err(DropReason::Cut);
            }
            if svc.service.algorithm != Algorithm::Maglev {
                return Err(if now_ms < self.grace_until_ms.load(Relaxed) {
                    DropReason::AfterTakeover
                } else {
                    DropReason::MidStream
                });
            }
        }
        let i = if midstream {
            self.pick(svc, &self.registry.load(), key.src, None, now_ms)?
        } else {
            let avoid = self.retry_avoid(key, now_ms);
            self.choose(svc, key.src, now_ms, flows, avoid)?
        };
        let (server, id) = (svc.service.servers[i].addr, svc.ids[i]);
        let insert = |flows: &mut Shard| {
            if kernel {
                flows.insert_kernel(key, server, id, now_ms, false)
            } else {
                flows.insert(key, server, id, now_ms)
            }
        };
        let displaced = match insert(flows) {
            Ok(d) => d,
            Err(_) if self.make_room(flows, view, key, now_ms) => {
                insert(flows).map_err(|_| DropReason::TableFull)?
            }
            Err(_) => return Err(DropReason::TableFull),
        };
        if let Some(ended) = displaced {
            self.end(flows, view, &ended, now_ms);
        }
        if midstream {
            flows.mark_adopted(key);
            self.counters.adopted_midstream.fetch_add(1, Relaxed);
        }
        if key.protocol == Protocol::Udp {
            self.log(flows, Record::flow(key, server));
        }
        self.with_stats(id, ServerStats::placed);
        Ok((server, id))
    }

    /// The table is full: evicts one flow that carries no connection yet (an unanswered
    /// handshake, or a UDP flow idle longest), from the client's own shard (held by the
    /// caller as `flows`) or else from the first other shard that has one and is free right
    /// now — never waiting for a lock another worker holds. Each shard looks at a bounded
    /// number of slots. False when there is none: the new flow is refused.
    fn make_room(&self, flows: &mut Shard, view: &View, key: &FlowKey, now_ms: u64) -> bool {
        const OTHER_SHARDS: usize = SHARDS - 1;
        let evicted = |shard: &mut Shard| {
            let ended = shard.evict_one()?;
            self.log(shard, Record::end(&ended));
            Some(ended)
        };
        let mine = shard_of(key.src);
        let ended = evicted(flows).or_else(|| {
            (1..=OTHER_SHARDS).find_map(|k| {
                let mut other = self.shards[(mine + k) % SHARDS].try_lock()?;
                evicted(&mut other)
            })
        });
        let Some(ended) = ended else {
            return false;
        };
        self.flow_ended(view, &ended, now_ms);
        self.counters.evicted_flows.fetch_add(1, Relaxed);
        true
    }

    /// Persistence first, when on and its server is still in rotation; else the scheduler.
    /// `shard` is the client's, held by the caller: persistence changes are logged there.
    /// Returns an index into the service's servers that is always in bounds.
    fn choose(
        &self,
        svc: &ServiceState,
        client: SocketAddrV4,
        now_ms: u64,
        shard: &mut Shard,
        avoid: Option<u32>,
    ) -> Result<usize, DropReason> {
        let registry = self.registry.load();
        let decided = self.decide(svc, &registry, client, now_ms, avoid, || {
            self.pick(svc, &registry, client, avoid, now_ms)
        })?;
        let (Decided::Persisted(i) | Decided::Scheduled(i)) = decided;
        if let Some(st) = svc
            .ids
            .get(i)
            .and_then(|id| registry.stats.get(*id as usize))
        {
            let counter = match decided {
                Decided::Persisted(_) => &st.persisted,
                Decided::Scheduled(_) => &st.scheduled,
            };
            counter.fetch_add(1, Relaxed);
        }
        let timeout = svc.service.persistence_timeout.as_millis() as u64;
        if timeout > 0 {
            let server = svc.service.servers[i].addr;
            let pkey = persist_key(svc, client);
            self.persistence
                .lock()
                .remember(pkey, server, now_ms + timeout);
            self.log(shard, Record::persist(&pkey, server, timeout));
        }
        Ok(i)
    }

    /// A flow left the table while its shard is held: replication hears of it, and its
    /// server and persistence are told.
    fn end(&self, flows: &mut Shard, view: &View, ended: &Ended, now_ms: u64) {
        self.log(flows, Record::end(ended));
        self.flow_ended(view, ended, now_ms);
    }

    /// Bookkeeping for a flow that left the table: its server's live count, and persistence
    /// kept for the client from the flow's end.
    fn flow_ended(&self, view: &View, e: &Ended, now_ms: u64) {
        // A closed flow left the live count when it closed.
        if !e.was_closing {
            self.with_stats(e.tag, |st| st.less_live(1));
        }
        let timeout = view
            .service(e.protocol, e.vip.port())
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
                    self.log(&mut t, Record::end(e));
                }
                ended
            };
            n += ended.len();
            for e in ended {
                self.flow_ended(&view, &e, now_ms);
            }
        }
        self.persistence.lock().expire(now_ms);
        self.cut_flows.lock().expire(now_ms);
        self.expire_retries(now_ms);
        n
    }

    /// A planned switch is about to hand this node's traffic to the dual: opens the grace
    /// period here too, since until the dual's server-side announcement has reached every
    /// server a SYN-ACK of a flow the dual placed can still come this way.
    pub fn handing_over(&self, now_ms: u64) {
        self.grace_until_ms
            .store(now_ms + TAKEOVER_GRACE_MS, Relaxed);
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

    /// Flows tracked now.
    pub fn flow_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Heap bytes held by the flow tables.
    pub fn flow_memory(&self) -> usize {
        self.shards.iter().map(|s| s.lock().memory_bytes()).sum()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! What the balancer's tests share: the names they use and a few helpers.
    pub use super::*;
    pub use crate::core::flow::Phase;
    pub use crate::core::model::Config;
    pub use crate::core::net::Protocol;
    pub use crate::core::packet;
    pub use crate::core::packet::ChecksumState;
    pub use crate::core::packet::Malformed;
    pub use crate::core::ruleset::offload_mark;
    pub use std::net::{Ipv4Addr, SocketAddrV4};
    pub use std::sync::atomic::Ordering::Relaxed;

    impl Dataplane {
        pub fn for_test(config: &Config) -> Dataplane {
            Dataplane::new(config, 42)
        }
    }

    pub fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    pub fn dst_of(buf: &[u8]) -> SocketAddrV4 {
        packet::parse(buf).unwrap().dst
    }

    /// A TCP service on port 80 over three servers (round robin) and a UDP one on 53 (RATIO
    /// 3:1:1), with `extra` top-level fields (each ending in a comma).
    pub fn config(extra: &str) -> Config {
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

    pub fn live_total(dp: &Dataplane) -> u64 {
        dp.services()[0]
            .1
            .iter()
            .map(|s| s.live_flows.load(Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use crate::core::packet::fixtures::tcp;
    use crate::core::packet::tcp_flags::SYN;
    use crate::core::sched::{Candidate, Scheduler};

    /// A scheduler with a bug: it names a server the service does not have.
    #[derive(Clone)]
    struct PastTheEnd;

    impl Scheduler for PastTheEnd {
        fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
            Some(servers.len() + 3)
        }
    }

    #[test]
    fn a_scheduler_naming_a_server_past_the_end_refuses_the_flow_instead_of_panicking() {
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{"protocol": "tcp", "port": 80, "servers": ["172.16.0.2:80"]}]}"#,
        )
        .unwrap();
        let dp = Dataplane::for_test(&config);
        dp.view.load().services[0].picker.lock().scheduler = Box::new(PastTheEnd);
        let mut p = tcp(
            "10.0.0.5:1000".parse().unwrap(),
            "10.0.0.100:80".parse().unwrap(),
            SYN,
            b"",
            &[],
        );
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        assert_eq!(v, Verdict::Refuse);
        assert_eq!(dp.counters.dropped(DropReason::NoServer), 1);
        assert_eq!(dp.flow_count(), 0);
    }
}
