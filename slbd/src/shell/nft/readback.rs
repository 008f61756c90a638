//! SHELL: reads slbd's tables back after a commit: the chain of every rule, checked against
//! the plan. Side effects: none (dumps).

use std::ffi::CStr;
use std::io;

use nftnl::nftnl_sys as sys;
use nftnl::ProtoFamily;

use super::socket::{alloc, dump};
use super::{table_name, NftError};
use crate::core::ruleset::{self, Ruleset};

/// Reads the tables' rules back and checks each chain holds what was planned.
pub(super) fn verify(rules: &Ruleset) -> Result<(), NftError> {
    let mut tables = vec![(ProtoFamily::Ipv4, &Ruleset::CHAINS[..])];
    if rules.dr_flows.is_some() {
        tables.push((ProtoFamily::NetDev, &Ruleset::NETDEV_CHAINS[..]));
    }
    for (family, chains) in tables {
        let found = list_rule_chains_of(family).map_err(|source| NftError::Dump {
            table: ruleset::TABLE,
            source,
        })?;
        for c in chains {
            let expected = rules.count_in(c.name);
            let n = found.iter().filter(|name| name.as_str() == c.name).count();
            if n != expected {
                return Err(NftError::Verify {
                    table: ruleset::TABLE,
                    chain: c.name,
                    expected,
                    found: n,
                });
            }
        }
    }
    Ok(())
}

/// The chain name of every rule in slbd's table, from a rule dump.
pub fn list_rule_chains() -> io::Result<Vec<String>> {
    list_rule_chains_of(ProtoFamily::Ipv4)
}

/// [`list_rule_chains`] of slbd's table in `family`.
fn list_rule_chains_of(family: ProtoFamily) -> io::Result<Vec<String>> {
    let filter = alloc(sys::nftnl_rule_alloc)?;
    let name = table_name();
    let mut chains: Vec<String> = Vec::new();
    // SAFETY: `filter` is a live rule (non-NULL) that only this function holds; the payload is
    // written while it lives, and it is freed once, after the dump.
    let done = unsafe {
        sys::nftnl_rule_set_str(filter, sys::NFTNL_RULE_TABLE as u16, name.as_ptr());
        let done = dump(
            sys::libc::NFT_MSG_GETRULE,
            family,
            |nlh| sys::nftnl_rule_nlmsg_build_payload(nlh, filter),
            rule_chain_cb,
            &mut chains,
        );
        sys::nftnl_rule_free(filter);
        done
    };
    done.map(|()| chains)
}

fn rule_chain_cb(header: &sys::libc::nlmsghdr, chains: &mut Vec<String>) -> sys::libc::c_int {
    // SAFETY: `header` is a whole netlink message libmnl validated against the buffer;
    // `rule` is checked for NULL and freed on every path; the strings nftnl returns belong
    // to `rule` and are copied before it is freed.
    unsafe {
        let rule = sys::nftnl_rule_alloc();
        if rule.is_null() {
            return -1; // MNL_CB_ERROR: out of memory
        }
        if sys::nftnl_rule_nlmsg_parse(header, rule) >= 0 {
            let table = sys::nftnl_rule_get_str(rule, sys::NFTNL_RULE_TABLE as u16);
            let chain = sys::nftnl_rule_get_str(rule, sys::NFTNL_RULE_CHAIN as u16);
            // The kernel filters the dump by table; checking again costs nothing.
            if !table.is_null()
                && !chain.is_null()
                && CStr::from_ptr(table).to_bytes() == ruleset::TABLE.as_bytes()
            {
                chains.push(CStr::from_ptr(chain).to_string_lossy().into_owned());
            }
        }
        sys::nftnl_rule_free(rule);
    }
    1 // MNL_CB_OK
}
