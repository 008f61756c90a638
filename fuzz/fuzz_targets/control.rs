//! The local control protocols, as their sockets read a line from any root client: slbd's
//! (slbctl's requests, including configuration edits) and amgr's (the amcli commands), their
//! replies as the clients read them, and the shared line reader's bound.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use slb_common::envelope::{self, Line};

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = slbd::ctl::proto::parse_request(data) {
        let line = slbd::ctl::proto::request(&cmd);
        let again = slbd::ctl::proto::parse_request(line.trim_end().as_bytes());
        assert_eq!(again, Ok(cmd), "{line}");
    }
    if let Ok(req) = amgr::command::parse_request(data) {
        let line = amgr::command::request_line(req);
        assert_eq!(
            amgr::command::parse_request(line.trim_end().as_bytes()),
            Ok(req)
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = slbd::ctl::proto::parse_reply(text);
        let _ = amgr::command::parse_reply(text);
    }
    let mut reader = Cursor::new(data);
    // Whole lines are bounded and end where their newline was; anything else ends the read.
    while let Ok(Line::Whole(l)) = envelope::read_line(&mut reader) {
        assert!(l.len() <= envelope::MAX_LINE && !l.contains(&b'\n'));
    }
});
