//! SHELL: writes a [`Ruleset`] into the kernel as slbd's own nftables table, in one atomic
//! batch through `nftnl` + `mnl`, checks every ACK, and reads the table back to verify it.
//! Side effects: creates, refills, replaces and deletes the tables `ip slb` and (offload
//! direct routing only) `netdev slb`, and nothing else.
//!
//! NFQUEUE comes in two forms. Kernels with `nft_queue` take the native `queue` expression;
//! kernels without it (CONFIG_NFT_QUEUE unset) still take the xtables `NFQUEUE` target through
//! nft_compat. [`probe`] finds out which, once, with a batch that adds and deletes a scratch
//! table in the same transaction, so it leaves nothing behind either way.

use std::ffi::{CStr, CString};
use std::io;

use nftnl::nftnl_sys as sys;
use nftnl::{Batch, Chain, FinalizedBatch, MsgType, ProtoFamily, Rule, Table};

mod exprs;
mod flow_map;
mod readback;
mod rules;
mod sets;
mod socket;
pub use flow_map::{cut_dr_flows, dr_flows};
pub use readback::list_rule_chains;
use readback::verify;
use rules::{add_queue, build_rule};
use sets::{dr_closing_set, dr_flows_map, known_clients_set};
use socket::send;

use crate::core::ruleset::syn_budget::KnownClients;
use crate::core::ruleset::{self, ChainKind, Hook, QueueRange, Ruleset};

/// How a queue verdict is expressed to this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueBackend {
    /// nftables' own `queue` expression (nft_queue).
    Native,
    /// The xtables `NFQUEUE` target, revision 3, through nft_compat.
    Xtables,
}

