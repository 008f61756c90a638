//! The one way the pair authenticates what it sends each other: HMAC-SHA256 under the pair's
//! key over the concatenation of a message's parts (a domain label, the session's nonces, the
//! header, the body — whatever the protocol binds), checked in constant time. The heartbeat
//! datagram, the amgr peer exchange and slbd's replication frames differ in which parts they
//! bind and how long a tag they carry, not in how a tag is made or checked. Pure, but for
//! [`nonce`], which reads the kernel's random source.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A whole tag's length.
pub const TAG_LEN: usize = 32;
/// The shortest tag [`verify`] accepts: a truncated HMAC-SHA256 keeps its strength down to
/// half its length (RFC 2104 §5), and a forger gets one try per frame.
pub const MIN_TAG_LEN: usize = 16;

/// The tag of `parts` under `key`, in full; a protocol that carries a truncated tag sends its
/// first bytes.
pub fn tag(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    mac(key, parts).finalize().into_bytes().into()
}

/// A tag that does not match, or one shorter than [`MIN_TAG_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct BadTag;

/// Checks `given` (a whole tag, or its first bytes) against `parts` in constant time.
pub fn verify(key: &[u8], parts: &[&[u8]], given: &[u8]) -> Result<(), BadTag> {
    if !(MIN_TAG_LEN..=TAG_LEN).contains(&given.len()) {
        return Err(BadTag);
    }
    mac(key, parts)
        .verify_truncated_left(given)
        .map_err(|_| BadTag)
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m
}

/// `N` fresh bytes from the kernel's random source, for a session nonce or a boot id.
pub fn nonce<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut n = [0u8; N];
    getrandom::getrandom(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tag_is_hmac_sha256_of_the_parts_concatenated() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let got = tag(b"Jefe", &[b"what do ya ", b"want for nothing?"]);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want);
    }

    #[test]
    fn whole_and_truncated_tags_verify_and_short_or_wrong_ones_do_not() {
        let t = tag(KEY, &[b"req", b"nonce", b"body"]);
        assert_eq!(verify(KEY, &[b"req", b"nonce", b"body"], &t), Ok(()));
        assert_eq!(verify(KEY, &[b"reqnonce", b"body"], &t[..16]), Ok(()));
        assert_eq!(verify(KEY, &[b"rep", b"nonce", b"body"], &t), Err(BadTag));
        assert_eq!(
            verify(b"another key", &[b"req", b"nonce", b"body"], &t),
            Err(BadTag)
        );
        assert_eq!(
            verify(KEY, &[b"req", b"nonce", b"body"], &t[..15]),
            Err(BadTag)
        );
        assert_eq!(verify(KEY, &[b"req", b"nonce", b"body"], &[]), Err(BadTag));
    }

    #[test]
    fn nonces_differ() {
        let (a, b) = (nonce::<16>().unwrap(), nonce::<16>().unwrap());
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn a_flipped_bit_anywhere_fails(body in prop::collection::vec(any::<u8>(), 1..100), bit in 0usize..800) {
            let t = tag(KEY, &[&body]);
            let mut forged = body.clone();
            let i = bit % (forged.len() * 8);
            forged[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(verify(KEY, &[&forged], &t), Err(BadTag));
            prop_assert_eq!(verify(KEY, &[&body], &t), Ok(()));
        }
    }
}
