//! How slbd's rules read in nft syntax: for tests, logs and `slbd --check`, which print them
//! as `nft list ruleset` would. Pure.

use std::fmt;

use super::*;

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::DaddrIs(a) => write!(f, "ip daddr {a}"),
            Match::SaddrIn(n) => write!(f, "ip saddr {n}"),
            Match::DaddrNotIn(n) => write!(f, "ip daddr != {n}"),
            Match::L4Proto(p) => write!(f, "meta l4proto {p}"),
            Match::Dport(p, port) => write!(f, "{p} dport {port}"),
            Match::Sport(p, port) => write!(f, "{p} sport {port}"),
            Match::Mark(m) => write!(f, "meta mark {m:#x}"),
            Match::CtStateNew => f.write_str("ct state new"),
            Match::CtStateNewOrInvalid => f.write_str("ct state invalid,new"),
            Match::CtStateInvalid => f.write_str("ct state invalid"),
            Match::TcpRst => f.write_str("tcp flags & rst == rst"),
            Match::CtNotAssured => f.write_str("ct status & assured == 0"),
            Match::IcmpType(t) => match *t {
                icmp::DEST_UNREACHABLE => f.write_str("icmp type destination-unreachable"),
                icmp::TIME_EXCEEDED => f.write_str("icmp type time-exceeded"),
                icmp::PARAMETER_PROBLEM => f.write_str("icmp type parameter-problem"),
                t => write!(f, "icmp type {t}"),
            },
            Match::CtStateRelated => f.write_str("ct state related"),
            Match::CtStateUntracked => f.write_str("ct state untracked"),
            Match::TcpFlags { mask, value } => {
                write!(
                    f,
                    "tcp flags & {} == {}",
                    tcp_flags(*mask),
                    tcp_flags(*value)
                )
            }
            Match::SaddrNotInSet(set) => write!(f, "ip saddr != @{set}"),
            Match::RateOver { per_second, burst } => {
                write!(
                    f,
                    "limit rate over {per_second}/second burst {burst} packets"
                )
            }
            Match::SourceHash { modulus, value } => {
                write!(
                    f,
                    "jhash ip saddr mod {modulus} seed {SPREAD_SEED:#x} == {value}"
                )
            }
            Match::MarkAddressIn(n) => write!(f, "meta mark (as an address) {n}"),
            Match::FlowClosing => write!(f, "{FLOW_KEY} @{DR_CLOSING}"),
            Match::Ipv4 => f.write_str("meta protocol ip"),
            Match::Priority(p) => write!(f, "meta priority {p:#010x}"),
        }
    }
}

/// The key of the flow map's entries.
const FLOW_KEY: &str = "ip saddr . meta l4proto . th sport . th dport";

/// TCP flag bits as nft names them, `(fin | syn)` for more than one.
fn tcp_flags(bits: u8) -> String {
    const NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr"];
    let names: Vec<&str> = (0..8)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| NAMES[i])
        .collect();
    match names.len() {
        1 => names[0].to_string(),
        _ => format!("({})", names.join(" | ")),
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Notrack => f.write_str("notrack"),
            Action::Drop => f.write_str("drop"),
            Action::Accept => f.write_str("accept"),
            Action::CtMarkFromMark => f.write_str("ct mark set meta mark"),
            Action::SetMark(m) => write!(f, "meta mark set {m:#010x}"),
            Action::CtEvents(bits) => {
                let names = ["new", "related", "destroy", "reply", "assured", "protoinfo"];
                let set: Vec<&str> = (0..names.len())
                    .filter(|b| bits & (1 << b) != 0)
                    .map(|b| names[b])
                    .collect();
                write!(f, "ct event set {}", set.join(","))
            }
            Action::Dnat(to) => write!(f, "dnat to {to}"),
            Action::Snat(to) => write!(f, "snat to {to}"),
            Action::UpdateSetWithSaddr(set) => write!(f, "update @{set} {{ ip saddr }}"),
            Action::DupToMarkAddress(dev) => {
                write!(f, "dup to meta mark device \"{}\"", dev.as_str())
            }
            Action::MarkFromFlows => write!(f, "meta mark set {FLOW_KEY} map @{DR_FLOWS}"),
            Action::RecordFlow { timeout } => write!(
                f,
                "update @{DR_FLOWS} {{ {FLOW_KEY} timeout {}ms : meta mark }}",
                timeout.as_millis()
            ),
            Action::FwdToMarkAddress(dev) => {
                write!(f, "fwd ip to meta mark device \"{}\"", dev.as_str())
            }
            Action::MarkClosing => write!(f, "update @{DR_CLOSING} {{ {FLOW_KEY} }}"),
            Action::ForgetFlow => write!(
                f,
                "delete @{DR_FLOWS} {{ {FLOW_KEY} : meta mark }} delete @{DR_CLOSING} {{ {FLOW_KEY} }}"
            ),
            Action::SetPriority(p) => write!(f, "meta priority set {p:#010x}"),
            Action::RejectTcpReset => f.write_str("reject with tcp reset"),
            Action::RejectPortUnreachable => f.write_str("reject with icmp port-unreachable"),
            Action::Queue(q) if q.count > 1 => {
                write!(
                    f,
                    "queue num {}-{} fanout",
                    q.first,
                    q.first + (q.count - 1)
                )
            }
            Action::Queue(q) => write!(f, "queue num {}", q.first),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .matches
            .iter()
            .map(|m| m.to_string())
            .chain(self.actions.iter().map(|a| a.to_string()))
            .collect();
        write!(f, "{} comment \"{}\"", parts.join(" "), self.comment)
    }
}
