//! SHELL: shell completions and man pages generated from a binary's own clap definition, so
//! they never disagree with `--help`. Each slb binary calls [`emit_if_asked`] first thing; the
//! packaging script (`scripts/package.sh`) runs `BIN --generate-completions SHELL` and
//! `BIN --generate-man` to fill the Debian package.

use std::io::Write;

/// When the first argument is `--generate-completions SHELL` or `--generate-man`, writes that
/// to stdout and exits; otherwise returns. The flags are deliberately outside clap's
/// definition: they are for packaging, not for operators, and so do not clutter `--help`.
pub fn emit_if_asked<C: clap::CommandFactory>() {
    let args: Vec<String> = std::env::args().skip(1).take(2).collect();
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    match args.first().map(String::as_str) {
        Some("--generate-completions") => {
            let Some(shell) = args
                .get(1)
                .and_then(|s| s.parse::<clap_complete::Shell>().ok())
            else {
                eprintln!("{name}: --generate-completions needs one of bash, zsh, fish, elvish, powershell");
                std::process::exit(2);
            };
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
        }
        Some("--generate-man") => {
            let mut out = Vec::new();
            // Section 8: every slb binary is a system administration command in /usr/sbin.
            if let Err(e) = clap_mangen::Man::new(cmd).section("8").render(&mut out) {
                eprintln!("{name}: cannot render the man page: {e}");
                std::process::exit(1);
            }
            let _ = std::io::stdout().write_all(&out);
        }
        _ => return,
    }
    std::process::exit(0);
}
