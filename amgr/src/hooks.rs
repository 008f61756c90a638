//! State-change hooks (keepalived's `notify_*`): a command amgr.json names for a state runs
//! after each transition into it, with the node, the old and new state and the reason in its
//! environment. Pure: the settings, their validation and the environment. Shell: [`Hooks::fire`]
//! runs the command in a thread of its own, never through a shell unless asked, with its
//! output logged line by line and a timeout after which it is killed, so a hook that hangs or
//! fails never delays a takeover. At most [`MAX_RUNNING`] run at once; past that a hook is
//! skipped and the skip logged.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fsm::State;

/// Hooks running at once, at most: a pair flapping must not fork without bound.
pub const MAX_RUNNING: usize = 8;

/// `hooks` in amgr.json: a command per state entered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<RawHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<RawHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<RawHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<RawHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<RawHook>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    /// The program and its arguments (`["/usr/local/bin/page", "--urgent"]`); with `shell`,
    /// one string `/bin/sh -c` runs.
    pub command: Vec<String>,
    #[serde(default)]
    pub shell: bool,
    /// Killed after this long.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// A validated hook: what to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// The validated hooks, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSet(Vec<(State, Hook)>);

/// Checks `raw`, pushing each problem with its field path onto `errors`.
pub fn validate(raw: &RawHooks, errors: &mut Vec<String>) -> HookSet {
    let mut set = Vec::new();
    for (name, state, hook) in [
        ("active", State::Active, &raw.active),
        ("standby", State::Standby, &raw.standby),
        ("maintenance", State::Maintenance, &raw.maintenance),
        ("failed", State::Failed, &raw.failed),
        ("offline", State::Offline, &raw.offline),
    ] {
        let Some(h) = hook else { continue };
        let path = format!("hooks.{name}");
        if !(100..=600_000).contains(&h.timeout_ms) {
            errors.push(format!(
                "{path}.timeout_ms: {} is outside 100-600000",
                h.timeout_ms
            ));
        }
        let argv = match (h.shell, h.command.as_slice()) {
            (_, []) => {
                errors.push(format!("{path}.command: empty"));
                continue;
            }
            (true, [line]) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            (true, _) => {
                errors.push(format!(
                    "{path}.command: with \"shell\": true, give one string for /bin/sh -c"
                ));
                continue;
            }
            (false, [program, ..]) if !program.starts_with('/') => {
                errors.push(format!(
                    "{path}.command: {program:?} must be an absolute path (no shell, no PATH search)"
                ));
                continue;
            }
            (false, argv) => argv.to_vec(),
        };
        set.push((
            state,
            Hook {
                argv,
                timeout: Duration::from_millis(h.timeout_ms),
            },
        ));
    }
    HookSet(set)
}

/// The environment a hook runs with.
pub fn environment(node: u32, from: State, to: State, why: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SLB_NODE", node.to_string()),
        ("SLB_OLD_STATE", from.name().into()),
        ("SLB_NEW_STATE", to.name().into()),
        ("SLB_REASON", why.into()),
    ]
}

/// The hooks in force and how many run now.
#[derive(Debug, Default)]
pub struct Hooks {
    set: HookSet,
    running: Arc<AtomicUsize>,
}

