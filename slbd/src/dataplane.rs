//! The balancing decision for one queued packet: find or create its flow, choose a real server
//! for a new one (persistence first, then the service's scheduler), rewrite the packet, and
//! count the outcome. No I/O: the queue shell hands in bytes and a clock reading and carries
//! out the returned [`Verdict`]. This is the one place a packet is rewritten and a server chosen.
//!
//! Sharing between queue workers: the flow table is split into shards by the client's address
//! and port, which both directions of a flow carry (the source of a request, the destination of
//! a reply), so a flow's two directions always meet in one shard whichever queue they land on.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::config::{Config, Service};
use crate::flow::{FlowKey, FlowTable, Lookup, Timeouts};
use crate::net::Protocol;
use crate::packet::{self, tcp_flags, ChecksumState, Endpoint, Malformed};
use crate::persist::{PersistKey, Persistence};
use crate::sched::{Candidate, Scheduler};

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
    pub const COUNT: usize = 6 + 8;

    fn index(self) -> usize {
        match self {
            DropReason::NoService => 0,
            DropReason::MidStream => 1,
            DropReason::ReplyWithoutFlow => 2,
            DropReason::NoServer => 3,
            DropReason::TableFull => 4,
            DropReason::Truncated => 5,
            DropReason::Malformed(m) => 6 + m as usize,
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
            DropReason::Malformed(m) => m.name(),
        }
    }

    pub fn all() -> impl Iterator<Item = DropReason> {
        [
            DropReason::NoService,
            DropReason::MidStream,
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
            up: AtomicBool::new(true),
            latency_us: AtomicU32::new(0),
        }
    }
}

/// A service's scheduler with the candidate list it is handed, refreshed at each pick (kept
/// here so that a pick allocates nothing).
struct Picker {
    scheduler: Box<dyn Scheduler>,
    candidates: Vec<Candidate>,
}

