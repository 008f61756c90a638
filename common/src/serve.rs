//! The one accept loop every slb listener runs (slbd's control socket and replication port,
//! amgr's peer command port and command socket): what a stranger can make a listener hold is
//! bounded before any authentication.
//!
//! For each connection, in this order and before any thread or buffer is given to it: the
//! cheap check on the peer's address ([`Check`], e.g. [`only_from`] the dual's addresses),
//! then the cap on connections in flight ([`Limit`]). A connection that fails either is closed
//! at once and counted ([`Refusal`]); a warning is logged when a count reaches a power of two,
//! so a flood costs a handful of log lines, not one per connection. An admitted connection gets
//! its read timeout and a thread that holds its slot until the handler returns.
//!
//! The decision ([`admit`]) is pure. The rest is the shell: listening sockets, the accept
//! loop's thread and one thread per admitted connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The cap for a TCP port only the dual should ever connect to (the peer command port, the
/// replication port), per listening address: the dual holds one or two connections at a time
/// (a replication session and a reconnect, a peer request and an `amgr --peer` command).
pub const CAP_PAIR: usize = 16;
/// The cap for a root-only Unix socket (slbd's control socket, amgr's command socket): local
/// tools and scripts, a few at a time, each request answered within seconds.
pub const CAP_LOCAL: usize = 64;

/// After a failed accept (out of file descriptors, say), the loop waits this long rather than
/// spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the cheap pre-spawn check says of a connection's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Admitted, within the cap.
    Pass,
    /// Not from an address this listener serves: refused and counted.
    Stranger,
    /// A known peer this listener has nothing for right now (the replication port of a node
    /// that is not ACTIVE): closed without being counted.
    Decline,
}

/// Why a connection was closed unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its peer's address is not one this listener serves.
    Address,
    /// The listener already has its cap of connections in flight.
    Cap,
}

impl Refusal {
    /// The word logs and status counters use.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Address => "address",
            Refusal::Cap => "cap",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to one accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    Refuse(Refusal),
    Decline,
}

/// The admission decision, from the address check and how many connections are in flight.
/// The address comes first: a stranger is refused as a stranger even when the cap is full.
pub fn admit(check: Check, in_flight: usize, cap: usize) -> Admission {
    match check {
        Check::Stranger => Admission::Refuse(Refusal::Address),
        Check::Decline => Admission::Decline,
        Check::Pass if in_flight >= cap => Admission::Refuse(Refusal::Cap),
        Check::Pass => Admission::Admit,
    }
}

/// Whether a count just reached a power of two: the counts a refusal is logged at.
pub fn worth_a_warning(count: u64) -> bool {
    count.is_power_of_two()
}

/// Whether `peer` is one of `allowed`, an IPv4 address also as its v4-mapped IPv6 form (a
/// dual-stack socket reports it so).
pub fn is_from(peer: IpAddr, allowed: &[IpAddr]) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    allowed.contains(&peer)
}

/// A [`Check`] admitting TCP peers from `allowed` only.
pub fn only_from(allowed: Vec<IpAddr>) -> impl Fn(&SocketAddr) -> Check + Send + 'static {
    move |peer| {
        if is_from(peer.ip(), &allowed) {
            Check::Pass
        } else {
            Check::Stranger
        }
    }
}

/// One listener's connections in flight against its cap, and the refusals counted against it.
#[derive(Debug)]
pub struct Limit {
    cap: usize,
    in_flight: AtomicUsize,
    refused_address: AtomicU64,
    refused_cap: AtomicU64,
    spawn_failed: AtomicU64,
}

