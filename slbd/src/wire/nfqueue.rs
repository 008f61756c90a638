//! nfnetlink_queue messages as bytes (include/uapi/linux/netfilter/nfnetlink_queue.h): parsing
//! the packet messages the kernel sends and emitting the config requests and verdict headers
//! slbd sends back. Pure: no sockets; every parse is bounds-checked and never panics.

/// `NFNL_SUBSYS_QUEUE << 8 | msg`.
const SUBSYS_QUEUE: u16 = 3 << 8;
pub const MSG_PACKET: u16 = SUBSYS_QUEUE;
const MSG_VERDICT: u16 = SUBSYS_QUEUE | 1;
const MSG_CONFIG: u16 = SUBSYS_QUEUE | 2;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_SKB_INFO: u16 = 14;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const CMD_BIND: u8 = 1;
const COPY_PACKET: u8 = 2;
pub const CFG_F_FAIL_OPEN: u32 = 1;
pub const CFG_F_GSO: u32 = 4;

const SKB_CSUMNOTREADY: u32 = 1;
const SKB_GSO: u32 = 2;

const NF_ACCEPT: u32 = 1;
const NF_DROP: u32 = 0;

/// NFQNL_MAX_COPY_RANGE (net/netfilter/nfnetlink_queue.c): the most of a packet the kernel
/// copies into a message, and so the longest payload a verdict can carry back.
pub const MAX_COPY_RANGE: usize = 0xffff - NLA_HDRLEN;

use crate::wire::netlink::{
    align4, attr_len, attrs, Header, Message, TooLong, Writer, NFGEN_HDRLEN, NLA_HDRLEN,
    NLMSG_HDRLEN, NLM_F_ACK, NLM_F_REQUEST,
};

fn be32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?))
}

/// What the kernel says about one queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub id: u32,
    pub hook: u8,
    /// Byte range of the packet inside the datagram buffer.
    pub payload: (usize, usize),
    /// The packet's real length when the kernel copied less of it.
    pub cap_len: Option<u32>,
    pub checksum_ready: bool,
    pub gso: bool,
    /// The packet's mark (0 when it has none).
    pub mark: u32,
}

/// Reads a packet message (`NFQNL_MSG_PACKET`) `m` of datagram `dgram`. `None` if any part is
/// missing or malformed.
pub fn packet(dgram: &[u8], m: &Message) -> Option<Packet> {
    if m.header.kind != MSG_PACKET {
        return None;
    }
    let body = NLMSG_HDRLEN + NFGEN_HDRLEN;
    let attr_bytes = m.bytes(dgram).get(body..)?;
    let (mut id, mut hook, mut payload, mut cap_len, mut info) = (None, 0, None, None, 0);
    let mut mark = 0;
    for a in attrs(attr_bytes) {
        let a = a.ok()?;
        match a.kind {
            NFQA_PACKET_HDR if a.data.len() >= 7 => {
                id = Some(be32(a.data)?);
                hook = a.data[6];
            }
            NFQA_PAYLOAD => {
                let at = m.start + body + a.offset;
                payload = Some((at, at + a.data.len()));
            }
            NFQA_CAP_LEN if a.data.len() >= 4 => cap_len = Some(be32(a.data)?),
            NFQA_MARK if a.data.len() >= 4 => mark = be32(a.data)?,
            NFQA_SKB_INFO if a.data.len() >= 4 => info = be32(a.data)?,
            _ => {}
        }
    }
    Some(Packet {
        id: id?,
        hook,
        payload: payload?,
        cap_len,
        checksum_ready: info & SKB_CSUMNOTREADY == 0,
        gso: info & SKB_GSO != 0,
        mark,
    })
}

/// An nfnetlink_queue message: AF_UNSPEC, NFNETLINK_V0, the queue as res_id.
fn writer(kind: u16, flags: u16, seq: u32, queue: u16) -> Writer {
    Writer::nfgen(kind, flags, seq, 0, 0, queue)
}

