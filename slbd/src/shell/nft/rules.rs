//! SHELL: one rule of a [`Ruleset`](ruleset::Ruleset) as libnftnl expressions: its matches,
//! its actions and its queue verdict in the form this kernel takes. Side effects: none (the
//! rules go into a batch [`super::apply`] sends).

use std::ffi::CString;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Immediate, Meta, Nat, NatType, Payload, Register, Verdict,
};
use nftnl::nftnl_sys as sys;
use nftnl::{Chain, ProtoFamily, Rule};

use super::exprs::{self, CtEventMask, Dup, DynsetOp, NativeQueue, Notrack, Reject, XtNfqueue};
use super::sets::{add_flow_key, add_flow_key_and_mark, set_ref};
use super::QueueBackend;
use crate::core::net::Protocol;
use crate::core::ruleset::{self, Action, Match, QueueRange};

/// Rule `r` in `chain`.
pub(super) fn build_rule<'a>(
    chain: &'a Chain<'a>,
    r: &ruleset::Rule,
    backend: QueueBackend,
) -> Rule<'a> {
    let mut rule = Rule::new(chain);
    for m in &r.matches {
        add_match(&mut rule, m);
    }
    for a in &r.actions {
        match a {
            Action::Notrack => rule.add_expr(&Notrack),
            Action::Drop => rule.add_expr(&Verdict::Drop),
            Action::Accept => rule.add_expr(&Verdict::Accept),
            Action::CtMarkFromMark => {
                rule.add_expr(&Meta::Mark { set: false });
                rule.add_expr(&Conntrack::Mark { set: true });
            }
            Action::SetMark(mark) => {
                rule.add_expr(&Immediate::new(*mark, Register::Reg1));
                rule.add_expr(&Meta::Mark { set: true });
            }
            Action::SetPriority(p) => {
                rule.add_expr(&Immediate::new(*p, Register::Reg1));
                rule.add_expr(&exprs::MetaSet {
                    key: sys::libc::NFT_META_PRIORITY as u32,
                });
            }
            Action::CtEvents(bits) => {
                rule.add_expr(&Immediate::new(*bits, Register::Reg1));
                rule.add_expr(&CtEventMask);
            }
            Action::DupToMarkAddress(dev) => {
                rule.add_expr(&Meta::Mark { set: false });
                // Without the device (gone since the config was checked) the copy still goes
                // to the address, by the route to it.
                let index = nix::net::if_::if_nametoindex(dev.as_str()).ok();
                if let Some(i) = index {
                    rule.add_expr(&Immediate::new(i, Register::Reg2));
                }
                rule.add_expr(&Dup {
                    device: index.is_some(),
                });
            }
            Action::Dnat(to) | Action::Snat(to) => {
                rule.add_expr(&Immediate::new(to.ip().octets(), Register::Reg1));
                rule.add_expr(&Immediate::new(to.port().to_be_bytes(), Register::Reg2));
                rule.add_expr(&Nat {
                    nat_type: if matches!(a, Action::Dnat(_)) {
                        NatType::DNat
                    } else {
                        NatType::SNat
                    },
                    family: ProtoFamily::Ipv4,
                    ip_register: Register::Reg1,
                    port_register: Some(Register::Reg2),
                });
            }
            Action::RejectTcpReset => rule.add_expr(&Reject::TcpReset),
            Action::RejectPortUnreachable => rule.add_expr(&Reject::PortUnreachable),
            Action::Queue(q) => add_queue(&mut rule, *q, backend),
            Action::UpdateSetWithSaddr(set) => {
                rule.add_expr(&Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
                    nftnl::expr::Ipv4HeaderField::Saddr,
                )));
                rule.add_expr(&exprs::Dynset {
                    set: set_ref(set),
                    op: DynsetOp::Update,
                    data: None,
                    timeout_ms: None,
                });
            }
            Action::MarkFromFlows => {
                add_flow_key(&mut rule);
                rule.add_expr(&exprs::Lookup {
                    set: set_ref(ruleset::DR_FLOWS),
                    inverted: false,
                    dreg: Some(1),
                });
                rule.add_expr(&Meta::Mark { set: true });
            }
            Action::RecordFlow { timeout } => {
                add_flow_key_and_mark(&mut rule);
                rule.add_expr(&exprs::Dynset {
                    set: set_ref(ruleset::DR_FLOWS),
                    op: DynsetOp::Update,
                    data: Some(2),
                    timeout_ms: Some(timeout.as_millis() as u64),
                });
            }
            Action::FwdToMarkAddress(dev) => {
                // The mark holds the address as `fwd` reads one (`dr_mark`).
                rule.add_expr(&Meta::Mark { set: false });
                let index = nix::net::if_::if_nametoindex(dev.as_str()).unwrap_or(0);
                rule.add_expr(&Immediate::new(index, Register::Reg2));
                rule.add_expr(&exprs::FwdNeigh);
            }
            Action::MarkClosing => {
                add_flow_key(&mut rule);
                rule.add_expr(&exprs::Dynset {
                    set: set_ref(ruleset::DR_CLOSING),
                    op: DynsetOp::Update,
                    data: None,
                    timeout_ms: None,
                });
            }
            Action::ForgetFlow => {
                add_flow_key_and_mark(&mut rule);
                for (set, data) in [(ruleset::DR_FLOWS, Some(2)), (ruleset::DR_CLOSING, None)] {
                    rule.add_expr(&exprs::Dynset {
                        set: set_ref(set),
                        op: DynsetOp::Delete,
                        data,
                        timeout_ms: None,
                    });
                }
            }
        }
    }
    if let Ok(c) = CString::new(r.comment.as_str()) {
        // Comments only help `nft list ruleset` readers; a refused one is no reason to fail.
        let _ = rule.set_comment(c);
    }
    rule
}

