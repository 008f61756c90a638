//! `slb_conf.json` as slbd loads it (from the file, or from the dual over SSH): any text is
//! refused with an error or validated; a configuration that validates saves (`--save-config`
//! writes the raw form back) to text that loads as the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slbd::config::{parse_raw, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = parse_raw(text) else { return };
    let Ok(config) = Config::try_from(&raw) else {
        return;
    };
    let saved = serde_json::to_string_pretty(&raw).expect("a raw configuration serialises");
    assert_eq!(Config::from_json(&saved).ok(), Some(config), "{saved}");
});
