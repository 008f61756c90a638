//! Offload mode's decisions: a flow's first packet gets its server's mark instead of a
//! rewrite (the same choice as in packet mode, [`Dataplane::place`]), and conntrack's reports
//! on the flows slbd placed keep the flow table, the live counts and replication right. The
//! reports arrive as [`KernelReport`]s, this module's own type: the ctnetlink codec turns its
//! messages into them. Pure.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::sync::atomic::Ordering::Relaxed;

use super::replica::Record;
use super::view::{ServiceState, View};
use super::{shard_of, Dataplane, DropReason, FlowCut};
use crate::core::flow::{Ended, FlowKey, Lookup, Phase, Reported};
use crate::core::health::Failure;
use crate::core::model::{FlowLimits, Forwarding, Mode};
use crate::core::net::Protocol;
use crate::core::ruleset::{
    adopt_mark, dr_mark, offload_id, offload_mark, phase_of, DrFlow, DrServer, OffloadTarget,
    ADOPT_REWRITE_MARK,
};
use crate::core::sched::Algorithm;

/// What conntrack says about one of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelReport {
    /// conntrack destroyed the entry: the flow is over.
    pub ended: bool,
    pub protocol: Protocol,
    /// The original direction: client → VIP.
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    /// Where conntrack's NAT sends the flow.
    pub server: SocketAddrV4,
    /// The conntrack mark; slbd's flows carry [`offload_mark`]s.
    pub mark: u32,
    /// The TCP connection's phase, when the report tells (UDP flows are established).
    pub phase: Option<Phase>,
    /// conntrack's accounting, when it keeps it.
    pub traffic: Option<Traffic>,
}