impl QueueBackend {
    pub fn name(self) -> &'static str {
        match self {
            QueueBackend::Native => "native nft queue",
            QueueBackend::Xtables => "xtables NFQUEUE target (nft_compat)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] io::Error),
    #[error("the kernel refused the nftables batch")]
    Batch(#[source] io::Error),
    #[error("reading back table {table} failed")]
    Dump {
        table: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("table {table} holds {found} rules in chain {chain}, expected {expected}")]
    Verify {
        table: &'static str,
        chain: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("neither the native queue expression nor the xtables NFQUEUE target is available")]
    NoQueue(#[source] io::Error),
}

const PROBE_TABLE: &CStr = c"slb_probe";

fn table_name() -> CString {
    CString::new(ruleset::TABLE).expect("no NUL in the table name")
}

/// Finds which queue expression this kernel takes.
pub fn probe() -> Result<QueueBackend, NftError> {
    let q = QueueRange { first: 0, count: 1 };
    let try_backend = |backend| {
        let table = Table::new(PROBE_TABLE, ProtoFamily::Ipv4);
        let chain = Chain::new(c"probe", &table);
        let mut rule = Rule::new(&chain);
        add_queue(&mut rule, q, backend);
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Add);
        batch.add(&chain, MsgType::Add);
        batch.add(&rule, MsgType::Add);
        batch.add(&table, MsgType::Del);
        send(&batch.finalize())
    };
    match try_backend(QueueBackend::Native) {
        Ok(()) => Ok(QueueBackend::Native),
        Err(NftError::Batch(_)) => match try_backend(QueueBackend::Xtables) {
            Ok(()) => Ok(QueueBackend::Xtables),
            Err(NftError::Batch(e)) => Err(NftError::NoQueue(e)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether this kernel takes a netdev chain on the egress hook (Linux 5.16 and later), which
/// offload direct routing's `dr_out` needs: a scratch table with such a chain on `lo`, added
/// and deleted in one batch, so it leaves nothing behind either way.
pub fn probe_netdev_egress() -> bool {
    let table = Table::new(PROBE_TABLE, ProtoFamily::NetDev);
    let mut chain = Chain::new(c"probe", &table);
    // The crate's hooks are the ip family's: NF_NETDEV_EGRESS is NF_INET_LOCAL_IN's number.
    chain.set_hook(nftnl::Hook::In, 0);
    chain.set_type(nftnl::ChainType::Filter);
    chain.set_device(c"lo");
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize()).is_ok()
}

/// The sets of a table: a refill keeps them, so it needs the same ones.
type Sets = (Option<KnownClients>, Option<ruleset::DrFlows>);

/// The sets slbd last committed in this process, or `None` when there is no table of this
/// process's making to refill.
static COMMITTED: parking_lot::Mutex<Option<Sets>> = parking_lot::Mutex::new(None);

/// Writes `rules` into slbd's table in one transaction, then verifies it.
///
/// A table this process made is refilled in place: each chain's rules are flushed and
/// re-added, the chains and their hooks stay. Replacing the table would unregister its hooks,
/// and the kernel drops every packet waiting in the queue when a hook goes (a SYN then waits
/// for its retransmission, a second later). The first commit, and one whose sets (the known
/// clients', the flow map) changed shape, replace the whole `ip` table (one left by an
/// earlier slbd is taken over without a moment where the VIP is unguarded). The netdev table
/// is refilled even then when it can be, so the flows its map carries outlive a restart of
/// slbd (which adopts them from the map); one that cannot (its devices or its sets changed)
/// is replaced too.
pub fn apply(rules: &Ruleset, backend: QueueBackend) -> Result<(), NftError> {
    let mut committed = COMMITTED.lock();
    let sets = (rules.known_clients, rules.dr_flows);
    let done = |how| send(&batch(rules, backend, how)).is_ok();
    let refilled = *committed == Some(sets) && done(Commit::Refill);
    // A netdev table this process may not have removed yet: one of its own that the config
    // no longer needs, or one an earlier slbd left.
    let stale_netdev = rules.dr_flows.is_none() && !committed.is_some_and(|c| c.1.is_none());
    if !refilled {
        *committed = None;
        if !done(Commit::Replace) {
            send(&batch(rules, backend, Commit::ReplaceAll))?;
        }
    }
    *committed = Some(sets);
    if stale_netdev {
        // Apart from the ip table's batch, so a kernel without the netdev family (no
        // offload direct routing there) refuses only this.
        let _ = remove_netdev();
    }
    verify(rules)
}

/// How [`apply`] writes the tables.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Delete both tables and create them again.
    ReplaceAll,
    /// Delete the `ip` table and create it again; refill the netdev table.
    Replace,
    /// Flush each chain and fill it again.
    Refill,
}

fn batch(rules: &Ruleset, backend: QueueBackend, how: Commit) -> FinalizedBatch {
    let name = table_name();
    let table = Table::new(&name, ProtoFamily::Ipv4);
    let netdev = Table::new(&name, ProtoFamily::NetDev);
    let mut chains = chains_of(&table, &Ruleset::CHAINS, None);
    let mut batch = Batch::new();
    // Without NLM_F_EXCL, adding what exists is a no-op: the table and chains stand either way.
    let tables: &[&Table] = if rules.dr_flows.is_some() {
        &[&table, &netdev]
    } else {
        &[&table]
    };
    for t in tables {
        batch.add(*t, MsgType::Add);
        let replaced = how == Commit::ReplaceAll
            || (how == Commit::Replace && t.get_family() == ProtoFamily::Ipv4);
        if replaced {
            batch.add(*t, MsgType::Del);
            batch.add(*t, MsgType::Add);
        }
    }
    let ip_chains = chains.len();
    if let Some(m) = rules.dr_flows {
        chains.extend(chains_of(&netdev, &Ruleset::NETDEV_CHAINS, Some(m)));
    }
    for c in &chains {
        batch.add(c, MsgType::Add);
    }
    // A rule delete naming a chain and no handle flushes the chain.
    let flushed = match how {
        Commit::Refill => &chains[..],
        Commit::Replace => &chains[ip_chains..],
        Commit::ReplaceAll => &[],
    };
    for c in flushed {
        batch.add(&Rule::new(c), MsgType::Del);
    }
    // An existing set of the same shape is kept, and with it the clients (or the flows) it
    // holds.
    let known = rules.known_clients.map(|k| known_clients_set(&table, k));
    if let Some(set) = &known {
        batch.add(set, MsgType::Add);
    }
    let flows = rules
        .dr_flows
        .map(|m| (dr_flows_map(&netdev, m), dr_closing_set(&netdev, m)));
    if let Some((map, closing)) = &flows {
        batch.add(map, MsgType::Add);
        batch.add(closing, MsgType::Add);
    }
    for r in &rules.rules {
        let chain = chains
            .iter()
            .find(|c| c.get_name().to_bytes() == r.chain.name.as_bytes())
            .expect("every rule's chain is in CHAINS or NETDEV_CHAINS");
        batch.add(&build_rule(chain, r, backend), MsgType::Add);
    }
    batch.finalize()
}

/// The base chains `specs` of `table`; a netdev chain is bound to its device in `devices`.
fn chains_of<'a>(
    table: &'a Table,
    specs: &[ruleset::Chain],
    devices: Option<ruleset::DrFlows>,
) -> Vec<Chain<'a>> {
    // The crate's hooks are the ip family's; the netdev family's ingress and egress hooks
    // have the numbers of its prerouting and input.
    const _: () = assert!(
        sys::libc::NF_NETDEV_INGRESS == sys::libc::NF_INET_PRE_ROUTING
            && sys::libc::NF_NETDEV_EGRESS == sys::libc::NF_INET_LOCAL_IN
    );
    specs
        .iter()
        .map(|c| {
            let cname = CString::new(c.name).expect("no NUL in chain names");
            let mut chain = Chain::new(&cname, table);
            let hook = match c.hook {
                Hook::Prerouting | Hook::Ingress => nftnl::Hook::PreRouting,
                Hook::Input | Hook::Egress => nftnl::Hook::In,
                Hook::Postrouting => nftnl::Hook::PostRouting,
            };
            chain.set_hook(hook, c.priority);
            chain.set_type(match c.kind {
                ChainKind::Filter => nftnl::ChainType::Filter,
                ChainKind::Nat => nftnl::ChainType::Nat,
            });
            chain.set_policy(nftnl::Policy::Accept);
            let device = match (c.hook, devices) {
                (Hook::Ingress, Some(d)) => Some(d.ingress),
                (Hook::Egress, Some(d)) => Some(d.egress),
                _ => None,
            };
            if let Some(dev) = device.and_then(|d| CString::new(d.as_str()).ok()) {
                chain.set_device(dev);
            }
            chain
        })
        .collect()
}

/// Deletes slbd's tables if they exist.
pub fn remove() -> Result<(), NftError> {
    *COMMITTED.lock() = None;
    // The netdev table first and on its own: a kernel without the netdev family refuses
    // only that, and the ip table still goes.
    let _ = remove_netdev();
    remove_table(ProtoFamily::Ipv4)
}

/// Deletes slbd's netdev table if it exists.
fn remove_netdev() -> Result<(), NftError> {
    remove_table(ProtoFamily::NetDev)
}

fn remove_table(family: ProtoFamily) -> Result<(), NftError> {
    let name = table_name();
    let table = Table::new(&name, family);
    let mut batch = Batch::new();
    // Adding first makes the delete succeed whether or not the table was there.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(&batch.finalize())
}
