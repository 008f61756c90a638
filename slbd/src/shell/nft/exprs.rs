//! SHELL: the nftables expressions slbd builds by hand with libnftnl, because the `nftnl`
//! crate has no builder for them or builds them wrong for an `ip` table: `notrack`, `ct event
//! set`, `reject` with ICMP codes, `dup`, single transport-header bytes, the native `queue`, the xtables
//! `NFQUEUE` target, `jhash`, the set lookup, update and `limit` of the SYN budget, and the
//! flow map's key loads (into registers of choice), lookup, update and delete, and the netdev
//! family's `fwd`.
//! Side effects: allocations owned by libnftnl, freed with the rule.

use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::Rule;

use crate::core::ruleset::QueueRange;

macro_rules! alloc_expr {
    ($name:expr) => {
        // SAFETY: the name is a NUL-terminated C string literal that outlives the call;
        // libnftnl copies what it needs and returns NULL only when out of memory.
        NonNull::new(unsafe { sys::nftnl_expr_alloc($name.as_ptr()) })
            .expect("libnftnl could not allocate an expression (out of memory)")
    };
}

/// The `notrack` statement (nft_ct's notrack expression): keeps a packet out of conntrack.
pub(super) struct Notrack;

impl Expression for Notrack {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        alloc_expr!(c"notrack")
    }
}

/// `dup to` the IPv4 address in register 1 (as a gateway), on the device whose index is in
/// register 2 when `device`: the `nftnl` crate has no `dup`.
pub(super) struct Dup {
    pub(super) device: bool,
}

impl Expression for Dup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_REG_1: u32 = 1;
        const NFT_REG_2: u32 = 2;
        let expr = alloc_expr!(c"dup");
        // SAFETY: a live, non-NULL `dup` expression and integer keys of its own.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_DUP_SREG_ADDR as u16,
                NFT_REG_1,
            );
            if self.device {
                sys::nftnl_expr_set_u32(
                    expr.as_ptr(),
                    sys::NFTNL_EXPR_DUP_SREG_DEV as u16,
                    NFT_REG_2,
                );
            }
        }
        expr
    }
}

/// `ct event set` from register 1: which events conntrack reports for the flow (nftnl's
/// `Conntrack` expression has no event-mask key).
pub(super) struct CtEventMask;

impl Expression for CtEventMask {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_CT_EVENTMASK: u32 = 18;
        const NFT_REG_1: u32 = 1;
        let expr = alloc_expr!(c"ct");
        // SAFETY: `expr` is a live expression just allocated (never NULL), of the type the
        // keys belong to; the setters copy plain integers.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_CT_KEY as u16,
                NFT_CT_EVENTMASK,
            );
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_CT_SREG as u16, NFT_REG_1);
        }
        expr
    }
}

/// One byte of the transport header, at this offset, into register 1 (the TCP flags, the ICMP
/// type): `nftnl`'s payload fields stop at the ports.
pub(super) struct TransportByte(pub(super) u32);

impl Expression for TransportByte {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
        const NFT_REG_1: u32 = 1;
        let expr = alloc_expr!(c"payload");
        // SAFETY: a live, non-NULL `payload` expression and integer keys of its own.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_PAYLOAD_BASE as u16,
                NFT_PAYLOAD_TRANSPORT_HEADER,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.0);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, 1);
        }
        expr
    }
}

/// The `reject` statement for the `ip` family, built by hand: nftnl's helper passes its
/// ICMPX code numbers, which mean other ICMP codes in an `ip` table.
pub(super) enum Reject {
    TcpReset,
    PortUnreachable,
}

impl Expression for Reject {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // NFT_REJECT_ICMP_UNREACH = 0, NFT_REJECT_TCP_RST = 1; ICMP_PORT_UNREACH = 3.
        let (kind, code): (u32, u8) = match self {
            Reject::TcpReset => (1, 0),
            Reject::PortUnreachable => (0, 3),
        };
        let expr = alloc_expr!(c"reject");
        // SAFETY: as for `ct` above: a live, non-NULL `reject` expression and integer keys.
        unsafe {
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_REJECT_TYPE as u16, kind);
            sys::nftnl_expr_set_u8(expr.as_ptr(), sys::NFTNL_EXPR_REJECT_CODE as u16, code);
        }
        expr
    }
}

/// nftables' native `queue num A-B [fanout]`.
pub(super) struct NativeQueue {
    pub(super) q: QueueRange,
    pub(super) flags: u16,
}