fn add_match(rule: &mut Rule, m: &Match) {
    use nftnl::expr::{
        Ipv4HeaderField, NetworkHeaderField, TcpHeaderField, TransportHeaderField, UdpHeaderField,
    };
    let ip = |f| Payload::Network(NetworkHeaderField::Ipv4(f));
    let port = |p: Protocol, src: bool| match (p, src) {
        (Protocol::Tcp, true) => {
            Payload::Transport(TransportHeaderField::Tcp(TcpHeaderField::Sport))
        }
        (Protocol::Tcp, false) => {
            Payload::Transport(TransportHeaderField::Tcp(TcpHeaderField::Dport))
        }
        (Protocol::Udp, true) => {
            Payload::Transport(TransportHeaderField::Udp(UdpHeaderField::Sport))
        }
        (Protocol::Udp, false) => {
            Payload::Transport(TransportHeaderField::Udp(UdpHeaderField::Dport))
        }
    };
    match *m {
        Match::DaddrIs(a) => {
            rule.add_expr(&ip(Ipv4HeaderField::Daddr));
            rule.add_expr(&Cmp::new(CmpOp::Eq, a));
        }
        Match::SaddrIn(n) | Match::DaddrNotIn(n) => {
            let (field, op) = match m {
                Match::SaddrIn(_) => (Ipv4HeaderField::Saddr, CmpOp::Eq),
                _ => (Ipv4HeaderField::Daddr, CmpOp::Neq),
            };
            rule.add_expr(&ip(field));
            rule.add_expr(&Bitwise::new(n.netmask(), std::net::Ipv4Addr::UNSPECIFIED));
            rule.add_expr(&Cmp::new(op, n.addr()));
        }
        Match::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, p as u8));
        }
        Match::Mark(mark) => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Cmp::new(CmpOp::Eq, mark));
        }
        Match::Priority(p) => {
            rule.add_expr(&exprs::MetaTo {
                key: sys::libc::NFT_META_PRIORITY as u32,
                dreg: 1,
            });
            rule.add_expr(&Cmp::new(CmpOp::Eq, p));
        }
        Match::MarkAddressIn(n) => {
            // The mark's register bytes are the address in network order (`dr_mark`).
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(n.netmask(), std::net::Ipv4Addr::UNSPECIFIED));
            rule.add_expr(&Cmp::new(CmpOp::Eq, n.addr()));
        }
        Match::CtStateNew | Match::CtStateNewOrInvalid | Match::CtStateInvalid => {
            // NF_CT_STATE_BIT(IP_CT_NEW) is 8, NF_CT_STATE_INVALID_BIT 1.
            let bit: u32 = match *m {
                Match::CtStateNew => 8,
                Match::CtStateInvalid => 1,
                _ => 8 | 1,
            };
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(bit, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Match::IcmpType(t) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, 1u8));
            // The ICMP type is the transport header's first byte.
            rule.add_expr(&exprs::TransportByte(0));
            rule.add_expr(&Cmp::new(CmpOp::Eq, t));
        }
        Match::CtStateRelated | Match::CtStateUntracked => {
            // NF_CT_STATE_BIT(IP_CT_RELATED) is 4, NF_CT_STATE_UNTRACKED_BIT 64.
            let bit: u32 = if *m == Match::CtStateRelated { 4 } else { 64 };
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(bit, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Match::TcpRst => {
            // The TCP flags are byte 13 of its header.
            rule.add_expr(&exprs::TransportByte(13));
            rule.add_expr(&Bitwise::new(0x04u8, 0u8));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u8));
        }
        Match::CtNotAssured => {
            // IPS_ASSURED is bit 2 of the status.
            rule.add_expr(&Conntrack::Status);
            rule.add_expr(&Bitwise::new(4u32, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Eq, 0u32));
        }
        Match::TcpFlags { mask, value } => {
            // The TCP flags are byte 13 of its header.
            rule.add_expr(&exprs::TransportByte(13));
            rule.add_expr(&Bitwise::new(mask, 0u8));
            rule.add_expr(&Cmp::new(CmpOp::Eq, value));
        }
        Match::Ipv4 => {
            rule.add_expr(&Meta::Protocol);
            rule.add_expr(&Cmp::new(CmpOp::Eq, &0x0800u16.to_be_bytes()[..]));
        }
        Match::FlowClosing => {
            add_flow_key(rule);
            rule.add_expr(&exprs::Lookup {
                set: set_ref(ruleset::DR_CLOSING),
                inverted: false,
                dreg: None,
            });
        }
        Match::SaddrNotInSet(set) => {
            rule.add_expr(&ip(Ipv4HeaderField::Saddr));
            rule.add_expr(&exprs::Lookup {
                set: set_ref(set),
                inverted: true,
                dreg: None,
            });
        }
        Match::RateOver { per_second, burst } => {
            rule.add_expr(&exprs::LimitOver { per_second, burst })
        }
        Match::SourceHash { modulus, value } => {
            rule.add_expr(&ip(Ipv4HeaderField::Saddr));
            rule.add_expr(&exprs::Jhash {
                modulus,
                seed: ruleset::SPREAD_SEED,
            });
            rule.add_expr(&Cmp::new(CmpOp::Eq, value));
        }
        Match::Dport(p, n) | Match::Sport(p, n) => {
            rule.add_expr(&port(p, matches!(m, Match::Sport(..))));
            rule.add_expr(&Cmp::new(CmpOp::Eq, &n.to_be_bytes()[..]));
        }
    }
}

pub(super) fn add_queue(rule: &mut Rule, q: QueueRange, backend: QueueBackend) {
    // Never NFT_QUEUE_FLAG_BYPASS (1): without a reader the packets must be dropped.
    let flags: u16 = if q.fanout() { 2 } else { 0 };
    match backend {
        QueueBackend::Native => rule.add_expr(&NativeQueue { q, flags }),
        QueueBackend::Xtables => rule.add_expr(&XtNfqueue { q, flags }),
    }
}
