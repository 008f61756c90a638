//! SHELL: the netfilter netlink socket as slbd's tables use it: a batch sent with every ACK
//! checked ([`send`]), and a dump request with its multipart answer ([`dump`]). Side effects:
//! a socket per call.

use std::io;

use nftnl::nftnl_sys as sys;
use nftnl::{FinalizedBatch, ProtoFamily};

use super::NftError;

/// A receive/build buffer aligned for `nlmsghdr`, as libmnl requires.
pub(super) struct NlBuf(Vec<u64>);

impl NlBuf {
    pub(super) fn new() -> NlBuf {
        NlBuf(vec![0; nftnl::nft_nlmsg_maxsize() as usize / 8 + 1])
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        let len = self.0.len() * 8;
        // SAFETY: the Vec owns `len` initialised bytes, and u8 has no alignment requirement.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, len) }
    }
}

/// A libnftnl object from its allocator `new`, or the error its NULL means.
pub(super) fn alloc<T>(new: unsafe extern "C" fn() -> *mut T) -> io::Result<*mut T> {
    // SAFETY: libnftnl's allocators take nothing and return an owned object or NULL.
    let p = unsafe { new() };
    if p.is_null() {
        Err(io::Error::from(io::ErrorKind::OutOfMemory))
    } else {
        Ok(p)
    }
}

/// Sends a finalized batch and checks one ACK per message.
pub(super) fn send(batch: &FinalizedBatch) -> Result<(), NftError> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
    let portid = socket.portid();
    socket.send_all(batch).map_err(NftError::Batch)?;
    let mut buf = NlBuf::new();
    let buffer = buf.bytes();
    let mut expected = batch.sequence_numbers();
    while !expected.is_empty() {
        for message in socket.recv(buffer).map_err(NftError::Batch)? {
            let message = message.map_err(NftError::Batch)?;
            let Some(seq) = expected.next() else { break };
            mnl::cb_run(message, seq, portid).map_err(NftError::Batch)?;
        }
    }
    Ok(())
}

/// Sends a dump request of `msg_type` (`NFT_MSG_GET…`) in `family`, whose filter (a table's
/// name, a set's) `payload` writes after the header, and hands every message of the answer to
/// `cb`.
pub(super) fn dump<T>(
    msg_type: i32,
    family: ProtoFamily,
    payload: impl FnOnce(*mut sys::libc::nlmsghdr),
    cb: mnl::Callback<T>,
    out: &mut T,
) -> io::Result<()> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter)?;
    let portid = socket.portid();
    let seq = 1;
    let mut request = NlBuf::new();
    let bytes = request.bytes();
    // SAFETY: `bytes` is an nlmsghdr-aligned buffer of nft_nlmsg_maxsize bytes, room for a
    // header and a filter of names; `nlh` points into `bytes`, which outlives it.
    let len = unsafe {
        let nlh = sys::nftnl_nlmsg_build_hdr(
            bytes.as_mut_ptr() as *mut sys::libc::c_char,
            msg_type as u16,
            family as u16,
            (sys::libc::NLM_F_DUMP | sys::libc::NLM_F_ACK) as u16,
            seq,
        );
        payload(nlh);
        (*nlh).nlmsg_len as usize
    };
    socket.send(&bytes[..len])?;
    let mut buf = NlBuf::new();
    let buffer = buf.bytes();
    loop {
        let n = socket.recv_raw(buffer)?;
        if n == 0 {
            return Ok(());
        }
        if let mnl::CbResult::Stop = mnl::cb_run2(&buffer[..n], seq, portid, cb, out)? {
            return Ok(());
        }
    }
}
