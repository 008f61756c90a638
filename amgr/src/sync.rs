//! Config sync: the ACTIVE node copies `slb_conf.json` to the STANDBY over SSH, every sync
//! period and at once when the file changes (a `slbctl --save-config`).
//!
//! Pure: [`peer_copy`] turns this node's file into the peer's (the redundancy settings swap
//! sides: our `backup_slb` is the peer, so the peer's is us), [`generation`] names a
//! configuration's content for the heartbeat, [`remote_command`] is what runs on the peer.
//! Shell: [`push`] (ssh2: the peer's host key checked against known_hosts, key
//! authentication, the file written to a temporary name with mode 0600 and renamed over the
//! old one) and [`run`], the thread that never blocks failover: failures are logged, recorded
//! for `query`, and retried next period.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use slbd::config::{Config as SlbConfig, RawBackup, RawConfig, RawCredentials};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("with_redundancy is off in slb_conf.json")]
    Off,
    #[error("slb_conf.json names no backup_slb to sync to")]
    NoBackup,
    #[error("slb_conf.json is not valid, not syncing it: {0}")]
    Invalid(String),
    #[error("ssh to {peer}: {what}")]
    Ssh { peer: String, what: String },
    #[error("{peer}: the host key is not in {known_hosts} (or does not match it)")]
    HostKey { peer: String, known_hosts: String },
}

/// The peer's copy of our configuration: everything the same except the redundancy settings,
/// which name the other side. `our_address` is where the peer reaches us (the SSH connection's
/// local address).
pub fn peer_copy(raw: &RawConfig, our_address: Ipv4Addr) -> Result<RawConfig, SyncError> {
    if !raw.with_redundancy {
        return Err(SyncError::Off);
    }
    let backup = raw.backup_slb.as_ref().ok_or(SyncError::NoBackup)?;
    SlbConfig::try_from(raw).map_err(|e| SyncError::Invalid(e.to_string()))?;
    let mut copy = raw.clone();
    copy.backup_slb = Some(RawBackup {
        address: our_address.to_string(),
        // Our own login user, as the peer must use it to reach us; the same as theirs when
        // none is set.
        user: raw
            .credentials
            .as_ref()
            .map_or_else(|| backup.user.clone(), |c| c.user.clone()),
        port: raw.ssh_port.unwrap_or(22),
    });
    copy.credentials = Some(RawCredentials {
        user: backup.user.clone(),
    });
    copy.ssh_port = Some(backup.port);
    Ok(copy)
}

/// A name for what a configuration balances, the same on both nodes whatever side the
/// redundancy settings name (FNV-1a over the JSON without them).
pub fn generation(raw: &RawConfig) -> u64 {
    let mut neutral = raw.clone();
    neutral.ssh_port = None;
    neutral.credentials = None;
    neutral.backup_slb = None;
    let text = serde_json::to_string(&neutral).expect("a config serialises");
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command the peer runs with the file on its standard input: written under a temporary
/// name with mode 0600, then renamed over the old file, so slbd never reads half a file.
/// `len` bytes are read (`head -c`), so the remote side never depends on seeing EOF.
pub fn remote_command(path: &Path, len: usize) -> String {
    let dst = path.display().to_string();
    let tmp = format!("{dst}.amgr-sync");
    format!(
        "umask 077 && head -c {len} > {t} && test $(wc -c < {t}) -eq {len} && chmod 600 {t} && mv -f {t} {d}",
        t = shell_quote(&tmp),
        d = shell_quote(&dst)
    )
}

/// How to reach the peer's sshd.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: Ipv4Addr,
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub remote_path: PathBuf,
}