impl Expression for NativeQueue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr!(c"queue");
        // SAFETY: a live, non-NULL `queue` expression and integer keys of its own.
        unsafe {
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_NUM as u16,
                self.q.first,
            );
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_TOTAL as u16,
                self.q.count,
            );
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_FLAGS as u16,
                self.flags,
            );
        }
        expr
    }
}

/// The xtables `NFQUEUE` target, revision 3, run by nft_compat. Its info is the kernel's
/// `struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }`, padded to XT_ALIGN (8).
pub(super) struct XtNfqueue {
    pub(super) q: QueueRange,
    pub(super) flags: u16,
}

impl Expression for XtNfqueue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr!(c"target");
        let mut info = [0u8; 8];
        info[0..2].copy_from_slice(&self.q.first.to_ne_bytes());
        info[2..4].copy_from_slice(&self.q.count.to_ne_bytes());
        info[4..6].copy_from_slice(&self.flags.to_ne_bytes());
        // SAFETY: a live, non-NULL `target` expression; the name is a C string literal
        // libnftnl copies; the info buffer comes from malloc (checked), is filled with
        // exactly `info.len()` bytes, and its ownership passes to libnftnl, which frees it.
        unsafe {
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_NAME as u16,
                c"NFQUEUE".as_ptr(),
            );
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_TG_REV as u16, 3);
            // libnftnl takes ownership of the info buffer and free()s it with the expression,
            // so it must come from malloc.
            let buf = sys::libc::malloc(info.len()) as *mut u8;
            assert!(!buf.is_null(), "malloc of 8 bytes failed");
            std::ptr::copy_nonoverlapping(info.as_ptr(), buf, info.len());
            sys::nftnl_expr_set(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_INFO as u16,
                buf as *const sys::libc::c_void,
                info.len() as u32,
            );
        }
        expr
    }
}

/// `jhash` of the 4 bytes in register 1 (a loaded IPv4 address), `mod modulus`, with this
/// seed, into register 1 (host byte order, as `meta mark` compares).
pub(super) struct Jhash {
    pub(super) modulus: u32,
    pub(super) seed: u32,
}

impl Expression for Jhash {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_HASH_JENKINS: u32 = 0;
        const NFT_REG_1: u32 = 1;
        let expr = alloc_expr!(c"hash");
        // SAFETY: a live, non-NULL `hash` expression and integer keys of its own.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_TYPE as u16, NFT_HASH_JENKINS);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_SREG as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_DREG as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_LEN as u16, 4);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_MODULUS as u16, self.modulus);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_SEED as u16, self.seed);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_HASH_OFFSET as u16, 0);
        }
        expr
    }
}

/// A set of slbd's table: its name and the id it has in the transaction that creates it
/// (rules name it by both).
#[derive(Clone, Copy)]
pub(super) struct SetRef {
    pub(super) name: &'static std::ffi::CStr,
    pub(super) id: u32,
}

/// A lookup of the key in register 1 (a loaded address, or the flow map's key from
/// register 1 on): `ip saddr != @set`, `ip saddr @set`, or, with `dreg`, a map's value into
/// that register.
pub(super) struct Lookup {
    pub(super) set: SetRef,
    pub(super) inverted: bool,
    pub(super) dreg: Option<u32>,
}

impl Expression for Lookup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_REG_1: u32 = 1;
        let expr = alloc_expr!(c"lookup");
        let flags = if self.inverted {
            sys::libc::NFT_LOOKUP_F_INV as u32
        } else {
            0
        };
        // SAFETY: a live, non-NULL `lookup` expression and keys of its own; the set name is a
        // NUL-terminated string libnftnl copies.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, NFT_REG_1);
            sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, self.set.name.as_ptr());
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SET_ID as u16, self.set.id);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_FLAGS as u16, flags);
            if let Some(dreg) = self.dreg {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_DREG as u16, dreg);
            }
        }
        expr
    }
}

/// What a [`Dynset`] does with its key.
#[derive(Clone, Copy)]
pub(super) enum DynsetOp {
    /// Adds the key, or renews its timeout.
    Update,
    /// Deletes the key (NFT_DYNSET_OP_DELETE, which the `libc` crate does not name).
    Delete,
}

