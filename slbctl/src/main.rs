//! slbctl: slb's admin CLI, flag-compatible with the original slbcli. Not built yet: it needs
//! slbd's control socket, which the control-plane issue adds. Today it only prints its help.

use clap::Parser;

/// slb's admin CLI (talks to slbd over /run/slb/slbd.sock). Not implemented yet: arrives with
/// the control-plane work; today this binary only prints this help.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    Args::parse();
    eprintln!("slbctl: not implemented yet (needs slbd's control socket); see README.md");
    std::process::exit(2);
}
