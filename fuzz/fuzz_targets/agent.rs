//! An agent-check answer, as slbd reads it from a server's agent port: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let says = slbd::core::agent::parse(data);
    assert!(says.unknown.len() <= 8);
    if let Some(pct) = says.weight_pct {
        assert!(pct <= 1000);
        let w = slbd::core::agent::weight_of(10_000, pct);
        assert!(w <= 10_000);
    }
});
