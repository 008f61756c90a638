//! SHELL: the amgr daemon's wiring. Binds the heartbeat links and one receiving thread per
//! link, the peer command port, the root-only command socket, slbd's watchdog, the sync
//! thread and the signal thread, then runs the agent until SIGTERM or SIGINT.

use std::io::{BufReader, Write};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use heartbeat::msg::Receiver;
use heartbeat::socket::Link;
use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;
use slb_common::envelope::{self, Line};
use slb_common::pair_key::read_key;
use slb_common::serve;

use crate::agent::{self, Agent, Input};
use crate::command::{self, MAX_LINE};
use crate::config::Config;
use crate::{peer, sync};

/// Runs amgr until SIGTERM or SIGINT; slbd is started with `--log-format log_format`.
pub fn run(cfg: Config, log_format: slb_common::logging::LogFormat) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    signals.thread_block().context("cannot block signals")?;

    let key = read_key(&cfg.key_file)
        .with_context(|| format!("the pair's key {}", cfg.key_file.display()))?;
    let dynamic = agent::load_dynamic(&cfg.state_file, cfg.primary)?;
    let mut links = Vec::new();
    for (local, peer) in cfg.heartbeat_addrs() {
        links.push(
            Link::bind(local, peer)
                .with_context(|| format!("binding the heartbeat link {local}"))?,
        );
    }
    let (tx, rx) = mpsc::channel::<Input>();
    // Our boot, which the dual echoes, and the dual's, which we echo.
    let boot = u64::from_ne_bytes(slb_common::auth::nonce::<8>().context("no random boot")?);
    let echo = Arc::new(AtomicU64::new(0));

    for (i, link) in links.iter().enumerate() {
        let link = link.try_clone()?;
        let (tx, key) = (tx.clone(), key.clone());
        let mut receiver = Receiver::new(cfg.node_id, boot, i as u8);
        let echo = echo.clone();
        std::thread::Builder::new()
            .name(format!("heartbeat-{i}"))
            .spawn(move || loop {
                let got = match link.recv(Duration::from_secs(1)) {
                    Ok(Some(g)) => g,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(link = i, error = %e, "heartbeat receive failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let (buf, from) = got;
                let input = if from.ip() != link.peer.ip() {
                    Input::Foreign { link: i }
                } else {
                    let verdict = receiver.accept(&buf, &key);
                    if let Some(b) = receiver.learned() {
                        echo.store(b, Relaxed);
                    }
                    match verdict {
                        Ok(hb) => Input::Heard { link: i, hb },
                        Err(why) => Input::Rejected { link: i, why },
                    }
                };
                if tx.send(input).is_err() {
                    return;
                }
            })?;
    }

    {
        let (ptx, prx) = mpsc::channel::<peer::Incoming>();
        peer::serve(
            cfg.command_listen_addrs(),
            cfg.peer_command_addrs(),
            key.clone(),
            ptx,
        );
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("peer-forward".into())
            .spawn(move || {
                for incoming in prx {
                    if tx.send(Input::Peer(incoming)).is_err() {
                        return;
                    }
                }
            })?;
    }

    let listener = bind_socket(&cfg.socket)?;
    {
        let tx = tx.clone();
        serve::start(
            listener,
            serve::Policy::new("command", serve::CAP_LOCAL),
            move |conn, _| serve_command(conn, &tx),
        )?;
    }

    let app_pid = Arc::new(AtomicU32::new(0));
    let replication = Arc::new(Mutex::new(None));
    {
        let (tx, pid, socket) = (tx.clone(), app_pid.clone(), cfg.slbd_socket.clone());
        let replication = replication.clone();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(&socket, &pid, &tx, &replication))?;
    }

    let sync_status = Arc::new(Mutex::new(sync::Status::default()));
    let active = Arc::new(AtomicBool::new(false));
    {
        let settings = sync::Settings {
            config_path: cfg.slbd_config.clone(),
            remote_path: cfg.remote_config.clone(),
            identity: cfg.identity.clone(),
            known_hosts: cfg.known_hosts.clone(),
            period: cfg.sync_period,
        };
        let (status, active) = (sync_status.clone(), active.clone());
        std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || sync::run(settings, move || active.load(Relaxed), status))?;
    }

    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(s) = signals.wait() {
                    tracing::info!(signal = %s, "stopping");
                    let _ = tx.send(Input::Stop);
                }
            })?;
    }

    tracing::info!(
        node = cfg.node_id,
        primary = dynamic.primary,
        inhibited = dynamic.inhibited,
        links = cfg.links.len(),
        interval_ms = cfg.interval.as_millis() as u64,
        dead_ms = cfg.dead.as_millis() as u64,
        socket = %cfg.socket.display(),
        "amgr started"
    );
    if let Some(listen) = cfg.metrics_listen {
        let tx = tx.clone();
        let render = move || {
            let (rtx, rrx) = mpsc::channel();
            if tx.send(Input::Metrics(rtx)).is_err() {
                return Err("amgr is stopping".to_string());
            }
            match rrx.recv_timeout(Duration::from_secs(2)) {
                Ok(sample) => Ok(slb_common::metrics::encode(crate::metrics::families(
                    &sample,
                ))),
                Err(_) => Err("amgr's agent did not answer within 2 s".to_string()),
            }
        };
        match slb_common::metrics::http::serve(listen, render) {
            Ok(bound) => tracing::info!(listen = %bound, "metrics listening"),
            Err(e) => tracing::error!(listen = %listen, error = %e, "cannot listen for metrics"),
        }
    }
    let socket_path = cfg.socket.clone();
    // The guard's samples are timed on the agent's clock.
    let epoch = std::time::Instant::now();
    let guard = crate::guard::probe::start(cfg.guard.clone(), cfg.slbd_config.clone(), epoch)
        .context("starting the isolation guard (a raw ICMP socket: run as root)")?;
    let shared = agent::Shared {
        sync_status,
        active_flag: active,
        app_pid,
        replication,
        guard,
        epoch,
    };
    let beacon = agent::Beacon::start(cfg.node_id, boot, echo, key.clone(), links, cfg.interval)
        .context("starting the heartbeat sender")?;
    let agent = Agent::new(cfg, key, beacon, dynamic, shared, log_format);
    agent::run(agent, rx);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("amgr stopped");
    Ok(())
}

