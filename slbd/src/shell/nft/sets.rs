//! SHELL: the sets of slbd's tables as libnftnl builds them (the known clients', the flow map
//! and the closing flows), the names and transaction ids rules refer to them by, and the
//! loads of the flow map's key. Side effects: allocations owned by libnftnl.

use nftnl::expr::Payload;
use nftnl::nftnl_sys as sys;
use nftnl::set::Set;
use nftnl::{Rule, Table};

use super::exprs;
use crate::core::ruleset;

/// The SYN budget's set of known clients: addresses that time out, filled by rules.
pub(super) fn known_clients_set(
    table: &Table,
    k: ruleset::syn_budget::KnownClients,
) -> Set<'_, std::net::Ipv4Addr> {
    named_set(
        table,
        ruleset::syn_budget::KNOWN_CLIENTS,
        Some(k.timeout),
        k.size,
    )
}

/// A key of the flow map: `ipv4_addr . inet_proto . inet_service . inet_service`, each field
/// in a 4-byte register of its own ([`ruleset::DrFlow::key`]).
pub(super) struct FlowMapKey(pub(super) [u8; 16]);

impl nftnl::set::SetKey for FlowMapKey {
    // nft's concatenated type: each field's type id shifted in by 6 bits (TYPE_BITS), in
    // order: ipv4_addr (7), inet_proto (12), inet_service (13) twice. Only `nft list` reads it.
    const TYPE: u32 = ((7 << 6 | 12) << 6 | 13) << 6 | 13;
    const LEN: u32 = 16;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0)
    }
}

/// The map of offload direct-routing flows: keys that time out, each to a mark (nft's
/// `mark` type, 19), filled by rules.
pub(super) fn dr_flows_map(table: &Table, m: ruleset::DrFlows) -> Set<'_, FlowMapKey> {
    let set = named_set(table, ruleset::DR_FLOWS, None, m.size);
    // SAFETY: as in `named_set`.
    unsafe {
        let p = set.as_ptr().as_ptr();
        let flags = sys::nftnl_set_get_u32(p, sys::NFTNL_SET_FLAGS as u16);
        sys::nftnl_set_set_u32(
            p,
            sys::NFTNL_SET_FLAGS as u16,
            flags | sys::libc::NFT_SET_MAP as u32,
        );
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, 19);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, 4);
    }
    set
}

/// The set of closing flows: the flow map's keys, timing out after the closing timeout.
pub(super) fn dr_closing_set(table: &Table, m: ruleset::DrFlows) -> Set<'_, FlowMapKey> {
    named_set(table, ruleset::DR_CLOSING, Some(m.closing), m.size)
}

/// Set `name` of `table` as rules fill it: its elements time out (after `timeout`, or the
/// one each rule gives), at most `size` of them.
fn named_set<'a, K: nftnl::set::SetKey>(
    table: &'a Table,
    name: &str,
    timeout: Option<std::time::Duration>,
    size: u32,
) -> Set<'a, K> {
    let r = set_ref(name);
    let set = Set::new_named(r.name, r.id, table, table.get_family());
    let flags = (sys::libc::NFT_SET_TIMEOUT | sys::libc::NFT_SET_EVAL) as u32;
    // SAFETY: the set is live (owned by `set`, never NULL) and these are integer attributes
    // libnftnl copies.
    unsafe {
        let p = set.as_ptr().as_ptr();
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags);
        if let Some(t) = timeout {
            sys::nftnl_set_set_u64(p, sys::NFTNL_SET_TIMEOUT as u16, t.as_millis() as u64);
        }
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DESC_SIZE as u16, size);
    }
    set
}

/// A set the ruleset names, as rules and the batch name it: slbd's table has these three.
pub(super) fn set_ref(name: &str) -> exprs::SetRef {
    if name == ruleset::DR_FLOWS {
        exprs::SetRef {
            name: c"dr_flows",
            id: 2,
        }
    } else if name == ruleset::DR_CLOSING {
        exprs::SetRef {
            name: c"dr_closing",
            id: 3,
        }
    } else {
        debug_assert_eq!(name, ruleset::syn_budget::KNOWN_CLIENTS);
        exprs::SetRef {
            name: c"known_clients",
            id: 1,
        }
    }
}

/// [`add_flow_key`], and the packet's mark into register 2, past the key's registers.
pub(super) fn add_flow_key_and_mark(rule: &mut Rule) {
    add_flow_key(rule);
    rule.add_expr(&exprs::MetaTo {
        key: sys::libc::NFT_META_MARK as u32,
        dreg: 2,
    });
}

/// Loads the flow map's key from the packet: the client's address into register 1, the
/// protocol and both ports into the 4-byte registers after it (9 to 11), as nft lays out a
/// concatenation.
pub(super) fn add_flow_key(rule: &mut Rule) {
    use nftnl::expr::{Ipv4HeaderField, NetworkHeaderField};
    rule.add_expr(&Payload::Network(NetworkHeaderField::Ipv4(
        Ipv4HeaderField::Saddr,
    )));
    rule.add_expr(&exprs::MetaTo {
        key: sys::libc::NFT_META_L4PROTO as u32,
        dreg: 9,
    });
    for (offset, dreg) in [(0, 10), (2, 11)] {
        rule.add_expr(&exprs::TransportTo {
            offset,
            len: 2,
            dreg,
        });
    }
}
