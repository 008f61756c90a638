//! SHELL: the flow map of offload direct-routing flows ([`ruleset::DR_FLOWS`]) in slbd's
//! netdev table: read for the daemon's once-a-second resync, and a server's entries deleted
//! when its flows are cut. Side effects: dumps; deletions of the map's and the closing set's
//! elements.

use std::ffi::CStr;
use std::io;

use nftnl::nftnl_sys as sys;
use nftnl::set::Set;
use nftnl::{Batch, MsgType, ProtoFamily, Table};

use super::sets::FlowMapKey;
use super::socket::{alloc, dump, send};
use super::{table_name, NftError};
use crate::core::ruleset::{self, DrFlow, DrServer};

/// Every entry of the flow map; an empty list when the table has no map.
pub fn dr_flows() -> io::Result<Vec<DrFlow>> {
    debug_assert_eq!(ruleset::DR_FLOWS, "dr_flows");
    Ok(elements(c"dr_flows")?
        .into_iter()
        .filter_map(|e| DrFlow::from_entry(&e.key, &e.data, e.timeout))
        .collect())
}

/// A set element as the kernel lists it.
struct Element {
    key: Vec<u8>,
    data: Vec<u8>,
    timeout: std::time::Duration,
}

/// Every element of slbd's netdev set `name`; none when there is no such set.
fn elements(name: &CStr) -> io::Result<Vec<Element>> {
    let set = alloc(sys::nftnl_set_alloc)?;
    let table = table_name();
    let mut out = Vec::new();
    // SAFETY: `set` is a live set (non-NULL) that only this function holds; the payload is
    // written while it lives, and it is freed once, after the dump.
    let done = unsafe {
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        let done = dump(
            sys::libc::NFT_MSG_GETSETELEM,
            ProtoFamily::NetDev,
            |nlh| sys::nftnl_set_elems_nlmsg_build_payload(nlh, set),
            elems_cb,
            &mut out,
        );
        sys::nftnl_set_free(set);
        done
    };
    match done {
        Ok(()) => Ok(out),
        // No set (no offload direct-routing service, or no table yet): no elements.
        Err(e) if e.raw_os_error() == Some(sys::libc::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn elems_cb(header: &sys::libc::nlmsghdr, out: &mut Vec<Element>) -> sys::libc::c_int {
    // SAFETY: `header` is a whole netlink message libmnl validated against the buffer; `set`
    // and `iter` are checked for NULL and freed on every path; the key and data pointers
    // belong to the element, live while `set` is, and are copied within the lengths libnftnl
    // reports.
    unsafe {
        let set = sys::nftnl_set_alloc();
        if set.is_null() {
            return -1; // MNL_CB_ERROR: out of memory
        }
        if sys::nftnl_set_elems_nlmsg_parse(header, set) >= 0 {
            let iter = sys::nftnl_set_elems_iter_create(set);
            if !iter.is_null() {
                let mut elem = sys::nftnl_set_elems_iter_next(iter);
                while !elem.is_null() {
                    let bytes = |attr: u32| {
                        let mut len = 0u32;
                        let p = sys::nftnl_set_elem_get(elem, attr as u16, &mut len);
                        if p.is_null() {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(p as *const u8, len as usize).to_vec()
                        }
                    };
                    out.push(Element {
                        key: bytes(sys::NFTNL_SET_ELEM_KEY),
                        data: bytes(sys::NFTNL_SET_ELEM_DATA),
                        timeout: std::time::Duration::from_millis(sys::nftnl_set_elem_get_u64(
                            elem,
                            sys::NFTNL_SET_ELEM_TIMEOUT as u16,
                        )),
                    });
                    elem = sys::nftnl_set_elems_iter_next(iter);
                }
                sys::nftnl_set_elems_iter_destroy(iter);
            }
        }
        sys::nftnl_set_free(set);
    }
    1 // MNL_CB_OK
}

/// Deletes `server`'s entries from the flow map and the closing set: the kernel stops
/// carrying its flows, whose next packets go to slbd. Returns how many flows were cut.
pub fn cut_dr_flows(server: &DrServer) -> Result<usize, NftError> {
    let dumped = |source| NftError::Dump {
        table: ruleset::TABLE,
        source,
    };
    let keys: Vec<[u8; 16]> = dr_flows()
        .map_err(dumped)?
        .iter()
        .filter(|f| f.is_on(server))
        .map(DrFlow::key)
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    let closing: std::collections::HashSet<Vec<u8>> = elements(c"dr_closing")
        .map_err(dumped)?
        .into_iter()
        .map(|e| e.key)
        .collect();
    let closing_of = |keys: &[[u8; 16]]| -> Vec<[u8; 16]> {
        keys.iter()
            .filter(|k| closing.contains(&k[..]))
            .copied()
            .collect()
    };
    // One batch for all; an entry that timed out since the dump makes the kernel refuse the
    // whole batch, so then each goes in a batch of its own (the ones gone fail alone).
    if delete(&keys, &closing_of(&keys)).is_err() {
        for k in keys.chunks(1) {
            let _ = delete(k, &closing_of(k));
        }
    }
    Ok(keys.len())
}

/// Deletes `flows` from the flow map and `closing` from the closing set, in one batch.
fn delete(flows: &[[u8; 16]], closing: &[[u8; 16]]) -> Result<(), NftError> {
    let name = table_name();
    let table = Table::new(&name, ProtoFamily::NetDev);
    let sets: Vec<Set<FlowMapKey>> = [(c"dr_flows", flows), (c"dr_closing", closing)]
        .into_iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(set_name, keys)| {
            let mut set = Set::new_named(set_name, 0, &table, ProtoFamily::NetDev);
            for k in keys {
                set.add(&FlowMapKey(*k));
            }
            set
        })
        .collect();
    let mut batch = Batch::new();
    for set in &sets {
        for m in set.elems_iter() {
            batch.add(&m, MsgType::Del);
        }
    }
    send(&batch.finalize())
}