/// The command socket, root-only; refuses to take over one another amgr is answering on.
fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if UnixStream::connect(path).is_ok() {
        bail!("{} is in use: is another amgr running?", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn serve_command(mut conn: UnixStream, tx: &mpsc::Sender<Input>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let read = envelope::read_line(&mut BufReader::new(&conn));
    let reply = match read {
        Ok(Line::Whole(line)) => match command::parse_request(&line) {
            Ok(req) => {
                let (rtx, rrx) = mpsc::channel();
                if tx.send(Input::Local { req, reply: rtx }).is_err() {
                    command::error("amgr is stopping")
                } else {
                    match rrx.recv_timeout(Duration::from_secs(30)) {
                        Ok(Ok(v)) => command::ok(v),
                        Ok(Err(e)) => command::error(&e),
                        Err(_) => command::error("amgr did not answer in time"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "command refused");
                command::error(&e)
            }
        },
        Ok(_) => command::error(&format!(
            "request longer than {MAX_LINE} bytes or without a newline"
        )),
        Err(e) => command::error(&format!("cannot read the request: {e}")),
    };
    let _ = conn.write_all(reply.as_bytes());
}

/// Asks slbd for its status every second; three failures in a row report it hung. The
/// answer's replication figures are kept for `query` and the metrics.
fn watchdog(
    socket: &std::path::Path,
    pid: &AtomicU32,
    tx: &mpsc::Sender<Input>,
    replication: &Mutex<Option<serde_json::Value>>,
) {
    let mut failures = 0;
    let mut watched = 0;
    // A starting slbd is INIT's business: only one that has answered once can hang.
    let mut answered = false;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let p = pid.load(Relaxed);
        if p != watched {
            watched = p;
            failures = 0;
            answered = false;
        }
        if p == 0 {
            *replication.lock() = None;
            continue;
        }
        match slbd::ctl::client::status(socket, Duration::from_secs(2)) {
            Ok(status) => {
                failures = 0;
                answered = true;
                *replication.lock() = status
                    .replication
                    .and_then(|r| serde_json::to_value(r).ok());
            }
            Err(_) if !answered => {}
            Err(_) => {
                failures += 1;
                if failures >= 3 {
                    failures = 0;
                    if tx.send(Input::AppHung(p)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}
