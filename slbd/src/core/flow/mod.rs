//! The flow table: which real server each client connection was given, looked up from either
//! direction (client → VIP requests and real server → client replies), with TCP state and idle
//! timeouts. Pure: every call takes `now` in milliseconds and expiry returns what it evicted.
//!
//! - `table`: the storage (a slab of 28-byte slots and two indices) and the packet path's
//!   lookups, inserts and expiry;
//! - [`tcp`]: the one function that changes a flow's TCP state;
//! - `kernel`: offload flows, which conntrack carries and reports on;
//! - `replica`: what replication reads and writes.

mod kernel;
mod replica;
mod table;
pub mod tcp;

use std::net::SocketAddrV4;
use std::time::Duration;

use crate::core::net::Protocol;

pub use table::{Budget, FlowTable};
pub use tcp::Phase;

/// A flow's 5-tuple as seen in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// Idle timeouts by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    /// TCP after a FIN or RST, and offload flows conntrack has not confirmed yet.
    pub tcp_closing: Duration,
    /// TCP handshakes the server has not answered yet.
    pub tcp_syn: Duration,
    pub udp: Duration,
}

/// A flow that left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub protocol: Protocol,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub server: SocketAddrV4,
    pub tag: u32,
    /// It had already closed (FIN or RST seen) when it left.
    pub was_closing: bool,
    /// An offload flow (conntrack carries it).
    pub kernel: bool,
}

/// What a conntrack report changed in a flow the table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// No flow of that key and server.
    Unknown,
    Known {
        /// The handshake completed with this report.
        established_now: bool,
        /// The connection began closing with this report.
        closed_now: bool,
    },
}

/// Where a request packet of a known flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub server: SocketAddrV4,
    pub tag: u32,
    /// This packet closed the flow (its first FIN or RST).
    pub closed_now: bool,
    /// A SYN on a handshake the server has not answered: how long ago the flow last saw a
    /// packet (its previous SYN).
    pub unanswered_ms: Option<u64>,
    /// The flow's handshake was not answered before this packet (TCP).
    pub opening: bool,
}

/// Where a reply of a known flow comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replied {
    pub vip: SocketAddrV4,
    pub tag: u32,
    /// This packet closed the flow (its first FIN or RST).
    pub closed_now: bool,
    /// This packet completed the TCP handshake (the server's first answer).
    pub established_now: bool,
    /// This packet is the server resetting the handshake.
    pub refused_now: bool,
}

/// The result of looking up a request packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(Placed),
    Missing,
    /// A SYN reused the 5-tuple of a flow that had closed: the old flow ended and the packet
    /// starts a new one, to be scheduled afresh.
    Reused(Ended),
}

/// The table is at its configured maximum; the new flow was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flow table full")]
pub struct Full;

#[cfg(test)]
mod testing {
    use super::*;

    pub const T: Timeouts = Timeouts {
        tcp: Duration::from_secs(900),
        tcp_closing: Duration::from_secs(10),
        tcp_syn: Duration::from_secs(5),
        udp: Duration::from_secs(30),
    };

    pub fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    pub fn req(p: Protocol, client: &str) -> FlowKey {
        FlowKey {
            protocol: p,
            src: sa(client),
            dst: sa("10.0.0.100:80"),
        }
    }

    pub fn reply(p: Protocol, server: &str, client: &str) -> FlowKey {
        FlowKey {
            protocol: p,
            src: sa(server),
            dst: sa(client),
        }
    }
}

