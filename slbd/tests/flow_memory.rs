//! The flow table's memory per flow, measured: a counting global allocator (in this test
//! binary only) adds up the bytes the table actually asks the heap for, and the table's own
//! estimate (`FlowTable::memory_bytes`, the figure slbd reports) is checked against it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use slbd::core::flow::{FlowKey, FlowTable, Timeouts};
use slbd::core::net::Protocol;

/// The system allocator, counting the bytes held by allocations made on each thread, so the
/// test harness's other threads do not blur the figure.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // During a thread's teardown its counter may be gone; nothing we measure happens then.
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

fn held() -> isize {
    HELD.with(Cell::get)
}

// SAFETY: every call is passed on unchanged to `System`, which upholds `GlobalAlloc`'s
// contract; the counting only adds to a thread-local `Cell` (const-initialised, no destructor,
// so it never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller vouches for `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TIMEOUTS: Timeouts = Timeouts {
    tcp: Duration::from_secs(900),
    tcp_closing: Duration::from_secs(10),
    tcp_syn: Duration::from_secs(5),
    udp: Duration::from_secs(30),
};

/// A table holding `n` TCP flows from distinct clients, and the heap bytes it took.
fn filled(n: u32) -> (FlowTable, usize) {
    let before = held();
    let mut t = FlowTable::new(TIMEOUTS, n);
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    let server = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 2), 80);
    for i in 0..n {
        let client = SocketAddrV4::new(
            Ipv4Addr::from(0x0a00_0000 + (i >> 8)),
            1024 + (i & 0xff) as u16,
        );
        let key = FlowKey {
            protocol: Protocol::Tcp,
            src: client,
            dst: vip,
        };
        t.insert(&key, server, i, 0).expect("room for every flow");
    }
    let bytes = held() - before;
    assert_eq!(t.len(), n as usize, "flows held");
    (t, usize::try_from(bytes).expect("the table holds memory"))
}

#[test]
fn a_flow_takes_under_128_bytes_of_heap_and_the_tables_estimate_is_within_a_quarter() {
    for n in [10_000u32, 100_000] {
        let (t, allocated) = filled(n);
        let per_flow = allocated / n as usize;
        assert!(
            per_flow < 128,
            "{n} flows allocated {allocated} bytes, {per_flow} a flow"
        );
        let estimate = t.memory_bytes();
        let off = estimate.abs_diff(allocated) as f64 / allocated as f64;
        assert!(
            off <= 0.25,
            "{n} flows: memory_bytes() says {estimate}, {allocated} were allocated ({:.1} % off)",
            off * 100.0
        );
    }
}
