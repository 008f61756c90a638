//! The heartbeat datagram: who sends it, its sequence, the state of each managed application
//! and the configuration generation, authenticated with HMAC-SHA256 under the pair's shared key.
//! Pure: [`emit`] writes bytes, [`Receiver::accept`] checks them (length, magic, version,
//! MAC, freshness, replay) before anything is believed.
//!
//! Layout (big endian), 43 bytes + 3 per application + the 32-byte MAC:
//! ```text
//! "SLBH" | version u8 | node u32 | boot u64 | seq u64 | sent_ms u64 | generation u64 |
//! link u8 | apps u8 | apps × (id u8, state u8, flags u8) | HMAC-SHA256 of everything before
//! ```
//! The same heartbeat goes out on every link, each copy naming its link under the MAC, so each
//! link keeps its own replay state and a copy cannot be replayed onto another link.

use slb_common::auth;

const MAGIC: &[u8; 4] = b"SLBH";
const VERSION: u8 = 1;
const HEAD: usize = 4 + 1 + 4 + 8 + 8 + 8 + 8 + 1 + 1;
const MAC_LEN: usize = auth::TAG_LEN;
/// Applications in one message at most.
pub const MAX_APPS: usize = 16;
/// Largest datagram a valid heartbeat can be.
pub const MAX_LEN: usize = HEAD + MAX_APPS * 3 + MAC_LEN;

/// An application's state as the pair exchanges it (the Application Manager's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AppState {
    Offline = 0,
    Init = 1,
    Standby = 2,
    Active = 3,
    Maintenance = 4,
    Failed = 5,
}

impl AppState {
    fn from_u8(v: u8) -> Option<AppState> {
        use AppState::*;
        [Offline, Init, Standby, Active, Maintenance, Failed]
            .into_iter()
            .find(|s| *s as u8 == v)
    }
}

/// One application's entry in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct App {
    pub id: u8,
    pub state: AppState,
    pub primary: bool,
    pub inhibited: bool,
}

/// A heartbeat's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub node: u32,
    /// Chosen at random when the sender starts, so a restarted sender's sequence can begin
    /// again at 0 without looking like a replay.
    pub boot: u64,
    pub seq: u64,
    /// The sender's wall clock, ms since the Unix epoch.
    pub sent_ms: u64,
    pub generation: u64,
    /// Which link this copy was sent on.
    pub link: u8,
    pub apps: Vec<App>,
}

/// Why a datagram was dropped. Each is counted; none is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("datagram too short or too long")]
    Length,
    #[error("not a heartbeat (bad magic)")]
    Magic,
    #[error("heartbeat version not supported")]
    Version,
    #[error("malformed application list")]
    Apps,
    #[error("authentication failed")]
    Mac,
    #[error("sent by this node (a loop, or a forgery of our own id)")]
    Own,
    #[error("clock too far from ours (stale or replayed)")]
    Stale,
    #[error("sequence already seen (replayed)")]
    Replay,
    #[error("sent for another link")]
    WrongLink,
}

/// Writes `hb` authenticated with `key`. Panics only if more than [`MAX_APPS`] applications
/// are given, which is a programming error.
pub fn emit(hb: &Heartbeat, key: &[u8]) -> Vec<u8> {
    assert!(hb.apps.len() <= MAX_APPS, "at most {MAX_APPS} applications");
    let mut out = Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&hb.node.to_be_bytes());
    out.extend_from_slice(&hb.boot.to_be_bytes());
    out.extend_from_slice(&hb.seq.to_be_bytes());
    out.extend_from_slice(&hb.sent_ms.to_be_bytes());
    out.extend_from_slice(&hb.generation.to_be_bytes());
    out.push(hb.link);
    out.push(hb.apps.len() as u8);
    for a in &hb.apps {
        out.extend_from_slice(&[
            a.id,
            a.state as u8,
            u8::from(a.primary) | (u8::from(a.inhibited) << 1),
        ]);
    }
    let tag = auth::tag(key, &[&out]);
    out.extend_from_slice(&tag);
    out
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("length checked"))
}

