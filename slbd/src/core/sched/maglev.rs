//! MAGLEV: consistent hashing by a lookup table (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016). Each server walks its own permutation of the
//! table's M slots (an offset and a skip drawn from a keyed hash of its address and port) and
//! the servers take turns claiming their next free slot until the table is full; a flow goes
//! to the server of slot `hash(flow) mod M`. Every balancer that shares the key and the server
//! list builds the same table, so a flow lands on the same server whichever balancer the
//! router gives it to, and removing one of N servers moves about 1/N of the slots, those of
//! the removed server and a few more, instead of most of them as `hash mod N` does.
//!
//! Weights: in each round a server claims a slot once its running credit reaches the largest
//! weight (Katran's weighted variant), so its share of the table is its share of the weight.
//! Pure: the table, the hashes and the scheduler around them see no packets or clocks of
//! their own (the caller passes the time for the rebuild bound).

use std::net::SocketAddrV4;
use std::sync::Arc;

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use super::{Candidate, Flow, Scheduler};

/// The paper's table size: a prime, so every skip walks every slot.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// The smallest table a service may ask for.
pub const MIN_TABLE_SIZE: u32 = 251;
/// The largest: slots are 16-bit server indices, and past this a build takes longer than a
/// packet should wait.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// A weight-only change (a slow start's ramp, an agent's percentage) rebuilds the table at
/// most this often; a server leaving or joining rotation rebuilds it at once.
pub const REBUILD_EVERY_MS: u64 = 250;

/// The key of every hash the table uses: the servers' permutations and the flows. A cluster's
/// balancers must share it (`hash_key` in slb_conf.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashKey(pub [u64; 2]);

impl Default for HashKey {
    /// The key of a configuration that names none: the same on every slbd, so a cluster
    /// works out of the box; set one to keep outsiders from predicting where a flow lands.
    fn default() -> HashKey {
        HashKey([0x736c_625f_6d61_676c, 0x6576_5f6b_6579_2121])
    }
}

impl HashKey {
    /// 32 hex digits.
    pub fn parse(s: &str) -> Result<HashKey, String> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not 32 hex digits"));
        }
        let half = |r: std::ops::Range<usize>| u64::from_str_radix(&s[r], 16).expect("checked");
        Ok(HashKey([half(0..16), half(16..32)]))
    }

    pub fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.0[0], self.0[1])
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.0[0], self.0[1]);
        h.write(bytes);
        h.finish()
    }
}

/// What a flow's hash covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashBy {
    /// Protocol, client address and port, service port: each connection on its own.
    #[default]
    Flow,
    /// Protocol, client address, service port: every connection of a client to one server
    /// (persistence without a table, the same on every balancer).
    Client,
}

impl HashBy {
    pub fn name(self) -> &'static str {
        match self {
            HashBy::Flow => "flow",
            HashBy::Client => "client",
        }
    }
}

impl std::str::FromStr for HashBy {
    type Err = String;
    fn from_str(s: &str) -> Result<HashBy, String> {
        match s {
            "flow" => Ok(HashBy::Flow),
            "client" => Ok(HashBy::Client),
            _ => Err(format!("{s:?} is not \"flow\" or \"client\"")),
        }
    }
}

/// A service's Maglev settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub key: HashKey,
    pub table_size: u32,
    pub by: HashBy,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            key: HashKey::default(),
            table_size: DEFAULT_TABLE_SIZE,
            by: HashBy::Flow,
        }
    }
}

impl Settings {
    /// The hash of a new flow from `client` to the service on `port` (`protocol` its IP
    /// protocol number).
    pub fn flow_hash(&self, protocol: u8, client: SocketAddrV4, port: u16) -> u64 {
        let client_port = match self.by {
            HashBy::Flow => client.port(),
            HashBy::Client => 0,
        };
        let mut b = [0u8; 9];
        b[0] = protocol;
        b[1..5].copy_from_slice(&client.ip().octets());
        b[5..7].copy_from_slice(&client_port.to_be_bytes());
        b[7..9].copy_from_slice(&port.to_be_bytes());
        self.key.hash(&b)
    }
}

