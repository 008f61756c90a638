//! slb-heartbeat: a diagnostic tool for the pair's heartbeat. It sends authenticated heartbeats
//! to the peer on every link and listens for the peer's, for a while, then prints what it saw
//! as one JSON object: heartbeats accepted per link, datagrams rejected by reason, and whether
//! the peer was alive at the end (lost means every link silent for the dead time).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use heartbeat::liveness::{Liveness, Peer};
use heartbeat::msg::{App, AppState, Heartbeat, Receiver};
use heartbeat::socket::Link;
use slb_common::pair_key::read_key;

/// Exchange heartbeats with the peer balancer and report what arrived.
#[derive(Parser, Debug)]
#[command(name = "slb-heartbeat", version, about)]
struct Args {
    /// The pair's shared key (mode 0600, at least 16 bytes).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// This node's id.
    #[arg(long)]
    node: u32,
    /// A link as LOCAL_ADDR:PORT=PEER_ADDR:PORT; repeat for more links.
    #[arg(long = "link", value_name = "LOCAL=PEER", required = true)]
    links: Vec<String>,
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Silence on every link for this long means the peer is lost (default 3 intervals).
    #[arg(long)]
    dead_ms: Option<u64>,
    /// How long to run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn parse_link(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (l, p) = s
        .split_once('=')
        .ok_or_else(|| format!("--link {s:?}: expected LOCAL=PEER"))?;
    let l = l
        .parse()
        .map_err(|_| format!("--link {s:?}: {l:?} is not ADDRESS:PORT"))?;
    let p = p
        .parse()
        .map_err(|_| format!("--link {s:?}: {p:?} is not ADDRESS:PORT"))?;
    Ok((l, p))
}

fn main() -> ExitCode {
    slb_common::cli_docs::emit_if_asked::<Args>();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let key = read_key(&args.key).map_err(|e| e.to_string())?;
    if args.links.len() > usize::from(u8::MAX) {
        return Err("at most 255 links".into());
    }
    let pairs = args
        .links
        .iter()
        .map(|l| parse_link(l))
        .collect::<Result<Vec<_>, _>>()?;
    let links = pairs
        .iter()
        .map(|(l, p)| Link::bind(*l, *p).map_err(|e| format!("cannot bind {l}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let dead_ms = args.dead_ms.unwrap_or(3 * args.interval_ms);
    let end = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    // One listening thread per link; the main thread sends and keeps the books.
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>, SocketAddr)>();
    for (i, link) in links.iter().enumerate() {
        let sock = link.try_clone().map_err(|e| e.to_string())?;
        let tx = tx.clone();
        std::thread::spawn(move || loop {
            match sock.recv(Duration::from_millis(50)) {
                Ok(Some((bytes, from))) => {
                    if tx.send((i, bytes, from)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        });
    }
    let boot = u64::from_ne_bytes(
        slb_common::auth::nonce::<8>().map_err(|e| format!("no random boot: {e}"))?,
    );
    let mut echo = 0u64;
    let mut receivers: Vec<Receiver> = (0..links.len())
        .map(|i| Receiver::new(args.node, boot, i as u8))
        .collect();
    let mut liveness = Liveness::new(links.len(), dead_ms);
    let mut accepted = vec![0u64; links.len()];
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut seq = 0u64;
    let mut next_send = Instant::now();
    let started = Instant::now();
    let ms = |t: Instant| t.duration_since(started).as_millis() as u64;
    while Instant::now() < end {
        if Instant::now() >= next_send {
            seq += 1;
            let mut hb = Heartbeat {
                node: args.node,
                boot,
                echo,
                seq,
                sent_ms: now_ms(),
                generation: 0,
                link: 0,
                apps: vec![App {
                    id: 0,
                    state: AppState::Standby,
                    primary: false,
                    inhibited: false,
                }],
            };
            for (i, l) in links.iter().enumerate() {
                hb.link = i as u8;
                // A link that is down fails to send; the other links carry on.
                let _ = l.send(&hb, &key);
            }
            next_send += interval;
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        while let Ok((i, bytes, from)) = rx.recv_timeout(wait) {
            let verdict = if from.ip() != pairs[i].1.ip() {
                Err("unknown_sender".to_string())
            } else {
                let verdict = receivers[i]
                    .accept(&bytes, &key)
                    .map_err(|e| format!("{e:?}").to_lowercase());
                echo = receivers[i].learned().unwrap_or(echo);
                verdict
            };
            match verdict {
                Ok(_) => {
                    accepted[i] += 1;
                    liveness.heard(i, ms(Instant::now()));
                }
                Err(why) => *rejected.entry(why).or_default() += 1,
            }
            if Instant::now() >= next_send {
                break;
            }
        }
    }
    let now = ms(Instant::now());
    let peer = match liveness.peer(now) {
        Peer::Unknown => "unknown",
        Peer::Alive => "alive",
        Peer::Lost => "lost",
    };
    let links_up: Vec<bool> = (0..links.len()).map(|l| liveness.link_up(l, now)).collect();
    println!(
        "{}",
        serde_json::json!({"node": args.node, "sent": seq, "accepted": accepted, "rejected": rejected, "links_up": links_up, "peer": peer})
    );
    Ok(())
}
