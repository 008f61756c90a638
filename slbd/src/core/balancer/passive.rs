//! Passive detection and handshake retry: what the data path does when it sees a server fail
//! a new connection's handshake — a SYN answered by a reset (nothing listens), by ICMP
//! unreachable, or not at all (the client retransmits it). The failed attempt is forgotten and
//! the client's retransmitted SYN is placed on another server (the handshake's client, VIP
//! port and the server to avoid are remembered for [`RETRY_MEMORY_MS`]); the server's count of
//! failed handshakes in a row grows, and at its service's `passive.fall` the server leaves
//! rotation at once, as if its checks had failed. Only the active checks bring it back. A
//! handshake that succeeds resets the count, so a server that resets one established
//! connection (its application's choice) is never counted.
//!
//! The data path decides and records; what needs I/O (logging the change, cutting an offload
//! server's conntrack entries, deleting the conntrack entry of a refused offload handshake so
//! that the retransmission is a new flow) is queued as [`PassiveWork`] for the shell, which
//! waits for it with [`Dataplane::wait_passive`]. Pure (locks and a condition variable only).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::replica::Record;
use super::{Dataplane, DropReason, HealthOutcome, Shard};
use crate::core::flow::{Ended, FlowKey};
use crate::core::health::{Failure, PassiveConfig};
use crate::core::icmp::IcmpError;
use crate::core::net::Protocol;
use crate::core::persist::PersistKey;

/// How long a failed handshake's retry avoids the server that failed it: past the client's
/// first SYN retransmission (1 s), and the second one in offload mode (2 s on Linux ≥ 6.5,
/// 3 s before), where the first is dropped. The next placement of the client's flow takes it.
pub const RETRY_MEMORY_MS: u64 = 4_000;

/// Failed handshakes count as "in a row" when each comes within this of the one before.
pub const PASSIVE_WINDOW_MS: u64 = 10_000;

/// Most handshakes remembered for a retry; beyond it a retry may meet the same server again.
const RETRY_MEMORY_MAX: usize = 4096;

/// Most conntrack deletions queued for the shell before it takes them (one per failed
/// offload handshake; a server going down is queued once, by its compare-and-swap).
const PENDING_MAX: usize = 65_536;

/// A server passive detection took out of rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveDown {
    /// The server's stable id.
    pub id: u32,
    /// The service's name (`tcp/80`).
    pub service: String,
    pub server: SocketAddrV4,
    pub why: Failure,
    /// The failed handshakes in a row that took it out.
    pub fall: u32,
    /// What ending its flows did, and what to cut.
    pub outcome: HealthOutcome,
}

/// What the shell must carry out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassiveWork {
    /// Servers taken out since the last call.
    pub downs: Vec<PassiveDown>,
    /// Conntrack entries of offload handshakes that failed, by their reply tuple (protocol,
    /// server, client): deleted, so that the client's retransmission opens a new flow.
    pub forget: Vec<(Protocol, SocketAddrV4, SocketAddrV4)>,
}

impl PassiveWork {
    pub fn is_empty(&self) -> bool {
        self.downs.is_empty() && self.forget.is_empty()
    }
}

/// A failed handshake's client: (protocol, client, VIP port).
type RetryKey = (Protocol, SocketAddrV4, u16);

/// The server its retry avoids, and until when (ms).
type Avoid = (u32, u64);

#[derive(Default)]
struct Pending {
    downs: Vec<(u32, Failure)>,
    forget: Vec<(Protocol, SocketAddrV4, SocketAddrV4)>,
}

/// The data plane's passive state.
#[derive(Default)]
pub(super) struct Passive {
    pending: Mutex<Pending>,
    ready: Condvar,
    retry: Mutex<HashMap<RetryKey, Avoid>>,
    /// `retry`'s length, read without its lock on every new flow.
    retry_len: AtomicUsize,
}