/// `update @set { KEY }` or `delete @set { KEY }` with the key from register 1. A map's entry
/// takes its value from register `data` (a delete from a map names one too) and its timeout
/// from `timeout_ms` (otherwise the set's).
pub(super) struct Dynset {
    pub(super) set: SetRef,
    pub(super) op: DynsetOp,
    pub(super) data: Option<u32>,
    pub(super) timeout_ms: Option<u64>,
}

impl Expression for Dynset {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_REG_1: u32 = 1;
        const NFT_DYNSET_OP_DELETE: u32 = 2;
        let op = match self.op {
            DynsetOp::Update => sys::libc::NFT_DYNSET_OP_UPDATE as u32,
            DynsetOp::Delete => NFT_DYNSET_OP_DELETE,
        };
        let expr = alloc_expr!(c"dynset");
        // SAFETY: as for `lookup` above.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SREG_KEY as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_OP as u16, op);
            sys::nftnl_expr_set_str(
                e,
                sys::NFTNL_EXPR_DYNSET_SET_NAME as u16,
                self.set.name.as_ptr(),
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SET_ID as u16, self.set.id);
            if let Some(data) = self.data {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_DYNSET_SREG_DATA as u16, data);
            }
            if let Some(ms) = self.timeout_ms {
                sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_DYNSET_TIMEOUT as u16, ms);
            }
        }
        expr
    }
}

/// `fwd ip to` the IPv4 address in register 1 `device` the index in register 2 (netdev):
/// out of that device to the address's MAC, by the neighbour table, its TTL lowered.
pub(super) struct FwdNeigh;

impl Expression for FwdNeigh {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_REG_1: u32 = 1;
        const NFT_REG_2: u32 = 2;
        let expr = alloc_expr!(c"fwd");
        // SAFETY: a live, non-NULL `fwd` expression and integer keys of its own.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FWD_SREG_DEV as u16, NFT_REG_2);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_FWD_SREG_ADDR as u16, NFT_REG_1);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_FWD_NFPROTO as u16,
                sys::libc::NFPROTO_IPV4 as u32,
            );
        }
        expr
    }
}

/// A `meta` key loaded into a register of choice (the `nftnl` crate's `Meta` always loads
/// into register 1).
pub(super) struct MetaTo {
    pub(super) key: u32,
    pub(super) dreg: u32,
}

impl Expression for MetaTo {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr!(c"meta");
        // SAFETY: a live, non-NULL `meta` expression and integer keys of its own.
        unsafe {
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, self.key);
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_META_DREG as u16, self.dreg);
        }
        expr
    }
}

/// A `meta` key set from register 1 (the `nftnl` crate's `Meta` sets the mark only).
pub(super) struct MetaSet {
    pub(super) key: u32,
}

impl Expression for MetaSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr!(c"meta");
        // SAFETY: a live, non-NULL `meta` expression and integer keys of its own.
        unsafe {
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_META_KEY as u16, self.key);
            sys::nftnl_expr_set_u32(expr.as_ptr(), sys::NFTNL_EXPR_META_SREG as u16, 1);
        }
        expr
    }
}

/// `len` bytes of the transport header from `offset`, into a register of choice.
pub(super) struct TransportTo {
    pub(super) offset: u32,
    pub(super) len: u32,
    pub(super) dreg: u32,
}

impl Expression for TransportTo {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr!(c"payload");
        // SAFETY: a live, non-NULL `payload` expression and integer keys of its own.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_PAYLOAD_BASE as u16,
                sys::libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32,
            );
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, self.offset);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, self.len);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, self.dreg);
        }
        expr
    }
}

/// `limit rate over N/second burst B packets`: matches the packets beyond the rate.
pub(super) struct LimitOver {
    pub(super) per_second: u32,
    pub(super) burst: u32,
}

impl Expression for LimitOver {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        const NFT_LIMIT_PKTS: u32 = 0;
        let expr = alloc_expr!(c"limit");
        // SAFETY: a live, non-NULL `limit` expression and integer keys of its own.
        unsafe {
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_RATE as u16, self.per_second.into());
            sys::nftnl_expr_set_u64(e, sys::NFTNL_EXPR_LIMIT_UNIT as u16, 1);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_BURST as u16, self.burst);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LIMIT_TYPE as u16, NFT_LIMIT_PKTS);
            sys::nftnl_expr_set_u32(
                e,
                sys::NFTNL_EXPR_LIMIT_FLAGS as u16,
                sys::libc::NFT_LIMIT_F_INV as u32,
            );
        }
        expr
    }
}
