//! The balancer's side of flow replication: the change log each shard keeps while a STANDBY
//! listens, the snapshot a joining STANDBY starts from, and applying what the ACTIVE sent.
//! The records are this module's; `crate::wire::replication` encodes them. Pure.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;

use super::{shard_of, Dataplane, Shard};
use crate::core::flow::{Ended, FlowKey};
use crate::core::net::Protocol;
use crate::core::persist::PersistKey;

/// Changes a shard holds for replication before the replication thread takes them (every
/// ~10 ms). Past this the log stops growing and is marked overflowed: replication falls
/// behind and resynchronises with a snapshot, the data path never waits.
pub(super) const LOG_CAP_PER_SHARD: usize = 4096;

/// One replicated change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A flow from `client` to the VIP's `vip_port` is on `server` (sent when placed and when it
    /// becomes established).
    Flow {
        protocol: Protocol,
        client: SocketAddrV4,
        vip_port: u16,
        server: SocketAddrV4,
        established: bool,
    },
    /// That flow ended (closed, reset or idle).
    End {
        protocol: Protocol,
        client: SocketAddrV4,
        vip_port: u16,
    },
    /// `client` is persisted to `server` on the service for `ttl_ms` more.
    Persist {
        protocol: Protocol,
        client: Ipv4Addr,
        vip_port: u16,
        server: SocketAddrV4,
        ttl_ms: u32,
    },
}

impl Record {
    pub(super) fn end(e: &Ended) -> Record {
        Record::End {
            protocol: e.protocol,
            client: e.client,
            vip_port: e.vip.port(),
        }
    }

    /// An established flow (a UDP flow is, from its first datagram).
    pub(super) fn flow(key: &FlowKey, server: SocketAddrV4) -> Record {
        Record::Flow {
            protocol: key.protocol,
            client: key.src,
            vip_port: key.dst.port(),
            server,
            established: true,
        }
    }