impl Dataplane {
    /// The passive detection settings of server `id`'s service.
    pub(super) fn passive_of(&self, id: u32) -> PassiveConfig {
        let registry = self.registry.load();
        registry
            .passive
            .get(id as usize)
            .copied()
            .unwrap_or(PassiveConfig {
                enabled: false,
                ..PassiveConfig::default()
            })
    }

    /// A handshake with server `id` succeeded.
    pub(super) fn handshake_ok(&self, id: u32) {
        self.with_stats(id, |st| {
            // Read first: the common case (no failure) writes nothing to a shared line.
            if st.passive_fails.load(Relaxed) != 0 {
                st.passive_fails.store(0, Relaxed);
            }
        });
    }

    /// Whether a failed handshake with server `id` can be retried elsewhere: another server
    /// of its service is in rotation. When none is, the failure still counts, but its answer
    /// (a reset, an ICMP error) reaches the client as it came: a refused connection at once,
    /// rather than SYNs retransmitted for two minutes to the only server there is.
    pub(super) fn retry_elsewhere(&self, id: u32) -> bool {
        self.passive_of(id).enabled && self.another_up(id)
    }

    /// A flow whose handshake failed leaves the table (the caller removed it from `flows`):
    /// replication hears of its end, its server's live count drops, and the client's
    /// persistence entry is forgotten if it names that server — not renewed, as a flow's
    /// normal end would.
    pub(super) fn forget_failed(&self, flows: &mut Shard, ended: &Ended) {
        self.log(flows, Record::end(ended));
        if !ended.was_closing {
            self.with_stats(ended.tag, |st| st.less_live(1));
        }
        let key = PersistKey {
            client: *ended.client.ip(),
            protocol: ended.protocol,
            port: ended.vip.port(),
        };
        self.persistence.lock().forget(&key, ended.server);
    }

    /// The handshake of `flow` (its server's id in `tag`) failed (`why`), seen by the data
    /// path. With `retry`, the client's next attempt avoids the server and, for an offload
    /// flow, its conntrack entry is queued for deletion. At the service's `passive.fall`
    /// failures in a row (each within [`PASSIVE_WINDOW_MS`] of the one before) the server
    /// leaves rotation.
    pub(super) fn handshake_failed(&self, flow: &Ended, why: Failure, retry: bool, now_ms: u64) {
        let id = flow.tag;
        if retry {
            self.counters.retried_handshakes.fetch_add(1, Relaxed);
            let mut memory = self.passive.retry.lock();
            if memory.len() < RETRY_MEMORY_MAX {
                memory.insert(
                    (flow.protocol, flow.client, flow.vip.port()),
                    (id, now_ms + RETRY_MEMORY_MS),
                );
                self.passive.retry_len.store(memory.len(), Relaxed);
            }
        }
        let config = self.passive_of(id);
        let mut down = None;
        self.with_stats(id, |st| {
            let last = st.passive_last_ms.swap(now_ms, Relaxed);
            if now_ms.saturating_sub(last) > PASSIVE_WINDOW_MS {
                // Failures far apart are not a server dying (UDP offload flows report no
                // success that would reset the count).
                st.passive_fails.store(0, Relaxed);
            }
            let fails = st.passive_fails.fetch_add(1, Relaxed) + 1;
            if config.enabled
                && fails >= config.fall.max(1)
                && st
                    .up
                    .compare_exchange(true, false, Relaxed, Relaxed)
                    .is_ok()
            {
                st.down_reason.store(why.code(), Relaxed);
                down = Some((id, why));
            }
        });
        let forget = retry && flow.kernel;
        if down.is_none() && !forget {
            return;
        }
        let mut pending = self.passive.pending.lock();
        if let Some(d) = down {
            pending.downs.push(d);
        }
        if forget && pending.forget.len() < PENDING_MAX {
            // By the reply tuple, which names the server: a new entry the client's
            // retransmission opened meanwhile (to another server) is not this one.
            pending
                .forget
                .push((flow.protocol, flow.server, flow.client));
        }
        drop(pending);
        self.passive.ready.notify_one();
    }

