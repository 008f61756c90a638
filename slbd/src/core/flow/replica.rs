//! What replication reads from and writes to the flow table: a replicated flow's handshake
//! state, as the ACTIVE saw it, and where a flow is placed (a merge compares). Pure.

use std::net::SocketAddrV4;

use super::tcp::{Seen, TcpState};
use super::{FlowKey, FlowTable};

impl FlowTable {
    /// Marks a flow established (a replicated flow whose handshake the ACTIVE saw complete).
    pub fn set_established(&mut self, key: &FlowKey) {
        if let Some(i) = self.find_request(key) {
            self.see(i, Seen::Replicated);
        }
    }

    /// The server the flow whose request key is `key` is placed on.
    pub fn server_of(&self, key: &FlowKey) -> Option<SocketAddrV4> {
        self.find_request(key)
            .map(|i| self.slots[i as usize].server())
    }

    /// Whether the flow is past its handshake (TCP) or is UDP.
    pub fn is_established(&self, key: &FlowKey) -> Option<bool> {
        self.find_request(key)
            .map(|i| self.slots[i as usize].state != Some(TcpState::Opening))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::core::flow::Lookup;
    use crate::core::net::Protocol;
    use crate::core::packet::tcp_flags::ACK;

    #[test]
    fn replicated_flows_can_be_marked_established_and_removed_by_key() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:4000");
        t.insert(&k, sa("172.16.0.2:8080"), 7, 0).unwrap();
        assert_eq!(t.is_established(&k), Some(false));
        t.set_established(&k);
        assert_eq!(t.is_established(&k), Some(true));
        // Established flows get the long timeout.
        assert!(t
            .expire(T.tcp_closing.as_millis() as u64 + 100, 10)
            .is_empty());
        let gone = t.remove_request(&k).unwrap();
        assert_eq!((gone.server, gone.tag), (sa("172.16.0.2:8080"), 7));
        assert_eq!(t.remove_request(&k), None);
        assert_eq!(t.lookup_request(&k, ACK, 1), Lookup::Missing);
        assert_eq!(t.len(), 0);
    }
}
