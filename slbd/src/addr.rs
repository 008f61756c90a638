//! SHELL: the addresses slbd manages — the VIP on `address_dev` and the gateway address on
//! `gateway_dev` — added and removed through rtnetlink (no `ip` command), and announced with
//! gratuitous ARP when they come up.
//! Side effects: RTM_NEWADDR / RTM_DELADDR on the named interfaces; ARP announcements sent on
//! them through an AF_PACKET socket.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;

pub use crate::core::net::ManagedAddr;

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("no network interface named {0:?}")]
    NoDevice(String),
    #[error("cannot add {addr}")]
    Add {
        addr: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot remove {addr}")]
    Remove {
        addr: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot list interfaces or addresses")]
    List(#[source] rtnetlink::Error),
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds without I/O")
}

async fn link_index(handle: &rtnetlink::Handle, dev: &str) -> Result<u32, AddrError> {
    link(handle, dev).await.map(|(index, _)| index)
}

/// The interface's index and, if it has one, its 6-byte hardware address.
async fn link(handle: &rtnetlink::Handle, dev: &str) -> Result<(u32, Option<[u8; 6]>), AddrError> {
    use netlink_packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_name(dev.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => {
            let mac = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(m) if m.len() == 6 => m.as_slice().try_into().ok(),
                _ => None,
            });
            Ok((link.header.index, mac))
        }
        Ok(None) => Err(AddrError::NoDevice(dev.to_string())),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(AddrError::NoDevice(dev.to_string()))
        }
        Err(e) => Err(AddrError::List(e)),
    }
}

/// Adds each address (replacing an identical one, so a restart after a crash is not an error)
/// and announces it with gratuitous ARP, so neighbours that knew another owner switch at once.
pub fn add(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    runtime().block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        tokio::spawn(conn);
        for a in addrs {
            let (index, mac) = link(&handle, &a.dev).await?;
            handle
                .address()
                .add(index, IpAddr::V4(a.ip), a.prefix)
                .replace()
                .execute()
                .await
                .map_err(|source| AddrError::Add {
                    addr: a.to_string(),
                    source,
                })?;
            match mac {
                Some(mac) => {
                    // An announcement lost on the wire only delays neighbours until their
                    // entries age out: log it, it is no reason to stop balancing.
                    if let Err(e) = announce(index, mac, a.ip) {
                        tracing::warn!(address = %a, error = %e, "gratuitous ARP failed");
                    }
                }
                None => tracing::debug!(address = %a, "no hardware address: no gratuitous ARP"),
            }
        }
        Ok(())
    })
}

/// Announces addresses that are already up again (a pair's winner after a healed partition:
/// its dual may have announced last).
pub fn reannounce(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    runtime().block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        tokio::spawn(conn);
        for a in addrs {
            if let (index, Some(mac)) = link(&handle, &a.dev).await? {
                if let Err(e) = announce(index, mac, a.ip) {
                    tracing::warn!(address = %a, error = %e, "gratuitous ARP failed");
                }
            }
        }
        Ok(())
    })
}

/// Sends a few ARP announcements for `ip` from `mac` out of interface `index`.
fn announce(index: u32, mac: [u8; 6], ip: std::net::Ipv4Addr) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let proto = crate::core::garp::ETH_P_ARP.to_be();
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = proto;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = crate::core::garp::announcement(mac, ip);
    // Three, as arping -U and keepalived do, in case one is lost.
    for _ in 0..3 {
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&to) as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes each address that is present; absent ones are not an error.
pub fn remove(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    runtime().block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        tokio::spawn(conn);
        for a in addrs {
            let index = match link_index(&handle, &a.dev).await {
                Ok(i) => i,
                // The interface is gone, and the address with it.
                Err(AddrError::NoDevice(_)) => continue,
                Err(e) => return Err(e),
            };
            let mut found = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            while let Some(msg) = found.try_next().await.map_err(AddrError::List)? {
                let ours = msg.header.prefix_len == a.prefix
                    && msg.attributes.iter().any(
                        |attr| matches!(attr, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == a.ip),
                    );
                if ours {
                    handle.address().del(msg).execute().await.map_err(|source| {
                        AddrError::Remove {
                            addr: a.to_string(),
                            source,
                        }
                    })?;
                }
            }
        }
        Ok(())
    })
}
