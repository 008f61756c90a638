//! ICMP echo as the guard sends and reads it. Pure: the request it writes, and the reading of
//! what a raw ICMP socket hands back (the IPv4 header, then ICMP), which may be any ICMP
//! message any host sent this node.

use std::net::Ipv4Addr;

use slbd::core::checksum;

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// Marks the guard's echoes, so another program's with the same id are not taken for ours.
const PAYLOAD: &[u8; 8] = b"slbguard";
pub const REQUEST_LEN: usize = 8 + PAYLOAD.len();

/// An echo request with identifier `id` and sequence number `seq`.
pub fn request(id: u16, seq: u16) -> [u8; REQUEST_LEN] {
    let mut m = [0u8; REQUEST_LEN];
    m[0] = ECHO_REQUEST;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..].copy_from_slice(PAYLOAD);
    let c = !checksum::fold(checksum::sum(&m, 0));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An echo reply to one of the guard's requests: who answered, and the request's id and seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: Ipv4Addr,
    pub id: u16,
    pub seq: u16,
}

/// Reads a datagram from a raw ICMP socket: `Some` only for an intact echo reply carrying the
/// guard's payload; anything else (other ICMP, truncated, bad checksum) is `None`.
pub fn parse_reply(datagram: &[u8]) -> Option<Reply> {
    let first = *datagram.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || datagram.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let end = total.clamp(ihl, datagram.len());
    let from = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let icmp = &datagram[ihl..end];
    if icmp.len() != REQUEST_LEN || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    if checksum::fold(checksum::sum(icmp, 0)) != 0xffff || &icmp[8..] != PAYLOAD {
        return None;
    }
    Some(Reply {
        from,
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the kernel hands a raw socket when `from` answers `req`: an IPv4 header, then the
    /// request turned into a reply (type 0, checksum adjusted).
    fn reply_from(from: Ipv4Addr, req: &[u8]) -> Vec<u8> {
        let mut icmp = req.to_vec();
        icmp[0] = ECHO_REPLY;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = !checksum::fold(checksum::sum(&icmp, 0));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
        ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&[172, 16, 0, 252]);
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn a_request_has_a_valid_checksum_and_its_reply_names_the_sender_id_and_seq() {
        let req = request(0xbeef, 7);
        assert_eq!(req[0], ECHO_REQUEST);
        assert_eq!(checksum::fold(checksum::sum(&req, 0)), 0xffff);
        let from = Ipv4Addr::new(172, 16, 0, 2);
        assert_eq!(
            parse_reply(&reply_from(from, &req)),
            Some(Reply {
                from,
                id: 0xbeef,
                seq: 7
            })
        );
    }

    #[test]
    fn other_icmp_and_damaged_replies_are_not_answers() {
        let from = Ipv4Addr::new(172, 16, 0, 2);
        let good = reply_from(from, &request(1, 2));
        let mut request_echoed = good.clone();
        request_echoed[20] = ECHO_REQUEST;
        let mut bad_sum = good.clone();
        bad_sum[22] ^= 1;
        let mut other_payload = reply_from(from, &request(1, 2));
        other_payload[30] = b'X';
        let mut unreachable = good.clone();
        unreachable[20] = 3;
        let rows: [(&[u8], &str); 6] = [
            (&request_echoed, "our own request, seen on the raw socket"),
            (&bad_sum, "a corrupted checksum"),
            (&other_payload, "another program's echo"),
            (&unreachable, "a destination unreachable"),
            (&good[..good.len() - 1], "truncated"),
            (&good[..10], "no whole IP header"),
        ];
        for (bytes, what) in rows {
            assert_eq!(parse_reply(bytes), None, "{what}");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn any_id_and_seq_round_trip(id: u16, seq: u16, from: u32) {
            let from = Ipv4Addr::from(from);
            let r = parse_reply(&reply_from(from, &request(id, seq)));
            prop_assert_eq!(r, Some(Reply { from, id, seq }));
        }
    }
}
