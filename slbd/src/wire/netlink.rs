//! The netlink wire format every family slbd speaks shares (include/uapi/linux/netlink.h,
//! Documentation/userspace-api/netlink/intro.rst): the constants, the message header read and
//! written, a datagram split into its messages, the status an NLMSG_ERROR or NLMSG_DONE
//! carries, attributes walked and written (nested ones too), and the nfgenmsg header of
//! nfnetlink (NFQUEUE in `wire::nfqueue`, ctnetlink in `wire::ctnetlink`). `wire::rtnetlink`
//! adds rtnetlink's link and address messages on top. Pure: no sockets; every read is
//! bounds-checked and never panics, every write refuses a length its field cannot hold.
//! `shell::netlink` is the shell that opens netlink sockets.

/// nlmsghdr: `{len u32, type u16, flags u16, seq u32, pid u32}`.
pub const NLMSG_HDRLEN: usize = 16;
/// nlattr: `{len u16, type u16}`.
pub const NLA_HDRLEN: usize = 4;
/// nfgenmsg: `{family u8, version u8, res_id be16}` (include/uapi/linux/netfilter/nfnetlink.h).
pub const NFGEN_HDRLEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Flags of a GET request.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// Flags of a NEW request.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// An attribute's type without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// The largest attribute payload: nla_len is a u16 that counts the attribute's header too.
pub const MAX_ATTR_PAYLOAD: usize = u16::MAX as usize - NLA_HDRLEN;

/// A length too large for the netlink field that must hold it: an attribute (nested or not)
/// of more than 65535 bytes, or a message of more than 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("netlink attribute or message too long for its length field")]
pub struct TooLong;

impl From<TooLong> for std::io::Error {
    fn from(e: TooLong) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// Netlink lengths are padded to 4 bytes (NLMSG_ALIGN, NLA_ALIGN).
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// nla_len of an attribute with `payload` bytes, if it fits its u16.
pub fn attr_len(payload: usize) -> Option<u16> {
    u16::try_from(payload.checked_add(NLA_HDRLEN)?).ok()
}

/// The header of one netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// nlmsg_len: the header and its payload, without the padding after them.
    pub len: usize,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// The sender's port id: 0 from the kernel; left 0 in requests, the kernel fills it in.
    pub pid: u32,
}

impl Header {
    /// Reads the header at the start of `msg`; `None` if it is cut short, or if its length is
    /// below a header's or beyond `msg`.
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let h: &[u8; NLMSG_HDRLEN] = msg.get(..NLMSG_HDRLEN)?.try_into().ok()?;
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len < NLMSG_HDRLEN || len > msg.len() {
            return None;
        }
        Some(Header {
            len,
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
            pid: u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
        })
    }

    /// The header's bytes; `TooLong` if `len` does not fit nlmsg_len.
    pub fn emit(&self) -> Result<[u8; NLMSG_HDRLEN], TooLong> {
        let len = u32::try_from(self.len).map_err(|_| TooLong)?;
        let mut h = [0u8; NLMSG_HDRLEN];
        h[0..4].copy_from_slice(&len.to_ne_bytes());
        h[4..6].copy_from_slice(&self.kind.to_ne_bytes());
        h[6..8].copy_from_slice(&self.flags.to_ne_bytes());
        h[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        h[12..16].copy_from_slice(&self.pid.to_ne_bytes());
        Ok(h)
    }
}

/// One message of a datagram: its checked header and where it starts. It holds no borrow, so
/// the datagram's buffer can be written (a packet rewritten in place) while messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    pub start: usize,
    pub header: Header,
}

impl Message {
    /// The message's bytes, header included, inside the datagram it was split from (empty if
    /// given another, shorter buffer).
    pub fn bytes<'a>(&self, dgram: &'a [u8]) -> &'a [u8] {
        let end = self.start.saturating_add(self.header.len);
        dgram.get(self.start..end).unwrap_or(&[])
    }
}

/// Splits a received datagram into its messages (NLMSG_OK / NLMSG_NEXT); stops at the first
/// malformed header.
pub fn messages(dgram: &[u8]) -> impl Iterator<Item = Message> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = Header::parse(dgram.get(at..)?)?;
        let m = Message { start: at, header };
        at = at.saturating_add(align4(header.len));
        Some(m)
    })
}

