//! The checks of how a service's requests are placed and delivered: MAGLEV's table (prime,
//! a slot for every server, only on a MAGLEV service) and the forwarding (direct routing keeps
//! the VIP's port). Part of the checker ([`super::check`]); pure.

use super::checker::Checker;
use super::parse::parse_server_address;
use super::raw::RawService;
use super::Forwarding;
use crate::core::sched::maglev::{self, HashKey};
use crate::core::sched::Algorithm;

/// A service's forwarding: direct routing sends the request unchanged, so the server must
/// listen on the VIP's port.
pub(super) fn forwarding(
    c: &mut Checker,
    path: &str,
    raw: &RawService,
    port: Option<u16>,
) -> Forwarding {
    let f = match raw.forwarding.as_deref().map(str::parse::<Forwarding>) {
        None => Forwarding::Nat,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            c.fail(format!("{path}.forwarding"), e);
            return Forwarding::Nat;
        }
    };
    if f != Forwarding::Dr {
        return f;
    }
    for (j, s) in raw.servers.iter().enumerate() {
        let Ok(addr) = parse_server_address(s.address()) else {
            continue;
        };
        if Some(addr.port()) != port {
            c.fail(
                format!("{path}.servers[{j}]"),
                format!(
                    "{addr}: with forwarding \"dr\" the request keeps the VIP's port, so the server \
                     must listen on it, not on {}",
                    addr.port()
                ),
            );
        }
    }
    f
}

/// A service's MAGLEV settings: a prime table with a slot for every server, and only on a
/// service that uses them.
pub(super) fn maglev(
    c: &mut Checker,
    path: &str,
    raw: &RawService,
    algorithm: Algorithm,
    key: HashKey,
) -> maglev::Settings {
    let mut settings = maglev::Settings {
        key,
        ..Default::default()
    };
    let Some(m) = &raw.maglev else {
        return settings;
    };
    if algorithm != Algorithm::Maglev {
        c.fail(
            format!("{path}.maglev"),
            format!("set, but the service's algorithm is {algorithm}, not MAGLEV"),
        );
    }
    let size_path = format!("{path}.maglev.table_size");
    if !(maglev::MIN_TABLE_SIZE..=maglev::MAX_TABLE_SIZE).contains(&m.table_size) {
        c.fail(
            size_path,
            format!(
                "{} is not in {}-{}",
                m.table_size,
                maglev::MIN_TABLE_SIZE,
                maglev::MAX_TABLE_SIZE
            ),
        );
    } else if !maglev::is_prime(m.table_size) {
        c.fail(
            size_path,
            format!(
                "{} is not a prime (every server's walk must reach every slot)",
                m.table_size
            ),
        );
    } else if (m.table_size as usize) < raw.servers.len() {
        c.fail(
            size_path,
            format!(
                "{} slots cannot give each of {} servers one",
                m.table_size,
                raw.servers.len()
            ),
        );
    } else {
        settings.table_size = m.table_size;
    }
    match m.hash.parse::<maglev::HashBy>() {
        Ok(by) => settings.by = by,
        Err(e) => c.fail(format!("{path}.maglev.hash"), e),
    }
    settings
}
