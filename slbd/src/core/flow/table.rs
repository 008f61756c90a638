//! The flow table's storage and the packet path's operations on it. Pure.
//!
//! Layout, for memory per flow: flows live in one `Vec` of 28-byte slots with an intrusive free
//! list, and the two indices are `hashbrown::HashTable<u32>` holding only slot numbers (5 bytes
//! a bucket with its control byte), hashing the key read back from the slot.

use std::hash::BuildHasher;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::tcp::{self, Seen, TcpState};
use super::{Ended, FlowKey, Full, Lookup, Placed, Replied, Timeouts};
use crate::core::net::Protocol;

/// Timestamps are stored in units of 100 ms to fit a `u32` for 13 years of uptime.
const TICK_MS: u64 = 100;

/// Flags kept in the high bits of a slot's protocol byte (IP protocol numbers 6 and 17 leave
/// them free), so an offload flow costs no more memory than a packet-mode one.
/// KERNEL: an offload flow: conntrack carries its packets and decides when it ends.
pub(super) const KERNEL: u8 = 0x80;
/// CONFIRMED: conntrack reported the flow's entry (an event or a dump), so its end will be
/// reported too. Until then the flow expires like an unanswered handshake: its first packet
/// may have died between slbd's verdict and conntrack's confirmation.
pub(super) const CONFIRMED: u8 = 0x40;
/// ADOPTED: a TCP flow placed by a consistent-hash table on a segment without SYN (another
/// balancer's, or one from before a restart), not by its handshake: a server's reset of it is
/// the server not knowing the connection, not a refused handshake.
pub(super) const ADOPTED: u8 = 0x20;
const PROTOCOL_BITS: u8 = 0x1f;

#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    client_ip: u32,
    vip_ip: u32,
    server_ip: u32,
    client_port: u16,
    vip_port: u16,
    server_port: u16,
    /// The IP protocol number, with [`KERNEL`], [`CONFIRMED`] and [`ADOPTED`] in its high
    /// bits.
    pub(super) protocol: u8,
    /// `None` while the slot is free; UDP flows stay `Established`.
    pub(super) state: Option<TcpState>,
    last_seen: u32,
    /// The caller's tag for the flow; the next free slot while the slot is free.
    tag: u32,
}

const NO_SLOT: u32 = u32::MAX;

impl Slot {
    fn request_key(&self) -> FlowKey {
        FlowKey {
            protocol: self.proto(),
            src: SocketAddrV4::new(self.client_ip.into(), self.client_port),
            dst: SocketAddrV4::new(self.vip_ip.into(), self.vip_port),
        }
    }

    fn reply_key(&self) -> FlowKey {
        FlowKey {
            protocol: self.proto(),
            src: SocketAddrV4::new(self.server_ip.into(), self.server_port),
            dst: SocketAddrV4::new(self.client_ip.into(), self.client_port),
        }
    }

    fn proto(&self) -> Protocol {
        if self.protocol & PROTOCOL_BITS == Protocol::Udp as u8 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        }
    }

    pub(super) fn server(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.server_ip.into(), self.server_port)
    }

    pub(super) fn ended(&self) -> Ended {
        let r = self.request_key();
        Ended {
            protocol: r.protocol,
            client: r.src,
            vip: r.dst,
            server: self.server(),
            tag: self.tag,
            was_closing: self.state == Some(TcpState::Closing),
            kernel: self.protocol & KERNEL != 0,
        }
    }

    /// Applies what was seen to a TCP flow's state (UDP flows have none to change).
    fn see(&mut self, seen: Seen) -> tcp::Step {
        let state = self.state.unwrap_or(TcpState::Established);
        if self.proto() == Protocol::Udp {
            return tcp::step(state, Seen::Replicated);
        }
        let step = tcp::step(state, seen);
        self.state = Some(step.state);
        step
    }
}

/// The bound all the shards of one data plane share, so that `flows.max` is exact whichever
/// shard each client hashes into.
#[derive(Debug)]
pub struct Budget {
    max: u32,
    used: AtomicU32,
}

