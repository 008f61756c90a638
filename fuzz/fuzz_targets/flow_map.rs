//! The flow map's entries as the kernel lists them (key, value, timeout), read by slbd's
//! once-a-second resync: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, rest) = data.split_at(data.len().min(16));
    let (value, timeout) = rest.split_at(rest.len().min(4));
    let ms = timeout.iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
    let timeout = std::time::Duration::from_millis(ms);
    if let Some(f) = slbd::core::ruleset::DrFlow::from_entry(key, value, timeout) {
        assert_eq!((key.len(), value.len()), (16, 4));
        assert_eq!(f.client.ip().octets(), key[..4]);
        assert_eq!(f.server.octets(), value);
    }
});