/// What an NLMSG_ERROR or NLMSG_DONE message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// NLMSG_ERROR with error 0: the request it answers succeeded.
    Ack,
    /// NLMSG_ERROR, or NLMSG_DONE ending a failed dump: this errno (positive).
    Errno(i32),
    /// NLMSG_DONE ending a dump that completed.
    Done,
    /// An NLMSG_ERROR too short to hold its error code.
    Truncated,
}

/// The status of `msg` (one message's bytes), `None` if it is neither NLMSG_ERROR nor
/// NLMSG_DONE or its header is malformed. The int after the header is 0 or a negated errno
/// (struct nlmsgerr; netlink_dump_done's dump_done_errno). A DONE without it counts as done.
pub fn status(msg: &[u8]) -> Option<Status> {
    let h = Header::parse(msg)?;
    let code = msg
        .get(NLMSG_HDRLEN..h.len)
        .and_then(|b| b.get(..4))
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes);
    match (h.kind, code) {
        (NLMSG_ERROR, None) => Some(Status::Truncated),
        (NLMSG_ERROR, Some(0)) => Some(Status::Ack),
        (NLMSG_DONE, None) => Some(Status::Done),
        (NLMSG_DONE, Some(e)) if e >= 0 => Some(Status::Done),
        (NLMSG_ERROR | NLMSG_DONE, Some(e)) => Some(Status::Errno(e.saturating_neg())),
        _ => None,
    }
}

/// One attribute: its type without the flag bits, its payload, and where that payload starts
/// in the bytes walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub data: &'a [u8],
    pub offset: usize,
}

/// An attribute shorter than its own header or running past the bytes that hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("netlink attribute shorter than its header or running past its container")]
pub struct BadAttr;

/// The attributes in `buf`, in order (nla_for_each_attr). A malformed one is yielded as
/// `Err` and ends the walk; fewer than 4 trailing bytes end it quietly, as in the kernel.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, BadAttr>> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = buf.get(at..)?;
        let (Some(len), Some(kind)) = (rest.get(0..2), rest.get(2..4)) else {
            return None;
        };
        let len = usize::from(u16::from_ne_bytes([len[0], len[1]]));
        let kind = u16::from_ne_bytes([kind[0], kind[1]]) & NLA_TYPE_MASK;
        match rest.get(NLA_HDRLEN..len.max(NLA_HDRLEN)) {
            Some(data) if len >= NLA_HDRLEN => {
                let offset = at + NLA_HDRLEN;
                at += align4(len);
                Some(Ok(Attr { kind, data, offset }))
            }
            _ => {
                at = buf.len();
                Some(Err(BadAttr))
            }
        }
    })
}

/// Builds one request: the netlink header, the family's fixed header, then attributes, each
/// padded to 4 bytes. A length that would not fit its field is remembered and makes
/// [`Writer::finish`] refuse the message, so a wrapped length is never sent.
#[derive(Debug)]
pub struct Writer {
    out: Vec<u8>,
    too_long: bool,
}

impl Writer {
    /// A message of type `kind`; its length is written by [`Writer::finish`].
    pub fn new(kind: u16, flags: u16, seq: u32) -> Writer {
        let mut out = Vec::with_capacity(256);
        let header = Header {
            len: NLMSG_HDRLEN,
            kind,
            flags,
            seq,
            pid: 0,
        };
        // A 16-byte length always fits.
        out.extend_from_slice(&header.emit().unwrap_or([0; NLMSG_HDRLEN]));
        Writer {
            out,
            too_long: false,
        }
    }

    /// An nfnetlink message: the header and the nfgenmsg `{family, version, res_id}`.
    pub fn nfgen(kind: u16, flags: u16, seq: u32, family: u8, version: u8, res_id: u16) -> Writer {
        let mut w = Writer::new(kind, flags, seq);
        w.fixed(&[family, version]);
        w.fixed(&res_id.to_be_bytes());
        w
    }

