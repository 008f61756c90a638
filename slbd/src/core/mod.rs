//! PURE: everything slbd decides, with no I/O, no clock of its own (callers pass `now` in
//! milliseconds), and no wire format of another layer: the packet parser and rewrite
//! ([`packet`], [`checksum`]), the flow table and its TCP transitions ([`flow`]), the
//! schedulers ([`sched`]), persistence ([`persist`]), the health rule ([`health`]) and the HTTP
//! check's request and verdict ([`http_check`]), the rules
//! slbd wants ([`ruleset`]), the gratuitous ARP frame ([`garp`]), and the balancer that puts
//! them together for each queued packet ([`balancer`]), ICMP errors about its flows ([`icmp`]), all working on the checked
//! configuration ([`model`], which `crate::config` builds from slb_conf.json). The shells (`crate::shell`) and the
//! daemon (`crate::daemon`) wrap them; nothing here imports from either.

pub mod agent;
pub mod announce;
pub mod balancer;
pub mod checksum;
pub mod flow;
pub mod garp;
pub mod health;
pub mod http_check;
pub mod icmp;
pub mod model;
pub mod net;
pub mod packet;
pub mod persist;
pub mod ruleset;
pub mod sched;