/// Checks and reads a datagram without any replay state (the MAC is verified).
pub fn parse(buf: &[u8], key: &[u8]) -> Result<Heartbeat, Rejected> {
    if buf.len() < HEAD + MAC_LEN || buf.len() > MAX_LEN {
        return Err(Rejected::Length);
    }
    if &buf[..4] != MAGIC {
        return Err(Rejected::Magic);
    }
    if buf[4] != VERSION {
        return Err(Rejected::Version);
    }
    let n = usize::from(buf[HEAD - 1]);
    if n > MAX_APPS || buf.len() != HEAD + n * 3 + MAC_LEN {
        return Err(Rejected::Length);
    }
    let body = &buf[..buf.len() - MAC_LEN];
    auth::verify(key, &[body], &buf[buf.len() - MAC_LEN..]).map_err(|_| Rejected::Mac)?;
    let apps = (0..n)
        .map(|i| {
            let at = HEAD + i * 3;
            let state = AppState::from_u8(buf[at + 1]).ok_or(Rejected::Apps)?;
            let flags = buf[at + 2];
            if flags & !3 != 0 {
                return Err(Rejected::Apps);
            }
            Ok(App {
                id: buf[at],
                state,
                primary: flags & 1 != 0,
                inhibited: flags & 2 != 0,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Heartbeat {
        node: u32::from_be_bytes(buf[5..9].try_into().expect("length checked")),
        boot: be64(buf, 9),
        seq: be64(buf, 17),
        sent_ms: be64(buf, 25),
        generation: be64(buf, 33),
        link: buf[41],
        apps,
    })
}

/// Accepts the heartbeats of one link: authentic, from the peer, sent for this link, fresh,
/// and newer than any seen on it.
#[derive(Debug, Clone)]
pub struct Receiver {
    own_node: u32,
    link: u8,
    /// How far a sender's clock may be from ours (NTP-synchronised pairs: a few seconds).
    max_skew_ms: u64,
    /// (boot, seq) of the newest heartbeat accepted, and when (our clock) it was sent.
    last: Option<(u64, u64, u64)>,
}

impl Receiver {
    pub fn new(own_node: u32, link: u8, max_skew_ms: u64) -> Receiver {
        Receiver {
            own_node,
            link,
            max_skew_ms,
            last: None,
        }
    }

    /// Checks `buf` at our wall-clock time `now_ms`.
    ///
    /// Replay protection: within one boot, only a higher sequence passes; a different boot
    /// passes only if it was sent after the newest heartbeat accepted, so an old boot's
    /// datagrams cannot be played back; and anything sent further than the allowed skew from
    /// our clock is refused, which bounds how long a recorded datagram stays usable.
    pub fn accept(&mut self, buf: &[u8], key: &[u8], now_ms: u64) -> Result<Heartbeat, Rejected> {
        let hb = parse(buf, key)?;
        if hb.node == self.own_node {
            return Err(Rejected::Own);
        }
        if hb.link != self.link {
            return Err(Rejected::WrongLink);
        }
        if hb.sent_ms.abs_diff(now_ms) > self.max_skew_ms {
            return Err(Rejected::Stale);
        }
        if let Some((boot, seq, sent)) = self.last {
            let newer = if hb.boot == boot {
                hb.seq > seq
            } else {
                hb.sent_ms > sent
            };
            if !newer {
                return Err(Rejected::Replay);
            }
        }
        self.last = Some((hb.boot, hb.seq, hb.sent_ms));
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hb(seq: u64, sent_ms: u64) -> Heartbeat {
        Heartbeat {
            node: 2,
            boot: 77,
            seq,
            sent_ms,
            generation: 5,
            link: 0,
            apps: vec![App {
                id: 1,
                state: AppState::Active,
                primary: true,
                inhibited: false,
            }],
        }
    }

    #[test]
    fn round_trips() {
        let h = hb(9, 1_000_000);
        let bytes = emit(&h, KEY);
        assert_eq!(bytes.len(), HEAD + 3 + MAC_LEN);
        assert_eq!(parse(&bytes, KEY), Ok(h));
    }

    #[test]
    fn forged_or_damaged_datagrams_are_refused() {
        let bytes = emit(&hb(1, 1_000_000), KEY);
        assert_eq!(
            parse(&bytes, b"another key"),
            Err(Rejected::Mac),
            "wrong key"
        );
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(
                parse(&b, KEY).is_err(),
                "a flipped bit at {i} must not pass"
            );
        }
        assert_eq!(parse(&bytes[..bytes.len() - 1], KEY), Err(Rejected::Length));
        assert_eq!(parse(b"SLBH", KEY), Err(Rejected::Length));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(parse(&b, KEY), Err(Rejected::Magic));
    }

    #[test]
    fn replays_stale_and_own_messages_are_refused() {
        let mut r = Receiver::new(1, 0, 5_000);
        let now = 10_000_000;
        assert!(r.accept(&emit(&hb(1, now), KEY), KEY, now).is_ok());
        assert_eq!(
            r.accept(&emit(&hb(1, now), KEY), KEY, now),
            Err(Rejected::Replay),
            "same seq"
        );
        assert!(r
            .accept(&emit(&hb(2, now + 100), KEY), KEY, now + 100)
            .is_ok());
        assert_eq!(
            r.accept(&emit(&hb(1, now), KEY), KEY, now + 200),
            Err(Rejected::Replay),
            "older seq"
        );
        assert_eq!(
            r.accept(&emit(&hb(3, now - 60_000), KEY), KEY, now),
            Err(Rejected::Stale)
        );
        assert_eq!(
            r.accept(&emit(&hb(3, now + 60_000), KEY), KEY, now),
            Err(Rejected::Stale)
        );
        let mut own = hb(9, now);
        own.node = 1;
        assert_eq!(r.accept(&emit(&own, KEY), KEY, now), Err(Rejected::Own));
    }

    #[test]
    fn each_link_has_its_own_replay_state_and_copies_cannot_change_link() {
        let now = 10_000_000;
        let (mut r0, mut r1) = (Receiver::new(1, 0, 5_000), Receiver::new(1, 1, 5_000));
        let on0 = emit(&hb(1, now), KEY);
        let mut h = hb(1, now);
        h.link = 1;
        let on1 = emit(&h, KEY);
        assert!(r0.accept(&on0, KEY, now).is_ok());
        assert!(
            r1.accept(&on1, KEY, now).is_ok(),
            "the same heartbeat on the other link is no replay"
        );
        let mut r1b = Receiver::new(1, 1, 5_000);
        assert_eq!(
            r1b.accept(&on0, KEY, now),
            Err(Rejected::WrongLink),
            "link 0's copy replayed on link 1"
        );
    }

    #[test]
    fn a_restarted_sender_is_accepted_but_its_old_boot_is_not() {
        let mut r = Receiver::new(1, 0, 5_000);
        let now = 10_000_000;
        let old = emit(&hb(500, now), KEY);
        r.accept(&old, KEY, now).unwrap();
        let mut restarted = hb(0, now + 1_000);
        restarted.boot = 78;
        assert!(
            r.accept(&emit(&restarted, KEY), KEY, now + 1_000).is_ok(),
            "new boot, seq from 0"
        );
        assert_eq!(
            r.accept(&old, KEY, now + 1_100),
            Err(Rejected::Replay),
            "the old boot's datagram"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, KEY);
        }
    }
}