impl Budget {
    pub fn new(max: u32) -> Arc<Budget> {
        Arc::new(Budget {
            max,
            used: AtomicU32::new(0),
        })
    }

    /// Flows held now, over every shard.
    pub fn used(&self) -> u32 {
        self.used.load(Relaxed)
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |u| (u < self.max).then_some(u + 1))
            .is_ok()
    }

    fn give(&self) {
        let _ = self
            .used
            .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(1)));
    }
}

/// Slots [`FlowTable::evict_one`] looks at for one eviction: bounded, as conntrack's early
/// drop is, so a full table under a flood costs each new flow a short scan, not a walk.
const EVICT_SCAN: usize = 64;

pub struct FlowTable {
    pub(super) slots: Vec<Slot>,
    free_head: u32,
    len: u32,
    max: u32,
    budget: Option<Arc<Budget>>,
    evict_at: usize,
    by_request: HashTable<u32>,
    by_reply: HashTable<u32>,
    hasher: DefaultHashBuilder,
    timeouts: Timeouts,
    sweep_at: usize,
}

fn ticks(now_ms: u64) -> u32 {
    (now_ms / TICK_MS) as u32
}

impl FlowTable {
    pub fn new(timeouts: Timeouts, max: u32) -> FlowTable {
        FlowTable {
            slots: Vec::new(),
            free_head: NO_SLOT,
            len: 0,
            max,
            budget: None,
            evict_at: 0,
            by_request: HashTable::new(),
            by_reply: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            timeouts,
            sweep_at: 0,
        }
    }

