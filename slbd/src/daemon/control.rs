//! SHELL: what slbd answers on its control socket — each command dispatched to the daemon's
//! role changes, reconfiguration, status and metrics. Side effects: those of the commands.

use std::sync::atomic::Ordering::Relaxed;

use anyhow::{bail, Context};

use super::role::Role;
use super::Daemon;
use crate::config::edit;
use crate::ctl::proto::{Command, Reply};
use crate::ctl::server::Handler;
use crate::ctl::status::Status;
use crate::shell::addr;

impl Daemon {
    fn status(&self) -> Status {
        let sessions = self.daemon_sessions();
        let st = self.state.lock();
        let mut status = super::status::status(super::status::Inputs {
            dp: &self.dp,
            config: &st.config,
            state: st.role.name(),
            backend: self.backend.name(),
            queue: &self.stats,
            offload: &self.offload.stats,
            replication: self
                .replication
                .as_ref()
                .map(|r| r.status.snapshot(r.is_active())),
            announce: self.announcement_status(&st),
        });
        if let (Some(a), Some(s)) = (&mut status.announce, sessions) {
            s.fill(a);
        }
        status
    }

    /// The metrics exposition: read at scrape time from the same counters as `status`.
    pub(super) fn metrics(&self) -> String {
        use super::metrics::{families, parse_kernel_queues, Inputs};
        let sessions = self.daemon_sessions();
        let (balancing, mut announce) = {
            let st = self.state.lock();
            (st.role == Role::Balancing, self.announcement_status(&st))
        };
        if let (Some(a), Some(s)) = (&mut announce, sessions) {
            s.fill(a);
        }
        let range = u32::from(self.queues.first)
            ..u32::from(self.queues.first) + u32::from(self.queues.count);
        let kernel_queues = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
            .map_or_else(
                |_| Vec::new(),
                |t| {
                    parse_kernel_queues(&t)
                        .into_iter()
                        .filter(|k| range.contains(&u32::from(k.queue)))
                        .collect()
                },
            );
        slb_common::metrics::encode(families(&Inputs {
            dp: &self.dp,
            queue: &self.stats,
            balancing,
            backend: self.backend.name(),
            kernel_queues,
            replication: self.replication.as_ref().map(|r| &r.status),
            offload: Some(&self.offload.stats),
            announce,
        }))
    }

    /// Gratuitous ARP for the addresses again: a pair's winner after a healed partition (its
    /// dual may have announced last).
    fn announce(&self) -> anyhow::Result<&'static str> {
        let st = self.state.lock();
        if st.role != Role::Balancing {
            bail!("not balancing: no addresses to announce");
        }
        addr::reannounce(&st.config.managed_addrs()).context("announcing the addresses")?;
        tracing::info!(vip = %st.config.vip, "addresses announced again");
        Ok("announced")
    }
}

impl Daemon {
    fn explain(&self, protocol: &str, port: u16, client: &str) -> Result<Reply, String> {
        let proto: crate::core::net::Protocol = protocol
            .parse()
            .map_err(|()| format!("{protocol:?} is not tcp or udp"))?;
        let client = client
            .parse::<std::net::SocketAddrV4>()
            .or_else(|_| {
                client
                    .parse::<std::net::Ipv4Addr>()
                    .map(|ip| std::net::SocketAddrV4::new(ip, 0))
            })
            .map_err(|_| format!("client {client:?} is not IP or IP:PORT"))?;
        self.dp
            .explain(proto, port, client, self.now_ms())
            .map(|e| Reply::Explanation(Box::new(e)))
            .ok_or_else(|| format!("there is no service {proto}/{port}"))
    }
}

impl Handler for Daemon {
    fn handle(&self, cmd: &Command) -> Result<Reply, String> {
        let err = |e: anyhow::Error| format!("{e:#}");
        if self.stopping.load(Relaxed) {
            return Err("slbd is stopping".into());
        }
        match cmd {
            Command::Status => Ok(Reply::Status(Box::new(self.status()))),
            // Passwords live in their own 0600 file, never in what this returns.
            Command::ShowConfig => Ok(Reply::Config(Box::new(self.state.lock().raw.clone()))),
            Command::Apply(edits) => {
                let mut st = self.state.lock();
                let (raw, secrets, config) = edit::apply_with_secrets(&st.raw, &st.secrets, edits)
                    .map_err(|e| e.to_string())?;
                self.switch(&mut st, raw, config).map_err(err)?;
                st.secrets = secrets;
                drop(st);
                // A withdrawal (or anything that changes the announcement) acts now, not at
                // the next tick.
                self.follow_announcement();
                Ok("applied".into())
            }
            Command::ClearConfig => Ok(self.clear().into()),
            Command::Load => self.load(false).map(Into::into).map_err(err),
            Command::TakeOver => self.load(true).map(Into::into).map_err(err),
            Command::HandOver => {
                self.dp.handing_over(self.now_ms());
                Ok("handing over".into())
            }
            Command::Merge => self.merge().map(Reply::Done).map_err(err),
            Command::Unload => Ok(self.unload().into()),
            Command::Reload => self.reload().map(Into::into).map_err(|e| {
                // Logged as a SIGHUP's refusal is: the operator may not be watching slbctl.
                tracing::error!(error = %format!("{e:#}"), "reload refused");
                err(e)
            }),
            Command::Explain {
                protocol,
                port,
                client,
            } => self.explain(protocol, *port, client),
            Command::SaveConfig => self.save().map(Reply::Done).map_err(err),
            Command::Announce => self.announce().map(Into::into).map_err(err),
        }
    }
}
