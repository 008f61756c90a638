//! Flow replication as a balancer reads it from its dual's TCP connection: the handshake
//! frames and any frame as they come (stopped at the MAC), and the same bytes as the body of
//! a frame under this session's key, so the records behind the MAC are read too; records that
//! parse encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slbd::wire::replication::{
    check_hello, check_start, check_welcome, records, Kind, Received, Receiver, Sender, MAX_BODY,
    NONCE_LEN,
};

/// The replication unit tests' key and session nonces, so their fixtures are the seeds.
const KEY: &[u8] = b"the pair's shared key, 0600";
const R: [u8; NONCE_LEN] = [1; NONCE_LEN];
const S: [u8; NONCE_LEN] = [2; NONCE_LEN];

fuzz_target!(|data: &[u8]| {
    let _ = check_hello(KEY, data);
    let _ = check_welcome(KEY, &R, data);
    let _ = check_start(KEY, &R, &S, data);
    let _ = Receiver::new(KEY, &R, &S).accept(data);

    if let Ok(rs) = records(data) {
        let mut again = Vec::new();
        rs.iter().for_each(|r| r.encode(&mut again));
        assert_eq!(again, data, "records and their encoding disagree");
    }
    if data.len() <= MAX_BODY {
        for kind in [
            Kind::Snapshot,
            Kind::Batch,
            Kind::SnapshotEnd,
            Kind::Keepalive,
        ] {
            let frame = Sender::new(KEY, &R, &S).frame(kind, 7, data);
            if let Ok(Received::Records { records: rs, .. }) =
                Receiver::new(KEY, &R, &S).accept(&frame)
            {
                assert_eq!(Ok(rs), records(data).map_err(|_| ()), "{kind:?}");
            }
        }
    }
});