    /// A table bounded by `budget`, which other tables share.
    pub fn sharing(timeouts: Timeouts, budget: Arc<Budget>) -> FlowTable {
        FlowTable {
            budget: Some(budget),
            ..FlowTable::new(timeouts, u32::MAX)
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Makes room for a new flow, as conntrack's early drop and IPVS's `drop_entry` do: of the
    /// next [`EVICT_SCAN`] slots (going on where the last call stopped), removes the one idle
    /// longest among the flows that carry no connection yet — a TCP handshake the server has
    /// not answered — or any UDP flow; never an answered TCP connection. Returns it.
    pub fn evict_one(&mut self) -> Option<Ended> {
        let n = self.slots.len();
        let mut oldest: Option<(u32, u32)> = None;
        for _ in 0..EVICT_SCAN.min(n) {
            if self.evict_at >= n {
                self.evict_at = 0;
            }
            let i = self.evict_at;
            self.evict_at += 1;
            let s = &self.slots[i];
            let evictable = match (s.proto(), s.state) {
                (_, None) => false,
                (Protocol::Udp, _) => true,
                (Protocol::Tcp, Some(state)) => state == TcpState::Opening,
            };
            if evictable && oldest.is_none_or(|(_, seen)| s.last_seen < seen) {
                oldest = Some((i as u32, s.last_seen));
            }
        }
        let (i, _) = oldest?;
        let ended = self.slots[i as usize].ended();
        self.remove(i);
        Some(ended)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// Heap bytes the table holds now, for the per-flow memory figure.
    pub fn memory_bytes(&self) -> usize {
        // hashbrown fills at most 7/8 of its buckets; each bucket is the value plus one
        // control byte.
        let bucket = std::mem::size_of::<u32>() + 1;
        let buckets = |items: usize| {
            if items == 0 {
                0
            } else {
                (items * 8 / 7).next_power_of_two()
            }
        };
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + (buckets(self.by_request.capacity()) + buckets(self.by_reply.capacity())) * bucket
    }

    fn find(&self, table: &HashTable<u32>, key: &FlowKey, reply: bool) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        table
            .find(hash, |&i| {
                let s = &self.slots[i as usize];
                (if reply {
                    s.reply_key()
                } else {
                    s.request_key()
                }) == *key
            })
            .copied()
    }

    /// The slot of the flow whose request key is `key`.
    pub(super) fn find_request(&self, key: &FlowKey) -> Option<u32> {
        self.find(&self.by_request, key, false)
    }

    /// Looks up a client → VIP packet and records what its TCP flags say.
    pub fn lookup_request(&mut self, key: &FlowKey, flags: u8, now_ms: u64) -> Lookup {
        let Some(i) = self.find_request(key) else {
            return Lookup::Missing;
        };
        let slot = &mut self.slots[i as usize];
        let opening = slot.state == Some(TcpState::Opening);
        let unanswered = (opening && tcp::is_syn(flags))
            .then(|| u64::from(ticks(now_ms).saturating_sub(slot.last_seen)) * TICK_MS);
        let step = slot.see(Seen::Request(flags));
        if step.restarts {
            let ended = slot.ended();
            self.remove(i);
            return Lookup::Reused(ended);
        }
        slot.last_seen = ticks(now_ms);
        Lookup::Found(Placed {
            server: slot.server(),
            tag: slot.tag,
            closed_now: step.closed_now,
            unanswered_ms: unanswered,
            opening,
        })
    }

    /// Looks up a real server → client packet; returns the VIP endpoint it must come from, the
    /// flow's tag, and whether this packet closed the flow or completed its handshake.
    pub fn lookup_reply(&mut self, key: &FlowKey, flags: u8, now_ms: u64) -> Option<Replied> {
        let i = self.find(&self.by_reply, key, true)?;
        let slot = &mut self.slots[i as usize];
        slot.last_seen = ticks(now_ms);
        let step = slot.see(Seen::Reply(flags));
        Some(Replied {
            vip: SocketAddrV4::new(slot.vip_ip.into(), slot.vip_port),
            tag: slot.tag,
            closed_now: step.closed_now,
            established_now: step.established_now,
            refused_now: step.refused_now && slot.protocol & ADOPTED == 0,
        })
    }

    /// The flow whose reply key is `key`, and whether its TCP handshake is still unanswered
    /// (always false for UDP); nothing about it changes.
    pub fn find_reply(&self, key: &FlowKey) -> Option<(Ended, bool)> {
        let i = self.find(&self.by_reply, key, true)?;
        let slot = &self.slots[i as usize];
        Some((
            slot.ended(),
            slot.state == Some(TcpState::Opening) && slot.proto() == Protocol::Tcp,
        ))
    }

    /// The flow whose request key is `key`; nothing about it changes.
    pub fn find_request_flow(&self, key: &FlowKey) -> Option<Ended> {
        let i = self.find_request(key)?;
        Some(self.slots[i as usize].ended())
    }

    /// Removes the flow of request key `key` if it is on `server` and its handshake is not
    /// answered yet (a reset or an ICMP error refused it), and returns it.
    pub fn take_unanswered(&mut self, key: &FlowKey, server: SocketAddrV4) -> Option<Ended> {
        let i = self.find_request(key)?;
        let slot = &self.slots[i as usize];
        if slot.state != Some(TcpState::Opening)
            || slot.server() != server
            || slot.protocol & ADOPTED != 0
        {
            return None;
        }
        let ended = slot.ended();
        self.remove(i);
        Some(ended)
    }

    /// Marks the flow of request key `key` as [`ADOPTED`] (placed mid-stream).
    pub fn mark_adopted(&mut self, key: &FlowKey) {
        if let Some(i) = self.find_request(key) {
            self.slots[i as usize].protocol |= ADOPTED;
        }
    }

    /// Adds a flow for a request packet that found none. A reply key already held by another
    /// flow (two VIP ports that share a real server, used from one client port) is replaced so
    /// that replies follow the newest flow; the displaced flow is returned, as ended.
    pub fn insert(
        &mut self,
        key: &FlowKey,
        server: SocketAddrV4,
        tag: u32,
        now_ms: u64,
    ) -> Result<Option<Ended>, Full> {
        self.insert_flow(key, server, tag, now_ms, 0)
    }

    pub(super) fn insert_flow(
        &mut self,
        key: &FlowKey,
        server: SocketAddrV4,
        tag: u32,
        now_ms: u64,
        flags: u8,
    ) -> Result<Option<Ended>, Full> {
        if self.len >= self.max || self.budget.as_ref().is_some_and(|b| !b.take()) {
            return Err(Full);
        }
        let slot = Slot {
            client_ip: (*key.src.ip()).into(),
            vip_ip: (*key.dst.ip()).into(),
            server_ip: (*server.ip()).into(),
            client_port: key.src.port(),
            vip_port: key.dst.port(),
            server_port: server.port(),
            protocol: key.protocol as u8 | flags,
            state: Some(match key.protocol {
                Protocol::Tcp => TcpState::Opening,
                Protocol::Udp => TcpState::Established,
            }),
            last_seen: ticks(now_ms),
            tag,
        };
        let displaced = self
            .find(&self.by_reply, &slot.reply_key(), true)
            .map(|old| {
                let ended = self.slots[old as usize].ended();
                self.remove(old);
                ended
            });
        let i = if self.free_head != NO_SLOT {
            let i = self.free_head;
            self.free_head = self.slots[i as usize].tag;
            self.slots[i as usize] = slot;
            i
        } else {
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rq = hasher.hash_one(slot.request_key());
        self.by_request
            .insert_unique(rq, i, |&j| hasher.hash_one(slots[j as usize].request_key()));
        let rp = hasher.hash_one(slot.reply_key());
        self.by_reply
            .insert_unique(rp, i, |&j| hasher.hash_one(slots[j as usize].reply_key()));
        self.len += 1;
        Ok(displaced)
    }

    pub(super) fn remove(&mut self, i: u32) {
        let slot = self.slots[i as usize];
        let hasher = &self.hasher;
        if let Ok(e) = self
            .by_request
            .find_entry(hasher.hash_one(slot.request_key()), |&j| j == i)
        {
            e.remove();
        }
        if let Ok(e) = self
            .by_reply
            .find_entry(hasher.hash_one(slot.reply_key()), |&j| j == i)
        {
            e.remove();
        }
        let s = &mut self.slots[i as usize];
        s.state = None;
        s.tag = self.free_head;
        self.free_head = i;
        self.len -= 1;
        if let Some(b) = &self.budget {
            b.give();
        }
    }

    fn timeout(&self, s: &Slot) -> Duration {
        match (s.proto(), s.state) {
            // An offload flow conntrack has not confirmed yet is a first packet that may have
            // died between slbd's verdict and conntrack: it lives as long as a handshake.
            _ if s.protocol & KERNEL != 0 => self.timeouts.tcp_closing,
            (Protocol::Udp, _) => self.timeouts.udp,
            (Protocol::Tcp, Some(TcpState::Established)) => self.timeouts.tcp,
            (Protocol::Tcp, Some(TcpState::Opening)) => self.timeouts.tcp_syn,
            _ => self.timeouts.tcp_closing,
        }
    }

    /// Examines up to `budget` slots, continuing where the last call stopped, and removes the
    /// flows idle past their timeout. Bounded so a caller holding a lock holds it briefly.
    /// Offload flows conntrack confirmed never idle out here: conntrack reports their end.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> Vec<Ended> {
        let mut ended = Vec::new();
        let now = ticks(now_ms);
        for _ in 0..budget.min(self.slots.len()) {
            if self.sweep_at >= self.slots.len() {
                self.sweep_at = 0;
            }
            let i = self.sweep_at;
            self.sweep_at += 1;
            let s = self.slots[i];
            if s.state.is_none() || s.protocol & (KERNEL | CONFIRMED) == KERNEL | CONFIRMED {
                continue;
            }
            let limit = (self.timeout(&s).as_millis() as u64 / TICK_MS) as u32;
            // A worker that read the clock after the sweep did can have stamped the flow a
            // tick in our future: that is a fresh flow, not one idle for 13 years.
            let idle = now.wrapping_sub(s.last_seen);
            if (idle as i32) >= 0 && idle >= limit {
                ended.push(s.ended());
                self.remove(i as u32);
            }
        }
        ended
    }

    /// Removes every flow `pred` selects and returns them.
    pub fn remove_where(&mut self, pred: impl Fn(&Ended) -> bool) -> Vec<Ended> {
        self.remove_flagged(0, pred)
    }

    /// Removes every flow whose slot carries all of `flags` and that `pred` selects.
    pub(super) fn remove_flagged(
        &mut self,
        flags: u8,
        pred: impl Fn(&Ended) -> bool,
    ) -> Vec<Ended> {
        let doomed: Vec<(u32, Ended)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.is_some() && s.protocol & flags == flags)
            .map(|(i, s)| (i as u32, s.ended()))
            .filter(|(_, e)| pred(e))
            .collect();
        for (i, _) in &doomed {
            self.remove(*i);
        }
        doomed.into_iter().map(|(_, e)| e).collect()
    }

    /// Removes the flow of request key `key`, if there is one, and returns it.
    pub fn remove_request(&mut self, key: &FlowKey) -> Option<Ended> {
        let i = self.find_request(key)?;
        let ended = self.slots[i as usize].ended();
        self.remove(i);
        Some(ended)
    }

    /// Restarts every flow's idle clock at `now_ms`: a STANDBY's replicated flows saw no
    /// packet here, and a takeover must not expire a quiet connection the moment it begins.
    pub fn touch_all(&mut self, now_ms: u64) {
        let now = ticks(now_ms);
        for s in self.slots.iter_mut().filter(|s| s.state.is_some()) {
            s.last_seen = now;
        }
    }

    /// Applies `seen` to the flow in slot `i`.
    pub(super) fn see(&mut self, i: u32, seen: Seen) -> tcp::Step {
        self.slots[i as usize].see(seen)
    }

    /// Every flow in the table, for status, replication and tests.
    pub fn flows(&self) -> impl Iterator<Item = Ended> + '_ {
        self.slots
            .iter()
            .filter(|s| s.state.is_some())
            .map(Slot::ended)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::core::net::Protocol;
    use crate::core::packet::tcp_flags::{ACK, FIN, RST, SYN};
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[test]
    fn finds_a_flow_from_both_directions() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        assert_eq!(t.lookup_request(&k, SYN, 0), Lookup::Missing);
        t.insert(&k, sa("172.16.0.2:8080"), 7, 0).unwrap();
        assert_eq!(
            t.lookup_request(&k, SYN, 1),
            Lookup::Found(Placed {
                server: sa("172.16.0.2:8080"),
                tag: 7,
                closed_now: false,
                unanswered_ms: Some(0),
                opening: true,
            })
        );
        let r = reply(Protocol::Tcp, "172.16.0.2:8080", "10.0.0.5:4000");
        assert_eq!(
            t.lookup_reply(&r, SYN | ACK, 2),
            Some(Replied {
                vip: sa("10.0.0.100:80"),
                tag: 7,
                closed_now: false,
                established_now: true,
                refused_now: false,
            })
        );
        // Only the first answer completes the handshake.
        assert!(!t.lookup_reply(&r, ACK, 3).unwrap().established_now);
        // Replies are matched, never guessed: another client port or server misses.
        assert_eq!(
            t.lookup_reply(
                &reply(Protocol::Tcp, "172.16.0.2:8080", "10.0.0.5:4001"),
                ACK,
                2
            ),
            None
        );
        assert_eq!(
            t.lookup_reply(
                &reply(Protocol::Tcp, "172.16.0.3:8080", "10.0.0.5:4000"),
                ACK,
                2
            ),
            None
        );
        assert_eq!(
            t.lookup_reply(
                &reply(Protocol::Udp, "172.16.0.2:8080", "10.0.0.5:4000"),
                0,
                2
            ),
            None
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tcp_timeouts_follow_state() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        t.insert(&k, sa("172.16.0.2:80"), 0, 0).unwrap();
        // An unanswered handshake is dropped after its own short timeout (tcp_syn, 5 s).
        assert!(t.expire(4_900, 10).is_empty());
        assert_eq!(t.expire(5_000, 10).len(), 1);
        assert!(t.is_empty());

        t.insert(&k, sa("172.16.0.2:80"), 0, 0).unwrap();
        let r = reply(Protocol::Tcp, "172.16.0.2:80", "10.0.0.5:4000");
        t.lookup_reply(&r, SYN | ACK, 100);
        assert!(
            t.expire(800_000, 10).is_empty(),
            "established flows live for the tcp timeout"
        );
        t.lookup_request(&k, FIN | ACK, 800_000);
        assert!(t.expire(805_000, 10).is_empty());
        let ended = t.expire(810_000, 10);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].server, sa("172.16.0.2:80"));
        assert_eq!(ended[0].client, sa("10.0.0.5:4000"));
    }

    #[test]
    fn the_packet_that_closes_a_flow_says_so_once() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        t.insert(&k, sa("172.16.0.2:80"), 1, 0).unwrap();
        let r = reply(Protocol::Tcp, "172.16.0.2:80", "10.0.0.5:4000");
        assert!(!t.lookup_reply(&r, SYN | ACK, 0).unwrap().closed_now);
        assert!(
            t.lookup_reply(&r, FIN | ACK, 0).unwrap().closed_now,
            "the server's FIN closes it"
        );
        match t.lookup_request(&k, FIN | ACK, 0) {
            Lookup::Found(p) => assert!(
                !p.closed_now,
                "the client's FIN comes after: already closed"
            ),
            other => panic!("{other:?}"),
        }
        let ended = t.expire(100_000, 10);
        assert!(ended[0].was_closing);
    }

    #[test]
    fn rst_from_the_server_closes_an_established_flow() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        t.insert(&k, sa("172.16.0.2:80"), 0, 0).unwrap();
        let r = reply(Protocol::Tcp, "172.16.0.2:80", "10.0.0.5:4000");
        // Established first: an unanswered handshake would idle out at 10 s anyway.
        t.lookup_reply(&r, SYN | ACK, 0);
        let rst = t.lookup_reply(&r, RST, 0).expect("the flow is known");
        assert!(rst.closed_now, "the server's RST closes the flow");
        let ended = t.expire(10_000, 10);
        assert_eq!(
            ended.iter().map(|e| e.was_closing).collect::<Vec<_>>(),
            vec![true],
            "a reset flow ends after tcp_closing (10 s), not tcp (900 s)"
        );
    }

    #[test]
    fn udp_lives_for_its_own_timeout() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Udp, "10.0.0.5:5353");
        t.insert(&k, sa("172.16.0.2:53"), 0, 0).unwrap();
        t.lookup_request(&k, 0, 20_000);
        assert!(t.expire(49_000, 10).is_empty());
        assert_eq!(t.expire(50_000, 10).len(), 1);
    }

    #[test]
    fn a_syn_on_a_closed_flow_starts_a_new_one_but_a_retransmitted_syn_does_not() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        t.insert(&k, sa("172.16.0.2:80"), 1, 0).unwrap();
        assert!(matches!(t.lookup_request(&k, SYN, 1000), Lookup::Found(_)));
        t.lookup_request(&k, FIN | ACK, 2000);
        match t.lookup_request(&k, SYN, 3000) {
            Lookup::Reused(e) => assert_eq!(e.tag, 1),
            other => panic!("expected Reused, got {other:?}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn refuses_new_flows_when_full_and_reuses_freed_slots() {
        let mut t = FlowTable::new(T, 2);
        t.insert(&req(Protocol::Udp, "10.0.0.5:1"), sa("172.16.0.2:53"), 0, 0)
            .unwrap();
        t.insert(&req(Protocol::Udp, "10.0.0.5:2"), sa("172.16.0.2:53"), 0, 0)
            .unwrap();
        assert_eq!(
            t.insert(&req(Protocol::Udp, "10.0.0.5:3"), sa("172.16.0.2:53"), 0, 0),
            Err(Full)
        );
        assert_eq!(t.expire(60_000, 10).len(), 2);
        t.insert(
            &req(Protocol::Udp, "10.0.0.5:3"),
            sa("172.16.0.2:53"),
            0,
            60_000,
        )
        .unwrap();
        t.insert(
            &req(Protocol::Udp, "10.0.0.5:4"),
            sa("172.16.0.3:53"),
            0,
            60_000,
        )
        .unwrap();
        assert_eq!(t.slots.len(), 2, "freed slots are reused");
        assert!(t
            .lookup_reply(
                &reply(Protocol::Udp, "172.16.0.3:53", "10.0.0.5:4"),
                0,
                60_000
            )
            .is_some());
    }

    #[test]
    fn expiry_is_bounded_and_resumes() {
        let mut t = FlowTable::new(T, 100);
        for p in 0..50 {
            t.insert(
                &req(Protocol::Udp, &format!("10.0.0.5:{}", p + 1)),
                sa("172.16.0.2:53"),
                0,
                0,
            )
            .unwrap();
        }
        assert_eq!(t.expire(60_000, 20).len(), 20);
        assert_eq!(t.expire(60_000, 20).len(), 20);
        assert_eq!(t.expire(60_000, 20).len(), 10);
        assert!(t.is_empty());
    }

    #[test]
    fn a_flow_stamped_just_after_the_sweep_read_the_clock_is_not_expired() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Udp, "10.0.0.5:5353");
        t.insert(&k, sa("172.16.0.2:53"), 0, 2_000).unwrap();
        // The sweep read 1999 ms; a worker stamped the flow at 2000 ms (one tick later).
        assert!(t.expire(1_999, 10).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_reply_key_collision_follows_the_newest_flow() {
        let mut t = FlowTable::new(T, 10);
        let a = FlowKey {
            protocol: Protocol::Tcp,
            src: sa("10.0.0.5:4000"),
            dst: sa("10.0.0.100:80"),
        };
        let b = FlowKey {
            protocol: Protocol::Tcp,
            src: sa("10.0.0.5:4000"),
            dst: sa("10.0.0.100:81"),
        };
        assert_eq!(t.insert(&a, sa("172.16.0.2:80"), 3, 0).unwrap(), None);
        let displaced = t.insert(&b, sa("172.16.0.2:80"), 4, 0).unwrap();
        assert_eq!(
            displaced.map(|e| (e.tag, e.vip)),
            Some((3, sa("10.0.0.100:80"))),
            "the displaced flow is reported"
        );
        let r = reply(Protocol::Tcp, "172.16.0.2:80", "10.0.0.5:4000");
        assert_eq!(
            t.lookup_reply(&r, ACK, 0).map(|r| r.vip),
            Some(sa("10.0.0.100:81"))
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup_request(&a, ACK, 0), Lookup::Missing);
    }

    /// The table's own estimate; `tests/flow_memory.rs` measures what it allocates.
    #[test]
    fn the_tables_memory_estimate_stays_under_128_bytes_a_flow() {
        for n in [10_000u32, 100_000] {
            let mut t = FlowTable::new(T, n);
            for i in 0..n {
                let client = SocketAddrV4::new(
                    Ipv4Addr::from(0x0a00_0000 + (i >> 8)),
                    1024 + (i & 0xff) as u16,
                );
                t.insert(
                    &FlowKey {
                        protocol: Protocol::Tcp,
                        src: client,
                        dst: sa("10.0.0.100:80"),
                    },
                    sa("172.16.0.2:80"),
                    0,
                    0,
                )
                .unwrap();
            }
            let per_flow = t.memory_bytes() / n as usize;
            assert!(
                per_flow < 128,
                "memory_bytes() says {n} flows take {per_flow} bytes each"
            );
        }
    }
}
