//! amgr's peer command connection, as it reads what the dual (or a stranger) sends: the
//! challenge, request and reply lines as they come (stopped at the MAC), and the same bytes as
//! an authenticated body; a request that reads seals and opens back to itself.
#![no_main]

use amgr::command::Command;
use amgr::peer::{
    open_reply, open_request, parse_challenge, reply_from_body, request_from_body, seal_request,
    PeerRequest, NONCE_LEN,
};
use libfuzzer_sys::fuzz_target;

/// The peer unit tests' key and nonce, so their sealed lines are the seeds.
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_challenge(line);
    let _ = open_request(KEY, &NONCE, line);
    let _ = open_reply(KEY, &NONCE, line);
    let Ok(body) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let _ = reply_from_body(&body);
    if let Ok(req) = request_from_body(body) {
        if let PeerRequest::Run { cmd, .. } = &req {
            let _ = Command::parse(cmd);
        }
        let sealed = seal_request(KEY, &NONCE, &req);
        assert_eq!(open_request(KEY, &NONCE, sealed.trim_end()), Ok(req));
    }
});
