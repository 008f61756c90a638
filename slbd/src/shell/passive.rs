//! SHELL: carries out what passive detection decided on the data path ([`PassiveWork`]): logs
//! each server it took out of rotation (the line an active check's change logs, with
//! `reason=passive_*`), cuts what the kernel carries of an offload server's flows, and deletes the entries of
//! offload handshakes a server failed. One thread, woken by the data plane.
//! Side effects: a thread; conntrack deletions through [`Offload`].

use std::sync::Arc;
use std::time::Duration;

use crate::core::balancer::{Dataplane, PassiveWork};
use crate::shell::offload::Offload;

/// Starts the thread.
pub fn start(dp: Arc<Dataplane>, offload: Arc<Offload>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("passive".into())
        .spawn(move || loop {
            let work = dp.wait_passive(Duration::from_secs(1));
            if !work.is_empty() {
                carry_out(work, &offload);
            }
        })?;
    Ok(())
}

fn carry_out(work: PassiveWork, offload: &Offload) {
    if !work.forget.is_empty() {
        offload.forget(&work.forget);
    }
    for d in work.downs {
        if let Some(cut) = d.outcome.cut {
            offload.cut(cut);
        }
        tracing::warn!(
            service = %d.service, server = %d.server, state = "down", reason = %d.why,
            fall = d.fall, flows_ended = d.outcome.flows_ended, "server left rotation"
        );
    }
}
