//! Offload flows in the flow table: conntrack carries their packets, so their state comes
//! from conntrack's reports instead of the packets, and a confirmed one ends only when
//! conntrack says so. Pure.

use std::net::SocketAddrV4;

use super::table::{CONFIRMED, KERNEL};
use super::tcp::Seen;
use super::{Ended, FlowKey, FlowTable, Full, Phase, Reported};

impl FlowTable {
    /// [`FlowTable::insert`] for an offload flow, which conntrack carries; `confirmed` when
    /// conntrack itself reported it.
    pub fn insert_kernel(
        &mut self,
        key: &FlowKey,
        server: SocketAddrV4,
        tag: u32,
        now_ms: u64,
        confirmed: bool,
    ) -> Result<Option<Ended>, Full> {
        let flags = if confirmed {
            KERNEL | CONFIRMED
        } else {
            KERNEL
        };
        self.insert_flow(key, server, tag, now_ms, flags)
    }

    /// Applies conntrack's report on the offload flow `key` placed on `server`: confirms it
    /// and moves its TCP state to `phase` (None: the report carries no TCP state).
    pub fn report_kernel(
        &mut self,
        key: &FlowKey,
        server: SocketAddrV4,
        phase: Option<Phase>,
    ) -> Reported {
        let Some(i) = self.find_request(key) else {
            return Reported::Unknown;
        };
        let s = &mut self.slots[i as usize];
        if s.server() != server {
            return Reported::Unknown;
        }
        s.protocol |= KERNEL | CONFIRMED;
        let Some(phase) = phase else {
            return Reported::Known {
                established_now: false,
                closed_now: false,
            };
        };
        let step = self.see(i, Seen::Kernel(phase));
        Reported::Known {
            established_now: step.established_now,
            closed_now: step.closed_now,
        }
    }

    /// The server of the offload flow `key` when the kernel has not confirmed it yet (it was
    /// placed after the kernel's list was read, or since its last report).
    pub fn unconfirmed_kernel(&self, key: &FlowKey) -> Option<SocketAddrV4> {
        let s = &self.slots[self.find_request(key)? as usize];
        (s.protocol & (KERNEL | CONFIRMED) == KERNEL).then(|| s.server())
    }

    /// Removes every confirmed offload flow `pred` selects and returns them. One not yet
    /// confirmed may have been placed after the kernel's list was read; it expires by itself
    /// if the kernel never reports it.
    pub fn remove_confirmed_where(&mut self, pred: impl Fn(&Ended) -> bool) -> Vec<Ended> {
        self.remove_flagged(KERNEL | CONFIRMED, pred)
    }

    /// Removes the offload flow `key` on `server` that conntrack reported gone. A flow not yet
    /// confirmed is a newer one on the same 5-tuple (conntrack ended the old entry before it
    /// queued the new flow's first packet), so it stays.
    pub fn remove_reported(&mut self, key: &FlowKey, server: SocketAddrV4) -> Option<Ended> {
        let i = self.find_request(key)?;
        let s = &self.slots[i as usize];
        if s.protocol & CONFIRMED == 0 || s.server() != server {
            return None;
        }
        let ended = s.ended();
        self.remove(i);
        Some(ended)
    }

    /// Makes every flow `pred` selects an offload flow conntrack holds (this node just
    /// committed them to conntrack), and returns them with whether each is established.
    pub fn hand_to_kernel(&mut self, pred: impl Fn(&Ended) -> bool) -> Vec<(Ended, bool)> {
        let mut out = Vec::new();
        for s in self.slots.iter_mut().filter(|s| s.state.is_some()) {
            let e = s.ended();
            if pred(&e) {
                s.protocol |= KERNEL | CONFIRMED;
                out.push((e, s.state != Some(super::tcp::TcpState::Opening)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Phase;
    use super::*;
    use crate::core::net::Protocol;

    #[test]
    fn kernel_flows_follow_conntrack_not_the_idle_clock() {
        let mut t = FlowTable::new(T, 10);
        let k = req(Protocol::Tcp, "10.0.0.5:1000");
        let server = sa("172.16.0.2:80");
        t.insert_kernel(&k, server, 3, 0, false).unwrap();
        // Unconfirmed: an end report is about an older flow, and it idles out like a
        // handshake (tcp_closing).
        assert_eq!(t.remove_reported(&k, server), None);
        assert_eq!(t.expire(9_000, 100).len(), 0);
        assert_eq!(t.expire(10_000, 100).len(), 1);
        t.insert_kernel(&k, server, 3, 0, false).unwrap();
        let other = sa("172.16.0.3:80");
        assert_eq!(
            t.report_kernel(&k, other, Some(Phase::Established)),
            Reported::Unknown
        );
        let r = |t: &mut FlowTable, phase| t.report_kernel(&k, server, phase);
        assert_eq!(
            r(&mut t, Some(Phase::Opening)),
            Reported::Known {
                established_now: false,
                closed_now: false
            }
        );
        assert_eq!(
            r(&mut t, Some(Phase::Established)),
            Reported::Known {
                established_now: true,
                closed_now: false
            }
        );
        assert_eq!(
            r(&mut t, Some(Phase::Established)),
            Reported::Known {
                established_now: false,
                closed_now: false
            }
        );
        // Confirmed: no idle expiry however long it is quiet.
        assert_eq!(t.expire(1_000_000_000, 100).len(), 0);
        assert_eq!(
            r(&mut t, Some(Phase::Closing)),
            Reported::Known {
                established_now: false,
                closed_now: true
            }
        );
        assert_eq!(
            r(&mut t, Some(Phase::Closing)),
            Reported::Known {
                established_now: false,
                closed_now: false
            }
        );
        let ended = t
            .remove_reported(&k, server)
            .expect("confirmed flows end on report");
        assert!(ended.kernel && ended.was_closing);
        assert!(t.is_empty());
    }

    #[test]
    fn hand_to_kernel_takes_only_what_is_asked_and_says_if_established() {
        let mut t = FlowTable::new(T, 10);
        let a = req(Protocol::Tcp, "10.0.0.5:1");
        let b = req(Protocol::Udp, "10.0.0.5:2");
        t.insert(&a, sa("172.16.0.2:80"), 1, 0).unwrap();
        t.insert(&b, sa("172.16.0.2:53"), 2, 0).unwrap();
        let handed = t.hand_to_kernel(|e| e.tag == 1);
        assert_eq!(handed.len(), 1);
        assert_eq!(
            (handed[0].0.tag, handed[0].1),
            (1, false),
            "a TCP flow still opening"
        );
        assert_eq!(
            t.expire(1_000_000_000, 100).len(),
            1,
            "only the UDP flow idles out"
        );
        assert!(t.flows().all(|e| e.kernel));
    }
}
