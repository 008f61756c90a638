//! Values operators type, parsed the same way in `slb_conf.json`, on slbctl's command line and
//! in amgr's configuration. Pure; each error names what is wrong with the value.

use std::net::{Ipv4Addr, SocketAddrV4};

/// A Unix account name as useradd accepts it.
pub fn valid_user(u: &str) -> bool {
    let mut chars = u.chars();
    u.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Parses `ADDRESS:PORT`, naming which half is wrong.
pub fn parse_server_address(value: &str) -> Result<SocketAddrV4, String> {
    let Some((a, p)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not ADDRESS:PORT"));
    };
    let ip: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{value:?} is not an IPv4 address"))?;
    let port = p
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{value:?} has no valid port (1 to 65535)"))?;
    Ok(SocketAddrV4::new(ip, port))
}