impl Limit {
    /// A cap of at least one connection.
    pub fn new(cap: usize) -> Arc<Limit> {
        Arc::new(Limit {
            cap: cap.max(1),
            in_flight: AtomicUsize::new(0),
            refused_address: AtomicU64::new(0),
            refused_cap: AtomicU64::new(0),
            spawn_failed: AtomicU64::new(0),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Connections refused so far for `why`.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.counter(why).load(Relaxed)
    }

    fn counter(&self, why: Refusal) -> &AtomicU64 {
        match why {
            Refusal::Address => &self.refused_address,
            Refusal::Cap => &self.refused_cap,
        }
    }

    /// Decides on one connection; an admitted one takes a slot, held until the [`Slot`] drops.
    /// Otherwise, the refusal and its new count.
    fn enter(self: &Arc<Self>, check: Check) -> Result<Slot, Option<(Refusal, u64)>> {
        let taken = self.in_flight.fetch_update(Relaxed, Relaxed, |n| {
            (admit(check, n, self.cap) == Admission::Admit).then_some(n + 1)
        });
        match taken {
            Ok(_) => Ok(Slot(self.clone())),
            // The decision for `n` just now, which was not to admit.
            Err(n) => match admit(check, n, self.cap) {
                Admission::Refuse(why) => {
                    Err(Some((why, self.counter(why).fetch_add(1, Relaxed) + 1)))
                }
                Admission::Decline | Admission::Admit => Err(None),
            },
        }
    }
}

/// One connection's place under its listener's cap, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Limit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A listening socket the loop can accept from.
pub trait Listen: Send + 'static {
    type Conn: Conn + Send + 'static;
    type Peer: Send + 'static;
    fn accept_one(&self) -> io::Result<(Self::Conn, Self::Peer)>;
    /// Where it listens, for logs.
    fn local(&self) -> String;
}

/// An accepted connection's timeouts.
pub trait Conn {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Listen for TcpListener {
    type Conn = TcpStream;
    type Peer = SocketAddr;
    fn accept_one(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept()
    }
    fn local(&self) -> String {
        self.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    }
}

impl Listen for UnixListener {
    type Conn = UnixStream;
    type Peer = std::os::unix::net::SocketAddr;
    fn accept_one(&self) -> io::Result<(UnixStream, Self::Peer)> {
        self.accept()
    }
    fn local(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "(unnamed)".into())
    }
}

impl Conn for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

impl Conn for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

impl<C: Conn> Conn for &C {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        (**self).set_write_timeout(t)
    }
}

type CheckFn<P> = Box<dyn Fn(&P) -> Check + Send>;
type RefuseFn = Box<dyn Fn(Refusal) + Send>;

/// What one listener admits, and how.
pub struct Policy<P> {
    name: &'static str,
    conn_thread: &'static str,
    limit: Arc<Limit>,
    read_timeout: Option<Duration>,
    check: CheckFn<P>,
    on_refuse: RefuseFn,
}

impl<P> Policy<P> {
    /// A listener named `name` in logs (and its threads `<name>-listen`, `<name>-conn`), with
    /// its own cap of `cap` connections in flight; every address passes and reads never time
    /// out until told otherwise.
    pub fn new(name: &'static str, cap: usize) -> Policy<P> {
        Policy {
            name,
            conn_thread: name,
            limit: Limit::new(cap),
            read_timeout: None,
            check: Box::new(|_| Check::Pass),
            on_refuse: Box::new(|_| {}),
        }
    }

    /// Names the per-connection threads.
    pub fn conn_thread(mut self, name: &'static str) -> Self {
        self.conn_thread = name;
        self
    }

    /// Each admitted connection's read timeout, set before its handler runs, so a silent
    /// peer's slot frees itself.
    pub fn read_timeout(mut self, t: Duration) -> Self {
        self.read_timeout = Some(t);
        self
    }

    /// The pre-spawn check on the peer's address.
    pub fn check(mut self, f: impl Fn(&P) -> Check + Send + 'static) -> Self {
        self.check = Box::new(f);
        self
    }

    /// Also told of every refusal, e.g. to count it where a status answer shows it.
    pub fn on_refuse(mut self, f: impl Fn(Refusal) + Send + 'static) -> Self {
        self.on_refuse = Box::new(f);
        self
    }