/// The flow table, with its TCP states, offload flows and replication's calls, checked against
/// a plain model driven by the same random operations.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::tcp::{self, Seen, TcpState};
    use super::testing::sa;
    use super::*;
    use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};

    /// The table's unit of time (it stores 100 ms ticks, documented in `table.rs`).
    const TICK_MS: u64 = 100;

    /// A small key space, so that flows collide, 5-tuples are reused after a close, reply keys
    /// are displaced (two VIP ports, one client port, one server) and the maximum is reached.
    const CLIENTS: [&str; 4] = [
        "10.0.0.5:4000",
        "10.0.0.5:4001",
        "10.0.0.6:4000",
        "10.0.0.6:4001",
    ];
    const VIPS: [&str; 2] = ["10.0.0.100:80", "10.0.0.100:81"];
    const SERVERS: [&str; 3] = ["172.16.0.2:80", "172.16.0.3:80", "172.16.0.2:81"];
    const PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];
    /// Request keys: protocol × client × VIP port.
    const KEYS: usize = 2 * 4 * 2;

    fn request_key(i: usize) -> FlowKey {
        FlowKey {
            protocol: PROTOCOLS[i % 2],
            src: sa(CLIENTS[i / 2 % 4]),
            dst: sa(VIPS[i / 8]),
        }
    }

    /// Which flows an operation with a predicate selects.
    #[derive(Debug, Clone, Copy)]
    enum Pred {
        Server(usize),
        TagMod3(u32),
        Protocol(usize),
        All,
    }

    impl Pred {
        fn selects(self, e: &Ended) -> bool {
            match self {
                Pred::Server(s) => e.server == sa(SERVERS[s]),
                Pred::TagMod3(r) => e.tag % 3 == r,
                Pred::Protocol(p) => e.protocol == PROTOCOLS[p],
                Pred::All => true,
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new flow (for a request key the table does not hold: insert's contract); offload
        /// flows with whether conntrack confirmed them.
        Insert {
            key: usize,
            server: usize,
            tag: u32,
            kernel: Option<bool>,
        },
        /// A client's packet, stamped by a worker whose clock may be `ahead` of the last
        /// advance (it read the clock after the sweep did).
        Request {
            key: usize,
            flags: u8,
            ahead: u64,
        },
        Reply {
            protocol: usize,
            server: usize,
            client: usize,
            flags: u8,
            ahead: u64,
        },
        Advance(u64),
        /// One bounded expiry call.
        Expire(usize),
        /// Bounded calls at one instant until they have covered the table.
        Sweep(Vec<usize>),
        RemoveRequest(usize),
        RemoveWhere(Pred),
        Report {
            key: usize,
            server: usize,
            phase: Option<Phase>,
        },
        RemoveReported {
            key: usize,
            server: usize,
        },
        HandToKernel(Pred),
        SetEstablished(usize),
        IsEstablished(usize),
        TouchAll,
        SetTimeouts(Timeouts),
    }

    fn flags() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => prop::sample::select(vec![
                SYN,
                SYN | ACK,
                ACK,
                FIN | ACK,
                RST,
                RST | ACK,
                0,
            ]),
            1 => any::<u8>(),
        ]
    }

    fn pred() -> impl Strategy<Value = Pred> {
        prop_oneof![
            (0..SERVERS.len()).prop_map(Pred::Server),
            (0u32..3).prop_map(Pred::TagMod3),
            (0..2usize).prop_map(Pred::Protocol),
            Just(Pred::All),
        ]
    }

    fn phase() -> impl Strategy<Value = Option<Phase>> {
        prop::option::of(prop::sample::select(vec![
            Phase::Opening,
            Phase::Established,
            Phase::Closing,
        ]))
    }

    /// Mostly the clock as advanced; sometimes a tick or two ahead.
    fn ahead() -> impl Strategy<Value = u64> {
        prop_oneof![4 => Just(0), 1 => 1u64..250]
    }

    /// Timeouts in whole ticks (configured timeouts are whole seconds), zero included.
    fn timeouts() -> impl Strategy<Value = Timeouts> {
        let t = || (0u64..60).prop_map(|n| Duration::from_millis(n * TICK_MS));
        (t(), t(), t(), t()).prop_map(|(tcp, tcp_closing, tcp_syn, udp)| Timeouts {
            tcp,
            tcp_closing,
            tcp_syn,
            udp,
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = || 0..KEYS;
        let server = || 0..SERVERS.len();
        prop_oneof![
            6 => (key(), server(), 0u32..1000, prop::option::of(any::<bool>())).prop_map(
                |(key, server, tag, kernel)| Op::Insert { key, server, tag, kernel }
            ),
            6 => (key(), flags(), ahead()).prop_map(|(key, flags, ahead)| Op::Request {
                key,
                flags,
                ahead
            }),
            5 => (0..2usize, server(), 0..CLIENTS.len(), flags(), ahead()).prop_map(
                |(protocol, server, client, flags, ahead)| Op::Reply {
                    protocol,
                    server,
                    client,
                    flags,
                    ahead
                }
            ),
            5 => (0u64..3_000).prop_map(Op::Advance),
            2 => (0usize..6).prop_map(Op::Expire),
            2 => prop::collection::vec(1usize..6, 1..4).prop_map(Op::Sweep),
            1 => key().prop_map(Op::RemoveRequest),
            1 => pred().prop_map(Op::RemoveWhere),
            2 => (key(), server(), phase()).prop_map(|(key, server, phase)| Op::Report {
                key,
                server,
                phase
            }),
            1 => (key(), server()).prop_map(|(key, server)| Op::RemoveReported { key, server }),
            1 => pred().prop_map(Op::HandToKernel),
            1 => key().prop_map(Op::SetEstablished),
            1 => key().prop_map(Op::IsEstablished),
            1 => Just(Op::TouchAll),
            1 => timeouts().prop_map(Op::SetTimeouts),
        ]
    }

    #[derive(Debug, Clone, Copy)]
    struct ModelFlow {
        server: SocketAddrV4,
        tag: u32,
        /// UDP flows stay `Established`.
        state: TcpState,
        last_seen_ms: u64,
        kernel: bool,
        confirmed: bool,
    }

    /// The flow table as a map from request key to flow, with every rule written out plainly.
    #[derive(Debug)]
    struct Model {
        flows: HashMap<FlowKey, ModelFlow>,
        max: usize,
        timeouts: Timeouts,
    }

    impl Model {
        fn ended(key: &FlowKey, f: &ModelFlow) -> Ended {
            Ended {
                protocol: key.protocol,
                client: key.src,
                vip: key.dst,
                server: f.server,
                tag: f.tag,
                was_closing: f.state == TcpState::Closing,
                kernel: f.kernel,
            }
        }

        fn all(&self) -> Vec<Ended> {
            sorted(self.flows.iter().map(|(k, f)| Model::ended(k, f)).collect())
        }

        /// What `seen` does to a flow: `tcp::step` for TCP; UDP has no state to change.
        fn see(key: &FlowKey, f: &mut ModelFlow, seen: Seen) -> tcp::Step {
            match key.protocol {
                Protocol::Tcp => {
                    let step = tcp::step(f.state, seen);
                    f.state = step.state;
                    step
                }
                Protocol::Udp => tcp::Step {
                    state: f.state,
                    established_now: false,
                    closed_now: false,
                    restarts: false,
                    refused_now: false,
                },
            }
        }

        /// The flow whose replies come from `server` to `client`, if any (at most one).
        fn by_reply(&self, key: &FlowKey) -> Option<FlowKey> {
            let hits: Vec<FlowKey> = self
                .flows
                .iter()
                .filter(|(k, f)| {
                    k.protocol == key.protocol && f.server == key.src && k.src == key.dst
                })
                .map(|(k, _)| *k)
                .collect();
            assert!(
                hits.len() <= 1,
                "the model holds two flows of one reply key: {hits:?}"
            );
            hits.first().copied()
        }

        fn timeout(&self, key: &FlowKey, f: &ModelFlow) -> Duration {
            if f.kernel {
                self.timeouts.tcp_closing
            } else if key.protocol == Protocol::Udp {
                self.timeouts.udp
            } else if f.state == TcpState::Established {
                self.timeouts.tcp
            } else if f.state == TcpState::Opening {
                self.timeouts.tcp_syn
            } else {
                self.timeouts.tcp_closing
            }
        }

        /// Flows idle past their timeout at `now_ms`, on the table's 100 ms clock; offload
        /// flows conntrack confirmed end only on its report.
        fn idle(&self, now_ms: u64) -> Vec<Ended> {
            sorted(
                self.flows
                    .iter()
                    .filter(|(k, f)| {
                        // A flow stamped after `now_ms` is fresh, whatever the timeout.
                        let (now, last) = (now_ms / TICK_MS, f.last_seen_ms / TICK_MS);
                        !(f.kernel && f.confirmed)
                            && now >= last
                            && now - last >= self.timeout(k, f).as_millis() as u64 / TICK_MS
                    })
                    .map(|(k, f)| Model::ended(k, f))
                    .collect(),
            )
        }

        fn remove(&mut self, e: &Ended) {
            let key = FlowKey {
                protocol: e.protocol,
                src: e.client,
                dst: e.vip,
            };
            assert!(self.flows.remove(&key).is_some(), "the model has no {e:?}");
        }
    }

    fn sorted(mut flows: Vec<Ended>) -> Vec<Ended> {
        flows.sort_by_key(|e| {
            (
                e.protocol,
                e.client,
                e.vip,
                e.server,
                e.tag,
                e.was_closing,
                e.kernel,
            )
        });
        flows
    }

    /// Applies `op` to both and checks that they answer alike.
    fn step(t: &mut FlowTable, m: &mut Model, now_ms: &mut u64, op: &Op) {
        let now = *now_ms;
        match *op {
            Op::Insert {
                key,
                server,
                tag,
                kernel,
            } => {
                let key = request_key(key);
                if m.flows.contains_key(&key) {
                    return;
                }
                let server = sa(SERVERS[server]);
                let got = match kernel {
                    None => t.insert(&key, server, tag, now),
                    Some(confirmed) => t.insert_kernel(&key, server, tag, now, confirmed),
                };
                let want = if m.flows.len() >= m.max {
                    Err(Full)
                } else {
                    let reply = FlowKey {
                        protocol: key.protocol,
                        src: server,
                        dst: key.src,
                    };
                    let displaced = m
                        .by_reply(&reply)
                        .map(|k| Model::ended(&k, &m.flows.remove(&k).expect("just found")));
                    let state = match key.protocol {
                        Protocol::Tcp => TcpState::Opening,
                        Protocol::Udp => TcpState::Established,
                    };
                    m.flows.insert(
                        key,
                        ModelFlow {
                            server,
                            tag,
                            state,
                            last_seen_ms: now,
                            kernel: kernel.is_some(),
                            confirmed: kernel == Some(true),
                        },
                    );
                    Ok(displaced)
                };
                assert_eq!(
                    got,
                    want,
                    "insert {key:?} on {server} with {} flows",
                    m.flows.len()
                );
            }
            Op::Request { key, flags, ahead } => {
                let (key, now) = (request_key(key), now + ahead);
                let got = t.lookup_request(&key, flags, now);
                let want = match m.flows.get_mut(&key) {
                    None => Lookup::Missing,
                    Some(f) => {
                        let opening = f.state == TcpState::Opening;
                        let unanswered = (opening && tcp::is_syn(flags))
                            .then(|| (now / 100).saturating_sub(f.last_seen_ms / 100) * 100);
                        let step = Model::see(&key, f, Seen::Request(flags));
                        if step.restarts {
                            let ended = Model::ended(&key, f);
                            m.flows.remove(&key);
                            Lookup::Reused(ended)
                        } else {
                            f.last_seen_ms = now;
                            Lookup::Found(Placed {
                                server: f.server,
                                tag: f.tag,
                                closed_now: step.closed_now,
                                unanswered_ms: unanswered,
                                opening,
                            })
                        }
                    }
                };
                assert_eq!(got, want, "request {key:?} with flags {flags:#04x}");
            }
            Op::Reply {
                protocol,
                server,
                client,
                flags,
                ahead,
            } => {
                let now = now + ahead;
                let key = FlowKey {
                    protocol: PROTOCOLS[protocol],
                    src: sa(SERVERS[server]),
                    dst: sa(CLIENTS[client]),
                };
                let got = t.lookup_reply(&key, flags, now);
                let want = m.by_reply(&key).map(|k| {
                    let f = m.flows.get_mut(&k).expect("just found");
                    f.last_seen_ms = now;
                    let step = Model::see(&k, f, Seen::Reply(flags));
                    Replied {
                        vip: k.dst,
                        tag: f.tag,
                        closed_now: step.closed_now,
                        established_now: step.established_now,
                        refused_now: step.refused_now,
                    }
                });
                assert_eq!(got, want, "reply {key:?} with flags {flags:#04x}");
            }
            Op::Advance(ms) => *now_ms += ms,
            Op::Expire(budget) => {
                let idle = m.idle(now);
                let got = t.expire(now, budget);
                assert!(got.len() <= budget, "expire({budget}) ended {got:?}");
                for e in &got {
                    assert!(
                        idle.contains(e),
                        "expired {e:?}, not idle at {now} ms: {m:?}"
                    );
                    m.remove(e);
                }
            }
            Op::Sweep(ref budgets) => {
                let want = m.idle(now);
                let mut got = Vec::new();
                // The slab never holds more than `max` slots, so this many covers it.
                let mut covered = 0;
                for b in budgets.iter().cycle() {
                    if covered >= m.max {
                        break;
                    }
                    got.extend(t.expire(now, *b));
                    covered += b;
                }
                assert_eq!(
                    sorted(got),
                    want,
                    "a sweep covering the table at {now} ms ends exactly the idle flows"
                );
                for e in &want {
                    m.remove(e);
                }
            }
            Op::RemoveRequest(key) => {
                let key = request_key(key);
                let want = m.flows.remove(&key).map(|f| Model::ended(&key, &f));
                assert_eq!(t.remove_request(&key), want, "remove_request {key:?}");
            }
            Op::RemoveWhere(pred) => {
                let got = sorted(t.remove_where(|e| pred.selects(e)));
                let want: Vec<Ended> = m.all().into_iter().filter(|e| pred.selects(e)).collect();
                assert_eq!(got, want, "remove_where {pred:?}");
                want.iter().for_each(|e| m.remove(e));
            }
            Op::Report { key, server, phase } => {
                let key = request_key(key);
                let server = sa(SERVERS[server]);
                let got = t.report_kernel(&key, server, phase);
                let want = match m.flows.get_mut(&key) {
                    Some(f) if f.server == server => {
                        f.kernel = true;
                        f.confirmed = true;
                        // A report without a TCP state only confirms the flow.
                        let step = phase.map(|p| Model::see(&key, f, Seen::Kernel(p)));
                        Reported::Known {
                            established_now: step.is_some_and(|s| s.established_now),
                            closed_now: step.is_some_and(|s| s.closed_now),
                        }
                    }
                    _ => Reported::Unknown,
                };
                assert_eq!(got, want, "report {phase:?} for {key:?} on {server}");
            }
            Op::RemoveReported { key, server } => {
                let key = request_key(key);
                let server = sa(SERVERS[server]);
                let want = match m.flows.get(&key) {
                    Some(f) if f.confirmed && f.server == server => {
                        let ended = Model::ended(&key, f);
                        m.flows.remove(&key);
                        Some(ended)
                    }
                    _ => None,
                };
                assert_eq!(
                    t.remove_reported(&key, server),
                    want,
                    "conntrack reports {key:?} on {server} gone"
                );
            }
            Op::HandToKernel(pred) => {
                let mut got = t.hand_to_kernel(|e| pred.selects(e));
                got.sort_by_key(|(e, _)| (e.protocol, e.client, e.vip));
                let mut want = Vec::new();
                for (k, f) in m.flows.iter_mut() {
                    let e = Model::ended(k, f);
                    if pred.selects(&e) {
                        want.push((e, f.state != TcpState::Opening));
                        f.kernel = true;
                        f.confirmed = true;
                    }
                }
                want.sort_by_key(|(e, _)| (e.protocol, e.client, e.vip));
                assert_eq!(got, want, "hand_to_kernel {pred:?}");
            }
            Op::SetEstablished(key) => {
                let key = request_key(key);
                t.set_established(&key);
                if let Some(f) = m.flows.get_mut(&key) {
                    Model::see(&key, f, Seen::Replicated);
                }
            }
            Op::IsEstablished(key) => {
                let key = request_key(key);
                let want = m.flows.get(&key).map(|f| f.state != TcpState::Opening);
                assert_eq!(t.is_established(&key), want, "is_established {key:?}");
            }
            Op::TouchAll => {
                t.touch_all(now);
                m.flows.values_mut().for_each(|f| f.last_seen_ms = now);
            }
            Op::SetTimeouts(timeouts) => {
                t.set_timeouts(timeouts);
                m.timeouts = timeouts;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn the_table_agrees_with_a_simple_model_under_any_sequence(
            max in 1usize..12,
            timeouts in timeouts(),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut t = FlowTable::new(timeouts, max as u32);
            let mut m = Model { flows: HashMap::new(), max, timeouts };
            let mut now_ms = 0;
            for (n, op) in ops.iter().enumerate() {
                step(&mut t, &mut m, &mut now_ms, op);
                prop_assert_eq!(
                    sorted(t.flows().collect()),
                    m.all(),
                    "the flows held after step {} ({:?})", n, op
                );
                prop_assert_eq!(t.len(), m.flows.len(), "len() after step {} ({:?})", n, op);
                prop_assert_eq!(t.is_empty(), m.flows.is_empty());
                prop_assert!(t.slots.len() <= max, "the slab grew past max: {}", t.slots.len());
            }
        }
    }
}