/// Whether `n` is prime (table sizes are checked once, at validation).
pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| d * d <= n).all(|d| n % d != 0)
}

/// The stable identity of a server, the same on every balancer: its address and port.
pub fn server_id(addr: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port())
}

/// One server the table is built over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// [`server_id`].
    pub id: u64,
    pub weight: u32,
}

const EMPTY: u16 = u16::MAX;

/// The lookup table: each slot names a server by its index in the members it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u16>,
}

impl Table {
    /// Builds the table of `size` slots (a prime) over `members`. Members of weight 0 get no
    /// slot; with none of weight above 0 the table is empty. The result does not depend on
    /// the members' order, only on who they are and their weights.
    pub fn build(key: HashKey, members: &[Member], size: u32) -> Table {
        debug_assert!(is_prime(size), "table size {size} is not prime");
        let m = u64::from(size);
        let mut order: Vec<usize> = (0..members.len().min(usize::from(EMPTY)))
            .filter(|&i| members[i].weight > 0)
            .collect();
        if order.is_empty() {
            return Table { slots: Vec::new() };
        }
        order.sort_by_key(|&i| (members[i].id, i));
        let gcd = order.iter().fold(0u32, |g, &i| gcd(g, members[i].weight));
        struct Walk {
            index: u16,
            weight: u64,
            credit: u64,
            pos: u64,
            skip: u64,
        }
        let mut walks: Vec<Walk> = order
            .iter()
            .map(|&i| {
                let id = members[i].id.to_le_bytes();
                let offset = key.hash(&[&id[..], b"offset"].concat()) % m;
                let skip = key.hash(&[&id[..], b"skip"].concat()) % (m - 1) + 1;
                Walk {
                    index: i as u16,
                    weight: u64::from(members[i].weight / gcd),
                    credit: 0,
                    pos: offset,
                    skip,
                }
            })
            .collect();
        let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);
        let mut slots = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for w in &mut walks {
                w.credit += w.weight;
                if w.credit < max_weight {
                    continue;
                }
                w.credit -= max_weight;
                // The next slot of this server's permutation that nobody has claimed.
                while slots[w.pos as usize] != EMPTY {
                    w.pos += w.skip;
                    if w.pos >= m {
                        w.pos -= m;
                    }
                }
                slots[w.pos as usize] = w.index;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Table { slots }
    }

