//! Configuration edits as slbctl sends them (`apply`), applied to the shipped
//! `slb_conf.json`: any list of edits is refused with a reason or gives a configuration that
//! validates; that one saves to text that loads as the same configuration.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use slbd::config::edit::{apply, Edit};
use slbd::config::{parse_raw, Config, RawConfig};

fn base() -> &'static RawConfig {
    static BASE: OnceLock<RawConfig> = OnceLock::new();
    BASE.get_or_init(|| {
        parse_raw(include_str!("../../etc/slb/slb_conf.json")).expect("the shipped configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(edits) = serde_json::from_slice::<Vec<Edit>>(data) else {
        return;
    };
    let Ok((raw, config)) = apply(base(), &edits) else {
        return;
    };
    let saved = serde_json::to_string_pretty(&raw).expect("a raw configuration serialises");
    assert_eq!(Config::from_json(&saved).ok(), Some(config), "{saved}");
});
