//! SHELL: log output for slb's daemons (slbd and amgr). One line per event on stderr, which
//! systemd hands to journald; `--log-format json` writes one JSON object per line instead, for
//! log shippers. Field names are the ones the events carry (`vip`, `server`, `node`, `from`,
//! `to`, …) in both formats, so a grep or a query works on either.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-22T10:00:00Z  INFO target: message field=value …` (no timestamp under journald,
    /// which stamps every line itself).
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","target":…,"message":…,"field":value,…}`
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the global subscriber; the level comes from `SLB_LOG` (a tracing filter such as
/// `info` or `slbd=debug`), `info` when unset or invalid.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Text => {
            let builder = builder.with_ansi(std::io::stderr().is_terminal());
            // systemd sets JOURNAL_STREAM when stderr goes to the journal.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().init()
            } else {
                builder.init()
            }
        }
    }
}
