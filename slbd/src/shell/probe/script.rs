//! SHELL: the script check: runs the configured program (argv, no shell) with the server in
//! its environment, and turns its exit status into up, down or a dynamic weight (the pure
//! [`judge`]). A program that overstays its timeout is killed and reaped.
//! Side effects: one child process per check.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::Outcome;
use crate::core::health::{Failure, ScriptCheck};

/// Runs `check`'s program once with `env` added to slbd's environment.
pub async fn run(check: &ScriptCheck, env: &[(&'static str, String)]) -> Outcome {
    let Some((program, args)) = check.command.split_first() else {
        return Err(Failure::Error).into();
    };
    let started = Instant::now();
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so that a timeout kills what the program started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            // Logged at debug: it recurs every interval, and the server's reason says `error`.
            tracing::debug!(command = ?check.command, error = %e, "script check cannot start");
            return Err(Failure::Error).into();
        }
    };
    match tokio::time::timeout(check.timeout, child.wait()).await {
        Ok(Ok(status)) => judge(status.code(), check.dynamic_weight, started.elapsed()),
        Ok(Err(_)) => Err(Failure::Error).into(),
        Err(_) => {
            if let Some(pid) = child.id() {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.start_kill();
            // Reaped here, so no zombie outlives the check; should the kernel be slow to
            // deliver SIGKILL, tokio's orphan reaper collects it later.
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            Err(Failure::Timeout).into()
        }
    }
}

/// What an exit status means: `code` is None when a signal ended the program.
pub fn judge(code: Option<i32>, dynamic_weight: bool, took: Duration) -> Outcome {
    let restore = dynamic_weight.then_some(None);
    match code {
        Some(0) => Outcome {
            result: Ok(took),
            weight: restore,
        },
        Some(s @ 2..=255) if dynamic_weight => Outcome {
            result: Ok(took),
            weight: Some(Some(s as u32 - 2)),
        },
        Some(s) => Err(Failure::Script(s.clamp(0, 255) as u8)).into(),
        None => Err(Failure::Script(255)).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(3);

    #[test]
    fn exit_statuses_mean_what_keepalived_misc_dynamic_says() {
        let up = |w| Outcome {
            result: Ok(T),
            weight: w,
        };
        assert_eq!(
            judge(Some(0), true, T),
            up(Some(None)),
            "0 restores the weight"
        );
        assert_eq!(judge(Some(1), true, T), Err(Failure::Script(1)).into());
        assert_eq!(judge(Some(2), true, T), up(Some(Some(0))));
        assert_eq!(judge(Some(12), true, T), up(Some(Some(10))));
        assert_eq!(judge(Some(255), true, T), up(Some(Some(253))));
        assert_eq!(judge(None, true, T), Err(Failure::Script(255)).into());
    }

    #[test]
    fn without_dynamic_weight_any_non_zero_exit_is_down() {
        assert_eq!(judge(Some(0), false, T), Ok(T).into());
        assert_eq!(judge(Some(1), false, T), Err(Failure::Script(1)).into());
        assert_eq!(judge(Some(12), false, T), Err(Failure::Script(12)).into());
        assert_eq!(judge(None, false, T), Err(Failure::Script(255)).into());
    }

    fn script(command: &[&str], timeout_ms: u64) -> ScriptCheck {
        ScriptCheck {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            dynamic_weight: true,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn the_program_sees_the_server_and_its_exit_status_decides() {
        let env = [
            ("SLB_SERVER_ADDRESS", "172.16.0.2".to_string()),
            ("SLB_SERVER_PORT", "80".to_string()),
            ("SLB_SERVICE", "tcp/80".to_string()),
        ];
        let check = script(
            &[
                "/bin/sh",
                "-c",
                r#"[ "$SLB_SERVER_ADDRESS:$SLB_SERVER_PORT $SLB_SERVICE" = "172.16.0.2:80 tcp/80" ] && exit 7; exit 1"#,
            ],
            2000,
        );
        let got = block_on(run(&check, &env));
        assert_eq!(got.weight, Some(Some(5)), "{got:?}");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed_with_what_it_started_and_times_out() {
        let marker = format!("slb-script-test-{}", std::process::id());
        // The shell starts a sleep of its own, which the timeout must kill too.
        let inner = r#"/bin/sh -c 'sleep 30; true' "$0" & wait"#;
        let check = script(&["/bin/sh", "-c", inner, &marker], 100);
        let started = Instant::now();
        let got = block_on(run(&check, &[]));
        assert_eq!(got.result, Err(Failure::Timeout));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
        let left = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        assert_eq!(
            left.ok().as_deref(),
            Some(""),
            "the script's processes live on"
        );
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let got = block_on(run(&script(&["/nonexistent/check"], 100), &[]));
        assert_eq!(got.result, Err(Failure::Error));
    }
}