    /// The cap and counters this listener draws on.
    pub fn limit(&self) -> Arc<Limit> {
        self.limit.clone()
    }
}

/// Accepts from `listener` for ever, on the calling thread: each connection is checked, then
/// admitted under the cap and handed to `handle` on a thread of its own, or closed at once.
pub fn run<L, H>(listener: L, policy: Policy<L::Peer>, handle: H)
where
    L: Listen,
    H: Fn(L::Conn, L::Peer) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let local = listener.local();
    let mut accept_failed = 0u64;
    loop {
        match listener.accept_one() {
            Ok((conn, peer)) => dispatch(&policy, &local, &handle, conn, peer),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                accept_failed += 1;
                if worth_a_warning(accept_failed) {
                    tracing::warn!(listener = policy.name, listen = %local, failures = accept_failed, error = %e, "accept failed");
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// One accepted connection: refused and closed, or given its timeout, its slot and a thread.
fn dispatch<C, P, H>(policy: &Policy<P>, local: &str, handle: &Arc<H>, conn: C, peer: P)
where
    C: Conn + Send + 'static,
    P: Send + 'static,
    H: Fn(C, P) + Send + Sync + 'static,
{
    let name = policy.name;
    let slot = match policy.limit.enter((policy.check)(&peer)) {
        Ok(slot) => slot,
        // Returning drops `conn`, which closes it: nothing was read, nothing was spawned.
        Err(None) => return,
        Err(Some((why, count))) => {
            (policy.on_refuse)(why);
            if worth_a_warning(count) {
                tracing::warn!(listener = name, listen = %local, refused = count, reason = %why, cap = policy.limit.cap, "connections refused");
            }
            return;
        }
    };
    if let Err(e) = conn.set_read_timeout(policy.read_timeout) {
        tracing::debug!(listener = name, error = %e, "cannot set a read timeout: closed");
        return;
    }
    let handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("{}-conn", policy.conn_thread))
        .spawn(move || {
            let _slot = slot;
            handle(conn, peer);
        });
    // A failed spawn dropped the closure: the connection is closed and its slot free.
    if let Err(e) = spawned {
        let n = policy.limit.spawn_failed.fetch_add(1, Relaxed) + 1;
        if worth_a_warning(n) {
            tracing::warn!(listener = name, listen = %local, failures = n, error = %e, "no thread for a connection: closed");
        }
    }
}

/// Runs [`run`] on a thread of its own, `<name>-listen`.
pub fn start<L, H>(listener: L, policy: Policy<L::Peer>, handle: H) -> io::Result<JoinHandle<()>>
where
    L: Listen,
    H: Fn(L::Conn, L::Peer) + Send + Sync + 'static,
{
    std::thread::Builder::new()
        .name(format!("{}-listen", policy.name))
        .spawn(move || run(listener, policy, handle))
}

/// Binds `addr`, retrying every second until it exists (a link address comes up after the
/// daemon starts); the first failure is logged, and the success.
pub fn bind_retrying(addr: SocketAddr, name: &'static str) -> TcpListener {
    let mut logged = false;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => {
                tracing::info!(listener = name, listen = %addr, "listening");
                return l;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(listener = name, listen = %addr, error = %e, "cannot listen yet; retrying every second");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Binds `addr` (retrying as [`bind_retrying`] does) and runs [`run`] on it, all on a thread
/// of its own, `<name>-listen`.
pub fn start_tcp<H>(
    addr: SocketAddr,
    policy: Policy<SocketAddr>,
    handle: H,
) -> io::Result<JoinHandle<()>>
where
    H: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
{
    std::thread::Builder::new()
        .name(format!("{}-listen", policy.name))
        .spawn(move || run(bind_retrying(addr, policy.name), policy, handle))
}

/// A connection read (or written) under one overall deadline: each call waits at most what
/// is left of it. A per-read timeout alone lets a peer that trickles a byte at a time hold a
/// line reader for as many timeouts as the line has bytes.
pub struct Deadline<S> {
    inner: S,
    until: Instant,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, limit: Duration) -> Deadline<S> {
        Deadline {
            inner,
            until: Instant::now() + limit,
        }
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

/// A socket timeout here is always the deadline (each wait is what is left of it), but the
/// kernel reports one as EAGAIN (`WouldBlock`): one kind for callers, whichever side of the
/// deadline the last wait began.
fn deadline_passed<T>(r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
        }
        _ => e,
    })
}

impl<S: Conn + Read> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.set_read_timeout(Some(self.left()?))?;
        deadline_passed(self.inner.read(buf))
    }
}

