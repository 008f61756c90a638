//! The BGP daemon's control-socket replies, as slbd reads them for `--status`: BIRD's remote
//! control protocol (doc/prog: each line starts with a 4-digit code, then `-` when more lines
//! follow or a space on the reply's last; a line continuing the previous code starts with a
//! space; 0xxx ends a reply that succeeded, 8xxx and 9xxx one that failed). Read here: the end
//! of a reply, `show bfd sessions` (table 1020) and `show protocols` (table 1002). Pure: text
//! in, rows out; any bytes are read without panicking, unknown lines are skipped.

use std::net::Ipv4Addr;

/// A BFD session as `show bfd sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSession {
    pub address: Ipv4Addr,
    pub interface: String,
    /// `Up`, `Down`, `Init` or `AdminDown`.
    pub state: String,
    /// When it entered that state, as BIRD prints it.
    pub since: String,
}

/// A protocol as `show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub name: String,
    /// `BGP`, `Kernel`, `BFD`, ...
    pub kind: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// BGP's own state (`Established`, `Active`, `Connect`, ...) and what else it says.
    pub info: String,
}

/// Whether `text` holds a whole reply: `Some(Ok)` when it ended in success, `Some(Err(line))`
/// when BIRD refused the command, `None` while more is to come. The greeting (0001) that
/// opens a session is not a reply's end.
pub fn reply_end(text: &str) -> Option<Result<(), String>> {
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            return None;
        }
        let b = line.as_bytes();
        if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b' ' {
            continue;
        }
        match b[0] {
            b'0' if &line[..4] != "0001" => return Some(Ok(())),
            b'8' | b'9' => return Some(Err(line.trim_end().to_string())),
            _ => {}
        }
    }
    None
}

/// The lines of a reply without their codes, for the table tables a command answers with.
fn rows(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let b = line.as_bytes();
        if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && matches!(b[4], b'-' | b' ') {
            Some(&line[5..])
        } else {
            line.strip_prefix(' ')
        }
    })
}

/// The sessions `show bfd sessions` lists, over every BFD protocol.
pub fn bfd_sessions(text: &str) -> Vec<BfdSession> {
    rows(text)
        .filter_map(|row| {
            let mut f = row.split_whitespace();
            let address = f.next()?.parse().ok()?;
            let interface = f.next()?.to_string();
            let state = f.next()?.to_string();
            let since = f.next()?.to_string();
            Some(BfdSession {
                address,
                interface,
                state,
                since,
            })
        })
        .collect()
}

/// The protocols `show protocols` lists (its header line skipped).
pub fn protocols(text: &str) -> Vec<Protocol> {
    rows(text)
        .filter_map(|row| {
            let mut f = row.split_whitespace();
            let name = f.next()?.to_string();
            let kind = f.next()?.to_string();
            let _table = f.next()?;
            let state = f.next()?.to_string();
            if name == "Name" && kind == "Proto" {
                return None;
            }
            let _since = f.next()?;
            let info = f.collect::<Vec<_>>().join(" ");
            Some(Protocol {
                name,
                kind,
                state,
                info,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What BIRD 2.0.12 sent on its socket here, greeting included, for `show bfd sessions`
    /// and `show protocols` with a BGP neighbour that did not answer (its session Down).
    pub const BFD_CAPTURED: &str = "0001 BIRD 2.0.12 ready.\n1020-bfd1:\n IP address                Interface  State      Since         Interval  Timeout\n 192.168.99.9              vb         Down       18:40:17.533    1.000    0.000\n0000 \n";
    pub const PROTOCOLS_CAPTURED: &str = "0001 BIRD 2.0.12 ready.\n2002-Name       Proto      Table      State  Since         Info\n1002-device1    Device     ---        up     18:40:17.531  \n bfd1       BFD        ---        up     18:40:17.531  \n up1        BGP        ---        start  18:40:17.531  Active        \n0000 \n";
    /// The captured table with a second session in the Up state the lab's status test sees.
    pub const BFD: &str = "0001 BIRD 2.0.12 ready.\n1020-bfd1:\n IP address                Interface  State      Since         Interval  Timeout\n 192.168.77.1              bgp0       Up         18:40:01.123    0.050    0.150\n 192.168.99.9              vb         Down       18:40:17.533    1.000    0.000\n0000 \n";

    #[test]
    fn bfd_sessions_are_read_with_their_state() {
        assert_eq!(
            bfd_sessions(BFD),
            vec![
                BfdSession {
                    address: Ipv4Addr::new(192, 168, 77, 1),
                    interface: "bgp0".into(),
                    state: "Up".into(),
                    since: "18:40:01.123".into(),
                },
                BfdSession {
                    address: Ipv4Addr::new(192, 168, 99, 9),
                    interface: "vb".into(),
                    state: "Down".into(),
                    since: "18:40:17.533".into(),
                },
            ]
        );
    }

    #[test]
    fn protocols_are_read_without_the_header() {
        let p = protocols(PROTOCOLS_CAPTURED);
        let rows: Vec<(&str, &str, &str, &str)> = p
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.kind.as_str(),
                    p.state.as_str(),
                    p.info.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("device1", "Device", "up", ""),
                ("bfd1", "BFD", "up", ""),
                ("up1", "BGP", "start", "Active")
            ]
        );
        assert_eq!(bfd_sessions(BFD_CAPTURED).len(), 1);
    }

    #[test]
    fn the_bird_fuzz_seeds_are_the_captured_replies() {
        for (name, text) in [
            ("bfd", BFD_CAPTURED),
            ("protocols", PROTOCOLS_CAPTURED),
            (
                "error",
                "0001 BIRD 2.0.12 ready.\n9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
            ),
        ] {
            slb_common::fuzz_seed::check("bird", name, text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_reply_ends_at_its_last_code_and_an_error_is_said() {
        assert_eq!(reply_end("0001 BIRD 2.0.12 ready.\n"), None, "the greeting");
        assert_eq!(reply_end("0001 BIRD 2.0.12 ready.\n1020-bfd1:\n"), None);
        assert_eq!(reply_end(BFD_CAPTURED), Some(Ok(())));
        assert_eq!(reply_end(PROTOCOLS_CAPTURED), Some(Ok(())));
        assert_eq!(reply_end("0000 "), None, "a line not yet whole");
        assert_eq!(
            reply_end("9001 syntax error, unexpected CF_SYM_UNDEFINED\n"),
            Some(Err("9001 syntax error, unexpected CF_SYM_UNDEFINED".into()))
        );
        assert_eq!(
            reply_end("8003 No protocols match\n"),
            Some(Err("8003 No protocols match".into()))
        );
    }

    proptest! {
        #[test]
        fn any_text_is_read_without_panicking(text in "(\\PC|\n| ){0,400}") {
            let _ = reply_end(&text);
            let _ = bfd_sessions(&text);
            let _ = protocols(&text);
        }
    }
}
