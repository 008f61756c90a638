//! SHELL: configuration changes put in force live — a validated edit batch, a re-read of
//! slb_conf.json (SIGHUP or `reload`) — without dropping established flows, and the running
//! configuration saved back. Side effects: the rules, the addresses (when they change), the
//! health checks, slb_conf.json and the credentials file (0600).

use std::path::Path;

use anyhow::{bail, Context};

use super::role::Role;
use super::{Daemon, State};
use crate::config::edit::Secrets;
use crate::config::{Config, RawConfig};
use crate::shell::addr::{self, ManagedAddr};

impl Daemon {
    /// Puts a validated configuration in force without dropping established flows.
    pub(super) fn switch(
        &self,
        st: &mut State,
        raw: RawConfig,
        config: Config,
    ) -> anyhow::Result<()> {
        if st.role == Role::Balancing {
            self.dp.update(&config);
            if let Err(e) = self.install_rules(&config) {
                self.dp.update(&st.config);
                return Err(e);
            }
            let (old, new) = (st.config.managed_addrs(), config.managed_addrs());
            if old != new {
                // New addresses first, so a failure can be rolled back with the old ones and
                // their rules still in place; the VIP is never up without its rules.
                let added: Vec<ManagedAddr> =
                    new.iter().filter(|a| !old.contains(a)).cloned().collect();
                if let Err(e) = addr::add(&added) {
                    let _ = addr::remove(&added);
                    self.dp.update(&st.config);
                    if let Err(back) = self.install_rules(&st.config) {
                        tracing::error!(error = %format!("{back:#}"), "restoring the previous rules failed");
                    }
                    return Err(e).context(
                        "bringing up the new addresses; the previous configuration stays",
                    );
                }
                let gone: Vec<ManagedAddr> = old.into_iter().filter(|a| !new.contains(a)).collect();
                if let Err(e) = addr::remove(&gone) {
                    tracing::error!(error = %format!("{e:#}"), "removing the previous addresses failed");
                }
                for a in &added {
                    tracing::info!(address = %a, "address up");
                }
            }
        } else {
            self.dp.update(&config);
        }
        self.start_checks(&config);
        if st.role == Role::Balancing {
            // A server put in maintenance loses its flows now, not at the next look.
            self.enforce_admin_states();
        }
        if st.role == Role::Cleared {
            st.role = Role::Unloaded;
        }
        if config.metrics_listen != st.config.metrics_listen {
            tracing::warn!(
                metrics_listen = ?config.metrics_listen,
                "metrics_listen changed: it takes effect when slbd restarts"
            );
        }
        tracing::info!(
            services = config.services.len(),
            servers = config
                .services
                .iter()
                .map(|s| s.servers.len())
                .sum::<usize>(),
            algorithm = config.algorithm.name(),
            "configuration in force"
        );
        st.raw = raw;
        st.config = config;
        Ok(())
    }

    /// Re-reads slb_conf.json and puts it in force, or keeps the running one and says why.
    pub(super) fn reload(&self) -> anyhow::Result<&'static str> {
        let (raw, config) = Config::load_raw(&self.config_path).with_context(|| {
            format!(
                "keeping the running configuration: {} is refused",
                self.config_path.display()
            )
        })?;
        let mut st = self.state.lock();
        self.switch(&mut st, raw, config)?;
        Ok("reloaded")
    }

    /// Writes slb_conf.json, and the passwords (if any) to the credentials file, both 0600.
    pub(super) fn save(&self) -> anyhow::Result<String> {
        let st = self.state.lock();
        let text = serde_json::to_string_pretty(&st.raw)? + "\n";
        write_private(&self.config_path, text.as_bytes())?;
        let creds = &st.config.redundancy.credentials_file;
        if !st.secrets.is_empty() {
            write_private(
                creds,
                (serde_json::to_string_pretty(&st.secrets)? + "\n").as_bytes(),
            )?;
        } else if creds.exists() {
            std::fs::remove_file(creds)
                .with_context(|| format!("cannot remove {}", creds.display()))?;
        }
        tracing::info!(path = %self.config_path.display(), "configuration saved");
        Ok(format!("saved to {}", self.config_path.display()))
    }
}

/// Reads the passwords file if there is one; refuses one that others can read.
pub(super) fn load_secrets(path: &Path) -> anyhow::Result<Secrets> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} holds passwords and must be mode 0600 (chmod 600 it)",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The parse error is not shown: it could quote a password.
    serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("{} is not a valid credentials file", path.display()))
}

/// Writes `bytes` to `path` whole and 0600 (slb_conf.json and the credentials file).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    slb_common::fs::write_private(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