    /// Appends bytes of the family's fixed header (nfgenmsg, ifaddrmsg, ifinfomsg ...), which
    /// come before the attributes and are 4-byte multiples in every family.
    pub fn fixed(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Appends one attribute and its padding.
    pub fn attr(&mut self, kind: u16, data: &[u8]) {
        let Some(len) = attr_len(data.len()) else {
            self.too_long = true;
            return;
        };
        self.out.extend_from_slice(&len.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(data);
        self.out.resize(align4(self.out.len()), 0);
    }

    /// Appends a nested attribute holding what `fill` writes, flagged NLA_F_NESTED as the
    /// kernel flags its own.
    pub fn nest(&mut self, kind: u16, fill: impl FnOnce(&mut Writer)) {
        let start = self.out.len();
        self.out.extend_from_slice(&0u16.to_ne_bytes());
        self.out
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        fill(self);
        match u16::try_from(self.out.len() - start) {
            Ok(len) => self.out[start..start + 2].copy_from_slice(&len.to_ne_bytes()),
            Err(_) => self.too_long = true,
        }
    }

    /// The finished message, its length written; `TooLong` if any length did not fit.
    pub fn finish(mut self) -> Result<Vec<u8>, TooLong> {
        let len = u32::try_from(self.out.len()).map_err(|_| TooLong)?;
        if self.too_long {
            return Err(TooLong);
        }
        self.out[0..4].copy_from_slice(&len.to_ne_bytes());
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_message_is_header_nfgenmsg_and_padded_attributes() {
        let mut w = Writer::nfgen(0x0102, 0x0005, 7, 2, 1, 0x0304);
        w.attr(9, &[1, 2, 3]);
        let msg = w.finish().unwrap();
        assert_eq!(msg.len(), 16 + 4 + 8);
        assert_eq!(
            Header::parse(&msg),
            Some(Header {
                len: 28,
                kind: 0x0102,
                flags: 0x0005,
                seq: 7,
                pid: 0
            })
        );
        assert_eq!(&msg[16..20], &[2, 1, 3, 4], "nfgenmsg, res_id big endian");
        assert_eq!(&msg[20..24], &[7, 0, 9, 0], "attr length unpadded");
        assert_eq!(&msg[24..28], &[1, 2, 3, 0], "payload padded");
        assert_eq!((align4(5), align4(8)), (8, 8));
    }

    #[test]
    fn nests_carry_their_length_and_the_nested_flag() {
        let mut w = Writer::new(1, 0, 0);
        w.nest(3, |w| {
            w.attr(1, &[0xaa]);
            w.nest(2, |w| w.attr(4, &5u32.to_be_bytes()));
        });
        let msg = w.finish().unwrap();
        let top: Vec<_> = attrs(&msg[16..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].kind, top[0].offset, top[0].data.len()), (3, 4, 20));
        assert_eq!(
            u16::from_ne_bytes([msg[18], msg[19]]),
            3 | NLA_F_NESTED,
            "flag on the wire, not in the walked type"
        );
        let inner: Vec<_> = attrs(top[0].data).collect::<Result<_, _>>().unwrap();
        assert_eq!((inner[0].kind, inner[0].data), (1, &[0xaa][..]));
        assert_eq!(inner[1].kind, 2);
        let leaf: Vec<_> = attrs(inner[1].data).collect::<Result<_, _>>().unwrap();
        assert_eq!((leaf[0].kind, leaf[0].data), (4, &[0, 0, 0, 5][..]));
    }

    #[test]
    fn lengths_that_do_not_fit_refuse_the_message() {
        let mut w = Writer::new(1, 0, 0);
        w.attr(1, &vec![0; MAX_ATTR_PAYLOAD]);
        assert_eq!(w.finish().map(|m| m.len()), Ok(16 + 65535 + 1));
        let mut w = Writer::new(1, 0, 0);
        w.attr(1, &vec![0; MAX_ATTR_PAYLOAD + 1]);
        assert_eq!(w.finish(), Err(TooLong));
        // Every attribute fits, their nest does not.
        let mut w = Writer::new(1, 0, 0);
        w.nest(2, |w| {
            w.attr(1, &vec![0; 40_000]);
            w.attr(1, &vec![0; 40_000]);
        });
        assert_eq!(w.finish(), Err(TooLong));
        assert_eq!(attr_len(MAX_ATTR_PAYLOAD), Some(u16::MAX));
        assert_eq!(attr_len(MAX_ATTR_PAYLOAD + 1), None);
        assert_eq!(attr_len(usize::MAX), None);
    }

    #[test]
    fn a_datagram_splits_at_aligned_message_lengths() {
        let mut w = Writer::new(20, NLM_F_MULTI, 5);
        w.attr(1, &[1, 2, 3]);
        let mut dgram = w.finish().unwrap();
        // The writer pads every attribute; a length without the padding still splits at the
        // aligned end.
        dgram[0..4].copy_from_slice(&23u32.to_ne_bytes());
        dgram.extend(Writer::new(NLMSG_DONE, NLM_F_MULTI, 5).finish().unwrap());
        let msgs: Vec<_> = messages(&dgram).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].start, msgs[0].header.len), (0, 23));
        assert_eq!(
            (msgs[1].start, msgs[1].header.kind, msgs[1].header.seq),
            (24, NLMSG_DONE, 5)
        );
        assert_eq!(msgs[1].bytes(&dgram).len(), 16);
        assert_eq!(msgs[1].bytes(&dgram[..20]), &[] as &[u8]);
        // A length past the datagram, and one below a header's.
        let mut bad = dgram.clone();
        bad[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0);
        assert_eq!(Header::parse(&dgram[..15]), None);
    }

    fn with_code(kind: u16, code: Option<i32>) -> Vec<u8> {
        let mut w = Writer::new(kind, 0, 77);
        if let Some(c) = code {
            w.fixed(&c.to_ne_bytes());
        }
        w.finish().unwrap()
    }

    #[test]
    fn reads_acks_errors_and_dump_ends() {
        assert_eq!(status(&with_code(NLMSG_ERROR, Some(0))), Some(Status::Ack));
        assert_eq!(
            status(&with_code(NLMSG_ERROR, Some(-17))),
            Some(Status::Errno(17))
        );
        assert_eq!(
            status(&with_code(NLMSG_ERROR, None)),
            Some(Status::Truncated)
        );
        assert_eq!(status(&with_code(NLMSG_DONE, Some(0))), Some(Status::Done));
        assert_eq!(status(&with_code(NLMSG_DONE, None)), Some(Status::Done));
        assert_eq!(
            status(&with_code(NLMSG_DONE, Some(-4))),
            Some(Status::Errno(4))
        );
        assert_eq!(
            status(&with_code(NLMSG_ERROR, Some(i32::MIN))),
            Some(Status::Errno(i32::MAX))
        );
        assert_eq!(status(&with_code(20, Some(0))), None);
        // The code must lie inside the message's own length, not after it.
        let mut cut = with_code(NLMSG_ERROR, Some(-1));
        cut[0..4].copy_from_slice(&16u32.to_ne_bytes());
        assert_eq!(status(&cut), Some(Status::Truncated));
    }

    #[test]
    fn attribute_walk_stops_at_the_first_malformed_one() {
        let mut b = Vec::new();
        b.extend_from_slice(&[5, 0, 1, 0x80, 9, 0, 0, 0]); // type 1, nested flag, 1 byte
        b.extend_from_slice(&[4, 0, 2, 0]); // type 2, empty
        b.extend_from_slice(&[2, 0, 3, 0]); // shorter than its header
        b.extend_from_slice(&[4, 0, 4, 0]); // never reached
        let got: Vec<_> = attrs(&b).collect();
        assert_eq!(
            got,
            [
                Ok(Attr {
                    kind: 1,
                    data: &[9],
                    offset: 4
                }),
                Ok(Attr {
                    kind: 2,
                    data: &[],
                    offset: 12
                }),
                Err(BadAttr)
            ]
        );
        // Running past its container; three trailing bytes end the walk quietly.
        assert_eq!(attrs(&[8, 0, 1, 0, 0]).collect::<Vec<_>>(), [Err(BadAttr)]);
        assert_eq!(attrs(&[4, 0, 1, 0, 0, 0, 0]).count(), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for m in messages(&bytes) {
                let msg = m.bytes(&bytes);
                prop_assert_eq!(msg.len(), m.header.len);
                let _ = status(msg);
            }
            for a in attrs(&bytes).flatten() {
                prop_assert!(a.offset + a.data.len() <= bytes.len());
            }
        }

        #[test]
        fn written_attributes_walk_back(
            items in proptest::collection::vec(
                (0u16..0x3fff, proptest::collection::vec(any::<u8>(), 0..40)), 0..8),
            kind in any::<u16>(), flags in any::<u16>(), seq in any::<u32>(),
        ) {
            let mut w = Writer::new(kind, flags, seq);
            for (k, d) in &items {
                w.attr(*k, d);
            }
            let msg = w.finish().unwrap();
            let m: Vec<_> = messages(&msg).collect();
            prop_assert_eq!(m.len(), 1);
            prop_assert_eq!(
                (m[0].header.len, m[0].header.kind, m[0].header.flags, m[0].header.seq),
                (msg.len(), kind, flags, seq)
            );
            let back: Vec<(u16, Vec<u8>)> = attrs(&msg[NLMSG_HDRLEN..])
                .map(|a| a.map(|a| (a.kind, a.data.to_vec())))
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(back, items);
        }
    }
}