    /// The member index of the slot `hash` falls in; `None` for an empty table.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let n = self.slots.len() as u64;
        (n > 0).then(|| usize::from(self.slots[(hash % n) as usize]))
    }

    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// How many slots each of the `members` members holds.
    pub fn shares(&self, members: usize) -> Vec<usize> {
        let mut counts = vec![0; members];
        for &s in &self.slots {
            if let Some(c) = counts.get_mut(usize::from(s)) {
                *c += 1;
            }
        }
        counts
    }

    /// The slots whose server differs between `self` and `other` (built over member lists
    /// whose indices name the same servers).
    pub fn moved(&self, other: &Table) -> usize {
        self.slots
            .iter()
            .zip(&other.slots)
            .filter(|(a, b)| a != b)
            .count()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The scheduler: the table over the servers in rotation, rebuilt when they change.
#[derive(Debug, Clone)]
pub struct Maglev {
    settings: Settings,
    table: Arc<Table>,
    /// What the table was built over: (candidate index, member).
    built: Vec<(usize, Member)>,
    built_ms: Option<u64>,
    /// Flow-less picks walk the table.
    walk: u64,
}

impl Maglev {
    pub fn new(settings: Settings) -> Maglev {
        Maglev {
            settings,
            table: Arc::new(Table { slots: Vec::new() }),
            built: Vec::new(),
            built_ms: None,
            walk: 0,
        }
    }

    /// The table as built now (for explain and tests).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Rebuilds the table if the servers it was built over have changed: at once when one
    /// joined or left, at most every [`REBUILD_EVERY_MS`] when only weights moved.
    fn follow(&mut self, servers: &[Candidate], flow: &Flow) {
        let wanted = || {
            servers
                .iter()
                .enumerate()
                .filter(move |&(i, c)| (c.up || flow.avoid == Some(i)) && c.weight > 0)
                .map(|(i, c)| {
                    (
                        i,
                        Member {
                            id: c.key,
                            weight: c.weight,
                        },
                    )
                })
        };
        // Every new flow comes here: compared in place, nothing allocated, while the servers
        // and weights are the ones the table was built over.
        let (mut same_servers, mut same_weights, mut n) = (true, true, 0);
        for (k, w) in wanted().enumerate() {
            n += 1;
            match self.built.get(k) {
                Some(b) if b.0 == w.0 && b.1.id == w.1.id => same_weights &= b.1 == w.1,
                _ => same_servers = false,
            }
        }
        same_servers &= n == self.built.len();
        if same_servers && same_weights {
            return;
        }
        let recent = self
            .built_ms
            .is_some_and(|t| flow.now_ms < t.saturating_add(REBUILD_EVERY_MS));
        if same_servers && recent && !self.table.slots.is_empty() {
            return;
        }
        self.built = wanted().collect();
        let members: Vec<Member> = self.built.iter().map(|(_, m)| *m).collect();
        self.table = Arc::new(Table::build(
            self.settings.key,
            &members,
            self.settings.table_size,
        ));
        self.built_ms = Some(flow.now_ms);
    }
}

impl Scheduler for Maglev {
    fn pick(&mut self, servers: &[Candidate]) -> Option<usize> {
        self.walk = self.walk.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let flow = Flow {
            hash: self.walk,
            now_ms: u64::MAX,
            avoid: None,
        };
        self.pick_flow(servers, &flow)
    }

    fn pick_flow(&mut self, servers: &[Candidate], flow: &Flow) -> Option<usize> {
        self.follow(servers, flow);
        let n = self.table.slots.len() as u64;
        if n == 0 {
            return None;
        }
        // The flow's slot; when its server is the one to avoid (or not up while a weight-only
        // rebuild waits), the next slots', as the paper's fallback.
        let start = flow.hash % n;
        (0..n)
            .map(|k| {
                let slot = (start + k) % n;
                self.built[usize::from(self.table.slots[slot as usize])].0
            })
            .find(|&i| servers.get(i).is_some_and(|c| c.up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                id: server_id(SocketAddrV4::new([172, 16, 0, 2 + i as u8].into(), 8000)),
                weight,
            })
            .collect()
    }

    /// The slots that changed server between two tables, after mapping each table's member
    /// indices back to server ids.
    fn moved_ids(a: &Table, am: &[Member], b: &Table, bm: &[Member]) -> usize {
        a.slots
            .iter()
            .zip(&b.slots)
            .filter(|(x, y)| am[usize::from(**x)].id != bm[usize::from(**y)].id)
            .count()
    }

    #[test]
    fn the_default_table_size_and_the_bounds_are_prime() {
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(MIN_TABLE_SIZE));
        assert!(is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(0) && is_prime(2));
    }

    #[test]
    fn every_slot_is_filled_and_equal_weights_share_within_one_percent() {
        for n in [1usize, 2, 3, 5, 7, 10, 50, 100] {
            let ms = members(&vec![1; n]);
            let t = Table::build(HashKey::default(), &ms, DEFAULT_TABLE_SIZE);
            let shares = t.shares(n);
            assert_eq!(shares.iter().sum::<usize>(), DEFAULT_TABLE_SIZE as usize);
            let ideal = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
            for (i, &s) in shares.iter().enumerate() {
                let off = (s as f64 - ideal).abs() / ideal;
                assert!(
                    off < 0.01,
                    "{n} servers: server {i} holds {s}, ideal {ideal:.0}"
                );
            }
        }
    }

    #[test]
    fn weights_are_honoured_within_one_percent_at_a_hundred_slots_a_server() {
        let weights = [1, 2, 3, 5, 10, 1, 7];
        let ms = members(&weights);
        let size = 1_009; // prime, > 100 × 7 servers
        let t = Table::build(HashKey::default(), &ms, size);
        let total: u32 = weights.iter().sum();
        for (i, &s) in t.shares(ms.len()).iter().enumerate() {
            let ideal = f64::from(size) * f64::from(weights[i]) / f64::from(total);
            let share_gap = (s as f64 - ideal).abs() / f64::from(size);
            assert!(
                share_gap < 0.01,
                "server {i} (weight {}) holds {s} of {size}, ideal {ideal:.1}",
                weights[i]
            );
        }
    }

    #[test]
    fn a_weight_of_zero_gets_no_slot_and_all_zero_is_an_empty_table() {
        let t = Table::build(HashKey::default(), &members(&[1, 0, 1]), 251);
        assert_eq!(t.shares(3)[1], 0);
        let empty = Table::build(HashKey::default(), &members(&[0, 0]), 251);
        assert_eq!(empty.lookup(7), None);
    }

    #[test]
    fn the_table_does_not_depend_on_the_order_of_its_members() {
        let ms = members(&[1, 2, 3, 4]);
        let mut rev = ms.clone();
        rev.reverse();
        let a = Table::build(HashKey::default(), &ms, 1_009);
        let b = Table::build(HashKey::default(), &rev, 1_009);
        assert_eq!(moved_ids(&a, &ms, &b, &rev), 0);
    }

    #[test]
    fn another_key_gives_another_table() {
        let ms = members(&[1, 1, 1]);
        let a = Table::build(HashKey::default(), &ms, 1_009);
        let b = Table::build(HashKey([1, 2]), &ms, 1_009);
        assert!(a.moved(&b) > 1_009 / 2, "{} slots moved", a.moved(&b));
    }

    /// The paper's figure 12: removing one of N servers moves its slots and few others.
    #[test]
    fn removing_one_of_n_servers_moves_about_one_nth_of_the_table() {
        for n in [5usize, 10, 50, 100] {
            let all = members(&vec![1; n]);
            let before = Table::build(HashKey::default(), &all, DEFAULT_TABLE_SIZE);
            let fewer: Vec<Member> = all[..n - 1].to_vec();
            let after = Table::build(HashKey::default(), &fewer, DEFAULT_TABLE_SIZE);
            let moved = moved_ids(&before, &all, &after, &fewer) as f64;
            let ideal = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
            let extra = (moved - ideal) / f64::from(DEFAULT_TABLE_SIZE);
            assert!(
                extra < 0.01,
                "{n} servers, one removed: {moved} slots moved, ideal {ideal:.0} (+{:.2} % of the table)",
                extra * 100.0
            );
        }
    }

    #[test]
    fn the_flow_hash_covers_what_the_service_says() {
        let s = Settings::default();
        let c = |port| SocketAddrV4::new([10, 0, 0, 5].into(), port);
        assert_ne!(s.flow_hash(6, c(1000), 80), s.flow_hash(6, c(1001), 80));
        assert_ne!(s.flow_hash(6, c(1000), 80), s.flow_hash(17, c(1000), 80));
        let by_client = Settings {
            by: HashBy::Client,
            ..s
        };
        assert_eq!(
            by_client.flow_hash(6, c(1000), 80),
            by_client.flow_hash(6, c(1001), 80)
        );
    }

    #[test]
    fn hash_keys_parse_from_32_hex_digits_only() {
        let k = HashKey::parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(k.0, [0x0011_2233_4455_6677, 0x8899_aabb_ccdd_eeff]);
        assert_eq!(k.hex(), "00112233445566778899aabbccddeeff");
        assert!(HashKey::parse("0011").is_err());
        assert!(HashKey::parse("zz112233445566778899aabbccddeeff").is_err());
    }

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        members(weights)
            .iter()
            .map(|m| Candidate {
                weight: m.weight,
                up: true,
                live: 0,
                latency_us: None,
                key: m.id,
            })
            .collect()
    }

    fn flow(hash: u64, now_ms: u64) -> Flow {
        Flow {
            hash,
            now_ms,
            avoid: None,
        }
    }

    #[test]
    fn a_flow_goes_to_the_same_server_from_two_schedulers_that_share_the_key() {
        let servers = cands(&[1, 1, 1, 1, 1]);
        let mut a = Maglev::new(Settings::default());
        let mut b = Maglev::new(Settings::default());
        b.pick(&servers);
        for h in 0..500u64 {
            let h = h.wrapping_mul(0x2545_f491_4f6c_dd1d);
            assert_eq!(
                a.pick_flow(&servers, &flow(h, 0)),
                b.pick_flow(&servers, &flow(h, 9))
            );
        }
    }

    #[test]
    fn a_server_leaving_rotation_is_left_at_once_and_only_its_flows_move() {
        let mut servers = cands(&[1, 1, 1, 1, 1]);
        let mut m = Maglev::new(Settings::default());
        let hashes: Vec<u64> = (0..2_000u64).map(|h| h.wrapping_mul(0x9e37_79b9)).collect();
        let before: Vec<usize> = hashes
            .iter()
            .map(|&h| m.pick_flow(&servers, &flow(h, 0)).unwrap())
            .collect();
        servers[2].up = false;
        let after: Vec<usize> = hashes
            .iter()
            .map(|&h| m.pick_flow(&servers, &flow(h, 1)).unwrap())
            .collect();
        assert!(
            after.iter().all(|&i| i != 2),
            "the down server is never chosen"
        );
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let of_2 = before.iter().filter(|&&i| i == 2).count();
        assert!(
            moved <= of_2 + hashes.len() / 100,
            "{moved} flows moved, {of_2} were on the removed server"
        );
    }

    #[test]
    fn weight_only_changes_rebuild_at_most_every_quarter_second() {
        let mut servers = cands(&[10, 10]);
        let mut m = Maglev::new(Settings::default());
        m.pick_flow(&servers, &flow(1, 1_000));
        let first = m.table().clone();
        servers[0].weight = 1;
        m.pick_flow(&servers, &flow(1, 1_100));
        assert_eq!(*m.table(), first, "not rebuilt 100 ms after the last build");
        m.pick_flow(&servers, &flow(1, 1_250));
        assert_ne!(*m.table(), first, "rebuilt 250 ms after");
        let shares = m.table().shares(2);
        assert!(
            shares[0] * 9 < shares[1],
            "the lighter server holds less: {shares:?}"
        );
    }

    #[test]
    fn the_server_to_avoid_is_skipped_without_a_rebuild() {
        let mut servers = cands(&[1, 1, 1]);
        let mut m = Maglev::new(Settings::default());
        let h = 12_345;
        let first = m.pick_flow(&servers, &flow(h, 0)).unwrap();
        let table = m.table().clone();
        servers[first].up = false;
        let again = Flow {
            avoid: Some(first),
            ..flow(h, 1)
        };
        let other = m.pick_flow(&servers, &again).unwrap();
        assert_ne!(other, first);
        assert_eq!(
            *m.table(),
            table,
            "avoiding one server for one flow rebuilds nothing"
        );
    }

    proptest! {
        #[test]
        fn any_weights_fill_the_table_and_name_only_weighted_members(
            weights in prop::collection::vec(0u32..20, 1..12),
        ) {
            let ms = members(&weights);
            let t = Table::build(HashKey::default(), &ms, 1_009);
            if weights.iter().all(|&w| w == 0) {
                prop_assert_eq!(t.size(), 0);
            } else {
                prop_assert_eq!(t.size(), 1_009);
                let shares = t.shares(ms.len());
                for (i, &s) in shares.iter().enumerate() {
                    prop_assert_eq!(s == 0, weights[i] == 0, "member {} weight {} holds {}", i, weights[i], s);
                }
            }
        }
    }
}