/// The config requests that bind `queue` and set it up, each asking for an ACK.
pub fn config_requests(
    queue: u16,
    max_len: u32,
    flags: u32,
    mask: u32,
    seq: u32,
) -> Result<Vec<Vec<u8>>, TooLong> {
    let one = |seq: u32, add: &dyn Fn(&mut Writer)| {
        let mut w = writer(MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
        add(&mut w);
        w.finish()
    };
    let mut params = 0xffffu32.to_be_bytes().to_vec();
    params.push(COPY_PACKET);
    Ok(vec![
        one(seq, &|w| w.attr(NFQA_CFG_CMD, &[CMD_BIND, 0, 0, 0]))?,
        one(seq.wrapping_add(1), &|w| w.attr(NFQA_CFG_PARAMS, &params))?,
        one(seq.wrapping_add(2), &|w| {
            w.attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        })?,
        one(seq.wrapping_add(3), &|w| {
            w.attr(NFQA_CFG_FLAGS, &flags.to_be_bytes());
            w.attr(NFQA_CFG_MASK, &mask.to_be_bytes());
        })?,
    ])
}

/// Room for the bytes [`verdict_header`] writes before the payload (verdict, mark, payload
/// attribute header).
pub const VERDICT_HEADER_LEN: usize = NLMSG_HDRLEN + NFGEN_HDRLEN + 12 + 8 + 4;

/// Writes the header of a verdict message into `out` and returns how many bytes it used: the
/// verdict, then a packet mark if `mark` is given, then the payload attribute's header if a
/// payload follows. The payload is sent from where it lies, followed by padding to 4 bytes.
/// A payload longer than [`MAX_COPY_RANGE`] cannot be described by nla_len and is refused
/// with `TooLong`, `out` left unwritten; [`drop_header`] then answers for the packet.
pub fn verdict_header(
    out: &mut [u8; VERDICT_HEADER_LEN],
    queue: u16,
    id: u32,
    accept: bool,
    mark: Option<u32>,
    payload_len: Option<usize>,
) -> Result<usize, TooLong> {
    let payload = match payload_len {
        Some(n) => Some((attr_len(n).ok_or(TooLong)?, n)),
        None => None,
    };
    let verdict = if accept { NF_ACCEPT } else { NF_DROP };
    Ok(write_verdict(out, queue, id, verdict, mark, payload))
}

/// Writes a drop verdict for packet `id`, which always fits, and returns its length.
pub fn drop_header(out: &mut [u8; VERDICT_HEADER_LEN], queue: u16, id: u32) -> usize {
    write_verdict(out, queue, id, NF_DROP, None, None)
}

/// The verdict message's header bytes; `payload` is (nla_len, payload length), checked.
fn write_verdict(
    out: &mut [u8; VERDICT_HEADER_LEN],
    queue: u16,
    id: u32,
    verdict: u32,
    mark: Option<u32>,
    payload: Option<(u16, usize)>,
) -> usize {
    let mark_len = if mark.is_some() { 8 } else { 0 };
    let used = NLMSG_HDRLEN + NFGEN_HDRLEN + 12 + mark_len + payload.map_or(0, |_| NLA_HDRLEN);
    let header = Header {
        len: used + payload.map_or(0, |(_, n)| n),
        kind: MSG_VERDICT,
        flags: NLM_F_REQUEST,
        seq: 0,
        pid: 0,
    };
    // At most 65535 + 40 bytes: always within nlmsg_len's u32.
    out[0..16].copy_from_slice(&header.emit().unwrap_or([0; NLMSG_HDRLEN]));
    out[16] = 0;
    out[17] = 0;
    out[18..20].copy_from_slice(&queue.to_be_bytes());
    out[20..22].copy_from_slice(&12u16.to_ne_bytes());
    out[22..24].copy_from_slice(&NFQA_VERDICT_HDR.to_ne_bytes());
    out[24..28].copy_from_slice(&verdict.to_be_bytes());
    out[28..32].copy_from_slice(&id.to_be_bytes());
    let mut at = 32;
    if let Some(m) = mark {
        out[at..at + 2].copy_from_slice(&8u16.to_ne_bytes());
        out[at + 2..at + 4].copy_from_slice(&NFQA_MARK.to_ne_bytes());
        out[at + 4..at + 8].copy_from_slice(&m.to_be_bytes());
        at += 8;
    }
    if let Some((nla_len, _)) = payload {
        out[at..at + 2].copy_from_slice(&nla_len.to_ne_bytes());
        out[at + 2..at + 4].copy_from_slice(&NFQA_PAYLOAD.to_ne_bytes());
    }
    used
}

/// Bytes of padding after a payload of `n` bytes.
pub fn padding(n: usize) -> usize {
    align4(n) - n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nfqueue_fuzz_seeds_are_these_fixtures() {
        let ip = [
            0x45u8, 0, 0, 21, 1, 2, 3, 0, 64, 17, 0, 0, 10, 0, 0, 5, 10, 0, 0, 100, 9,
        ];
        let mut two = kernel_packet(77, 4, &ip, None, SKB_CSUMNOTREADY);
        two.extend(kernel_packet(78, 0, &ip[..5], Some(1500), SKB_GSO));
        for (name, bytes) in [
            ("one_packet", kernel_packet(9, 1, &ip, None, 0)),
            ("two_packets", two),
        ] {
            slb_common::fuzz_seed::check("nfqueue", name, &bytes).unwrap();
        }
    }
    use crate::wire::netlink::messages;

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn be32_at(b: &[u8], at: usize) -> Option<u32> {
        be32(b.get(at..)?)
    }

    /// A packet message as the kernel builds it (nfqnl_build_packet_message).
    fn kernel_packet(
        id: u32,
        hook: u8,
        payload: &[u8],
        cap_len: Option<u32>,
        info: u32,
    ) -> Vec<u8> {
        let mut w = writer(MSG_PACKET, 0, 0, 0);
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(hook);
        w.attr(NFQA_PACKET_HDR, &hdr);
        w.attr(NFQA_SKB_INFO, &info.to_be_bytes());
        if let Some(c) = cap_len {
            w.attr(NFQA_CAP_LEN, &c.to_be_bytes());
        }
        w.attr(NFQA_PAYLOAD, payload);
        w.finish().unwrap()
    }

    #[test]
    fn reads_a_packet_message() {
        let payload = [0x45u8, 0, 0, 21, 1, 2, 3];
        let mut dgram = kernel_packet(77, 4, &payload, None, SKB_CSUMNOTREADY);
        dgram.extend(kernel_packet(78, 0, &payload[..5], Some(1500), SKB_GSO));
        let msgs: Vec<_> = messages(&dgram).collect();
        assert_eq!(msgs.len(), 2);
        let p = packet(&dgram, &msgs[0]).unwrap();
        assert_eq!(
            (p.id, p.hook, p.cap_len, p.checksum_ready, p.gso),
            (77, 4, None, false, false)
        );
        assert_eq!(&dgram[p.payload.0..p.payload.1], &payload);
        let q = packet(&dgram, &msgs[1]).unwrap();
        assert_eq!(
            (q.id, q.hook, q.cap_len, q.checksum_ready, q.gso),
            (78, 0, Some(1500), true, true)
        );
        assert_eq!(q.payload.1 - q.payload.0, 5);
        assert_eq!(
            (p.mark, q.mark),
            (0, 0),
            "no NFQA_MARK: the packet has none"
        );
    }

    #[test]
    fn reads_the_packet_mark_the_kernel_sends_for_a_marked_packet() {
        let mut w = writer(MSG_PACKET, 0, 0, 0);
        let mut hdr = 5u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(0);
        w.attr(NFQA_PACKET_HDR, &hdr);
        w.attr(NFQA_MARK, &0x5b1d_0002u32.to_be_bytes());
        w.attr(NFQA_PAYLOAD, &[0x45u8, 0, 0, 20]);
        let dgram = w.finish().unwrap();
        let m = messages(&dgram).next().unwrap();
        assert_eq!(packet(&dgram, &m).unwrap().mark, 0x5b1d_0002);
    }

    #[test]
    fn malformed_messages_are_skipped_not_trusted() {
        let good = kernel_packet(1, 0, &[1, 2, 3, 4], None, 0);
        // Every truncation of a good message parses to nothing or to something in bounds.
        for cut in 0..good.len() {
            let b = &good[..cut];
            for m in messages(b) {
                if let Some(p) = packet(b, &m) {
                    assert!(p.payload.1 <= b.len());
                }
            }
        }
        // An attribute claiming to run past its message.
        let mut bad = good.clone();
        let at = NLMSG_HDRLEN + NFGEN_HDRLEN;
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        assert_eq!(packet(&bad, &messages(&bad).next().unwrap()), None);
        // A message length past the datagram, and one below the header size.
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
    }

    #[test]
    fn verdict_with_payload_is_one_well_formed_message() {
        let payload = [9u8; 7];
        let mut hdr = [0u8; VERDICT_HEADER_LEN];
        let used = verdict_header(&mut hdr, 3, 42, true, None, Some(payload.len())).unwrap();
        let mut msg = hdr[..used].to_vec();
        msg.extend_from_slice(&payload);
        msg.extend(std::iter::repeat_n(0, padding(payload.len())));
        let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, used + payload.len());
        assert_eq!(msg.len(), align4(len));
        assert_eq!(
            u16::from_be_bytes([msg[18], msg[19]]),
            3,
            "queue number, big endian"
        );
        assert_eq!(be32_at(&msg, 24), Some(NF_ACCEPT));
        assert_eq!(be32_at(&msg, 28), Some(42));
        assert_eq!(&msg[36..43], &payload);

        let used = verdict_header(&mut hdr, 3, 43, false, None, None).unwrap();
        assert_eq!(used, 32);
        assert_eq!(u32::from_ne_bytes(hdr[0..4].try_into().unwrap()), 32);
        assert_eq!(be32_at(&hdr, 24), Some(NF_DROP));
        let mut dropped = [0u8; VERDICT_HEADER_LEN];
        assert_eq!(drop_header(&mut dropped, 3, 43), 32);
        assert_eq!(dropped[..32], hdr[..32]);

        let used = verdict_header(&mut hdr, 3, 44, true, Some(0x5b1d_0001), None).unwrap();
        assert_eq!(used, 40);
        assert_eq!(u32::from_ne_bytes(hdr[0..4].try_into().unwrap()), 40);
        assert_eq!(u16_at(&hdr, 34), Some(NFQA_MARK));
        assert_eq!(be32_at(&hdr, 36), Some(0x5b1d_0001));
    }

    #[test]
    fn a_payload_too_long_for_its_attribute_is_refused_never_wrapped() {
        // A 64 KiB GSO packet: 4 + 65535 does not fit nla_len, which would wrap to 3.
        let mut hdr = [0u8; VERDICT_HEADER_LEN];
        assert_eq!(
            verdict_header(&mut hdr, 3, 42, true, None, Some(65535)),
            Err(TooLong)
        );
        assert_eq!(hdr, [0u8; VERDICT_HEADER_LEN], "nothing written");
        // Around the limit, every length written is the true one, or none is written.
        for n in (MAX_COPY_RANGE - 8..=MAX_COPY_RANGE + 8).chain([0xffff, 1 << 16, usize::MAX]) {
            for mark in [None, Some(7)] {
                let mut hdr = [0u8; VERDICT_HEADER_LEN];
                match verdict_header(&mut hdr, 3, 42, true, mark, Some(n)) {
                    Ok(used) => {
                        assert!(n <= MAX_COPY_RANGE, "{n} bytes accepted");
                        let nla_len = u16_at(&hdr, used - 4).unwrap();
                        assert_eq!(usize::from(nla_len), NLA_HDRLEN + n);
                        assert_eq!(u32_at(&hdr, 0), Some((used + n) as u32));
                    }
                    Err(TooLong) => {
                        assert!(n > MAX_COPY_RANGE, "{n} bytes refused");
                        assert_eq!(hdr, [0u8; VERDICT_HEADER_LEN]);
                    }
                }
            }
        }
    }

    #[test]
    fn config_requests_ask_for_acks() {
        let reqs = config_requests(5, 4096, CFG_F_GSO, CFG_F_GSO | CFG_F_FAIL_OPEN, 100).unwrap();
        assert_eq!(reqs.len(), 4);
        for (i, r) in reqs.iter().enumerate() {
            let m = messages(r).next().unwrap();
            assert_eq!(m.header.kind, MSG_CONFIG);
            assert_eq!(m.header.len, r.len());
            assert_eq!(u16_at(r, 6).unwrap() & NLM_F_ACK, NLM_F_ACK);
            assert_eq!(u32_at(r, 8), Some(100 + i as u32));
        }
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_packet_message_the_kernel_builds_reads_back_exactly(
            id in any::<u32>(),
            hook in 0u8..5,
            payload in proptest::collection::vec(any::<u8>(), 0..2000),
            cap_len in proptest::option::of(any::<u32>()),
            info in any::<u32>(),
        ) {
            let dgram = kernel_packet(id, hook, &payload, cap_len, info);
            let msgs: Vec<_> = messages(&dgram).collect();
            prop_assert_eq!(msgs.len(), 1);
            let p = packet(&dgram, &msgs[0]).expect("a packet message");
            prop_assert_eq!((p.id, p.hook, p.cap_len), (id, hook, cap_len));
            prop_assert_eq!(p.checksum_ready, info & SKB_CSUMNOTREADY == 0);
            prop_assert_eq!(p.gso, info & SKB_GSO != 0);
            prop_assert_eq!(&dgram[p.payload.0..p.payload.1], &payload[..]);
        }

        #[test]
        fn random_bytes_never_panic_and_never_point_outside(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            for m in messages(&bytes) {
                if let Some(p) = packet(&bytes, &m) {
                    prop_assert!(p.payload.0 <= p.payload.1 && p.payload.1 <= bytes.len());
                }
            }
        }

        #[test]
        fn a_verdict_says_its_own_length_or_is_refused(
            id in any::<u32>(),
            mark in proptest::option::of(any::<u32>()),
            payload_len in proptest::option::of(0usize..70_000),
        ) {
            let mut hdr = [0u8; VERDICT_HEADER_LEN];
            match verdict_header(&mut hdr, 7, id, true, mark, payload_len) {
                Ok(used) => {
                    let n = payload_len.unwrap_or(0);
                    prop_assert!(n <= MAX_COPY_RANGE);
                    prop_assert_eq!(u32_at(&hdr, 0), Some((used + n) as u32));
                    prop_assert_eq!(be32_at(&hdr, 28), Some(id));
                    if payload_len.is_some() {
                        prop_assert_eq!(
                            u16_at(&hdr, used - 4).map(usize::from),
                            Some(NLA_HDRLEN + n),
                            "the payload attribute's length"
                        );
                    }
                }
                Err(TooLong) => prop_assert!(payload_len.is_some_and(|n| n > MAX_COPY_RANGE)),
            }
        }
    }
}