impl Hooks {
    pub fn new(set: HookSet) -> Hooks {
        Hooks {
            set,
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs the hook for entering `to`, if there is one, and returns at once.
    pub fn fire(&self, node: u32, from: State, to: State, why: &str) {
        let Some((_, hook)) = self.set.0.iter().find(|(s, _)| *s == to) else {
            return;
        };
        if self.running.fetch_add(1, SeqCst) >= MAX_RUNNING {
            self.running.fetch_sub(1, SeqCst);
            tracing::warn!(
                state = to.name(),
                running = MAX_RUNNING,
                "hook skipped: too many still running"
            );
            return;
        }
        let (hook, running) = (hook.clone(), self.running.clone());
        let env = environment(node, from, to, why);
        let spawned = std::thread::Builder::new()
            .name("hook".into())
            .spawn(move || {
                run(&hook, &env, to);
                running.fetch_sub(1, SeqCst);
            });
        if let Err(e) = spawned {
            self.running.fetch_sub(1, SeqCst);
            tracing::error!(state = to.name(), error = %e, "hook not run: no thread");
        }
    }
}

/// Runs one hook to its end or its timeout, logging its output and how it ended.
fn run(hook: &Hook, env: &[(&'static str, String)], to: State) {
    let state = to.name();
    let started = Instant::now();
    // Its own process group, so that the timeout kills what it started too (a shell's
    // children would otherwise hold its output open).
    let mut cmd = Command::new(&hook.argv[0]);
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which
    // is async-signal-safe; it allocates nothing and takes no lock. A hook then dies with the
    // thread that waits on it (amgr's exit included) instead of outliving amgr.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd
        .args(&hook.argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(state, command = %hook.argv[0], error = %e, "hook could not start");
            return;
        }
    };
    let mut readers = Vec::new();
    for (stream, out) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ),
    ] {
        let Some(out) = out else { continue };
        readers.push(std::thread::spawn(move || {
            // Bounded: a hook that floods its output gets its first lines logged.
            for line in BufReader::new(out).lines().map_while(Result::ok).take(100) {
                tracing::info!(state, stream, line = %line, "hook output");
            }
        }));
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= hook.timeout => {
                kill_group(&mut child);
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::error!(state, error = %e, "hook wait failed");
                kill_group(&mut child);
                break None;
            }
        }
    };
    for r in readers {
        let _ = r.join();
    }
    let ms = started.elapsed().as_millis() as u64;
    match status {
        Some(s) if s.success() => tracing::info!(state, ms, "hook ran"),
        Some(s) => tracing::warn!(state, ms, status = %s, "hook failed"),
        None => tracing::warn!(
            state,
            ms,
            timeout_ms = hook.timeout.as_millis() as u64,
            "hook killed at its timeout"
        ),
    }
}

fn kill_group(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(command: &[&str], shell: bool) -> Option<RawHook> {
        Some(RawHook {
            command: command.iter().map(|s| s.to_string()).collect(),
            shell,
            timeout_ms: 1000,
        })
    }

    #[test]
    fn hooks_run_their_argv_or_one_shell_line_and_bad_ones_name_their_field() {
        let mut e = Vec::new();
        let set = validate(
            &RawHooks {
                active: hook(&["/usr/local/bin/page", "--up"], false),
                failed: hook(&["echo $SLB_NEW_STATE | mail ops"], true),
                ..Default::default()
            },
            &mut e,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(set.0[0].1.argv, vec!["/usr/local/bin/page", "--up"]);
        assert_eq!(set.0[1].1.argv[..2], ["/bin/sh", "-c"]);
        let mut e = Vec::new();
        validate(
            &RawHooks {
                active: hook(&["page"], false),
                standby: hook(&[], false),
                failed: hook(&["a", "b"], true),
                offline: Some(RawHook {
                    timeout_ms: 5,
                    ..hook(&["/bin/true"], false).unwrap()
                }),
                ..Default::default()
            },
            &mut e,
        );
        assert_eq!(
            e,
            vec![
                "hooks.active.command: \"page\" must be an absolute path (no shell, no PATH search)",
                "hooks.standby.command: empty",
                "hooks.failed.command: with \"shell\": true, give one string for /bin/sh -c",
                "hooks.offline.timeout_ms: 5 is outside 100-600000",
            ]
        );
    }

    #[test]
    fn the_environment_names_the_node_both_states_and_the_reason() {
        assert_eq!(
            environment(2, State::Standby, State::Active, "dual lost"),
            vec![
                ("SLB_NODE", "2".to_string()),
                ("SLB_OLD_STATE", "STANDBY".into()),
                ("SLB_NEW_STATE", "ACTIVE".into()),
                ("SLB_REASON", "dual lost".into()),
            ]
        );
    }

    #[test]
    fn a_hook_that_hangs_returns_at_once_and_is_killed_at_its_timeout() {
        let dir = std::env::temp_dir().join(format!("slb-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let line = format!(
            "echo \"$SLB_OLD_STATE $SLB_NEW_STATE $SLB_REASON\" > {}; sleep 60",
            out.display()
        );
        let mut e = Vec::new();
        let set = validate(
            &RawHooks {
                active: Some(RawHook {
                    command: vec![line],
                    shell: true,
                    timeout_ms: 300,
                }),
                ..Default::default()
            },
            &mut e,
        );
        let hooks = Hooks::new(set);
        let t = Instant::now();
        hooks.fire(1, State::Standby, State::Active, "switch");
        hooks.fire(1, State::Active, State::Standby, "no standby hook");
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "fire returns at once"
        );
        let end = Instant::now() + Duration::from_secs(5);
        while hooks.running.load(SeqCst) > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(hooks.running.load(SeqCst), 0, "killed at its timeout");
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "STANDBY ACTIVE switch\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
