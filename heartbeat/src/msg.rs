//! The heartbeat datagram: who sends it, its sequence, the state of each managed application
//! and the configuration generation, authenticated with HMAC-SHA256 under the pair's shared key.
//! Pure: [`emit`] writes bytes, [`Receiver::accept`] checks them (length, magic, version,
//! MAC, freshness, replay) before anything is believed.
//!
//! Layout (big endian), 51 bytes + 3 per application + the 32-byte MAC:
//! ```text
//! "SLBH" | version u8 | node u32 | boot u64 | echo u64 | seq u64 | sent_ms u64 |
//! generation u64 | link u8 | apps u8 | apps × (id u8, state u8, flags u8) |
//! HMAC-SHA256 of everything before
//! ```
//! The same heartbeat goes out on every link, each copy naming its link under the MAC, so each
//! link keeps its own replay state and a copy cannot be replayed onto another link.
//!
//! Freshness needs no clock: each side starts with a random boot and echoes the dual's, so a
//! heartbeat that echoes our boot was sent after we started; within one boot only a higher
//! sequence passes, and a boot the dual has left behind is never taken back. Two balancers
//! whose clocks disagree (a virtual machine's clock after a reboot, a pair without NTP) still
//! hear each other, where a window on the sender's clock would make each refuse the other and
//! both take the VIP.

use std::collections::VecDeque;

use slb_common::auth;

const MAGIC: &[u8; 4] = b"SLBH";
const VERSION: u8 = 2;
const HEAD: usize = 4 + 1 + 4 + 8 + 8 + 8 + 8 + 8 + 1 + 1;
/// Boots of the dual left behind that a link still refuses.
const RETIRED: usize = 32;
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
    /// The receiver's boot as the sender last heard it (0: not heard yet).
    pub echo: u64,
    pub seq: u64,
    /// The sender's wall clock, ms since the Unix epoch: shown, never trusted.
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
    #[error("does not echo our boot yet (the dual has not heard us, or a replay from before we started)")]
    Unconfirmed,
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
    out.extend_from_slice(&hb.echo.to_be_bytes());
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
        echo: be64(buf, 17),
        seq: be64(buf, 25),
        sent_ms: be64(buf, 33),
        generation: be64(buf, 41),
        link: buf[49],
        apps,
    })
}

/// Accepts the heartbeats of one link: authentic, from the dual, sent for this link, sent
/// after we started, and newer than any seen on it.
#[derive(Debug, Clone)]
pub struct Receiver {
    own_node: u32,
    own_boot: u64,
    link: u8,
    /// (boot, seq) of the newest heartbeat accepted.
    last: Option<(u64, u64)>,
    /// The dual's boots before its current one, newest last.
    retired: VecDeque<u64>,
    /// The dual's boot as its latest authentic heartbeat gave it, confirmed or not.
    learned: Option<u64>,
}

impl Receiver {
    /// `own_boot` is the boot this node's heartbeats carry; the dual must echo it.
    pub fn new(own_node: u32, own_boot: u64, link: u8) -> Receiver {
        Receiver {
            own_node,
            own_boot,
            link,
            last: None,
            retired: VecDeque::new(),
            learned: None,
        }
    }

    /// The dual's boot to echo in our heartbeats: taken from any authentic heartbeat not of
    /// a boot left behind, so first contact completes in one exchange. A replay can set it
    /// wrong only until the dual's next heartbeat sets it back.
    pub fn learned(&self) -> Option<u64> {
        self.learned
    }