impl<S: Conn + Write> Write for Deadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.set_write_timeout(Some(self.left()?))?;
        deadline_passed(self.inner.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn the_address_is_checked_first_then_the_cap() {
        use Admission::*;
        for (check, in_flight, cap, want) in [
            (Check::Pass, 0, 1, Admit),
            (Check::Pass, 15, 16, Admit),
            (Check::Pass, 16, 16, Refuse(Refusal::Cap)),
            (Check::Pass, 17, 16, Refuse(Refusal::Cap)),
            (Check::Stranger, 0, 16, Refuse(Refusal::Address)),
            (Check::Stranger, 16, 16, Refuse(Refusal::Address)),
            (Check::Decline, 0, 16, Decline),
            (Check::Decline, 16, 16, Decline),
        ] {
            assert_eq!(
                admit(check, in_flight, cap),
                want,
                "{check:?} {in_flight}/{cap}"
            );
        }
    }

    #[test]
    fn refusals_are_logged_at_powers_of_two() {
        let logged: Vec<u64> = (1..=600).filter(|&n| worth_a_warning(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn only_the_allowed_addresses_pass_in_either_form() {
        let allowed: Vec<IpAddr> = vec!["192.168.100.2".parse().unwrap()];
        let check = only_from(allowed);
        let at = |s: &str| check(&s.parse().unwrap());
        assert_eq!(at("192.168.100.2:40000"), Check::Pass);
        assert_eq!(at("[::ffff:192.168.100.2]:40000"), Check::Pass);
        assert_eq!(at("192.168.100.3:40000"), Check::Stranger);
        assert_eq!(at("[::1]:40000"), Check::Stranger);
    }

    /// A loopback listener whose handler says hello, then holds the connection until the
    /// client closes it (or its read timeout fires); counts the handlers that ran.
    fn hello_server(policy: Policy<SocketAddr>) -> (SocketAddr, Arc<Limit>, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let limit = policy.limit();
        let ran = Arc::new(AtomicU64::new(0));
        let r = ran.clone();
        start(l, policy, move |mut c: TcpStream, _| {
            r.fetch_add(1, Relaxed);
            let _ = c.write_all(b"hi\n");
            let _ = c.read(&mut [0u8; 1]);
        })
        .unwrap();
        (addr, limit, ran)
    }

    /// Whether the server said hello (admitted) rather than closing at once (refused).
    fn greeted(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        matches!(io::BufReader::new(c).read_line(&mut line), Ok(3)) && line == "hi\n"
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(3);
        while !f() {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_cap_of_n_admits_n_closes_the_next_and_admits_again_once_one_leaves() {
        let (addr, limit, ran) = hello_server(Policy::new("test", 3));
        let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for c in &mut held {
            assert!(greeted(c), "one of the first 3 was not admitted");
        }
        let mut over = TcpStream::connect(addr).unwrap();
        assert!(!greeted(&mut over), "the 4th got a thread");
        assert_eq!(limit.refused(Refusal::Cap), 1);
        assert_eq!(ran.load(Relaxed), 3);

        drop(held.remove(0));
        wait_for("the slot of the one that left was not given back", || {
            limit.in_flight() == 2
        });
        let mut again = TcpStream::connect(addr).unwrap();
        assert!(greeted(&mut again), "a free slot was not given");
        assert_eq!(ran.load(Relaxed), 4);
        assert_eq!(limit.in_flight(), 3);
    }

    #[test]
    fn a_filtered_address_is_closed_without_a_thread_and_counted() {
        let counted = Arc::new(AtomicU64::new(0));
        let c = counted.clone();
        let policy = Policy::new("test", 4)
            .check(only_from(vec!["127.0.0.2".parse().unwrap()]))
            .on_refuse(move |why| {
                assert_eq!(why, Refusal::Address);
                c.fetch_add(1, Relaxed);
            });
        let (addr, limit, ran) = hello_server(policy);
        for _ in 0..5 {
            let mut c = TcpStream::connect(addr).unwrap();
            assert!(!greeted(&mut c), "a connection from 127.0.0.1 was served");
        }
        assert_eq!(ran.load(Relaxed), 0);
        assert_eq!(limit.refused(Refusal::Address), 5);
        assert_eq!(limit.refused(Refusal::Cap), 0);
        assert_eq!(counted.load(Relaxed), 5);
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn a_declined_connection_is_closed_and_not_counted() {
        let serving = Arc::new(AtomicBool::new(false));
        let s = serving.clone();
        let policy = Policy::new("test", 4).check(move |_: &SocketAddr| {
            if s.load(Relaxed) {
                Check::Pass
            } else {
                Check::Decline
            }
        });
        let (addr, limit, ran) = hello_server(policy);
        assert!(!greeted(&mut TcpStream::connect(addr).unwrap()));
        assert_eq!((ran.load(Relaxed), limit.refused(Refusal::Cap)), (0, 0));
        assert_eq!(limit.refused(Refusal::Address), 0);
        serving.store(true, Relaxed);
        assert!(greeted(&mut TcpStream::connect(addr).unwrap()));
    }

    #[test]
    fn a_silent_peer_frees_its_slot_after_the_read_timeout() {
        let policy = Policy::new("test", 1).read_timeout(Duration::from_millis(100));
        let (addr, limit, _) = hello_server(policy);
        let mut silent = TcpStream::connect(addr).unwrap();
        assert!(greeted(&mut silent));
        assert!(!greeted(&mut TcpStream::connect(addr).unwrap()));
        wait_for("the silent peer still holds the only slot", || {
            limit.in_flight() == 0
        });
        assert!(greeted(&mut TcpStream::connect(addr).unwrap()));
    }

    #[test]
    fn the_loop_serves_a_unix_socket_under_the_same_cap() {
        let dir = std::env::temp_dir().join(format!("slb-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let policy = Policy::new("test", 1);
        let limit = policy.limit();
        start(l, policy, |mut c: UnixStream, _| {
            let _ = c.write_all(b"hi\n");
            let _ = c.read(&mut [0u8; 1]);
        })
        .unwrap();
        let read = |c: &mut UnixStream| {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 3];
            matches!(c.read(&mut buf), Ok(3))
        };
        let mut first = UnixStream::connect(&path).unwrap();
        assert!(read(&mut first));
        assert!(!read(&mut UnixStream::connect(&path).unwrap()));
        assert_eq!(limit.refused(Refusal::Cap), 1);
        drop(first);
        wait_for("the slot was not given back", || limit.in_flight() == 0);
        assert!(read(&mut UnixStream::connect(&path).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deadline_ends_a_trickled_line_though_every_byte_came_in_time() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let trickler = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            while !s.load(Relaxed) && c.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (conn, _) = l.accept().unwrap();
        let t0 = Instant::now();
        let mut line = String::new();
        let got = io::BufReader::new(Deadline::new(&conn, Duration::from_millis(200)))
            .read_line(&mut line);
        let took = t0.elapsed();
        stop.store(true, Relaxed);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert!(!line.is_empty(), "the trickle did arrive");
        drop(conn);
        trickler.join().unwrap();
    }
}
