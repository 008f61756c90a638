//! SHELL: reads the flow map of offload direct-routing flows ([`ruleset::DR_FLOWS`]) out of
//! slbd's netdev table, for the daemon's once-a-second resync. Side effects: none (a dump).

use std::ffi::CStr;
use std::io;

use nftnl::nftnl_sys as sys;
use nftnl::ProtoFamily;

use super::{table_name, NlBuf};
use crate::core::ruleset::{self, DrFlow};

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
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    let seq = 1;
    let mut request_buf = NlBuf::new();
    let request = request_buf.bytes();
    let table = table_name();
    // SAFETY: `request` is an nlmsghdr-aligned buffer of nft_nlmsg_maxsize bytes, enough for
    // a header and a set's name and table; `set` is checked for NULL and freed after its
    // payload is written; `nlh` points into `request`, which outlives it.
    unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(
            request.as_mut_ptr() as *mut sys::libc::c_char,
            sys::libc::NFT_MSG_GETSETELEM as u16,
            ProtoFamily::NetDev as u16,
            (sys::libc::NLM_F_DUMP | sys::libc::NLM_F_ACK) as u16,
            seq,
        );
        let set = sys::nftnl_set_alloc();
        if set.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(set, sys::NFTNL_SET_NAME as u16, name.as_ptr());
        sys::nftnl_set_elems_nlmsg_build_payload(nlh, set);
        sys::nftnl_set_free(set);
        let len = (*nlh).nlmsg_len as usize;
        socket.send(&request[..len])?;
    }
    let mut out = Vec::new();
    let mut buf = NlBuf::new();
    let buffer = buf.bytes();
    loop {
        let n = socket.recv_raw(buffer)?;
        if n == 0 {
            break;
        }
        match mnl::cb_run2(&buffer[..n], seq, portid, elems_cb, &mut out) {
            Ok(mnl::CbResult::Stop) => break,
            Ok(mnl::CbResult::Ok) => {}
            // No set (no offload direct-routing service, or no table yet): no elements.
            Err(e) if e.raw_os_error() == Some(sys::libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
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
