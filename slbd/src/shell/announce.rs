//! SHELL: cluster mode's route. slbd creates a tun device of its own (`announce.device`) and
//! keeps it open; while [`crate::core::announce::decide`] says so, the VIP's /32 points at it
//! in the routing table a BGP daemon learns from (`announce.table`). The device is not
//! persistent, so when slbd's process ends by any means, even `kill -9`, the kernel deletes it
//! and the route with it: the daemon withdraws a dead slbd without slbd running anything.
//! Nothing is routed through the device (the table is only read by the BGP daemon).
//! Side effects: /dev/net/tun, TUNSETIFF, RTM_NEWLINK (up), RTM_NEWROUTE / RTM_DELROUTE in
//! the announce table, the device's disable_ipv6 sysctl.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::core::announce::Announce;
use crate::shell::addr::{AddrError, Rtnl};
use crate::wire::rtnetlink::{self as route, RouteOp};

/// TUNSETIFF (linux/if_tun.h): `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
/// No packet-information header before each packet: nothing reads them anyway.
const IFF_NO_PI: libc::c_short = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    Open(#[source] io::Error),
    #[error(
        "cannot create the announce device {0:?} (another process holds a device of that name, \
         or it is not a tun device)"
    )]
    Create(String, #[source] io::Error),
    #[error(transparent)]
    Rtnl(#[from] AddrError),
    #[error("cannot set the announce device {0:?} up")]
    Up(String, #[source] io::Error),
    #[error("the announce device {0:?} was deleted by someone else")]
    Gone(String),
    #[error("cannot {verb} the route {route}")]
    Route {
        verb: &'static str,
        route: String,
        #[source]
        source: io::Error,
    },
}

/// The device slbd holds and whether the VIP's route points at it now.
pub struct VipRoute {
    /// Held for the device's life: closing it deletes the device.
    _tun: OwnedFd,
    index: u32,
    vip: Ipv4Addr,
    announce: Announce,
    routed: bool,
    /// One request socket for the device's life: the daemon looks every tick.
    rtnl: Rtnl,
}

impl VipRoute {
    /// Creates the device and sets it up; the route is added by [`VipRoute::set`].
    pub fn create(vip: Ipv4Addr, announce: &Announce) -> Result<VipRoute, AnnounceError> {
        let tun = open_tun(&announce.device)?;
        // A device for a route only: no IPv6 link-local address, no router solicitations.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", announce.device),
            "1",
        );
        let mut rtnl = Rtnl::open()?;
        let (index, _) = rtnl.link(&announce.device)?;
        rtnl.ack(|seq| route::emit_link_up(seq, index))
            .map_err(|e| AnnounceError::Up(announce.device.clone(), e))?;
        Ok(VipRoute {
            _tun: tun,
            index,
            vip,
            announce: announce.clone(),
            routed: false,
            rtnl,
        })
    }

    /// Whether this device and table are the ones `announce` names (the VIP too).
    pub fn is_for(&self, vip: Ipv4Addr, announce: &Announce) -> bool {
        self.vip == vip
            && self.announce.device == announce.device
            && self.announce.table == announce.table
    }

    pub fn routed(&self) -> bool {
        self.routed
    }

    /// Adds or deletes the VIP's route, if it is not already so.
    pub fn set(&mut self, routed: bool) -> Result<(), AnnounceError> {
        if routed == self.routed {
            return Ok(());
        }
        let op = if routed {
            RouteOp::Add
        } else {
            RouteOp::Delete
        };
        match self.route(op) {
            Ok(()) => {}
            // Already gone (someone deleted it): what deleting wanted.
            Err(e) if !routed && e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => {
                return Err(AnnounceError::Route {
                    verb: if routed { "add" } else { "delete" },
                    route: crate::core::announce::route_text(self.vip, &self.announce),
                    source,
                })
            }
        }
        self.routed = routed;
        Ok(())
    }

    /// Holds the kernel to what this says while announced: someone flushing the table puts
    /// the route back (true when it had to), someone deleting the device is
    /// [`AnnounceError::Gone`], for the caller to create it again. The route is added only if
    /// missing, so the BGP daemon sees no change when it is there.
    pub fn reassert(&mut self) -> Result<bool, AnnounceError> {
        if !self.routed {
            return Ok(false);
        }
        match self.route(RouteOp::Ensure) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                Err(AnnounceError::Gone(self.announce.device.clone()))
            }
            Err(source) => Err(AnnounceError::Route {
                verb: "restore",
                route: crate::core::announce::route_text(self.vip, &self.announce),
                source,
            }),
        }
    }

    /// `op` on the VIP's host route in the announce table; the kernel's answer.
    fn route(&mut self, op: RouteOp) -> io::Result<()> {
        let (index, table, vip) = (self.index, self.announce.table, self.vip);
        self.rtnl
            .ack(|seq| route::emit_host_route(seq, op, table, vip, index))
    }
}

impl Drop for VipRoute {
    /// The route goes first, then the device with the descriptor (which would take the route
    /// along anyway; deleting it first keeps the order a reader expects in the daemon's log).
    fn drop(&mut self) {
        let _ = self.set(false);
    }
}

/// A non-persistent tun device named `name`, owned by the returned descriptor.
fn open_tun(name: &str) -> Result<OwnedFd, AnnounceError> {
    // SAFETY: the path is a NUL-terminated literal; open takes no other pointer.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(AnnounceError::Open(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor open(2) just returned, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data (a name array and a union of integers), valid all-zero.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // The config checker holds the name to IFNAMSIZ - 1 bytes, so the NUL stays.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `ifr` is, live for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut ifr) };
    if rc < 0 {
        return Err(AnnounceError::Create(
            name.to_string(),
            io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}