struct ServiceState {
    service: Service,
    picker: Mutex<Picker>,
    stats: Vec<ServerStats>,
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

pub struct Dataplane {
    vip: Ipv4Addr,
    services: Vec<ServiceState>,
    shards: Box<[Mutex<FlowTable>]>,
    persistence: Mutex<Persistence>,
    pub counters: Counters,
}

/// A flow's tag: its service and server indices, for counting.
fn tag(service: usize, server: usize) -> u32 {
    ((service as u32) << 16) | server as u32
}

fn shard_of(client: SocketAddrV4) -> usize {
    // Fibonacci hashing of address and port: cheap, and spreads sequential clients.
    let x = (u64::from(u32::from(*client.ip())) << 16) | u64::from(client.port());
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

impl Dataplane {
    /// A data plane for `config`; `seed` feeds the randomised schedulers.
    pub fn new(config: &Config, seed: u64) -> Dataplane {
        let timeouts = Timeouts {
            tcp: config.flows.tcp_timeout,
            tcp_closing: config.flows.tcp_closing_timeout,
            udp: config.flows.udp_timeout,
        };
        let per_shard = config.flows.max.div_ceil(SHARDS as u32);
        Dataplane {
            vip: config.vip,
            services: config
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| ServiceState {
                    picker: Mutex::new(Picker {
                        scheduler: s.algorithm.scheduler(seed.wrapping_add(i as u64)),
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
                    stats: s.servers.iter().map(|_| ServerStats::default()).collect(),
                    service: s.clone(),
                })
                .collect(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FlowTable::new(timeouts, per_shard)))
                .collect(),
            persistence: Mutex::new(Persistence::new(config.flows.max as usize)),
            counters: Counters {
                requests: AtomicU64::new(0),
                replies: AtomicU64::new(0),
                drops: std::array::from_fn(|_| AtomicU64::new(0)),
            },
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
                Direction::Reply => self.reply(buf, csum, now_ms),
            }
        };
        match verdict {
            Ok(()) => {
                let c = match dir {
                    Direction::Request => &self.counters.requests,
                    Direction::Reply => &self.counters.replies,
                };
                c.fetch_add(1, Relaxed);
                Verdict::Accept
            }
            Err(why) => {
                self.counters.drops[why.index()].fetch_add(1, Relaxed);
                Verdict::Drop(why)
            }
        }
    }

    fn service_index(&self, protocol: Protocol, port: u16) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.service.protocol == protocol && s.service.port == port)
    }

    fn request(&self, buf: &mut [u8], csum: ChecksumState, now_ms: u64) -> Result<(), DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        let si = self
            .service_index(h.protocol, h.dst.port())
            .filter(|_| *h.dst.ip() == self.vip)
            .ok_or(DropReason::NoService)?;
        let svc = &self.services[si];
        let key = FlowKey {
            protocol: h.protocol,
            src: h.src,
            dst: h.dst,
        };
        let mut flows = self.shards[shard_of(h.src)].lock();
        let (server, server_i) = match flows.lookup_request(&key, h.flags, now_ms) {
            Lookup::Found(placed) => (placed.server, (placed.tag & 0xffff) as usize),
            Lookup::Missing | Lookup::Reused(_) => {
                let syn = h.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
                if h.protocol == Protocol::Tcp && !syn {
                    return Err(DropReason::MidStream);
                }
                let i = self.choose(svc, h.src, now_ms)?;
                let server = svc.service.servers[i].addr;
                flows
                    .insert(&key, server, tag(si, i), now_ms)
                    .map_err(|_| DropReason::TableFull)?;
                if let Some(stats) = svc.stats.get(i) {
                    stats.new_flows.fetch_add(1, Relaxed);
                    stats.live_flows.fetch_add(1, Relaxed);
                }
                (server, i)
            }
        };
        drop(flows);
        if let Some(stats) = svc.stats.get(server_i) {
            stats.packets_in.fetch_add(1, Relaxed);
            stats.bytes_in.fetch_add(buf.len() as u64, Relaxed);
        }
        packet::rewrite(buf, &h, Endpoint::Destination, server, csum);
        Ok(())
    }

    /// Persistence first, when on and its server is still in rotation; else the scheduler.
    fn choose(
        &self,
        svc: &ServiceState,
        client: SocketAddrV4,
        now_ms: u64,
    ) -> Result<usize, DropReason> {
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
                    .filter(|&i| svc.stats[i].up.load(Relaxed))
            });
            if let Some(i) = remembered {
                persisted.remember(pkey, svc.service.servers[i].addr, now_ms + timeout);
                return Ok(i);
            }
        }
        let i = {
            let mut p = svc.picker.lock();
            let Picker {
                scheduler,
                candidates,
            } = &mut *p;
            for (c, st) in candidates.iter_mut().zip(&svc.stats) {
                c.up = st.up.load(Relaxed);
                c.live = st.live_flows.load(Relaxed).min(u64::from(u32::MAX)) as u32;
                c.latency_us = Some(st.latency_us.load(Relaxed)).filter(|l| *l > 0);
            }
            scheduler.pick(candidates).ok_or(DropReason::NoServer)?
        };
        if timeout > 0 {
            self.persistence
                .lock()
                .remember(pkey, svc.service.servers[i].addr, now_ms + timeout);
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
        let vip = self.shards[shard_of(h.dst)]
            .lock()
            .lookup_reply(&key, h.flags, now_ms)
            .ok_or(DropReason::ReplyWithoutFlow)?;
        if let Some(si) = self.service_index(h.protocol, vip.port()) {
            let svc = &self.services[si];
            if let Some(i) = svc.service.servers.iter().position(|s| s.addr == h.src) {
                svc.stats[i].packets_out.fetch_add(1, Relaxed);
                svc.stats[i].bytes_out.fetch_add(buf.len() as u64, Relaxed);
            }
        }
        packet::rewrite(buf, &h, Endpoint::Source, vip, csum);
        Ok(())
    }

    /// Expires idle flows, a bounded slice of each shard per call, and keeps persistence for
    /// clients whose flows just ended. Returns how many flows ended.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            let ended = {
                let mut t = shard.lock();
                let budget = 4096.max(t.len() / 8);
                t.expire(now_ms, budget)
            };
            n += ended.len();
            for e in ended {
                let (si, i) = ((e.tag >> 16) as usize, (e.tag & 0xffff) as usize);
                let Some(svc) = self.services.get(si) else {
                    continue;
                };
                if let Some(stats) = svc.stats.get(i) {
                    stats.live_flows.fetch_sub(1, Relaxed);
                }
                let timeout = svc.service.persistence_timeout.as_millis() as u64;
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
        }
        self.persistence.lock().expire(now_ms);
        n
    }

    /// Records a server's health. When it leaves rotation its flows are forgotten at once
    /// (the stated policy: their next packets are dropped, TCP as mid-stream and a UDP flow's
    /// next datagram is scheduled afresh to a server that is up). Returns how many flows ended.
    pub fn set_health(
        &self,
        service: usize,
        server: usize,
        up: bool,
        latency_us: Option<u32>,
    ) -> usize {
        let Some(svc) = self.services.get(service) else {
            return 0;
        };
        let Some(st) = svc.stats.get(server) else {
            return 0;
        };
        if let Some(l) = latency_us {
            st.latency_us.store(l.max(1), Relaxed);
        }
        let was_up = st.up.swap(up, Relaxed);
        if up || !was_up {
            return 0;
        }
        let addr = svc.service.servers[server].addr;
        let t = tag(service, server);
        let mut n = 0;
        for shard in self.shards.iter() {
            n += shard
                .lock()
                .remove_where(|e| e.tag == t && e.server == addr)
                .len();
        }
        st.live_flows
            .fetch_sub((n as u64).min(st.live_flows.load(Relaxed)), Relaxed);
        n
    }

    /// Flows tracked now.
    pub fn flow_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Heap bytes held by the flow tables.
    pub fn flow_memory(&self) -> usize {
        self.shards.iter().map(|s| s.lock().memory_bytes()).sum()
    }

    /// The `status` the control socket reports: per service and server, health, smoothed
    /// latency, live and new flows, packets and bytes; and the drop counters.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let services: Vec<_> = self
            .services
            .iter()
            .map(|s| {
                let servers: Vec<_> = s
                    .service
                    .servers
                    .iter()
                    .zip(&s.stats)
                    .map(|(r, st)| {
                        let lat = st.latency_us.load(Relaxed);
                        json!({
                            "address": r.addr.to_string(),
                            "weight": r.weight,
                            "state": if st.up.load(Relaxed) { "up" } else { "down" },
                            "latency_us": if lat == 0 { serde_json::Value::Null } else { lat.into() },
                            "live_flows": st.live_flows.load(Relaxed),
                            "new_flows": st.new_flows.load(Relaxed),
                            "packets_in": st.packets_in.load(Relaxed),
                            "bytes_in": st.bytes_in.load(Relaxed),
                            "packets_out": st.packets_out.load(Relaxed),
                            "bytes_out": st.bytes_out.load(Relaxed),
                        })
                    })
                    .collect();
                json!({
                    "name": s.service.name(),
                    "algorithm": s.service.algorithm.name(),
                    "persistence_timeout": s.service.persistence_timeout.as_secs(),
                    "servers": servers,
                })
            })
            .collect();
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::all()
            .map(|d| (d.name().to_string(), self.counters.dropped(d).into()))
            .collect();
        json!({
            "vip": self.vip.to_string(),
            "flows": self.flow_count(),
            "requests": self.counters.requests.load(Relaxed),
            "replies": self.counters.replies.load(Relaxed),
            "drops": drops,
            "services": services,
        })
    }

    /// Each service with its servers' counters, for status and logs.
    pub fn services(&self) -> impl Iterator<Item = (&Service, &[ServerStats])> {
        self.services
            .iter()
            .map(|s| (&s.service, s.stats.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::fixtures::{checksums_ok, make_partial, tcp, udp};
    use crate::packet::tcp_flags::{ACK, FIN, SYN};

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
    use crate::packet::fixtures::{tcp, udp};
    use crate::packet::tcp_flags::{ACK, SYN};

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
        assert_eq!(dp.set_health(0, 0, false, None), 1);
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
        dp.set_health(0, 0, true, Some(300));
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
        dp.set_health(1, 0, false, None);
        assert_eq!(send(&dp, q()), (Verdict::Accept, sa("172.16.0.3:53")));
    }

    #[test]
    fn with_every_server_down_new_flows_are_refused_and_counted() {
        let dp = dp();
        dp.set_health(0, 0, false, None);
        dp.set_health(0, 1, false, None);
        let (v, _) = send(
            &dp,
            tcp(sa("10.0.0.5:1000"), sa("10.0.0.100:80"), SYN, b"", &[]),
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoServer));
        assert_eq!(dp.counters.dropped(DropReason::NoServer), 1);
    }
}
