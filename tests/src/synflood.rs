//! A SYN flood and the legitimate clients that must get through it, for the benchmark's
//! `synflood` workload. [`flood`] sends spoofed SYNs (random sources in a network no host
//! answers for, random ports) to one address as fast as this machine can, from a raw socket
//! in batches (`sendmmsg`), bounded in count and time; [`connects`] opens a new TCP connection
//! every interval meanwhile and times each. Both run in the calling thread's namespace.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use slbd::core::checksum::{fold, pseudo_header, sum};

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub sent: u64,
    pub secs: f64,
}

impl Flood {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.secs.max(1e-9)
    }
}

const BATCH: usize = 256;
const LEN: usize = 40;

/// A header-only TCP segment from `src` to `dst` with these flags, checksums complete (a raw
/// socket's kernel fills the IPv4 one too).
pub fn tcp_segment(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    segment(src, dst, seq, flags, &mut out);
    out
}

/// One SYN from `src` to `dst`, written in place (the flood's loop allocates nothing).
fn syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, out: &mut [u8; LEN]) {
    segment(src, dst, seq, 0x02, out)
}

fn segment(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8, out: &mut [u8; LEN]) {
    *out = [0; LEN];
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    out[6] = 0x40; // DF
    out[8] = 64;
    out[9] = 6;
    out[12..16].copy_from_slice(&src.ip().octets());
    out[16..20].copy_from_slice(&dst.ip().octets());
    let t = &mut out[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = !fold(sum(t, pseudo_header(*src.ip(), *dst.ip(), 6, 20)));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let ip = !fold(sum(&out[..20], 0));
    out[10..12].copy_from_slice(&ip.to_be_bytes());
}

/// Sends spoofed SYNs to `dst` from random hosts of `spoofed` (base, prefix length) until
/// `max_packets` are sent or `max_time` has passed; a full socket buffer is waited out.
pub fn flood(
    dst: SocketAddrV4,
    spoofed: (Ipv4Addr, u8),
    max_packets: u64,
    max_time: Duration,
) -> std::io::Result<Flood> {
    // SAFETY: socket takes no pointers; the descriptor is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let host_bits = 32 - u32::from(spoofed.1);
    let base = u32::from(spoofed.0) & !((1u64 << host_bits) as u32).wrapping_sub(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut bufs = vec![[0u8; LEN]; BATCH];
    // SAFETY: sockaddr_in is plain data; zero is a valid value for every field.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < max_packets && start.elapsed() < max_time {
        let n = BATCH.min((max_packets - sent) as usize);
        for b in bufs.iter_mut().take(n) {
            let r = next();
            let host = ((r >> 32) as u32) & (((1u64 << host_bits) - 1) as u32);
            // Skip the network's own address and the low hosts real clients use.
            let src = Ipv4Addr::from(base | host.max(2));
            let port = 1024 + (r as u16 % 60000);
            syn(SocketAddrV4::new(src, port), dst, (r >> 16) as u32, b);
        }
        let mut iov: Vec<libc::iovec> = bufs[..n]
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: LEN,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; zero is valid, and the pointers set below
                // outlive the sendmmsg call.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m
            })
            .collect();
        // SAFETY: `msgs` holds `n` initialised headers whose buffers and address live until
        // the call returns.
        let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                _ => return Err(e),
            }
        } else {
            sent += r as u64;
        }
    }
    Ok(Flood {
        sent,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// New TCP connections from `from` to `to`, one started every `every` for `dur`, each given
/// `timeout`; returns each one's connect time in µs, `None` for a failure.
pub fn connects(
    from: Ipv4Addr,
    to: SocketAddrV4,
    every: Duration,
    dur: Duration,
    timeout: Duration,
) -> Vec<Option<f64>> {
    let start = Instant::now();
    let mut handles = Vec::new();
    let mut i = 0u32;
    while start.elapsed() < dur {
        handles.push(std::thread::spawn(move || {
            let t = Instant::now();
            crate::connect(from, to, timeout).ok().map(|s: TcpStream| {
                drop(s);
                t.elapsed().as_secs_f64() * 1e6
            })
        }));
        i += 1;
        let due = start + every * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or(None))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_syn_has_right_checksums_and_only_the_syn_flag() {
        let mut b = [0u8; LEN];
        let (src, dst) = (
            "10.0.0.200:4242".parse().unwrap(),
            "10.0.0.100:80".parse().unwrap(),
        );
        syn(src, dst, 77, &mut b);
        let h = slbd::core::packet::parse(&b).unwrap();
        assert_eq!((h.src, h.dst, h.flags), (src, dst, 0x02));
        assert_eq!(fold(sum(&b[..20], 0)), 0xffff);
        assert_eq!(
            fold(sum(&b[20..], pseudo_header(*src.ip(), *dst.ip(), 6, 20))),
            0xffff
        );
    }
}
