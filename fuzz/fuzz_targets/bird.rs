//! The BGP daemon's control-socket replies, as slbd reads them for `--status`: any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = slbd::wire::bird::reply_end(&text);
    for s in slbd::wire::bird::bfd_sessions(&text) {
        assert!(!s.interface.is_empty() && !s.state.is_empty());
    }
    for p in slbd::wire::bird::protocols(&text) {
        assert!(!p.name.contains(char::is_whitespace));
    }
});
