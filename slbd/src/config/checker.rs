//! What the checks share: the error a refused configuration gets (every problem, each with its
//! field path) and the collector the checks write into, with the small checks every section
//! uses. Pure.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::core::sched::Algorithm;

/// One thing wrong with a configuration, at a field path such as `services[1].servers[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration was refused. A file is checked as a whole, so all problems are listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not valid slb_conf.json: {0}")]
    Syntax(String),
    #[error("{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    lines.join("; ")
}

/// Collects field errors while a configuration is checked.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<FieldError>,
}

impl Checker {
    pub(super) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn ipv4(&mut self, path: &str, value: &str) -> Option<Ipv4Addr> {
        match value.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.fail(path, format!("{value:?} is not an IPv4 address"));
                None
            }
        }
    }

    pub(super) fn device(&mut self, path: &str, value: &str) -> String {
        // IFNAMSIZ is 16 including the NUL; the kernel also refuses '/', ':' and whitespace.
        let ok = !value.is_empty()
            && value.len() < 16
            && value != "."
            && value != ".."
            && !value
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !ok {
            self.fail(path, format!("{value:?} is not a network interface name"));
        }
        value.to_string()
    }

    pub(super) fn seconds(&mut self, path: &str, value: u64, min: u64) -> Duration {
        if value < min || value > 7 * 24 * 3600 {
            self.fail(
                path,
                format!("{value} is out of range ({min} to 604800 seconds)"),
            );
        }
        Duration::from_secs(value)
    }

    pub(super) fn algorithm(&mut self, path: &str, value: &str) -> Algorithm {
        match value.parse::<Algorithm>() {
            Ok(a) => a,
            Err(e) => {
                self.fail(path, e.to_string());
                Algorithm::RoundRobin
            }
        }
    }
}

pub(super) fn port(c: &mut Checker, path: &str, value: u32) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            c.fail(path, format!("{value} is not a port (1 to 65535)"));
            None
        }
    }
}
