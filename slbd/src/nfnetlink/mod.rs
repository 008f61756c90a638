//! What every nfnetlink message slbd writes shares (NFQUEUE's in `queue::wire`, ctnetlink's in
//! `conntrack::wire`): the netlink and nfgenmsg headers, attributes and their 4-byte
//! alignment. Pure; [`socket`] is the shell that opens the NETLINK_NETFILTER sockets.

pub mod socket;

/// Netlink lengths are padded to 4 bytes (NLMSG_ALIGN, NLA_ALIGN).
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends a netlink header (its length left 0 for [`finish`]; the kernel fills in the
/// sender's port id) and the nfgenmsg `{family, version, res_id}`; returns where it starts.
pub fn put_header(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    nfgen: (u8, u8, u16),
) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    let (family, version, res_id) = nfgen;
    out.extend_from_slice(&[family, version]);
    out.extend_from_slice(&res_id.to_be_bytes());
    start
}

/// Appends one attribute, padded (to 4 bytes of `out`, which starts at a message start).
pub fn put_attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// Writes the length of the message that starts at `start` and runs to the end of `out`.
pub fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_header_nfgenmsg_and_padded_attributes() {
        let mut out = Vec::new();
        let start = put_header(&mut out, 0x0102, 0x0005, 7, (2, 1, 0x0304));
        put_attr(&mut out, 9, &[1, 2, 3]);
        finish(&mut out, start);
        let msg = &out[start..];
        assert_eq!(msg.len(), 16 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 7);
        assert_eq!(&msg[16..20], &[2, 1, 3, 4]);
        assert_eq!(
            u16::from_ne_bytes(msg[20..22].try_into().unwrap()),
            7,
            "attr length unpadded"
        );
        assert_eq!(&msg[24..28], &[1, 2, 3, 0]);
        assert_eq!((align4(5), align4(8)), (8, 8));
    }
}