/// Packets and bytes each way over a flow's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl Dataplane {
    /// An offload flow's first packet (conntrack, or the flow map of direct routing, has no
    /// entry for it): the same choice as in packet mode, answered with the chosen server's
    /// mark instead of a rewrite ([`offload_mark`] for NAT, [`dr_mark`] for direct routing).
    /// A flow the table still holds keeps its server, unless a SYN restarts it.
    pub(super) fn offload_first(
        &self,
        view: &View,
        svc: &ServiceState,
        key: &FlowKey,
        flags: u8,
        now_ms: u64,
    ) -> Result<u32, DropReason> {
        let mark = |server: SocketAddrV4, id: u32| match svc.service.forwarding {
            Forwarding::Dr => Ok(dr_mark(*server.ip())),
            Forwarding::Nat => offload_mark(id).ok_or(DropReason::NoServer),
        };
        let syn = crate::core::flow::tcp::is_syn(flags);
        let mut flows = self.shards[shard_of(key.src)].lock();
        let stale = match flows.lookup_request(key, flags, now_ms) {
            // The client retransmits a SYN its server never answered. Conntrack has bound the
            // flow to that server, so this SYN can only go there: it is dropped, the entry
            // deleted, and the client's next retransmission is a new flow, placed elsewhere.
            Lookup::Found(placed)
                if self.unanswered(&placed) && self.retry_elsewhere(placed.tag) =>
            {
                if let Some(ended) = flows.remove_request(key) {
                    self.forget_failed(&mut flows, &ended);
                    drop(flows);
                    self.handshake_failed(&ended, Failure::PassiveTimeout, true, now_ms);
                }
                return Err(DropReason::HandshakeUnanswered);
            }
            Lookup::Found(placed) if key.protocol == Protocol::Udp || !syn => {
                if placed.closed_now {
                    self.with_stats(placed.tag, |st| st.less_live(1));
                }
                return mark(placed.server, placed.tag);
            }
            // Conntrack forgot a flow the table kept (its end was not reported yet).
            Lookup::Found(_) => flows.remove_request(key),
            Lookup::Reused(ended) => Some(ended),
            Lookup::Missing => None,
        };
        if let Some(ended) = stale {
            self.end(&mut flows, view, &ended, now_ms);
        }
        let (server, id) = self.place(view, svc, key, flags, now_ms, &mut flows, true)?;
        mark(server, id)
    }

    /// A server's reset of an offload flow's handshake (queued by the ruleset while conntrack
    /// has not seen the handshake complete): kept from the client, its conntrack entry
    /// deleted, and the client's retransmitted SYN placed elsewhere. `None`: not the reset of
    /// a handshake this node placed (the path for strays decides).
    pub(super) fn offload_refused(
        &self,
        view: &View,
        h: &crate::core::packet::Headers,
        now_ms: u64,
    ) -> Option<DropReason> {
        let mut owners = view.with_server(h.protocol, Mode::Offload, h.src);
        let (Some((svc, i)), None) = (owners.next(), owners.next()) else {
            return None;
        };
        let id = svc.ids[i];
        if !self.passive_of(id).enabled {
            return None;
        }
        let key = FlowKey {
            protocol: h.protocol,
            src: h.dst,
            dst: SocketAddrV4::new(view.vip, svc.service.port),
        };
        let retry = self.retry_elsewhere(id);
        let mut flows = self.shards[shard_of(key.src)].lock();
        if !retry {
            // Nowhere else to go: counted, and the client hears the refusal (conntrack
            // carries it), its flow ending as conntrack reports.
            let (flow, opening) = flows.find_reply(&FlowKey {
                protocol: h.protocol,
                src: h.src,
                dst: h.dst,
            })?;
            drop(flows);
            if opening {
                self.handshake_failed(&flow, Failure::PassiveRst, false, now_ms);
            }
            return None;
        }
        let ended = flows.take_unanswered(&key, h.src)?;
        self.forget_failed(&mut flows, &ended);
        drop(flows);
        self.handshake_failed(&ended, Failure::PassiveRst, true, now_ms);
        Some(DropReason::HandshakeRefused)
    }

    /// A server's packet no conntrack entry knows (an offload service's, queued by the
    /// ruleset). In the grace period after a takeover it is taken as one of a flow the dual
    /// placed just before letting go (a planned switch): the flow goes into the table, so the
    /// client's packets keep their server. A SYN-ACK or FIN (INVALID to conntrack, which binds
    /// no NAT to it) gets [`ADOPT_REWRITE_MARK`]: queued again after routing, it is rewritten
    /// by [`Dataplane::reply`] to come from the VIP; any other packet opened a new
    /// conntrack entry and is answered with the service's [`adopt_mark`], by which
    /// `offload_snat` binds that entry to the VIP both ways. `None`: not an offload server's
    /// packet (not this path's); `Some(None)`: accept (rewritten, or unchanged outside the
    /// grace period, as conntrack alone would pass it); `Some(Some(mark))`: accept with mark.
    /// The packet itself is never changed here.
    pub(super) fn offload_stray(
        &self,
        view: &View,
        h: &crate::core::packet::Headers,
        now_ms: u64,
    ) -> Option<Option<u32>> {
        use crate::core::packet::tcp_flags::{FIN, RST, SYN};
        let mut owners = view.with_server(h.protocol, Mode::Offload, h.src);
        let (Some((svc, i)), rest) = (owners.next(), owners.next()) else {
            return None;
        };
        if rest.is_some()
            || now_ms >= self.grace_until_ms.load(Relaxed)
            || h.protocol != Protocol::Tcp
            || h.flags & RST != 0
        {
            return Some(None);
        }
        let vip = SocketAddrV4::new(view.vip, svc.service.port);
        let key = FlowKey {
            protocol: h.protocol,
            src: h.dst,
            dst: vip,
        };
        let mut flows = self.shards[shard_of(key.src)].lock();
        if flows.is_established(&key).is_none() {
            let id = svc.ids[i];
            if flows.insert_kernel(&key, h.src, id, now_ms, false).is_err() {
                return Some(None);
            }
            self.with_stats(id, |st| {
                st.live_flows.fetch_add(1, Relaxed);
            });
        }
        drop(flows);
        self.counters.adopted_reply();
        Some(Some(if h.flags & (SYN | FIN) != 0 {
            ADOPT_REWRITE_MARK
        } else {
            adopt_mark(svc.service.port)
        }))
    }

    /// Follows conntrack's report on an entry (an event, or a dump line): confirms offload
    /// flows, tracks their TCP state for the live counts and replication, removes the ones
    /// that ended, and adopts ones the table lost. Reports on entries slbd did not place are
    /// ignored, and so is everything while this node is not balancing (a STANDBY's flows are
    /// the ACTIVE's, not its own kernel's).
    pub fn conntrack_report(&self, r: &KernelReport, now_ms: u64) {
        if !self.balancing.load(Relaxed) {
            return;
        }
        let Some(id) = offload_id(r.mark) else { return };
        let registry = self.registry.load();
        if registry.ids.get(&(r.protocol, r.vip.port(), r.server)) != Some(&id) {
            return;
        }
        let Some(stats) = registry.stats.get(id as usize) else {
            return;
        };
        let view = self.view.load();
        let key = FlowKey {
            protocol: r.protocol,
            src: r.client,
            dst: r.vip,
        };
        let mut flows = self.shards[shard_of(key.src)].lock();
        if r.ended {
            if let Some(ended) = flows.remove_reported(&key, r.server) {
                self.log(&mut flows, Record::end(&ended));
                drop(flows);
                self.flow_ended(&view, &ended, now_ms);
                if let Some(t) = r.traffic {
                    stats.packets_in.fetch_add(t.packets_in, Relaxed);
                    stats.bytes_in.fetch_add(t.bytes_in, Relaxed);
                    stats.packets_out.fetch_add(t.packets_out, Relaxed);
                    stats.bytes_out.fetch_add(t.bytes_out, Relaxed);
                }
            }
            return;
        }
        match flows.report_kernel(&key, r.server, r.phase) {
            Reported::Known {
                established_now,
                closed_now,
            } => {
                if established_now && key.protocol == Protocol::Tcp {
                    self.log(&mut flows, Record::flow(&key, r.server));
                    self.handshake_ok(id);
                }
                if closed_now {
                    stats.less_live(1);
                }
            }
            // The table lost it (an unconfirmed flow expired, or events were lost), or holds
            // it on another server: adopt it as conntrack carries it, which is where its
            // packets go.
            Reported::Unknown if r.phase != Some(Phase::Closing) => {
                if let Some(stale) = flows.remove_request(&key) {
                    self.end(&mut flows, &view, &stale, now_ms);
                }
                if let Ok(displaced) = flows.insert_kernel(&key, r.server, id, now_ms, true) {
                    if let Some(d) = displaced {
                        self.end(&mut flows, &view, &d, now_ms);
                    }
                    if r.phase == Some(Phase::Established) {
                        flows.report_kernel(&key, r.server, r.phase);
                        self.log(&mut flows, Record::flow(&key, r.server));
                    }
                    stats.live_flows.fetch_add(1, Relaxed);
                }
            }
            Reported::Unknown => {}
        }
    }

    /// Conntrack's whole list of slbd's entries (after lost events, or a restart): offload
    /// flows it no longer holds end, and the ones it holds are adopted or updated.
    pub fn conntrack_resync(&self, entries: &[KernelReport], now_ms: u64) {
        self.kernel_resync(Forwarding::Nat, entries, now_ms);
    }

    /// The flow map's entries (read every second): the offload direct-routing flows it no
    /// longer holds end, and the ones it holds are confirmed, adopted or updated, each in
    /// the phase its timeout tells ([`phase_of`]), as conntrack's reports do for NAT.
    ///
    /// A flow placed since the map was read (a SYN on a client port just closed) is only
    /// confirmed by an established entry on its own server: any other entry of its key is
    /// the previous flow's, which that SYN deleted from the map after the read.
    pub fn dr_flows_resync(&self, entries: &[DrFlow], limits: &FlowLimits, now_ms: u64) {
        let vip = self.view.load().vip;
        let registry = self.registry.load();
        let reports: Vec<KernelReport> = entries
            .iter()
            .filter_map(|e| {
                let server = SocketAddrV4::new(e.server, e.vip_port);
                let id = registry.ids.get(&(e.protocol, e.vip_port, server))?;
                let key = FlowKey {
                    protocol: e.protocol,
                    src: e.client,
                    dst: SocketAddrV4::new(vip, e.vip_port),
                };
                let placed = self.shards[shard_of(key.src)]
                    .lock()
                    .unconfirmed_kernel(&key);
                let phase = phase_of(e, limits);
                if placed.is_some_and(|p| p != server || phase == Some(Phase::Closing)) {
                    return None;
                }
                Some(KernelReport {
                    ended: false,
                    protocol: e.protocol,
                    client: e.client,
                    vip: SocketAddrV4::new(vip, e.vip_port),
                    server,
                    mark: offload_mark(*id)?,
                    phase,
                    traffic: None,
                })
            })
            .collect();
        drop(registry);
        self.kernel_resync(Forwarding::Dr, &reports, now_ms);
    }

    /// A whole list of the kernel's flows of offload services forwarding by `forwarding`:
    /// their flows it no longer holds end (and those of services gone), the others follow
    /// the reports.
    fn kernel_resync(&self, forwarding: Forwarding, entries: &[KernelReport], now_ms: u64) {
        if !self.balancing.load(Relaxed) {
            return;
        }
        let held: HashSet<(Protocol, SocketAddrV4, SocketAddrV4)> = entries
            .iter()
            .map(|e| (e.protocol, e.client, e.vip))
            .collect();
        let view = self.view.load();
        let carried_by = |protocol: Protocol, vip: SocketAddrV4| {
            view.service(protocol, vip.port())
                .is_none_or(|s| s.service.forwarding == forwarding)
        };
        for shard in self.shards.iter() {
            let mut t = shard.lock();
            let gone_from_list = |f: &Ended| {
                f.kernel
                    && carried_by(f.protocol, f.vip)
                    && !held.contains(&(f.protocol, f.client, f.vip))
            };
            // The flow map is read every second, so a flow placed while it was being read is
            // usual there: only confirmed flows end by its list.
            let gone = match forwarding {
                Forwarding::Nat => t.remove_where(gone_from_list),
                Forwarding::Dr => t.remove_confirmed_where(gone_from_list),
            };
            for e in &gone {
                self.log(&mut t, Record::end(e));
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
    pub fn offload_takeover(&self) -> Vec<(Ended, u32, bool)> {
        let view = self.view.load();
        // A merge asks after every batch it receives: without an offload service there is
        // nothing to hand over, and no reason to walk the table.
        if !view.services.iter().any(|s| s.service.nat_offload()) {
            return Vec::new();
        }
        // Not the flows conntrack carries already (a merge happens while balancing).
        let offload = |e: &Ended| {
            !e.kernel
                && view
                    .service(e.protocol, e.vip.port())
                    .is_some_and(|s| s.service.nat_offload())
                && offload_mark(e.tag).is_some()
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

    /// The servers of offload services in force, each with the mark that binds a flow to
    /// it (NAT) or sends a packet to it (direct routing) and the weight it takes new flows
    /// with now (health and checks change it: the rules follow).
    pub fn offload_targets(&self) -> Vec<OffloadTarget> {
        let view = self.view.load();
        let registry = self.registry.load();
        let mut out: Vec<OffloadTarget> = view
            .services
            .iter()
            .filter(|s| s.service.mode == Mode::Offload)
            .flat_map(|s| {
                let registry = &registry;
                let primaries_up = Self::primaries_up(s, registry);
                s.service
                    .servers
                    .iter()
                    .zip(&s.ids)
                    .filter_map(move |(r, id)| {
                        let weight = registry
                            .stats
                            .get(*id as usize)
                            .filter(|st| {
                                Self::standing(st, r, primaries_up) == super::Standing::InRotation
                            })
                            .map_or(0, |st| st.weight(r.weight));
                        let forwarding = s.service.forwarding;
                        Some(OffloadTarget {
                            mark: match forwarding {
                                Forwarding::Nat => offload_mark(*id)?,
                                Forwarding::Dr => dr_mark(*r.addr.ip()),
                            },
                            forwarding,
                            protocol: s.service.protocol,
                            port: s.service.port,
                            server: r.addr,
                            weight,
                            every_state: s.service.algorithm == Algorithm::LeastConnections,
                        })
                    })
            })
            .collect();
        out.sort_by_key(|t| t.mark);
        out
    }

    /// What carries server `id`'s flows in the kernel: none unless it is an offload
    /// service's.
    pub(super) fn cut_of(&self, id: u32) -> Option<FlowCut> {
        let registry = self.registry.load();
        if registry.modes.get(id as usize) != Some(&Mode::Offload) {
            return None;
        }
        match registry.forwarding.get(id as usize)? {
            Forwarding::Nat => offload_mark(id).map(|mark| FlowCut::Conntrack { mark }),
            Forwarding::Dr => {
                let (&(protocol, vip_port, server), _) =
                    registry.ids.iter().find(|(_, &i)| i == id)?;
                Some(FlowCut::DrFlows(DrServer {
                    protocol,
                    vip_port,
                    server: *server.ip(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::balancer::TAKEOVER_GRACE_MS;
    use crate::core::packet::fixtures::{checksums_ok, tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, SYN};
    use crate::core::ruleset::{adopt_mark, ADOPT_REWRITE_MARK};

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

    fn syn(dp: &Dataplane, client: &str) -> Verdict {
        let mut p = tcp(sa(client), sa("10.0.0.100:80"), SYN, b"", &[]);
        let before = p.clone();
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        assert_eq!(p, before, "an offload packet is passed on unchanged");
        v
    }

    /// Conntrack's report on the TCP flow of `client`, placed on `server` with `mark`: `ended`
    /// for its destruction, else in `phase`.
    fn report(
        ended: bool,
        client: &str,
        server: &str,
        mark: u32,
        phase: Option<Phase>,
    ) -> KernelReport {
        KernelReport {
            ended,
            protocol: Protocol::Tcp,
            client: sa(client),
            vip: sa("10.0.0.100:80"),
            server: sa(server),
            mark,
            phase,
            traffic: None,
        }
    }

    fn live(dp: &Dataplane, service: usize, server: usize) -> u64 {
        dp.services()[service].1[server].live_flows.load(Relaxed)
    }

    #[test]
    fn in_a_hand_over_a_request_conntrack_does_not_translate_goes_to_its_flows_server() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let (client, vip) = (sa("10.0.0.5:4000"), sa("10.0.0.100:80"));
        let mut syn = tcp(client, vip, SYN, b"", &[]);
        let v = dp.handle(
            Direction::Request,
            &mut syn,
            true,
            ChecksumState::Complete,
            10,
        );
        assert!(matches!(v, Verdict::Offload(_)), "{v:?}");
        let server = (0..3)
            .find(|&i| live(&dp, 0, i) == 1)
            .map(|i| dp.services()[0].0.servers[i].addr)
            .expect("the SYN placed a flow");
        let untracked = |dp: &Dataplane, from: SocketAddrV4, t: u64| {
            let mut ack = tcp(from, vip, ACK, b"GET", &[]);
            let v = dp.handle(
                Direction::Untracked,
                &mut ack,
                true,
                ChecksumState::Complete,
                t,
            );
            (v, packet::parse(&ack).unwrap().dst, checksums_ok(&ack))
        };
        // Outside a hand-over an INVALID packet is dropped, as the kernel alone would.
        assert_eq!(
            untracked(&dp, client, 20).0,
            Verdict::Drop(DropReason::Untracked)
        );
        // In one, the handshake's ACK whose SYN-ACK went the dual's way reaches the server
        // the SYN was given, rewritten here (conntrack translates nothing INVALID).
        dp.handing_over(30);
        assert_eq!(untracked(&dp, client, 40), (Verdict::Accept, server, true));
        // A flow this node never placed is not invented, and the window closes.
        assert_eq!(
            untracked(&dp, sa("10.0.0.6:4000"), 40).0,
            Verdict::Drop(DropReason::Untracked)
        );
        assert_eq!(
            untracked(&dp, client, 30 + TAKEOVER_GRACE_MS).0,
            Verdict::Drop(DropReason::Untracked)
        );
    }

    #[test]
    fn after_a_takeover_a_servers_syn_ack_no_flow_knows_is_answered_and_its_flow_marked() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        dp.set_balancing(false, false, 0);
        let t = 1_000;
        dp.set_balancing(true, true, t);
        // The dual placed 10.0.0.5:4000 on 172.16.0.3:80 just before letting go; the server's
        // SYN-ACK reaches this node, whose conntrack never saw the SYN.
        let (client, server) = (sa("10.0.0.5:4000"), sa("172.16.0.3:80"));
        // Before routing it is only marked (rewritten there, a packet from the local VIP
        // arriving from outside would be dropped as a martian); after routing it is rewritten.
        let mut syn_ack = tcp(server, client, SYN | ACK, b"", &[]);
        let before = syn_ack.clone();
        let v = dp.handle(
            Direction::Request,
            &mut syn_ack,
            true,
            ChecksumState::Complete,
            t,
        );
        assert_eq!(v, Verdict::Offload(ADOPT_REWRITE_MARK));
        assert_eq!(syn_ack, before);
        let v = dp.handle(
            Direction::Reply,
            &mut syn_ack,
            true,
            ChecksumState::Complete,
            t,
        );
        assert_eq!(v, Verdict::Accept);
        let h = packet::parse(&syn_ack).unwrap();
        assert_eq!((h.src, h.dst), (sa("10.0.0.100:80"), client));
        assert!(checksums_ok(&syn_ack));
        assert_eq!(dp.counters.adopted_replies.load(Relaxed), 1);
        // The client's ACK (new to conntrack here) gets that server's mark, not a new choice.
        let mut ack = tcp(client, sa("10.0.0.100:80"), ACK, b"", &[]);
        let id = dp.server_id(0, 1).unwrap();
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut ack,
                true,
                ChecksumState::Complete,
                t + 1
            ),
            Verdict::Offload(offload_mark(id).unwrap())
        );
        // A server's data segment of another such flow opened a new conntrack entry: it
        // gets the mark that binds that entry to the VIP (offload_snat), and is not rewritten.
        let other = sa("10.0.0.5:4001");
        let mut data = tcp(server, other, ACK, b"HTTP/1.0 200 OK", &[]);
        let before = data.clone();
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut data,
                true,
                ChecksumState::Complete,
                t + 2
            ),
            Verdict::Offload(adopt_mark(80))
        );
        assert_eq!(data, before);
        assert_eq!(dp.counters.adopted_replies.load(Relaxed), 2);
        // Outside the grace period it passes unchanged, as conntrack alone would let it.
        let mut p = tcp(server, sa("10.0.0.9:1"), SYN | ACK, b"", &[]);
        let before = p.clone();
        let late = t + TAKEOVER_GRACE_MS;
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut p,
                true,
                ChecksumState::Complete,
                late
            ),
            Verdict::Accept
        );
        assert_eq!(p, before);
        // A packet from no offload service's server is not this path's (nothing queues it).
        let mut p = tcp(sa("172.16.0.2:8081"), sa("10.0.0.9:1"), SYN | ACK, b"", &[]);
        assert_eq!(
            dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, t),
            Verdict::Drop(DropReason::NoService)
        );
        assert_eq!(dp.counters.adopted_replies.load(Relaxed), 2);
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
            &report(false, "10.0.0.5:1000", server, 0, Some(Phase::Established)),
            0,
        );
        dp.conntrack_report(
            &report(true, "10.0.0.5:1000", "172.16.0.3:80", mark, None),
            0,
        );
        assert_eq!(dp.flow_count(), 1);
        // Assured: the flow is established and replicated once.
        let assured = report(
            false,
            "10.0.0.5:1000",
            server,
            mark,
            Some(Phase::Established),
        );
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
            &report(false, "10.0.0.5:1000", server, mark, Some(Phase::Closing)),
            0,
        );
        assert_eq!(live(&dp, 0, 0), 0);
        let end = KernelReport {
            traffic: Some(Traffic {
                packets_in: 5,
                bytes_in: 300,
                packets_out: 4,
                bytes_out: 900,
            }),
            ..report(true, "10.0.0.5:1000", server, mark, None)
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
            &report(true, "10.0.0.5:1000", "172.16.0.2:80", mark, None),
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
        let a = report(
            false,
            "10.0.0.7:1",
            "172.16.0.3:80",
            mark,
            Some(Phase::Established),
        );
        let b = report(
            false,
            "10.0.0.7:2",
            "172.16.0.3:80",
            mark,
            Some(Phase::Established),
        );
        dp.conntrack_report(&a, 0);
        dp.conntrack_report(&b, 0);
        assert_eq!((dp.flow_count(), live(&dp, 0, 1)), (2, 2));
        // A mark naming a server id that is not this server's is not slbd's flow.
        let forged = report(
            false,
            "10.0.0.7:3",
            "172.16.0.9:80",
            mark,
            Some(Phase::Established),
        );
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
            &report(true, "10.0.0.8:1", "172.16.0.3:80", mark(1), None),
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

    #[test]
    fn conntrack_naming_another_server_replaces_the_flow_instead_of_doubling_it() {
        let dp = Dataplane::new(&config("ROUND_ROBIN"), 1);
        let Verdict::Offload(_) = syn(&dp, "10.0.0.5:1000") else {
            panic!("no mark")
        };
        assert_eq!(live(&dp, 0, 0), 1, "placed on the first server");
        let other = offload_mark(dp.server_id(0, 1).unwrap()).unwrap();
        let report_b = |ended| {
            report(
                ended,
                "10.0.0.5:1000",
                "172.16.0.3:80",
                other,
                Some(Phase::Established),
            )
        };
        dp.conntrack_report(&report_b(false), 0);
        assert_eq!(dp.flow_count(), 1, "one flow for one 5-tuple");
        assert_eq!((live(&dp, 0, 0), live(&dp, 0, 1)), (0, 1));
        // conntrack's end of the adopted flow is honoured.
        dp.conntrack_report(&report_b(true), 0);
        assert_eq!(dp.flow_count(), 0);
        assert_eq!(live(&dp, 0, 1), 0);
    }

    #[test]
    fn a_down_offload_server_names_what_the_kernel_carries_of_its_flows_conntrack_for_nat_the_flow_map_for_dr(
    ) {
        use crate::core::balancer::FlowCut;
        use crate::core::health::Failure;
        use crate::core::ruleset::DrServer;
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [
                  {"protocol": "tcp", "port": 80, "mode": "offload", "forwarding": "dr",
                   "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                  {"protocol": "tcp", "port": 81, "mode": "offload", "servers": ["172.16.0.2:81"]},
                  {"protocol": "tcp", "port": 82, "servers": ["172.16.0.2:82"]}
                ]}"#,
        )
        .unwrap();
        let dp = Dataplane::new(&config, 1);
        let down = |service, server| {
            let id = dp.server_id(service, server).unwrap();
            dp.set_health(id, false, None, Some(Failure::Refused), false)
                .cut
        };
        assert_eq!(
            down(0, 1),
            Some(FlowCut::DrFlows(DrServer {
                protocol: Protocol::Tcp,
                vip_port: 80,
                server: "172.16.0.3".parse().unwrap()
            })),
            "direct routing: the server's entries of the service's flow map"
        );
        let nat = offload_mark(dp.server_id(1, 0).unwrap()).unwrap();
        assert_eq!(
            down(1, 0),
            Some(FlowCut::Conntrack { mark: nat }),
            "NAT: the server's conntrack entries"
        );
        assert_eq!(down(2, 0), None, "packet mode: the kernel carries nothing");
    }

    #[test]
    fn dr_offload_flows_get_their_servers_address_and_live_exactly_as_long_as_the_flow_map_holds_them(
    ) {
        use crate::core::ruleset::{dr_mark, DrFlow};
        let config = Config::from_json(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [
                  {"protocol": "tcp", "port": 80, "mode": "offload", "forwarding": "dr",
                   "servers": ["172.16.0.2:80", "172.16.0.3:80"]},
                  {"protocol": "udp", "port": 53, "mode": "offload", "servers": ["172.16.0.2:53"]}
                ]}"#,
        )
        .unwrap();
        let dp = Dataplane::new(&config, 1);
        let limits = config.flows;
        let Verdict::Offload(mark) = syn(&dp, "10.0.0.5:1000") else {
            panic!("no mark")
        };
        assert_eq!(
            mark,
            dr_mark("172.16.0.2".parse().unwrap()),
            "the server's address"
        );
        let mut q = udp(sa("10.0.0.5:9"), sa("10.0.0.100:53"), b"q");
        let udp_mark = offload_mark(dp.server_id(1, 0).unwrap()).unwrap();
        assert_eq!(
            dp.handle(Direction::Request, &mut q, true, ChecksumState::Complete, 0),
            Verdict::Offload(udp_mark),
            "the NAT offload service beside it keeps conntrack's marks"
        );
        assert_eq!((dp.flow_count(), live(&dp, 0, 0)), (2, 1));
        let entry = |timeout: std::time::Duration| DrFlow {
            protocol: Protocol::Tcp,
            client: sa("10.0.0.5:1000"),
            vip_port: 80,
            server: "172.16.0.2".parse().unwrap(),
            timeout,
        };
        // The map holds it established; conntrack's list (which never holds a DR flow) ends
        // the NAT flow, not this one.
        dp.dr_flows_resync(&[entry(limits.tcp_timeout)], &limits, 1_000);
        dp.conntrack_resync(&[], 1_000);
        assert_eq!((dp.flow_count(), live(&dp, 0, 0)), (1, 1));
        // Confirmed, it never idles out in the table.
        assert_eq!(dp.expire(10_000_000), 0);
        assert_eq!(live(&dp, 0, 0), 1);
        // A FIN gave it the closing timeout: no longer counted, still in the table.
        dp.dr_flows_resync(&[entry(limits.tcp_closing_timeout)], &limits, 10_001_000);
        assert_eq!((dp.flow_count(), live(&dp, 0, 0)), (1, 0));
        // Gone from the map: gone from the table.
        dp.dr_flows_resync(&[], &limits, 10_002_000);
        assert_eq!(dp.flow_count(), 0);
        // A flow placed while the map was read is not ended by that read.
        let Verdict::Offload(_) = syn(&dp, "10.0.0.6:1000") else {
            panic!("no mark")
        };
        dp.dr_flows_resync(&[], &limits, 10_003_000);
        assert_eq!(dp.flow_count(), 1);
        // Its port closed, the client's new SYN is placed before the map is read again: the
        // previous flow's closing entry, read before that SYN deleted it, neither confirms
        // nor closes the new flow, and an entry naming another server does not displace it.
        let on = (0..2)
            .find(|&i| live(&dp, 0, i) == 1)
            .expect("the new flow is counted");
        let addr = |i: usize| *dp.services()[0].0.servers[i].addr.ip();
        let mut stale = entry(limits.tcp_closing_timeout);
        stale.client = sa("10.0.0.6:1000");
        stale.server = addr(on);
        dp.dr_flows_resync(&[stale], &limits, 10_003_500);
        stale.server = addr(1 - on);
        stale.timeout = limits.tcp_timeout;
        dp.dr_flows_resync(&[stale], &limits, 10_003_600);
        assert_eq!(
            (dp.flow_count(), live(&dp, 0, on), live(&dp, 0, 1 - on)),
            (1, 1, 0)
        );
        // An entry on a server slbd does not have is no flow of its.
        let mut stranger = entry(limits.tcp_timeout);
        stranger.server = "172.16.0.9".parse().unwrap();
        dp.dr_flows_resync(&[stranger], &limits, 10_004_000);
        assert_eq!(dp.flow_count(), 1);
    }
}