/// Copies this node's configuration (`raw`) to the peer; returns the bytes written.
pub fn push(raw: &RawConfig, target: &Target, timeout: Duration) -> Result<usize, SyncError> {
    let peer = format!("{}:{}", target.address, target.port);
    let fail = |what: String| SyncError::Ssh {
        peer: peer.clone(),
        what,
    };
    let addr = SocketAddr::V4(SocketAddrV4::new(target.address, target.port));
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(e.to_string()))?;
    let ours = match tcp.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        _ => return Err(fail("not an IPv4 connection".into())),
    };
    let copy = peer_copy(raw, ours)?;
    let text = serde_json::to_string_pretty(&copy).expect("a config serialises") + "\n";

    let mut sess = ssh2::Session::new().map_err(|e| fail(e.to_string()))?;
    sess.set_timeout(timeout.as_millis() as u32);
    sess.set_tcp_stream(tcp);
    sess.handshake()
        .map_err(|e| fail(format!("handshake: {e}")))?;
    verify_host_key(&sess, target).map_err(|_| SyncError::HostKey {
        peer: peer.clone(),
        known_hosts: target.known_hosts.display().to_string(),
    })?;
    sess.userauth_pubkey_file(&target.user, None, &target.identity, None)
        .map_err(|e| {
            fail(format!(
                "key authentication as {} with {}: {e}",
                target.user,
                target.identity.display()
            ))
        })?;
    let mut ch = sess.channel_session().map_err(|e| fail(e.to_string()))?;
    ch.exec(&remote_command(&target.remote_path, text.len()))
        .map_err(|e| fail(format!("exec: {e}")))?;
    ch.write_all(text.as_bytes())
        .map_err(|e| fail(format!("sending the file: {e}")))?;
    ch.send_eof().map_err(|e| fail(e.to_string()))?;
    // The remote's EOF first: reading stderr before it arrives blocks until the timeout.
    ch.wait_eof().map_err(|e| fail(e.to_string()))?;
    let mut stderr = String::new();
    let _ = ch.stderr().read_to_string(&mut stderr);
    ch.wait_close().map_err(|e| fail(e.to_string()))?;
    tracing::debug!(peer = %peer, "sync: file written on the peer");
    match ch.exit_status() {
        Ok(0) => Ok(text.len()),
        Ok(code) => Err(fail(format!(
            "writing {} failed (exit {code}): {}",
            target.remote_path.display(),
            stderr.trim()
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

fn verify_host_key(sess: &ssh2::Session, target: &Target) -> Result<(), ()> {
    let mut known = sess.known_hosts().map_err(|_| ())?;
    known
        .read_file(&target.known_hosts, ssh2::KnownHostFileKind::OpenSSH)
        .map_err(|_| ())?;
    let (key, _) = sess.host_key().ok_or(())?;
    match known.check_port(&target.address.to_string(), target.port, key) {
        ssh2::CheckResult::Match => Ok(()),
        _ => Err(()),
    }
}

/// What `query` shows of the sync.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub last_ok: Option<SystemTime>,
    pub last_error: Option<String>,
    pub pushes: u64,
    pub failures: u64,
    pub peer: Option<String>,
}

/// Where the sync thread reads its inputs.
pub struct Settings {
    pub config_path: PathBuf,
    pub remote_path: PathBuf,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub period: Duration,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The sync thread: while `active()` says this node is ACTIVE, pushes the configuration every
/// period and soon after the file changes.
pub fn run(settings: Settings, active: impl Fn() -> bool, status: Arc<Mutex<Status>>) {
    let mut last_attempt: Option<Instant> = None;
    let mut pushed_mtime: Option<SystemTime> = None;
    let mut last_error: Option<String> = None;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        if !active() {
            last_attempt = None;
            continue;
        }
        let mtime = modified(&settings.config_path);
        let due = last_attempt.is_none_or(|t| t.elapsed() >= settings.period);
        let changed = mtime != pushed_mtime
            && last_attempt.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !due && !changed {
            continue;
        }
        last_attempt = Some(Instant::now());
        let result = (|| {
            let (raw, config) = SlbConfig::load_raw(&settings.config_path)
                .map_err(|e| SyncError::Invalid(e.to_string()))?;
            if !config.redundancy.enabled {
                return Err(SyncError::Off);
            }
            let b = config
                .redundancy
                .backup
                .as_ref()
                .ok_or(SyncError::NoBackup)?;
            let target = Target {
                address: b.address,
                port: b.port,
                user: b.user.clone(),
                identity: settings.identity.clone(),
                known_hosts: settings.known_hosts.clone(),
                remote_path: settings.remote_path.clone(),
            };
            status.lock().peer = Some(format!("{}@{}:{}", b.user, b.address, b.port));
            push(&raw, &target, Duration::from_secs(5)).map(|n| (n, target))
        })();
        let mut st = status.lock();
        match result {
            Ok((bytes, target)) => {
                pushed_mtime = mtime;
                st.last_ok = Some(SystemTime::now());
                st.last_error = None;
                st.pushes += 1;
                if last_error.take().is_some() || changed {
                    tracing::info!(peer = %target.address, path = %target.remote_path.display(), bytes, "configuration synced to the peer");
                } else {
                    tracing::debug!(peer = %target.address, bytes, "configuration synced to the peer");
                }
            }
            Err(e) => {
                st.failures += 1;
                st.last_error = Some(e.to_string());
                // One line per new problem, not one per period.
                if last_error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!(error = %e, retry_s = settings.period.as_secs(), "configuration sync failed");
                }
                last_error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        serde_json::from_str(
            r#"{"address": "10.0.0.100", "address_dev": "eth0", "gateway": "172.16.0.1",
                "gateway_dev": "eth1", "cluster_network": "172.16.0.0/24",
                "services": [{"protocol": "tcp", "port": 80, "servers": ["172.16.0.11:80"]}],
                "ssh_port": 2222, "with_redundancy": true,
                "credentials": {"user": "slbsync"},
                "backup_slb": {"address": "192.168.100.2", "user": "peeruser", "port": 22}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_peer_copy_names_us_as_its_backup() {
        let copy = peer_copy(&raw(), "192.168.100.1".parse().unwrap()).unwrap();
        assert_eq!(
            copy.backup_slb,
            Some(RawBackup {
                address: "192.168.100.1".into(),
                user: "slbsync".into(),
                port: 2222
            })
        );
        assert_eq!(copy.credentials.unwrap().user, "peeruser");
        assert_eq!(copy.ssh_port, Some(22));
        assert_eq!(copy.services, raw().services);
        // Twice swapped is the original.
        let back = peer_copy(
            &peer_copy(&raw(), "192.168.100.1".parse().unwrap()).unwrap(),
            "192.168.100.2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(back, raw());
    }

    #[test]
    fn the_generation_ignores_the_sides_and_sees_the_services() {
        let r = raw();
        let copy = peer_copy(&r, "192.168.100.1".parse().unwrap()).unwrap();
        assert_eq!(generation(&r), generation(&copy));
        let mut more = r.clone();
        more.services[0].port = 81;
        assert_ne!(generation(&r), generation(&more));
    }

    #[test]
    fn nothing_is_synced_without_redundancy_or_a_valid_config() {
        let mut r = raw();
        r.with_redundancy = false;
        assert_eq!(peer_copy(&r, Ipv4Addr::LOCALHOST), Err(SyncError::Off));
        let mut r = raw();
        r.backup_slb = None;
        assert_eq!(peer_copy(&r, Ipv4Addr::LOCALHOST), Err(SyncError::NoBackup));
        let mut r = raw();
        r.address = "10.0.0.300".into();
        assert!(matches!(
            peer_copy(&r, Ipv4Addr::LOCALHOST),
            Err(SyncError::Invalid(_))
        ));
    }

    #[test]
    fn the_remote_command_quotes_the_path() {
        assert_eq!(
            remote_command(Path::new("/etc/slb/slb_conf.json"), 12),
            "umask 077 && head -c 12 > '/etc/slb/slb_conf.json.amgr-sync' && \
             test $(wc -c < '/etc/slb/slb_conf.json.amgr-sync') -eq 12 && chmod 600 \
             '/etc/slb/slb_conf.json.amgr-sync' && mv -f '/etc/slb/slb_conf.json.amgr-sync' \
             '/etc/slb/slb_conf.json'"
        );
        assert!(remote_command(Path::new("/tmp/it's"), 1).contains(r"'/tmp/it'\''s'"));
    }
}