    /// The server a new flow's placement must avoid: the one that just failed this client's
    /// handshake, if it did. Taken once.
    pub(super) fn retry_avoid(&self, key: &FlowKey, now_ms: u64) -> Option<u32> {
        if self.passive.retry_len.load(Relaxed) == 0 {
            return None;
        }
        let mut retry = self.passive.retry.lock();
        let found = retry.remove(&(key.protocol, key.src, key.dst.port()));
        self.passive.retry_len.store(retry.len(), Relaxed);
        found.filter(|(_, until)| now_ms < *until).map(|(id, _)| id)
    }

    /// Forgets retries whose client has given up.
    pub(super) fn expire_retries(&self, now_ms: u64) {
        if self.passive.retry_len.load(Relaxed) == 0 {
            return;
        }
        let mut retry = self.passive.retry.lock();
        retry.retain(|_, (_, until)| now_ms < *until);
        self.passive.retry_len.store(retry.len(), Relaxed);
    }

    /// A destination unreachable queued from the server network (either mode), about the
    /// packet a server got (client → server). From the flow's own server and saying nothing
    /// is there, about a flow whose handshake the server has not answered (any UDP flow: UDP
    /// has none), it fails that flow: the error is kept from the client, the flow forgotten
    /// (an offload flow's conntrack entry deleted) and the client's next packet placed
    /// elsewhere. Anything else is passed on (`Ok`).
    pub(super) fn passive_unreachable(&self, u: &IcmpError, now_ms: u64) -> Result<(), DropReason> {
        // Only the server speaks for itself: another host of its network could otherwise
        // take it out by guessing client ports.
        if !u.server_gone() || u.from != *u.dst.ip() {
            return Ok(());
        }
        // The error is about the packet the server got: client → server.
        let reply = FlowKey {
            protocol: u.protocol,
            src: u.dst,
            dst: u.src,
        };
        let mut flows = self.shards[super::shard_of(u.src)].lock();
        let Some((flow, opening)) = flows.find_reply(&reply) else {
            return Ok(());
        };
        if (u.protocol == Protocol::Tcp && !opening) || !self.passive_of(flow.tag).enabled {
            return Ok(());
        }
        let retry = self.retry_elsewhere(flow.tag);
        if retry {
            let request = FlowKey {
                protocol: flow.protocol,
                src: flow.client,
                dst: flow.vip,
            };
            if let Some(ended) = flows.remove_request(&request) {
                self.forget_failed(&mut flows, &ended);
            }
        }
        drop(flows);
        self.handshake_failed(&flow, Failure::PassiveUnreachable, retry, now_ms);
        if retry {
            Err(DropReason::ServerUnreachable)
        } else {
            Ok(())
        }
    }

