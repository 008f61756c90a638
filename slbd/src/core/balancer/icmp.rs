//! ICMP errors about balanced flows, both ways. An error about a request (client → server:
//! a server's port unreachable, a server-side router's "fragmentation needed" or "time
//! exceeded") is queued after routing on its way to the client; passive detection reads it
//! first, then, for a packet-mode flow, it is translated to be about client → VIP and to come
//! from the VIP, as the client knows the flow. An error about a reply (VIP → client: a
//! client-side router whose link is narrower than the server's packets) is queued before
//! routing, addressed to the VIP; for a packet-mode flow it is translated to be about server
//! → client and addressed to the server, so path-MTU discovery works through the VIP. Offload
//! flows' errors pass untouched: conntrack relates and translates them itself.

use std::sync::atomic::Ordering::Relaxed;

use super::{shard_of, Dataplane, DropReason};
use crate::core::flow::FlowKey;
use crate::core::icmp::{self, DEST_UNREACHABLE};
use crate::core::packet::Endpoint;

impl Dataplane {
    /// Decides a queued ICMP error: `Err` drops it (passive detection kept it from the
    /// client, or its checksum was wrong), `Ok` sends it on, translated when it is about a
    /// packet-mode flow.
    ///
    /// Which way it goes is read from the error itself, not the hook that queued it: offload
    /// mode's unreachables come from the server network before routing too.
    pub(super) fn icmp_error(&self, buf: &mut [u8], now_ms: u64) -> Result<(), DropReason> {
        // Not an error about TCP or UDP (an echo, a redirect, a quoted ICMP): not ours.
        let Ok(e) = icmp::parse_error(buf) else {
            return Ok(());
        };
        let about_reply = e.to == self.view.load().vip;
        match about_reply {
            false => {
                if e.kind == DEST_UNREACHABLE {
                    self.passive_unreachable(&e, now_ms)?;
                }
                let key = FlowKey {
                    protocol: e.protocol,
                    src: e.dst,
                    dst: e.src,
                };
                let flow = self.shards[shard_of(e.src)].lock().flows.find_reply(&key);
                let Some((flow, _)) = flow.filter(|(f, _)| !f.kernel) else {
                    return Ok(());
                };
                let vip = flow.vip;
                icmp::translate(
                    buf,
                    &e,
                    Endpoint::Source,
                    *vip.ip(),
                    Endpoint::Destination,
                    vip,
                )
                .map_err(DropReason::Malformed)?;
                self.counters.icmp_to_client.fetch_add(1, Relaxed);
            }
            true => {
                let key = FlowKey {
                    protocol: e.protocol,
                    src: e.dst,
                    dst: e.src,
                };
                let flow = self.shards[shard_of(e.dst)]
                    .lock()
                    .flows
                    .find_request_flow(&key);
                let Some(flow) = flow.filter(|f| !f.kernel) else {
                    return Ok(());
                };
                let server = flow.server;
                icmp::translate(
                    buf,
                    &e,
                    Endpoint::Destination,
                    *server.ip(),
                    Endpoint::Source,
                    server,
                )
                .map_err(DropReason::Malformed)?;
                self.counters.icmp_to_server.fetch_add(1, Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::icmp::fixtures::error;
    use crate::core::icmp::{parse_error, FRAG_NEEDED, TIME_EXCEEDED};
    use crate::core::packet::fixtures::tcp;
    use std::net::Ipv4Addr;

    const VIP: &str = "10.0.0.100:80";
    const CLIENT: &str = "10.0.0.5:40000";

    fn dp(mode: &str) -> Dataplane {
        Dataplane::for_test(
            &Config::from_json(&format!(
                r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{{"protocol": "tcp", "port": 80, "mode": "{mode}",
                  "servers": ["172.16.0.2:8080", "172.16.0.3:8080"]}}]}}"#
            ))
            .unwrap(),
        )
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Opens a flow from CLIENT; returns the server it went to.
    fn open(dp: &Dataplane) -> SocketAddrV4 {
        let mut p = tcp(sa(CLIENT), sa(VIP), packet::tcp_flags::SYN, b"", &[]);
        let v = dp.handle(Direction::Request, &mut p, true, ChecksumState::Complete, 0);
        match v {
            Verdict::Accept => dst_of(&p),
            Verdict::Offload(_) => sa("0.0.0.0:0"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_routers_frag_needed_about_a_request_reaches_the_client_as_from_the_vip() {
        let dp = dp("packet");
        let server = open(&dp);
        let request = tcp(
            sa(CLIENT),
            server,
            packet::tcp_flags::ACK,
            &[0u8; 1400],
            &[],
        );
        let mut e = error(
            3,
            FRAG_NEEDED,
            ip("172.16.0.1"),
            ip("10.0.0.5"),
            &request,
            576,
        );
        let v = dp.handle(Direction::Reply, &mut e, true, ChecksumState::Complete, 5);
        assert_eq!(v, Verdict::Accept);
        let t = parse_error(&e).unwrap();
        assert_eq!(
            (t.from, t.to, t.src, t.dst),
            (ip("10.0.0.100"), ip("10.0.0.5"), sa(CLIENT), sa(VIP))
        );
        assert_eq!(dp.counters.icmp_to_client.load(Relaxed), 1);
    }

    #[test]
    fn an_error_to_the_vip_about_a_reply_reaches_the_flows_server() {
        let dp = dp("packet");
        let server = open(&dp);
        let reply = tcp(
            sa(VIP),
            sa(CLIENT),
            packet::tcp_flags::ACK,
            &[0u8; 1400],
            &[],
        );
        for kind in [3, TIME_EXCEEDED] {
            let mut e = error(
                kind,
                FRAG_NEEDED,
                ip("10.0.0.1"),
                ip("10.0.0.100"),
                &reply,
                576,
            );
            let v = dp.handle(Direction::Request, &mut e, true, ChecksumState::Complete, 5);
            assert_eq!(v, Verdict::Accept);
            let t = parse_error(&e).unwrap();
            assert_eq!(
                (t.from, t.to, t.src, t.dst),
                (ip("10.0.0.1"), *server.ip(), server, sa(CLIENT))
            );
        }
        assert_eq!(dp.counters.icmp_to_server.load(Relaxed), 2);
    }

    #[test]
    fn errors_about_unknown_or_offload_flows_pass_unchanged() {
        // Packet mode, a client no flow is of; offload mode, the flow's own client (conntrack
        // translates its errors).
        for (mode, client) in [("packet", "10.0.0.9:999"), ("offload", CLIENT)] {
            let dp = dp(mode);
            let server = if mode == "offload" {
                sa("172.16.0.2:8080")
            } else {
                open(&dp)
            };
            if mode == "offload" {
                open(&dp);
            }
            let request = tcp(sa(client), server, packet::tcp_flags::ACK, b"", &[]);
            let reply = tcp(sa(VIP), sa(client), packet::tcp_flags::ACK, b"", &[]);
            for (dir, mut e) in [
                (
                    Direction::Reply,
                    error(3, 4, ip("172.16.0.1"), *sa(client).ip(), &request, 28),
                ),
                (
                    Direction::Request,
                    error(11, 0, ip("10.0.0.1"), ip("10.0.0.100"), &reply, 28),
                ),
            ] {
                let before = e.clone();
                let v = dp.handle(dir, &mut e, true, ChecksumState::Complete, 5);
                assert_eq!((v, e == before), (Verdict::Accept, true), "{mode} {dir:?}");
            }
            let c = &dp.counters;
            assert_eq!(
                (
                    c.icmp_to_client.load(Relaxed),
                    c.icmp_to_server.load(Relaxed)
                ),
                (0, 0)
            );
        }
    }

    #[test]
    fn an_error_with_a_wrong_checksum_is_dropped_and_counted() {
        let dp = dp("packet");
        open(&dp);
        let reply = tcp(sa(VIP), sa(CLIENT), packet::tcp_flags::ACK, b"", &[]);
        let mut e = error(3, FRAG_NEEDED, ip("10.0.0.1"), ip("10.0.0.100"), &reply, 28);
        e[22] ^= 0xff;
        let v = dp.handle(Direction::Request, &mut e, true, ChecksumState::Complete, 5);
        assert_eq!(
            v,
            Verdict::Drop(DropReason::Malformed(Malformed::BadChecksum))
        );
    }
}