    pub(super) fn persist(key: &PersistKey, server: SocketAddrV4, ttl_ms: u64) -> Record {
        Record::Persist {
            protocol: key.protocol,
            client: key.client,
            vip_port: key.port,
            server,
            ttl_ms: ttl_ms.min(u64::from(u32::MAX)) as u32,
        }
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
    /// In a merge: flows the dual placed on another server than this node did for the same
    /// 5-tuple (a client port both sides saw during a split); this node's placement stays.
    pub conflicts: u64,
}

impl Dataplane {
    /// Appends a change to `shard`'s replication log, while a STANDBY is listening.
    pub(super) fn log(&self, shard: &mut Shard, r: Record) {
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

    /// At a release, before the last changes go: TCP flows not yet established here (their
    /// handshake, or in offload mode conntrack's assurance, not seen yet) were never logged.
    /// The dual taking over gets them too, so a connection placed just before this node let
    /// go keeps its server there instead of being dropped as unknown. Returns how many.
    pub fn log_unestablished(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            let pending: Vec<Record> = s
                .flows
                .flows()
                .filter(|e| e.protocol == Protocol::Tcp)
                .filter(|e| {
                    let key = FlowKey {
                        protocol: e.protocol,
                        src: e.client,
                        dst: e.vip,
                    };
                    s.flows.is_established(&key) == Some(false)
                })
                .map(|e| Record::Flow {
                    protocol: e.protocol,
                    client: e.client,
                    vip_port: e.vip.port(),
                    server: e.server,
                    established: false,
                })
                .collect();
            n += pending.len();
            for r in pending {
                self.log(&mut s, r);
            }
        }
        n
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

    /// Forgets every flow and persistence entry: a STANDBY about to apply a new snapshot.
    pub fn clear_replica(&self) {
        let registry = self.registry.load();
        for shard in self.shards.iter() {
            let ended = shard.lock().remove_where(|_| true);
            for e in ended.iter().filter(|e| !e.was_closing) {
                if let Some(st) = registry.stats.get(e.tag as usize) {
                    st.less_live(1);
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
                    if self.apply_flow(protocol, client, vip_port, server, established, now_ms) {
                        done.flows += 1;
                    } else {
                        done.unknown += 1;
                    }
                }
                Record::End {
                    protocol,
                    client,
                    vip_port,
                } => {
                    let key = self.request_key(protocol, client, vip_port);
                    let ended = self.shards[shard_of(client)].lock().remove_request(&key);
                    if let Some(e) = ended {
                        self.flow_ended(&self.view.load(), &e, now_ms);
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
                    let key = PersistKey {
                        client,
                        protocol,
                        port: vip_port,
                    };
                    let until = now_ms + u64::from(ttl_ms);
                    self.persistence.lock().remember(key, server, until);
                    done.persisted += 1;
                }
            }
        }
        done
    }

    /// Takes the dual's records while balancing: at the heal of a split, the dual that gives
    /// up the VIP sends what it placed. Unlike [`Dataplane::apply_replica`] this node's own
    /// flows and persistence win: a 5-tuple both placed, on different servers, stays on this
    /// node's (counted in `conflicts` and remembered in `conflicted`, so the dual's later
    /// end of it does not end ours); the same placement is nothing new.
    pub fn merge_replica(
        &self,
        records: &[Record],
        now_ms: u64,
        conflicted: &mut HashSet<FlowKey>,
    ) -> ReplicaApplied {
        let mut done = ReplicaApplied::default();
        let mut theirs = Vec::with_capacity(records.len());
        for r in records {
            match *r {
                Record::Flow {
                    protocol,
                    client,
                    vip_port,
                    server,
                    ..
                } => {
                    let key = self.request_key(protocol, client, vip_port);
                    let ours = self.shards[shard_of(client)].lock().server_of(&key);
                    match ours {
                        Some(s) if s == server => {}
                        Some(_) => {
                            if conflicted.insert(key) {
                                done.conflicts += 1;
                            }
                        }
                        None => theirs.push(*r),
                    }
                }
                Record::End {
                    protocol,
                    client,
                    vip_port,
                } => {
                    if !conflicted.remove(&self.request_key(protocol, client, vip_port)) {
                        theirs.push(*r);
                    }
                }
                Record::Persist {
                    protocol,
                    client,
                    vip_port,
                    ..
                } => {
                    let key = PersistKey {
                        client,
                        protocol,
                        port: vip_port,
                    };
                    if self.persistence.lock().get(&key, now_ms).is_none() {
                        theirs.push(*r);
                    }
                }
            }
        }
        let applied = self.apply_replica(&theirs, now_ms);
        ReplicaApplied {
            conflicts: done.conflicts,
            ..applied
        }
    }

    /// The request key of a flow from `client` to the VIP in force.
    fn request_key(&self, protocol: Protocol, client: SocketAddrV4, vip_port: u16) -> FlowKey {
        FlowKey {
            protocol,
            src: client,
            dst: SocketAddrV4::new(self.view.load().vip, vip_port),
        }
    }

    /// Puts a replicated flow on the server the ACTIVE chose; false if this node does not
    /// know that server or the table is full.
    pub(super) fn apply_flow(
        &self,
        protocol: Protocol,
        client: SocketAddrV4,
        vip_port: u16,
        server: SocketAddrV4,
        established: bool,
        now_ms: u64,
    ) -> bool {
        let registry = self.registry.load();
        let Some(&id) = registry.ids.get(&(protocol, vip_port, server)) else {
            return false;
        };
        let view = self.view.load();
        let key = self.request_key(protocol, client, vip_port);
        let mut flows = self.shards[shard_of(client)].lock();
        if let Some(old) = flows.remove_request(&key) {
            self.flow_ended(&view, &old, now_ms);
        }
        let Ok(displaced) = flows.insert(&key, server, id, now_ms) else {
            return false;
        };
        if let Some(d) = displaced {
            self.flow_ended(&view, &d, now_ms);
        }
        if established {
            flows.set_established(&key);
        }
        self.with_stats(id, |st| {
            st.live_flows.fetch_add(1, Relaxed);
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::LOG_CAP_PER_SHARD;
    use crate::core::balancer::testing::*;
    use crate::core::packet::fixtures::{tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, SYN};

    /// A TCP packet from `client` to the VIP's port 80 through `dp`: its verdict and where
    /// it was sent.
    fn request(dp: &Dataplane, client: &str, flags: u8) -> (Verdict, SocketAddrV4) {
        let mut p = tcp(sa(client), sa("10.0.0.100:80"), flags, b"x", &[]);
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 5);
        (v, dst_of(&p))
    }

    #[test]
    fn a_standby_given_the_snapshot_forwards_established_flows_to_their_servers() {
        let c = config(r#""persistence_timeout": 30,"#);
        let (active, standby) = (Dataplane::for_test(&c), Dataplane::for_test(&c));
        let clients: Vec<String> = (0..6).map(|i| format!("10.0.0.{}:4000", 5 + i)).collect();
        let placed: Vec<SocketAddrV4> =
            clients.iter().map(|c| request(&active, c, SYN).1).collect();
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
            request(&standby, &clients[1], ACK).0,
            Verdict::Drop(DropReason::MidStream)
        );
        let done = standby.apply_replica(&records, 20);
        assert_eq!((done.flows, done.persisted, done.unknown), (6, 6, 0));
        assert_eq!(standby.flow_count(), 6);
        for (client, server) in clients.iter().zip(&placed) {
            assert_eq!(
                request(&standby, client, ACK),
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
        assert_eq!(request(&standby, "10.0.0.5:4001", SYN).1, placed[0]);

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
            request(&standby, &clients[2], ACK).0,
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
    fn a_release_sends_the_flows_still_in_their_handshake_and_the_dual_keeps_their_server() {
        let c = config("");
        let (active, standby) = (Dataplane::for_test(&c), Dataplane::for_test(&c));
        standby.set_balancing(false, false, 0);
        active.start_change_log();
        // A SYN placed just before the release; its SYN-ACK has not come back.
        let client = sa("10.0.0.5:4000");
        let mut syn = tcp(client, sa("10.0.0.100:80"), SYN, b"", &[]);
        active.handle(
            Direction::Request,
            &mut syn,
            true,
            ChecksumState::Complete,
            0,
        );
        let server = dst_of(&syn);
        let mut out = Vec::new();
        active.take_changes(&mut out).unwrap();
        assert!(out.is_empty(), "a half-open flow is not logged: {out:?}");
        assert_eq!(active.log_unestablished(), 1);
        active.take_changes(&mut out).unwrap();
        assert_eq!(
            out,
            [Record::Flow {
                protocol: Protocol::Tcp,
                client,
                vip_port: 80,
                server,
                established: false,
            }]
        );
        standby.apply_replica(&out, 0);
        standby.set_balancing(true, true, 10);
        let mut ack = tcp(client, sa("10.0.0.100:80"), ACK, b"GET /", &[]);
        assert_eq!(
            standby.handle(
                Direction::Request,
                &mut ack,
                true,
                ChecksumState::Complete,
                10
            ),
            Verdict::Accept
        );
        assert_eq!(dst_of(&ack), server);
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
    fn a_merge_takes_the_duals_flows_keeps_ours_and_counts_the_5_tuples_both_placed() {
        let c = config(r#""persistence_timeout": 30,"#);
        let (winner, loser) = (Dataplane::for_test(&c), Dataplane::for_test(&c));
        // A split: each side places its own clients; one client port reached both.
        let ours = request(&winner, "10.0.0.5:4000", SYN).1;
        let shared = request(&winner, "10.0.0.9:4000", SYN).1;
        let theirs: Vec<SocketAddrV4> = (0..4)
            .map(|i| request(&loser, &format!("10.0.0.{}:5000", 5 + i), SYN).1)
            .collect();
        // The loser placed one client port the winner also saw, on another server.
        let other = if shared == sa("172.16.0.2:80") {
            sa("172.16.0.3:80")
        } else {
            sa("172.16.0.2:80")
        };
        let mut records = loser.replica_snapshot(10);
        records.push(Record::Flow {
            protocol: Protocol::Tcp,
            client: sa("10.0.0.9:4000"),
            vip_port: 80,
            server: other,
            established: true,
        });
        let mut conflicted = std::collections::HashSet::new();
        let done = winner.merge_replica(&records, 20, &mut conflicted);
        assert_eq!((done.flows, done.conflicts, done.unknown), (4, 1, 0));
        // The loser's flows go on to their servers here; ours, and the one both placed, stay.
        for (i, server) in theirs.iter().enumerate() {
            let client = format!("10.0.0.{}:5000", 5 + i);
            assert_eq!(request(&winner, &client, ACK), (Verdict::Accept, *server));
        }
        assert_eq!(
            request(&winner, "10.0.0.5:4000", ACK),
            (Verdict::Accept, ours)
        );
        assert_eq!(
            request(&winner, "10.0.0.9:4000", ACK),
            (Verdict::Accept, shared)
        );
        // The loser ending its copy of the shared 5-tuple does not end ours; its others end.
        let ends = [
            Record::End {
                protocol: Protocol::Tcp,
                client: sa("10.0.0.9:4000"),
                vip_port: 80,
            },
            Record::End {
                protocol: Protocol::Tcp,
                client: sa("10.0.0.5:5000"),
                vip_port: 80,
            },
        ];
        let done = winner.merge_replica(&ends, 30, &mut conflicted);
        assert_eq!(done.ended, 1);
        assert_eq!(
            request(&winner, "10.0.0.9:4000", ACK),
            (Verdict::Accept, shared)
        );
        assert_eq!(winner.flow_count(), 2 + 3);
        // Persistence: the winner's own entry stays, one only the loser had is taken.
        assert_eq!(request(&winner, "10.0.0.5:4001", SYN).1, ours);
        assert_eq!(request(&winner, "10.0.0.6:5001", SYN).1, theirs[1]);
    }
}
