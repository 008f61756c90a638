//! PURE codecs for bytes that cross a process boundary: each module checks what it parses
//! before believing any of it, never panics on any input, and emits what the other side
//! expects. [`replication`] is the pair's flow-replication frames.

pub mod replication;
