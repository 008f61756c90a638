//! Client-IP session persistence: a client that comes back within the timeout is sent to the
//! real server it had before (the original design's IP-based persistence, thesis §5.8).
//! Pure: every call takes `now` in milliseconds.

use std::net::{Ipv4Addr, SocketAddrV4};

use hashbrown::HashMap;

use crate::core::net::Protocol;

/// Persistence is per client address and service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub client: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    server: SocketAddrV4,
    until_ms: u64,
}

/// Remembered client → server choices, bounded in number.
pub struct Persistence {
    entries: HashMap<PersistKey, Entry>,
    max: usize,
}

impl Persistence {
    pub fn new(max: usize) -> Persistence {
        Persistence {
            entries: HashMap::new(),
            max,
        }
    }

    /// The server this client was given, if that was less than the timeout ago.
    pub fn get(&self, key: &PersistKey, now_ms: u64) -> Option<SocketAddrV4> {
        self.entries
            .get(key)
            .filter(|e| e.until_ms > now_ms)
            .map(|e| e.server)
    }

    /// The client's entry, its server and when it expires, if live.
    pub fn entry(&self, key: &PersistKey, now_ms: u64) -> Option<(SocketAddrV4, u64)> {
        self.entries
            .get(key)
            .filter(|e| e.until_ms > now_ms)
            .map(|e| (e.server, e.until_ms))
    }

    /// Remembers (or refreshes) the client's server until `until_ms`. When the table is full
    /// the client is not remembered: persistence is best effort, balancing is not.
    pub fn remember(&mut self, key: PersistKey, server: SocketAddrV4, until_ms: u64) {
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            return;
        }
        let e = self
            .entries
            .entry(key)
            .or_insert(Entry { server, until_ms });
        if e.server != server || e.until_ms < until_ms {
            *e = Entry { server, until_ms };
        }
    }

    /// Extends a client's entry when one of its flows is still in use at `until_ms`.
    pub fn touch(&mut self, key: &PersistKey, server: SocketAddrV4, until_ms: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            if e.server == server && e.until_ms < until_ms {
                e.until_ms = until_ms;
            }
        }
    }

    /// Forgets the client's entry if it names `server` (a server that just failed the client's
    /// handshake: its other new connections must not be sent back there).
    pub fn forget(&mut self, key: &PersistKey, server: SocketAddrV4) {
        if self.entries.get(key).is_some_and(|e| e.server == server) {
            self.entries.remove(key);
        }
    }

    /// Drops expired entries; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.until_ms > now_ms);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every live entry with its server and expiry, for replication.
    pub fn entries(
        &self,
        now_ms: u64,
    ) -> impl Iterator<Item = (PersistKey, SocketAddrV4, u64)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| e.until_ms > now_ms)
            .map(|(k, e)| (*k, e.server, e.until_ms))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry (a STANDBY about to receive the ACTIVE's snapshot).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str) -> PersistKey {
        PersistKey {
            client: client.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        }
    }

    #[test]
    fn remembers_until_the_timeout() {
        let mut p = Persistence::new(10);
        let s: SocketAddrV4 = "172.16.0.2:80".parse().unwrap();
        p.remember(key("10.0.0.5"), s, 5_000);
        assert_eq!(p.get(&key("10.0.0.5"), 4_999), Some(s));
        assert_eq!(p.get(&key("10.0.0.6"), 0), None);
        assert_eq!(p.get(&key("10.0.0.5"), 5_000), None);
        assert_eq!(p.expire(5_000), 1);
        assert!(p.is_empty());
    }

    #[test]
    fn forget_drops_only_an_entry_naming_that_server() {
        let mut p = Persistence::new(10);
        let (a, b): (SocketAddrV4, SocketAddrV4) = (
            "172.16.0.2:80".parse().unwrap(),
            "172.16.0.3:80".parse().unwrap(),
        );
        p.remember(key("10.0.0.5"), a, 5_000);
        p.forget(&key("10.0.0.5"), b);
        assert_eq!(
            p.get(&key("10.0.0.5"), 0),
            Some(a),
            "another server's failure"
        );
        p.forget(&key("10.0.0.5"), a);
        assert_eq!(p.get(&key("10.0.0.5"), 0), None);
    }

    #[test]
    fn is_per_service() {
        let mut p = Persistence::new(10);
        let s: SocketAddrV4 = "172.16.0.2:80".parse().unwrap();
        p.remember(key("10.0.0.5"), s, 5_000);
        let other = PersistKey {
            port: 443,
            ..key("10.0.0.5")
        };
        assert_eq!(p.get(&other, 0), None);
    }

    #[test]
    fn touch_extends_only_the_same_server() {
        let mut p = Persistence::new(10);
        let a: SocketAddrV4 = "172.16.0.2:80".parse().unwrap();
        let b: SocketAddrV4 = "172.16.0.3:80".parse().unwrap();
        p.remember(key("10.0.0.5"), a, 1_000);
        p.touch(&key("10.0.0.5"), b, 9_000);
        assert_eq!(p.get(&key("10.0.0.5"), 2_000), None);
        p.remember(key("10.0.0.5"), a, 1_000);
        p.touch(&key("10.0.0.5"), a, 9_000);
        assert_eq!(p.get(&key("10.0.0.5"), 8_000), Some(a));
    }

    #[test]
    fn is_bounded() {
        let mut p = Persistence::new(1);
        let s: SocketAddrV4 = "172.16.0.2:80".parse().unwrap();
        p.remember(key("10.0.0.5"), s, 5_000);
        p.remember(key("10.0.0.6"), s, 5_000);
        assert_eq!(p.len(), 1);
        assert_eq!(p.get(&key("10.0.0.6"), 0), None);
    }
}