    /// Waits up to `timeout` for passive detection's changes and takes them: ends the flows
    /// of each server it took out (as a failed check does) and hands the shell the rest.
    pub fn wait_passive(&self, timeout: Duration) -> PassiveWork {
        let taken = {
            let mut pending = self.passive.pending.lock();
            if pending.downs.is_empty() && pending.forget.is_empty() {
                self.passive.ready.wait_for(&mut pending, timeout);
            }
            std::mem::take(&mut *pending)
        };
        let names = {
            let registry = self.registry.load();
            move |id: u32| {
                registry
                    .ids
                    .iter()
                    .find(|(_, i)| **i == id)
                    .map(|((p, port, addr), _)| (format!("{p}/{port}"), *addr))
            }
        };
        let downs = taken
            .downs
            .into_iter()
            // A check may have brought it back meanwhile: nothing to end then.
            .filter(|(id, _)| !self.is_up(*id))
            .filter_map(|(id, why)| {
                let (service, server) = names(id)?;
                Some(PassiveDown {
                    id,
                    service,
                    server,
                    why,
                    fall: self.passive_of(id).fall,
                    outcome: self.end_flows_of(id),
                })
            })
            .collect();
        PassiveWork {
            downs,
            forget: taken.forget,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::balancer::testing::*;
    use crate::core::health::Failure;
    use crate::core::packet::fixtures::{checksums_ok, tcp};
    use crate::core::packet::tcp_flags::{ACK, RST, SYN};
    use std::time::Duration;

    const VIP: &str = "10.0.0.100:80";

    fn dp(mode: &str, passive: &str) -> Dataplane {
        Dataplane::for_test(
            &Config::from_json(&format!(
                r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{{"protocol": "tcp", "port": 80, "mode": "{mode}",
                  "health": {{"passive": {passive}}},
                  "servers": ["172.16.0.2:80", "172.16.0.3:80", "172.16.0.4:80"]}}]}}"#
            ))
            .unwrap(),
        )
    }

    /// A client's SYN at `now`: where it went (packet mode's rewrite, or the server an
    /// offload mark names), or the verdict that kept it.
    fn syn(dp: &Dataplane, client: &str, now: u64) -> Result<SocketAddrV4, Verdict> {
        let mut p = tcp(sa(client), sa(VIP), SYN, b"", &[]);
        match dp.handle(
            Direction::Request,
            &mut p,
            true,
            ChecksumState::Complete,
            now,
        ) {
            Verdict::Accept => Ok(dst_of(&p)),
            Verdict::Offload(mark) => {
                let (svc, stats) = &dp.services()[0];
                let _ = stats;
                let i = (0..svc.servers.len())
                    .find(|&i| offload_mark(dp.server_id(0, i).unwrap()) == Some(mark))
                    .expect("a mark of this service");
                Ok(svc.servers[i].addr)
            }
            v => Err(v),
        }
    }

    /// A server's answer to `client`: queued after routing in packet mode (a reply), before
    /// routing in offload mode (the ruleset's rule for a refused handshake).
    fn answer(
        dp: &Dataplane,
        offload: bool,
        server: SocketAddrV4,
        client: &str,
        flags: u8,
    ) -> Verdict {
        answer_at(dp, offload, server, client, flags, 10)
    }

    fn answer_at(
        dp: &Dataplane,
        offload: bool,
        server: SocketAddrV4,
        client: &str,
        flags: u8,
        now: u64,
    ) -> Verdict {
        let mut p = tcp(server, sa(client), flags, b"", &[]);
        let dir = if offload {
            Direction::Request
        } else {
            Direction::Reply
        };
        dp.handle(dir, &mut p, true, ChecksumState::Complete, now)
    }

    fn id_of(dp: &Dataplane, server: SocketAddrV4) -> u32 {
        let i = dp.services()[0]
            .0
            .servers
            .iter()
            .position(|r| r.addr == server)
            .unwrap();
        dp.server_id(0, i).unwrap()
    }

    #[test]
    fn a_reset_syn_is_kept_from_the_client_and_its_retransmission_goes_elsewhere() {
        for (mode, offload) in [("packet", false), ("offload", true)] {
            let dp = dp(mode, "{}");
            let client = "10.0.0.5:4000";
            let first = syn(&dp, client, 0).unwrap();
            assert_eq!(
                answer(&dp, offload, first, client, RST | ACK),
                Verdict::Drop(DropReason::HandshakeRefused),
                "{mode}: the reset does not reach the client"
            );
            let retry = syn(&dp, client, 1_000).unwrap();
            assert_ne!(
                retry, first,
                "{mode}: the retransmitted SYN avoids the server"
            );
            let work = dp.wait_passive(Duration::ZERO);
            if offload {
                assert_eq!(
                    work.forget,
                    vec![(Protocol::Tcp, first, sa(client))],
                    "the refused flow's conntrack entry is deleted, by its reply tuple"
                );
            } else {
                assert!(work.forget.is_empty());
            }
            assert!(work.downs.is_empty(), "{mode}: one refusal is below fall");
            assert!(dp.is_up(id_of(&dp, first)));
            assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 1);
        }
    }

    #[test]
    fn fall_refusals_in_a_row_take_a_server_out_with_the_reason_and_end_its_flows() {
        for (mode, offload) in [("packet", false), ("offload", true)] {
            let dp = dp(mode, r#"{"fall": 2}"#);
            let dead = sa("172.16.0.2:80");
            // An established flow on the server, which leaving rotation ends.
            let held = "10.0.0.9:1";
            assert_eq!(syn(&dp, held, 0), Ok(dead));
            if offload {
                dp.conntrack_report(
                    &KernelReport {
                        ended: false,
                        protocol: Protocol::Tcp,
                        client: sa(held),
                        vip: sa(VIP),
                        server: dead,
                        mark: offload_mark(id_of(&dp, dead)).unwrap(),
                        phase: Some(Phase::Established),
                        traffic: None,
                    },
                    1,
                );
            } else {
                assert_eq!(answer(&dp, false, dead, held, SYN | ACK), Verdict::Accept);
            }
            let mut refused = 0;
            for port in 2..40 {
                let client = format!("10.0.0.5:{port}");
                if syn(&dp, &client, 5) == Ok(dead) {
                    answer(&dp, offload, dead, &client, RST | ACK);
                    refused += 1;
                }
                if !dp.is_up(id_of(&dp, dead)) {
                    break;
                }
            }
            assert_eq!(refused, 2, "{mode}: out after fall = 2 refusals");
            let work = dp.wait_passive(Duration::ZERO);
            assert_eq!(work.downs.len(), 1, "{mode}");
            let d = &work.downs[0];
            assert_eq!((d.server, d.why, d.fall), (dead, Failure::PassiveRst, 2));
            assert_eq!(d.service, "tcp/80");
            assert_eq!(d.outcome.flows_ended, 1, "{mode}: the held flow ends");
            assert_eq!(
                d.outcome.cut.is_some(),
                offload,
                "{mode}: an offload server's conntrack entries are cut"
            );
            let st = &dp.services()[0].1[0];
            assert_eq!(
                Failure::from_code(st.down_reason.load(Relaxed)),
                Some(Failure::PassiveRst)
            );
            for port in 100..110 {
                assert_ne!(syn(&dp, &format!("10.0.0.6:{port}"), 20), Ok(dead));
            }
        }
    }

    #[test]
    fn a_handshake_that_succeeds_between_refusals_keeps_the_server_in() {
        let dp = dp("packet", r#"{"fall": 2}"#);
        let flaky = sa("172.16.0.2:80");
        let mut outcomes = [RST | ACK, SYN | ACK, RST | ACK, SYN | ACK, RST | ACK].into_iter();
        for port in 2..60 {
            let client = format!("10.0.0.5:{port}");
            if syn(&dp, &client, 5) == Ok(flaky) {
                let Some(flags) = outcomes.next() else { break };
                answer(&dp, false, flaky, &client, flags);
            }
        }
        assert!(dp.is_up(id_of(&dp, flaky)), "never two refusals in a row");
    }

    #[test]
    fn an_application_reset_after_the_handshake_is_passed_on_and_not_counted() {
        let dp = dp("packet", r#"{"fall": 1}"#);
        let client = "10.0.0.5:4000";
        let server = syn(&dp, client, 0).unwrap();
        assert_eq!(
            answer(&dp, false, server, client, SYN | ACK),
            Verdict::Accept
        );
        let mut rst = tcp(server, sa(client), RST | ACK, b"", &[]);
        assert_eq!(
            dp.handle(
                Direction::Reply,
                &mut rst,
                true,
                ChecksumState::Complete,
                20
            ),
            Verdict::Accept
        );
        assert!(checksums_ok(&rst));
        assert_eq!(
            packet::parse(&rst).unwrap().src,
            sa(VIP),
            "rewritten, delivered"
        );
        assert!(dp.is_up(id_of(&dp, server)));
        assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 0);
    }

    #[test]
    fn an_unanswered_syn_retransmitted_after_the_timeout_is_placed_elsewhere() {
        let dp = dp("packet", r#"{"fall": 1, "syn_timeout_ms": 700}"#);
        let client = "10.0.0.5:4000";
        let first = syn(&dp, client, 0).unwrap();
        assert_eq!(
            syn(&dp, client, 300),
            Ok(first),
            "a duplicate SYN is not a timeout"
        );
        let retry = syn(&dp, client, 1_300).unwrap();
        assert_ne!(retry, first, "moved at the retransmission");
        let work = dp.wait_passive(Duration::ZERO);
        assert_eq!(work.downs.len(), 1);
        assert_eq!(work.downs[0].why, Failure::PassiveTimeout);
        assert_eq!(work.downs[0].server, first);
    }

    #[test]
    fn offload_an_unanswered_syn_is_dropped_its_entry_deleted_and_the_next_one_placed_elsewhere() {
        let dp = dp("offload", r#"{"fall": 5}"#);
        let client = "10.0.0.5:4000";
        let first = syn(&dp, client, 0).unwrap();
        assert_eq!(
            syn(&dp, client, 1_000),
            Err(Verdict::Drop(DropReason::HandshakeUnanswered)),
            "conntrack binds this SYN to the silent server: dropped"
        );
        assert_eq!(
            dp.wait_passive(Duration::ZERO).forget,
            vec![(Protocol::Tcp, first, sa(client))]
        );
        let next = syn(&dp, client, 3_000).unwrap();
        assert_ne!(
            next, first,
            "the next retransmission is a new flow, elsewhere"
        );
    }

    #[test]
    fn with_passive_detection_off_a_refusal_reaches_the_client_and_nothing_is_counted() {
        let dp = dp("packet", r#"{"enabled": false}"#);
        let client = "10.0.0.5:4000";
        let first = syn(&dp, client, 0).unwrap();
        assert_eq!(
            answer(&dp, false, first, client, RST | ACK),
            Verdict::Accept
        );
        assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 0);
        assert_eq!(dp.services()[0].1[0].passive_fails.load(Relaxed), 0);
        assert!(dp.wait_passive(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_servers_unreachable_about_a_flow_it_never_answered_moves_the_flow() {
        use crate::core::icmp::fixtures::unreachable;
        use crate::core::packet::fixtures::udp;
        for (mode, offload) in [("packet", false), ("offload", true)] {
            let dp = Dataplane::for_test(
                &Config::from_json(&format!(
                    r#"{{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                    "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                    "services": [
                      {{"protocol": "udp", "port": 53, "mode": "{mode}",
                        "servers": ["172.16.0.2:53", "172.16.0.3:53"]}},
                      {{"protocol": "tcp", "port": 80, "mode": "{mode}",
                        "servers": ["172.16.0.2:80", "172.16.0.3:80"]}}]}}"#
                ))
                .unwrap(),
            );
            let dir = if offload {
                Direction::Request
            } else {
                Direction::Reply
            };
            let (client, vip) = (sa("10.0.0.5:4000"), sa("10.0.0.100:53"));
            let ask = |now| {
                let mut p = udp(client, vip, b"q");
                match dp.handle(
                    Direction::Request,
                    &mut p,
                    true,
                    ChecksumState::Complete,
                    now,
                ) {
                    Verdict::Accept => dst_of(&p),
                    Verdict::Offload(m) => {
                        let i = (0..2)
                            .find(|&i| offload_mark(dp.server_id(0, i).unwrap()) == Some(m))
                            .unwrap();
                        dp.services()[0].0.servers[i].addr
                    }
                    v => panic!("{mode}: {v:?}"),
                }
            };
            let first = ask(0);
            // The server's kernel answers the datagram it got (client → server).
            let got = udp(client, first, b"q");
            let mut icmp = unreachable(*first.ip(), *client.ip(), 3, &got);
            assert_eq!(
                dp.handle(dir, &mut icmp, true, ChecksumState::Complete, 5),
                Verdict::Drop(DropReason::ServerUnreachable),
                "{mode}"
            );
            assert_ne!(
                ask(10),
                first,
                "{mode}: the client's next datagram goes elsewhere"
            );
            assert_eq!(
                dp.wait_passive(Duration::ZERO).forget.len(),
                usize::from(offload),
                "{mode}: an offload flow's conntrack entry is deleted"
            );
            // Path MTU discovery is not a server gone, and an error about no flow of ours
            // passes as it came.
            let mut frag_needed = unreachable(*first.ip(), *client.ip(), 4, &got);
            let before = frag_needed.clone();
            assert_eq!(
                dp.handle(dir, &mut frag_needed, true, ChecksumState::Complete, 20),
                Verdict::Accept
            );
            assert_eq!(frag_needed, before);
            // An established TCP connection's unreachable is not a failed handshake.
            let tcp_client = "10.0.0.5:5000";
            let mut p = tcp(sa(tcp_client), sa("10.0.0.100:80"), SYN, b"", &[]);
            dp.handle(
                Direction::Request,
                &mut p,
                true,
                ChecksumState::Complete,
                30,
            );
            let server = if offload {
                sa("172.16.0.2:80")
            } else {
                dst_of(&p)
            };
            if !offload {
                answer(&dp, false, server, tcp_client, SYN | ACK);
                let seg = tcp(sa(tcp_client), server, ACK, b"x", &[]);
                let mut icmp = unreachable(*server.ip(), *sa(tcp_client).ip(), 1, &seg);
                assert_eq!(
                    dp.handle(dir, &mut icmp, true, ChecksumState::Complete, 40),
                    Verdict::Accept
                );
            }
        }
    }

    #[test]
    fn without_active_checks_to_bring_it_back_a_server_is_never_taken_out_but_retries_go_on() {
        let dp = Dataplane::for_test(
            &Config::from_json(
                r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{"protocol": "tcp", "port": 80,
                  "health": {"enabled": false, "passive": {"fall": 1}},
                  "servers": ["172.16.0.2:80", "172.16.0.3:80"]}]}"#,
            )
            .unwrap(),
        );
        let client = "10.0.0.5:4000";
        let first = syn(&dp, client, 0).unwrap();
        assert_eq!(
            answer(&dp, false, first, client, RST | ACK),
            Verdict::Drop(DropReason::HandshakeRefused)
        );
        assert_ne!(syn(&dp, client, 1_000).unwrap(), first, "retried elsewhere");
        assert!(dp.is_up(id_of(&dp, first)), "nothing would bring it back");
    }

    #[test]
    fn with_no_other_server_up_the_refusal_reaches_the_client_but_still_counts() {
        let dp = dp("packet", r#"{"fall": 2}"#);
        for i in 1..3 {
            dp.set_health(
                dp.server_id(0, i).unwrap(),
                false,
                None,
                Some(Failure::Refused),
                false,
            );
        }
        let only = sa("172.16.0.2:80");
        for port in [4000, 4001] {
            let client = format!("10.0.0.5:{port}");
            assert_eq!(syn(&dp, &client, 0), Ok(only));
            let mut rst = tcp(only, sa(&client), RST | ACK, b"", &[]);
            assert_eq!(
                dp.handle(Direction::Reply, &mut rst, true, ChecksumState::Complete, 5),
                Verdict::Accept,
                "refused at once, not left to retransmit to the only server"
            );
            assert_eq!(packet::parse(&rst).unwrap().src, sa(VIP));
        }
        assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 0);
        assert!(
            !dp.is_up(id_of(&dp, only)),
            "two refusals still took it out"
        );
    }

    #[test]
    fn failures_far_apart_are_not_in_a_row() {
        let dp = dp("packet", r#"{"fall": 2}"#);
        let dead = sa("172.16.0.2:80");
        let mut refusals = 0;
        for (k, now) in [0u64, 20_000, 40_000].into_iter().enumerate() {
            // New clients until one meets the dead server; it refuses that one.
            for port in 0..6 {
                let client = format!("10.0.0.{}:{port}", 10 + k);
                if syn(&dp, &client, now) == Ok(dead) {
                    answer_at(&dp, false, dead, &client, RST | ACK, now + 1);
                    refusals += 1;
                    break;
                }
            }
        }
        assert_eq!(refusals, 3);
        assert!(
            dp.is_up(id_of(&dp, dead)),
            "one refusal every 20 s is not a dying server"
        );
    }

    #[test]
    fn a_failed_handshake_forgets_the_clients_persistence_on_that_server() {
        let dp = Dataplane::for_test(
            &Config::from_json(
                r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "persistence_timeout": 300,
                "services": [{"protocol": "tcp", "port": 80, "health": {"passive": {"fall": 10}},
                  "servers": ["172.16.0.2:80", "172.16.0.3:80"]}]}"#,
            )
            .unwrap(),
        );
        let first = syn(&dp, "10.0.0.5:4000", 0).unwrap();
        answer(&dp, false, first, "10.0.0.5:4000", RST | ACK);
        assert_ne!(
            syn(&dp, "10.0.0.5:4001", 10).unwrap(),
            first,
            "the client's other new connection is not persisted to the failing server"
        );
    }

    #[test]
    fn a_check_that_still_passes_does_not_undo_passive_detection() {
        let dp = dp("packet", r#"{"fall": 1}"#);
        let client = "10.0.0.5:4000";
        let first = syn(&dp, client, 0).unwrap();
        answer(&dp, false, first, client, RST | ACK);
        let id = id_of(&dp, first);
        assert!(!dp.is_up(id));
        // The checker looked before passive detection took the server out.
        dp.set_health(id, true, Some(100), None, false);
        assert!(!dp.is_up(id), "only reaching rise brings it back");
        assert_eq!(dp.wait_passive(Duration::ZERO).downs.len(), 1);
        dp.set_health(id, true, Some(100), None, true);
        assert!(dp.is_up(id));
    }

    #[test]
    fn an_unreachable_from_another_host_than_the_flows_server_changes_nothing() {
        use crate::core::icmp::fixtures::unreachable;
        let dp = dp("packet", r#"{"fall": 1}"#);
        let client = "10.0.0.5:4000";
        let server = syn(&dp, client, 0).unwrap();
        let got = tcp(sa(client), server, SYN, b"", &[]);
        let mut forged = unreachable("172.16.0.9".parse().unwrap(), *sa(client).ip(), 1, &got);
        assert_eq!(
            dp.handle(
                Direction::Reply,
                &mut forged,
                true,
                ChecksumState::Complete,
                5
            ),
            Verdict::Accept
        );
        assert!(dp.is_up(id_of(&dp, server)));
        assert_eq!(dp.counters.retried_handshakes.load(Relaxed), 0);
    }

    #[test]
    fn a_retry_whose_only_alternative_is_down_goes_back_to_the_same_server() {
        let dp = dp("packet", r#"{"fall": 10}"#);
        for i in 1..3 {
            dp.set_health(
                dp.server_id(0, i).unwrap(),
                false,
                None,
                Some(Failure::Refused),
                false,
            );
        }
        let client = "10.0.0.5:4000";
        let only = syn(&dp, client, 0).unwrap();
        answer(&dp, false, only, client, RST | ACK);
        assert_eq!(
            syn(&dp, client, 1_000),
            Ok(only),
            "better it than no server"
        );
    }
}
