//! Internet checksum arithmetic (RFC 1071) and its incremental update (RFC 1624). Pure.

use std::net::Ipv4Addr;

/// One's-complement sum of `data` as 16-bit big-endian words, added to `acc` (not folded).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    // 32-bit words into a 64-bit accumulator: carries pile up in the high bits and fold()
    // returns them, which RFC 1071 §2(B) allows (the sum is independent of word width).
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a wide one's-complement sum into 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of RFC 793 §3.1 / RFC 768 for IPv4.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: u16) -> u64 {
    u64::from(u32::from(src)) + u64::from(u32::from(dst)) + u64::from(protocol) + u64::from(l4_len)
}

/// The full TCP or UDP checksum of `segment` whose own checksum field is at `check_at`
/// (the field is treated as zero).
pub fn l4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8], check_at: usize) -> u16 {
    let acc = sum(
        segment,
        pseudo_header(src, dst, protocol, segment.len() as u16),
    );
    let field = u16::from_be_bytes([segment[check_at], segment[check_at + 1]]);
    // Subtracting the field in one's complement is adding its complement.
    !fold(acc + u64::from(!field))
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 32-bit field changing from `old` to `new`.
pub fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let acc = u64::from(!check)
        + u64::from(!u16::from_be_bytes([old[0], old[1]]))
        + u64::from(!u16::from_be_bytes([old[2], old[3]]))
        + u64::from(u16::from_be_bytes([new[0], new[1]]))
        + u64::from(u16::from_be_bytes([new[2], new[3]]));
    !fold(acc)
}

/// RFC 1624 eqn. 3 for a 16-bit field.
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// Updates the pseudo-header seed a CHECKSUM_PARTIAL packet carries in its checksum field.
/// The seed is stored uncomplemented (the kernel's `inet_proto_csum_replace4` with
/// `pseudohdr`), so the update runs the other way round from [`replace4`].
pub fn replace4_seed(seed: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    !replace4(!seed, old, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
    }

    proptest! {
        #[test]
        fn incremental_update_matches_recomputation(
            mut data in prop::collection::vec(any::<u8>(), 8..64),
            at in 0usize..16,
            new in any::<[u8; 4]>(),
        ) {
            let at = (at * 2).min(data.len() - 4) & !1;
            let before = !fold(sum(&data, 0));
            let old = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            data[at..at + 4].copy_from_slice(&new);
            let after = !fold(sum(&data, 0));
            // 0x0000 and 0xffff are the same number in one's complement.
            let got = replace4(before, old, new);
            prop_assert!(got == after || (got == 0xffff && after == 0) || (got == 0 && after == 0xffff));
        }

        #[test]
        fn replace2_matches_recomputation(mut data in prop::collection::vec(any::<u8>(), 4..40), new in any::<u16>()) {
            let before = !fold(sum(&data, 0));
            let old = u16::from_be_bytes([data[0], data[1]]);
            data[..2].copy_from_slice(&new.to_be_bytes());
            let after = !fold(sum(&data, 0));
            let got = replace2(before, old, new);
            prop_assert!(got == after || (got ^ after) == 0xffff && (got == 0 || after == 0));
        }

        #[test]
        fn seed_update_matches_fresh_seed(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), len in 20u16..1500) {
            let (a, b, c) = (Ipv4Addr::from(a), Ipv4Addr::from(b), Ipv4Addr::from(c));
            let seed = fold(pseudo_header(a, b, 6, len));
            let fresh = fold(pseudo_header(a, c, 6, len));
            let got = replace4_seed(seed, b.octets(), c.octets());
            prop_assert!(got == fresh || (got ^ fresh) == 0xffff && (got == 0 || fresh == 0));
        }
    }
}