    /// Checks `buf`.
    ///
    /// Replay protection: a heartbeat must echo our boot, which no datagram recorded before
    /// we started can; within one of the dual's boots only a higher sequence passes; and once
    /// a new boot of the dual is accepted, the old one never is again. A recorded heartbeat
    /// can therefore only be one the dual sent after the newest we accepted, held back by
    /// whoever recorded it: it delays our noticing the dual's death by no more than it was
    /// held, and holding it looked like silence.
    pub fn accept(&mut self, buf: &[u8], key: &[u8]) -> Result<Heartbeat, Rejected> {
        let hb = parse(buf, key)?;
        if hb.node == self.own_node {
            return Err(Rejected::Own);
        }
        if hb.link != self.link {
            return Err(Rejected::WrongLink);
        }
        if self.retired.contains(&hb.boot) {
            return Err(Rejected::Replay);
        }
        self.learned = Some(hb.boot);
        if hb.echo != self.own_boot {
            return Err(Rejected::Unconfirmed);
        }
        match self.last {
            Some((boot, seq)) if boot == hb.boot && hb.seq <= seq => return Err(Rejected::Replay),
            Some((boot, _)) if boot != hb.boot => {
                if self.retired.len() == RETIRED {
                    self.retired.pop_front();
                }
                self.retired.push_back(boot);
            }
            _ => {}
        }
        self.last = Some((hb.boot, hb.seq));
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_heartbeat_fuzz_seeds_are_these_fixtures() {
        let many = Heartbeat {
            apps: (0..4)
                .map(|id| App {
                    id,
                    state: AppState::Standby,
                    primary: false,
                    inhibited: id == 2,
                })
                .collect(),
            ..hb(3, 1_000_000)
        };
        for (name, h) in [
            ("first_contact", hb(1, 1_000_000)),
            ("confirmed", confirmed(5)),
            ("four_apps", many),
        ] {
            slb_common::fuzz_seed::check("heartbeat", name, &emit(&h, KEY)).unwrap();
        }
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hb(seq: u64, sent_ms: u64) -> Heartbeat {
        Heartbeat {
            node: 2,
            boot: 77,
            echo: 0,
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

    /// Node 1's boot, which node 2's heartbeats in these tests echo.
    const OURS: u64 = 4242;

    fn confirmed(seq: u64) -> Heartbeat {
        Heartbeat {
            echo: OURS,
            ..hb(seq, 1_000_000)
        }
    }

    #[test]
    fn replays_and_own_messages_are_refused() {
        let mut r = Receiver::new(1, OURS, 0);
        assert!(r.accept(&emit(&confirmed(1), KEY), KEY).is_ok());
        assert_eq!(
            r.accept(&emit(&confirmed(1), KEY), KEY),
            Err(Rejected::Replay),
            "same seq"
        );
        assert!(r.accept(&emit(&confirmed(2), KEY), KEY).is_ok());
        assert_eq!(
            r.accept(&emit(&confirmed(1), KEY), KEY),
            Err(Rejected::Replay),
            "older seq"
        );
        let own = Heartbeat {
            node: 1,
            ..confirmed(9)
        };
        assert_eq!(r.accept(&emit(&own, KEY), KEY), Err(Rejected::Own));
    }

    #[test]
    fn a_heartbeat_recorded_before_we_started_is_refused_whatever_its_clock_says() {
        let mut r = Receiver::new(1, OURS, 0);
        let before_us = Heartbeat {
            echo: 999,
            ..hb(700, 1_000_000)
        };
        assert_eq!(
            r.accept(&emit(&before_us, KEY), KEY),
            Err(Rejected::Unconfirmed)
        );
        assert_eq!(
            r.learned(),
            Some(77),
            "its boot is echoed, so the dual can confirm"
        );
    }

    #[test]
    fn a_dual_whose_clock_is_hours_off_is_heard_after_one_exchange() {
        let hour = 3_600_000;
        let now = 1_800_000_000_000u64;
        for sent_ms in [0, now - 5 * hour, now + 5 * hour, u64::MAX] {
            let mut r = Receiver::new(1, OURS, 0);
            let first = Heartbeat {
                echo: 0,
                ..hb(1, sent_ms)
            };
            assert_eq!(
                r.accept(&emit(&first, KEY), KEY),
                Err(Rejected::Unconfirmed),
                "the dual has not heard us yet"
            );
            assert_eq!(r.learned(), Some(77));
            let answer = Heartbeat {
                echo: OURS,
                ..hb(2, sent_ms)
            };
            assert!(
                r.accept(&emit(&answer, KEY), KEY).is_ok(),
                "sent_ms {sent_ms}"
            );
        }
    }

    #[test]
    fn each_link_has_its_own_replay_state_and_copies_cannot_change_link() {
        let (mut r0, mut r1) = (Receiver::new(1, OURS, 0), Receiver::new(1, OURS, 1));
        let on0 = emit(&confirmed(1), KEY);
        let on1 = emit(
            &Heartbeat {
                link: 1,
                ..confirmed(1)
            },
            KEY,
        );
        assert!(r0.accept(&on0, KEY).is_ok());
        assert!(
            r1.accept(&on1, KEY).is_ok(),
            "the same heartbeat on the other link is no replay"
        );
        let mut r1b = Receiver::new(1, OURS, 1);
        assert_eq!(
            r1b.accept(&on0, KEY),
            Err(Rejected::WrongLink),
            "link 0's copy replayed on link 1"
        );
    }

    #[test]
    fn a_restarted_dual_is_accepted_but_its_old_boot_never_again() {
        let mut r = Receiver::new(1, OURS, 0);
        let old = emit(&confirmed(500), KEY);
        let older = emit(&confirmed(600), KEY);
        r.accept(&old, KEY).unwrap();
        let restarted = Heartbeat {
            boot: 78,
            ..confirmed(0)
        };
        assert!(
            r.accept(&emit(&restarted, KEY), KEY).is_ok(),
            "new boot, seq from 0"
        );
        assert_eq!(r.accept(&old, KEY), Err(Rejected::Replay));
        assert_eq!(
            r.accept(&older, KEY),
            Err(Rejected::Replay),
            "not even a higher sequence of the old boot"
        );
        assert_eq!(
            r.learned(),
            Some(78),
            "a replay does not change what we echo"
        );
    }

    proptest! {
        /// Whatever order a recorder plays them back in, each heartbeat the dual sent is
        /// accepted at most once, and never one of a boot after a newer boot was accepted.
        #[test]
        fn recorded_heartbeats_are_accepted_at_most_once(
            order in prop::collection::vec((0u64..3, 0u64..20), 1..80),
        ) {
            let mut r = Receiver::new(1, OURS, 0);
            let mut taken = std::collections::HashSet::new();
            let mut newest_boot: Option<u64> = None;
            let mut left: Vec<u64> = Vec::new();
            for (boot, seq) in order {
                let h = Heartbeat { boot: 100 + boot, ..confirmed(seq) };
                if r.accept(&emit(&h, KEY), KEY).is_ok() {
                    prop_assert!(taken.insert((h.boot, seq)), "accepted twice: {:?}", (h.boot, seq));
                    prop_assert!(!left.contains(&h.boot), "boot {} was left behind", h.boot);
                    if let Some(b) = newest_boot.filter(|b| *b != h.boot) {
                        left.push(b);
                    }
                    newest_boot = Some(h.boot);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes, KEY);
        }
    }
}
