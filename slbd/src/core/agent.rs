//! The agent check's answer (HAProxy's `agent-check` protocol, so existing agents work
//! unchanged): one ASCII line of words separated by spaces, tabs or commas. A percentage
//! (`75%`) sets the server's effective weight as a share of its configured one; `ready`,
//! `drain` and `maint` set the agent's administrative state; `up`, `down`, `fail` and
//! `stopped` its operational state (a trailing `#comment` is the reason, kept for the log);
//! `maxconn:N` is understood and not applied (slbd has no per-server connection limit).
//! Anything else is unknown and reported, so the caller can log it once. Pure.

/// Longest line read from an agent; the rest is not looked at.
pub const MAX_LINE: usize = 512;

/// What the agent's administrative words set: the most restrictive of the agent's and the
/// operator's state applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAdmin {
    Ready,
    Drain,
    Maint,
}

/// The agent's operational word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOper {
    Up,
    /// `down`, `fail` or `stopped`.
    Down,
}

/// What one answer said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSays {
    /// Percent of the configured weight (0-100 % as HAProxy caps at 256 % of 256; here at
    /// 1000 %), when given.
    pub weight_pct: Option<u32>,
    pub admin: Option<AgentAdmin>,
    pub oper: Option<AgentOper>,
    /// The reason after `#`, if any.
    pub reason: Option<String>,
    /// Words not understood, each once, at most 8.
    pub unknown: Vec<String>,
}

/// Reads one answer: the bytes up to the first newline (or all, if none), at most
/// [`MAX_LINE`]. Later words win over earlier ones of the same kind, as in HAProxy.
pub fn parse(bytes: &[u8]) -> AgentSays {
    let line = &bytes[..bytes.len().min(MAX_LINE)];
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let (words, reason) = match text.split_once('#') {
        Some((w, r)) => (w, Some(r.trim().to_string()).filter(|r| !r.is_empty())),
        None => (&*text, None),
    };
    let mut says = AgentSays {
        reason,
        ..AgentSays::default()
    };
    for word in words
        .split([' ', '\t', ',', '\r'])
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "ready" => says.admin = Some(AgentAdmin::Ready),
            "drain" => says.admin = Some(AgentAdmin::Drain),
            "maint" => says.admin = Some(AgentAdmin::Maint),
            "up" => says.oper = Some(AgentOper::Up),
            "down" | "fail" | "failed" | "stopped" => says.oper = Some(AgentOper::Down),
            w if w.starts_with("maxconn:") => {}
            w => match w.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                Some(pct) => says.weight_pct = Some(pct.min(1000)),
                None => {
                    let word: String = lower.chars().take(32).collect();
                    if says.unknown.len() < 8 && !says.unknown.contains(&word) {
                        says.unknown.push(word);
                    }
                }
            },
        }
    }
    says
}

/// The weight `pct` percent of `configured` gives, as HAProxy rounds it: a share that is
/// not zero never rounds down to zero.
pub fn weight_of(configured: u32, pct: u32) -> u32 {
    let w = u64::from(configured) * u64::from(pct);
    match w {
        0 => 0,
        w => (w / 100)
            .max(1)
            .min(u64::from(crate::core::model::MAX_WEIGHT as u32)) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_haproxy_agent_answers() {
        assert_eq!(parse(b"75%\n").weight_pct, Some(75));
        let s = parse(b"drain 50%, up #deploy 42\n");
        assert_eq!(
            s,
            AgentSays {
                weight_pct: Some(50),
                admin: Some(AgentAdmin::Drain),
                oper: Some(AgentOper::Up),
                reason: Some("deploy 42".into()),
                unknown: vec![],
            }
        );
        assert_eq!(parse(b"MAINT\r\n").admin, Some(AgentAdmin::Maint));
        assert_eq!(parse(b"ready").admin, Some(AgentAdmin::Ready));
        for down in ["down", "fail", "stopped"] {
            assert_eq!(parse(down.as_bytes()).oper, Some(AgentOper::Down), "{down}");
        }
        assert_eq!(parse(b"maxconn:30 up").unknown, Vec::<String>::new());
        assert_eq!(
            parse(b"up bogus bogus 12x%").unknown,
            vec!["bogus".to_string(), "12x%".into()]
        );
        assert_eq!(parse(b"50%\n100%").weight_pct, Some(50), "one line only");
        assert_eq!(parse(b"").weight_pct, None);
    }

    #[test]
    fn percentages_scale_the_configured_weight() {
        assert_eq!(
            weight_of(1, 50),
            1,
            "a share that is not zero stays in rotation"
        );
        assert_eq!(weight_of(10, 50), 5);
        assert_eq!(weight_of(10, 0), 0);
        assert_eq!(
            weight_of(10_000, 1000),
            10_000,
            "capped at the largest weight"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_give_an_answer_with_bounded_unknowns(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let s = parse(&bytes);
            prop_assert!(s.unknown.len() <= 8);
            prop_assert!(s.weight_pct.is_none_or(|p| p <= 1000));
        }
    }
}
