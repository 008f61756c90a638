//! heartbeat: a diagnostic tool for the pair's UDP heartbeat. The message and liveness rules
//! exist (the `heartbeat` library); the sending and listening tool does not yet, so today the
//! binary only prints its help.

use clap::Parser;

/// slb's heartbeat diagnostic tool. Not implemented yet: arrives with the failover work; today
/// this binary only prints this help.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    Args::parse();
    eprintln!("heartbeat: not implemented yet; see README.md");
    std::process::exit(2);
}
