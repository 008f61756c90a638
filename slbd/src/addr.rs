//! SHELL: the addresses slbd manages — the VIP on `address_dev` and the gateway address on
//! `gateway_dev` — added and removed through rtnetlink (no `ip` command).
//! Side effects: RTM_NEWADDR / RTM_DELADDR on the named interfaces, nothing else.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;

/// One address slbd was told to own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedAddr {
    pub dev: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for ManagedAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} dev {}", self.ip, self.prefix, self.dev)
    }
}

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
    let mut links = handle.link().get().match_name(dev.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => Err(AddrError::NoDevice(dev.to_string())),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(AddrError::NoDevice(dev.to_string()))
        }
        Err(e) => Err(AddrError::List(e)),
    }
}

/// Adds each address (replacing an identical one, so a restart after a crash is not an error).
pub fn add(addrs: &[ManagedAddr]) -> Result<(), AddrError> {
    runtime().block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        tokio::spawn(conn);
        for a in addrs {
            let index = link_index(&handle, &a.dev).await?;
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
        }
        Ok(())
    })
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
