//! Packet mode's path, where every packet of a flow passes through slbd: a request is
//! rewritten to its flow's server (DNAT), a reply to come from the VIP (SNAT). This is the one
//! place a packet is rewritten. Pure.

use super::replica::Record;
use std::sync::atomic::Ordering::Relaxed;

use super::{shard_of, Dataplane, DropReason};
use crate::core::flow::{tcp, Ended, FlowKey, Lookup, Placed};
use crate::core::health::Failure;
use crate::core::model::{Forwarding, Mode};
use crate::core::packet::{self, ChecksumState, Endpoint};
use crate::core::ruleset;

/// The flow key a packet carries, as it travels (a reply's is the reply key).
fn key_of(h: &packet::Headers) -> FlowKey {
    FlowKey {
        protocol: h.protocol,
        src: h.src,
        dst: h.dst,
    }
}

impl Dataplane {
    /// A request: rewritten in place (packet mode, `None`) or, for an offload service's first
    /// packet, left as it is with the mark that binds its flow (`Some(mark)`).
    pub(super) fn request(
        &self,
        buf: &mut [u8],
        csum: ChecksumState,
        now_ms: u64,
    ) -> Result<Option<u32>, DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        let view = self.view.load();
        // The offload chain's rule for a server's packet no conntrack entry knows.
        if *h.dst.ip() != view.vip {
            if h.flags & crate::core::packet::tcp_flags::RST != 0 {
                if let Some(refused) = self.offload_refused(&view, &h, now_ms) {
                    return Err(refused);
                }
            }
            if let Some(verdict) = self.offload_stray(&view, &h, now_ms) {
                return Ok(verdict);
            }
        }
        let svc = view
            .service(h.protocol, h.dst.port())
            .filter(|_| *h.dst.ip() == view.vip)
            .ok_or(DropReason::NoService)?;
        let key = key_of(&h);
        if svc.service.mode == Mode::Offload {
            return self
                .offload_first(&view, svc, &key, h.flags, now_ms)
                .map(Some);
        }
        let dr = svc.service.forwarding == Forwarding::Dr;
        let mut flows = self.shards[shard_of(h.src)].lock();
        let (server, id) = match flows.lookup_request(&key, h.flags, now_ms) {
            // The client retransmits a SYN its server never answered: placed afresh,
            // elsewhere.
            Lookup::Found(placed) if self.unanswered(&placed) => {
                if let Some(ended) = flows.remove_request(&key) {
                    self.forget_failed(&mut flows, &ended);
                    let retry = self.retry_elsewhere(ended.tag);
                    self.handshake_failed(&ended, Failure::PassiveTimeout, retry, now_ms);
                }
                self.place(&view, svc, &key, h.flags, now_ms, &mut flows, false)?
            }
            Lookup::Found(placed) => {
                if placed.closed_now {
                    self.with_stats(placed.tag, |st| st.less_live(1));
                }
                // Direct routing never sees the server's answer: the client's first segment
                // after its SYN says the handshake completed.
                if dr && placed.opening && !tcp::is_syn(h.flags) && !placed.closed_now {
                    flows.set_established(&key);
                    self.handshake_ok(placed.tag);
                    self.log(&mut flows, Record::flow(&key, placed.server));
                }
                (placed.server, placed.tag)
            }
            found @ (Lookup::Missing | Lookup::Reused(_)) => {
                if let Lookup::Reused(ended) = found {
                    self.end(&mut flows, &view, &ended, now_ms);
                }
                self.place(&view, svc, &key, h.flags, now_ms, &mut flows, false)?
            }
        };
        drop(flows);
        self.with_stats(id, |st| st.inbound(buf.len()));
        if dr {
            // Unchanged, marked with its server: the `dr` chain sends it to that MAC.
            return Ok(Some(ruleset::dr_mark(*server.ip())));
        }
        packet::rewrite(buf, &h, Endpoint::Destination, server, csum);
        Ok(None)
    }

    /// A request of an offload flow conntrack does not translate: in the grace period of a
    /// hand-over or a takeover, sent on to the flow's server as packet mode would (conntrack
    /// never learns of it); otherwise dropped.
    pub(super) fn untracked(
        &self,
        buf: &mut [u8],
        csum: ChecksumState,
        now_ms: u64,
    ) -> Result<(), DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        if *h.dst.ip() != self.view.load().vip || now_ms >= self.grace_until_ms.load(Relaxed) {
            return Err(DropReason::Untracked);
        }
        let key = key_of(&h);
        let flows = self.shards[shard_of(h.src)].lock();
        let server = flows.server_of(&key).ok_or(DropReason::Untracked)?;
        drop(flows);
        self.counters.untracked_requests.fetch_add(1, Relaxed);
        packet::rewrite(buf, &h, Endpoint::Destination, server, csum);
        Ok(())
    }

    /// A reply of a packet-mode flow: comes from the VIP, or is dropped if it matches no flow.
    pub(super) fn reply(
        &self,
        buf: &mut [u8],
        csum: ChecksumState,
        now_ms: u64,
    ) -> Result<(), DropReason> {
        let h = packet::parse(buf).map_err(DropReason::Malformed)?;
        let key = key_of(&h);
        let mut shard = self.shards[shard_of(h.dst)].lock();
        let r = match shard.lookup_reply(&key, h.flags, now_ms) {
            Some(r) if r.refused_now && self.passive_of(r.tag).enabled => {
                let request = FlowKey {
                    protocol: h.protocol,
                    src: h.dst,
                    dst: r.vip,
                };
                let retry = self.retry_elsewhere(r.tag);
                // Kept from the client, which retransmits its SYN: placed elsewhere then.
                // (The reset closed the flow, so it left the live count here.)
                let ended = retry.then(|| shard.remove_request(&request)).flatten();
                if let Some(e) = &ended {
                    self.forget_failed(&mut shard, e);
                }
                drop(shard);
                self.with_stats(r.tag, |st| st.less_live(1));
                let flow = ended.unwrap_or(Ended {
                    protocol: h.protocol,
                    client: h.dst,
                    vip: r.vip,
                    server: h.src,
                    tag: r.tag,
                    was_closing: true,
                    kernel: false,
                });
                self.handshake_failed(&flow, Failure::PassiveRst, retry, now_ms);
                if retry {
                    return Err(DropReason::HandshakeRefused);
                }
                // Nowhere else to go: the client hears the refusal.
                packet::rewrite(buf, &h, Endpoint::Source, r.vip, csum);
                return Ok(());
            }
            Some(r) => r,
            None => {
                drop(shard);
                if !self.adopt_reply(&key, now_ms) {
                    return Err(DropReason::ReplyWithoutFlow);
                }
                shard = self.shards[shard_of(h.dst)].lock();
                shard
                    .lookup_reply(&key, h.flags, now_ms)
                    .ok_or(DropReason::ReplyWithoutFlow)?
            }
        };
        if r.established_now || h.protocol == crate::core::net::Protocol::Udp {
            self.handshake_ok(r.tag);
        }
        if r.established_now {
            let placed = FlowKey {
                protocol: h.protocol,
                src: h.dst,
                dst: r.vip,
            };
            self.log(&mut shard, Record::flow(&placed, h.src));
        }
        drop(shard);
        self.with_stats(r.tag, |st| {
            st.outbound(buf.len());
            if r.closed_now {
                st.less_live(1);
            }
        });
        packet::rewrite(buf, &h, Endpoint::Source, r.vip, csum);
        Ok(())
    }

    /// Whether a request found its flow's handshake unanswered for longer than its server's
    /// service allows (a retransmitted SYN): passive detection's timeout.
    pub(super) fn unanswered(&self, placed: &Placed) -> bool {
        placed.unanswered_ms.is_some_and(|ms| {
            let passive = self.passive_of(placed.tag);
            passive.enabled && ms >= passive.syn_timeout.as_millis() as u64
        })
    }

    /// Right after a takeover, a reply that matches no flow is taken as one of the dual's: in
    /// a planned switch the dual goes on placing flows until it lets go, and a server can
    /// answer one (its SYN-ACK) here before the replication record says so. The flow is the
    /// one from the reply's client to the service that has this server; adopted only when
    /// exactly one service does, and only in the takeover's grace period (after it, a reply
    /// without a flow is a stray and is dropped).
    fn adopt_reply(&self, reply: &FlowKey, now_ms: u64) -> bool {
        if now_ms >= self.grace_until_ms.load(Relaxed) {
            return false;
        }
        let view = self.view.load();
        let port = {
            let mut services = view.with_server(reply.protocol, Mode::Packet, reply.src);
            let (Some((svc, _)), None) = (services.next(), services.next()) else {
                return false;
            };
            svc.service.port
        };
        drop(view);
        let adopted = self.apply_flow(reply.protocol, reply.dst, port, reply.src, false, now_ms);
        if adopted {
            self.counters.adopted_reply();
        }
        adopted
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::core::balancer::testing::*;
    use crate::core::balancer::TAKEOVER_GRACE_MS;
    use crate::core::packet::fixtures::{checksums_ok, make_partial, tcp, udp};
    use crate::core::packet::tcp_flags::{ACK, FIN, SYN};

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
    fn after_a_takeover_a_reply_of_the_duals_newest_flow_is_adopted_and_its_flow_carried() {
        let dp = Dataplane::for_test(&config(""));
        dp.set_balancing(false, false, 0);
        // The dual placed 10.0.0.5:40000 on 172.16.0.3:80 just before letting go; its
        // record has not arrived, and the server's SYN-ACK comes here.
        let (client, server) = (sa("10.0.0.5:40000"), sa("172.16.0.3:80"));
        let t = 1_000;
        dp.set_balancing(true, true, t);
        let mut syn_ack = tcp(server, client, SYN | ACK, b"", &[]);
        make_partial(&mut syn_ack);
        assert_eq!(
            dp.handle(
                Direction::Reply,
                &mut syn_ack,
                true,
                ChecksumState::Partial,
                t
            ),
            Verdict::Accept
        );
        let h = packet::parse(&syn_ack).unwrap();
        assert_eq!((h.src, h.dst), (sa("10.0.0.100:80"), client));
        assert!(checksums_ok(&syn_ack));
        assert_eq!(dp.counters.adopted_replies.load(Relaxed), 1);
        // The client's next packets go to that server, not to a new choice.
        let mut ack = tcp(client, sa("10.0.0.100:80"), ACK, b"GET /", &[]);
        assert_eq!(
            dp.handle(
                Direction::Request,
                &mut ack,
                true,
                ChecksumState::Complete,
                t + 1
            ),
            Verdict::Accept
        );
        assert_eq!(dst_of(&ack), server);
        // After the grace period, or from an address no service has, a reply without a flow
        // is a stray.
        let stray = |from: &str, now: u64| {
            let mut p = tcp(sa(from), sa("10.0.0.9:5000"), SYN | ACK, b"", &[]);
            dp.handle(Direction::Reply, &mut p, true, ChecksumState::Complete, now)
        };
        assert_eq!(
            stray("172.16.0.2:80", t + TAKEOVER_GRACE_MS),
            Verdict::Drop(DropReason::ReplyWithoutFlow)
        );
        assert_eq!(
            stray("172.16.0.9:80", t + 2),
            Verdict::Drop(DropReason::ReplyWithoutFlow)
        );
        // A node that took over from nobody (a first start) adopts nothing.
        let fresh = Dataplane::for_test(&config(""));
        let mut p = tcp(server, client, SYN | ACK, b"", &[]);
        assert_eq!(
            fresh.handle(Direction::Reply, &mut p, true, ChecksumState::Complete, 5),
            Verdict::Drop(DropReason::ReplyWithoutFlow)
        );
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
    fn a_full_table_holds_exactly_max_and_makes_room_from_udp_and_unanswered_handshakes() {
        let dp = Dataplane::for_test(&config(r#""flows": {"max": 100},"#));
        let client = |port| SocketAddrV4::new("10.0.0.5".parse().unwrap(), port);
        let ask = |port: u16, now: u64| {
            let mut p = udp(client(port), sa("10.0.0.100:53"), b"q");
            dp.handle(
                Direction::Request,
                &mut p,
                true,
                ChecksumState::Complete,
                now,
            )
        };
        for port in 1..=500u16 {
            assert_eq!(ask(port, u64::from(port)), Verdict::Accept, "room is made");
        }
        assert_eq!(
            dp.flow_count(),
            100,
            "the bound is exact, whatever the shards"
        );
        assert_eq!(dp.counters.evicted_flows.load(Relaxed), 400);
        // The newest flows stayed: an evicted flow was one idle longest where it looked.
        let mut p = udp(client(500), sa("10.0.0.100:53"), b"q");
        dp.handle(
            Direction::Request,
            &mut p,
            true,
            ChecksumState::Complete,
            600,
        );
        assert_eq!(
            dp.counters.evicted_flows.load(Relaxed),
            400,
            "its own flow, kept"
        );

        // A table full of answered TCP connections evicts none of them: the new flow is
        // refused from the VIP.
        let dp = Dataplane::for_test(&config(r#""flows": {"max": 64},"#));
        let syn = |c: SocketAddrV4| {
            let mut p = tcp(c, sa("10.0.0.100:80"), SYN, b"", &[]);
            let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
            (v, dst_of(&p))
        };
        for port in 1..=64u16 {
            let (v, server) = syn(client(port));
            assert_eq!(v, Verdict::Accept);
            let mut ack = tcp(server, client(port), SYN | ACK, b"", &[]);
            dp.handle(Direction::Reply, &mut ack, true, ChecksumState::Complete, 1);
        }
        assert_eq!(syn(client(1000)).0, Verdict::Refuse);
        assert_eq!(dp.counters.dropped(DropReason::TableFull), 1);
        assert_eq!(dp.flow_count(), 64);
        assert_eq!(dp.counters.evicted_flows.load(Relaxed), 0);
        // An unanswered handshake is the first to go.
        let dp = Dataplane::for_test(&config(r#""flows": {"max": 1},"#));
        assert_eq!(syn_on(&dp, client(1)), Verdict::Accept);
        assert_eq!(
            syn_on(&dp, client(2)),
            Verdict::Accept,
            "the unanswered one made room"
        );
        assert_eq!(dp.counters.evicted_flows.load(Relaxed), 1);
    }

    fn syn_on(dp: &Dataplane, c: SocketAddrV4) -> Verdict {
        let mut p = tcp(c, sa("10.0.0.100:80"), SYN, b"", &[]);
        dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0)
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
mod accounting_tests {
    use crate::core::balancer::testing::*;
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
