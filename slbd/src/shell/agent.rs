//! SHELL: the agent checks. Every interval, one TCP connection to the server's agent port,
//! one line read (bounded by [`MAX_LINE`] and a timeout), handed to the pure reader
//! ([`crate::core::agent::parse`]) and to the data plane; each change is logged once, and so
//! is each word the agent uses that slbd does not know. Side effects: the connections.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::prober::Cut;
use crate::core::agent::{parse, AgentSays, MAX_LINE};
use crate::core::balancer::Dataplane;

/// One server's agent, as the prober runs it.
pub struct AgentJob {
    pub id: u32,
    pub service: String,
    pub server: SocketAddrV4,
    pub agent: SocketAddrV4,
    pub interval: Duration,
    /// The server's configured weight, which a percentage scales.
    pub weight: u32,
}

/// Asks the agent once: its line, or why there is none.
async fn ask(agent: SocketAddrV4, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let read = async {
        let mut s = tokio::net::TcpStream::connect(agent).await?;
        let mut buf = vec![0u8; MAX_LINE];
        let mut n = 0;
        while n < MAX_LINE && !buf[..n].contains(&b'\n') {
            match s.read(&mut buf[n..]).await? {
                0 => break,
                k => n += k,
            }
        }
        buf.truncate(n);
        Ok(buf)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

pub async fn watch(
    dp: Arc<Dataplane>,
    job: AgentJob,
    cut: Arc<Cut>,
    still_current: impl Fn() -> bool,
) {
    let AgentJob {
        id,
        service,
        server,
        agent,
        interval,
        weight,
    } = job;
    let timeout = interval.min(Duration::from_secs(2));
    let mut last: Option<AgentSays> = None;
    let mut unknown_logged: HashSet<String> = HashSet::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !still_current() {
            return;
        }
        // An agent that does not answer changes nothing (HAProxy's rule): the health checks
        // judge the server, not its agent.
        let line = match ask(agent, timeout).await {
            Ok(line) => line,
            Err(e) => {
                if !failing {
                    tracing::warn!(service = %service, server = %server, agent = %agent, error = %e, "agent did not answer");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let says = parse(&line);
        for w in &says.unknown {
            if unknown_logged.len() < 64 && unknown_logged.insert(w.clone()) {
                tracing::warn!(service = %service, server = %server, word = %w, "agent said a word slbd does not know; ignored");
            }
        }
        let outcome = dp.apply_agent(id, &says, weight);
        if let Some(c) = outcome.cut {
            cut(c);
        }
        let changed = last.as_ref().is_none_or(|l| {
            (l.weight_pct, l.admin, l.oper) != (says.weight_pct, says.admin, says.oper)
        });
        if changed {
            tracing::info!(
                service = %service, server = %server,
                weight_pct = ?says.weight_pct, admin = ?says.admin, oper = ?says.oper,
                reason = says.reason.as_deref().unwrap_or(""),
                flows_ended = outcome.flows_ended,
                "agent changed the server"
            );
        }
        last = Some(says);
    }
}
