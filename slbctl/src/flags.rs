//! Checks what the user typed and turns slbcli's configuration flags into the edits slbd
//! applies, before anything is sent. Pure.

use std::net::Ipv4Addr;

use slbd::config::edit::{Edit, Secret};
use slbd::config::{parse_server_address, MAX_WEIGHT};
use slbd::core::net::Ipv4Net;

/// `[tcp/|udp/][VIPPORT=]ADDRESS:PORT[,WEIGHT]`.
/// `--mode [tcp/|udp/]VIPPORT=packet|offload`.
pub fn mode(v: &str) -> Result<Edit, String> {
    let bad =
        |why: String| format!("--mode {v:?}: {why} (expected [tcp/|udp/]VIPPORT=packet|offload)");
    let (protocol, rest) = match v.split_once('/') {
        Some((p, r)) if p.eq_ignore_ascii_case("tcp") || p.eq_ignore_ascii_case("udp") => {
            (p.to_ascii_lowercase(), r)
        }
        Some((p, _)) => return Err(bad(format!("{p:?} is not tcp or udp"))),
        None => ("tcp".to_string(), v),
    };
    let Some((port, mode)) = rest.split_once('=') else {
        return Err(bad("no mode given".into()));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(format!("VIP port {port:?} is not a port")))?;
    let mode = mode.parse::<slbd::config::Mode>().map_err(bad)?;
    Ok(Edit::Mode {
        protocol,
        port,
        mode: mode.name().to_string(),
    })
}

pub fn add_server(v: &str) -> Result<Edit, String> {
    let bad = |why: String| {
        format!("--add-server {v:?}: {why} (expected [tcp/|udp/][VIPPORT=]ADDRESS:PORT[,WEIGHT])")
    };
    let (protocol, rest) = match v.split_once('/') {
        Some((p, r)) if p.eq_ignore_ascii_case("tcp") || p.eq_ignore_ascii_case("udp") => {
            (p.to_ascii_lowercase(), r)
        }
        Some((p, _)) => return Err(bad(format!("{p:?} is not tcp or udp"))),
        None => ("tcp".to_string(), v),
    };
    let (address, weight) = match rest.split_once(',') {
        Some((a, w)) => {
            let w: u64 = w
                .parse()
                .map_err(|_| bad(format!("weight {w:?} is not a number")))?;
            if !(1..=MAX_WEIGHT).contains(&w) {
                return Err(bad(format!(
                    "weight {w} is out of range (1 to {MAX_WEIGHT})"
                )));
            }
            (a, w)
        }
        None => (rest, 1),
    };
    let (service_port, address) = match address.split_once('=') {
        Some((p, a)) => {
            let port = p.parse::<u16>().ok().filter(|p| *p != 0);
            (
                Some(port.ok_or_else(|| bad(format!("VIP port {p:?} is not a port")))?),
                a,
            )
        }
        None => (None, address),
    };
    let addr = parse_server_address(address).map_err(bad)?;
    Ok(Edit::AddServer {
        protocol,
        service_port,
        address: addr.to_string(),
        weight,
    })
}

pub fn ipv4(flag: &str, v: &str) -> Result<String, String> {
    v.parse::<Ipv4Addr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{flag} {v:?}: not an IPv4 address"))
}

pub fn cidr(flag: &str, v: &str) -> Result<String, String> {
    v.parse::<Ipv4Net>()
        .map(|n| n.to_string())
        .map_err(|e| format!("{flag} {v:?}: {e}"))
}

pub fn device(flag: &str, v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() < 16
        && !v
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("{flag} {v:?}: not a network interface name"))
    }
}

pub fn port(flag: &str, v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{flag} {v:?}: not a port (1 to 65535)"))
}

fn user(flag: &str, u: &str) -> Result<String, String> {
    if slbd::config::valid_user(u) {
        Ok(u.to_string())
    } else {
        Err(format!("{flag}: {u:?} is not a user name"))
    }
}

/// `USER[,PASS]`: without a password the peer logs in with SSH keys.
pub fn credentials(v: &str) -> Result<Edit, String> {
    let (u, pass) =
        match v.split_once(',') {
            Some((u, p)) if !p.is_empty() => (u, Some(Secret(p.to_string()))),
            Some(_) => return Err(
                "--credentials: the password after ',' is empty (leave out ',' to use SSH keys)"
                    .into(),
            ),
            None => (v, None),
        };
    Ok(Edit::Credentials {
        user: user("--credentials", u)?,
        password: pass,
    })
}

/// `ADDRESS,USER,PORT` (SSH keys) or, as the original, `ADDRESS,USER,PASS,PORT`.
pub fn backup_slb(v: &str) -> Result<Edit, String> {
    let parts: Vec<&str> = v.split(',').collect();
    let (a, u, pass, p) = match parts.as_slice() {
        [a, u, p] => (*a, *u, None, *p),
        [a, u, pass, p] if !pass.is_empty() => (*a, *u, Some(Secret(pass.to_string())), *p),
        _ => {
            return Err(
                "--backup-slb: expected ADDRESS,USER,PORT (SSH keys) or ADDRESS,USER,PASS,PORT"
                    .into(),
            )
        }
    };
    Ok(Edit::BackupSlb {
        address: ipv4("--backup-slb", a)?,
        user: user("--backup-slb", u)?,
        port: port("--backup-slb", p)?,
        password: pass,
    })
}

/// `[tcp/|udp/]VIPPORT`: a service, as `--set` and `explain` name it.
pub fn service(flag: &str, v: &str) -> Result<(String, u16), String> {
    let (protocol, port) = match v.split_once('/') {
        Some((p, r)) if p.eq_ignore_ascii_case("tcp") || p.eq_ignore_ascii_case("udp") => {
            (p.to_ascii_lowercase(), r)
        }
        Some((p, _)) => return Err(format!("{flag} {v:?}: {p:?} is not tcp or udp")),
        None => ("tcp".to_string(), v),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{flag} {v:?}: VIP port {port:?} is not a port"))?;
    Ok((protocol, port))
}

/// `[tcp/|udp/]VIPPORT:KEY=VALUE`.
pub fn set(v: &str) -> Result<Edit, String> {
    let form = "(expected [tcp/|udp/]VIPPORT:KEY=VALUE, e.g. tcp/80:persistence_timeout=30)";
    let Some((svc, setting)) = v.split_once(':') else {
        return Err(format!("--set {v:?}: no setting given {form}"));
    };
    let (protocol, port) = service("--set", svc)?;
    let Some((key, value)) = setting.split_once('=').filter(|(k, _)| !k.is_empty()) else {
        return Err(format!("--set {v:?}: no KEY=VALUE {form}"));
    };
    Ok(Edit::Set {
        protocol,
        port,
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// `IP:PORT` or `IP` (every port of that address): a server the state flags name.
pub fn server(flag: &str, v: &str) -> Result<String, String> {
    if let Ok(a) = parse_server_address(v) {
        return Ok(a.to_string());
    }
    v.parse::<Ipv4Addr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{flag} {v:?}: not ADDRESS:PORT or ADDRESS"))
}

/// `--drain`, `--maint` or `--ready` of `server`; a drain may have a deadline (seconds from
/// `now_unix`).
pub fn server_state(
    state: &str,
    v: &str,
    deadline_s: Option<u64>,
    now_unix: u64,
) -> Result<Edit, String> {
    Ok(Edit::ServerState {
        server: server(&format!("--{state}"), v)?,
        state: state.to_string(),
        until: deadline_s
            .filter(|_| state == "drain")
            .map(|d| now_unix + d),
    })
}

pub fn server_port(v: &str) -> Result<Edit, String> {
    let a = parse_server_address(v).map_err(|e| format!("--rm-server-port: {e}"))?;
    Ok(Edit::RmServerPort {
        address: a.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_notation() {
        let m = |p: &str, port: u16, mode: &str| Edit::Mode {
            protocol: p.into(),
            port,
            mode: mode.into(),
        };
        assert_eq!(mode("80=offload"), Ok(m("tcp", 80, "offload")));
        assert_eq!(mode("UDP/53=packet"), Ok(m("udp", 53, "packet")));
        assert_eq!(
            mode("80=fast"),
            Err(r#"--mode "80=fast": "fast" is not "packet" or "offload" (expected [tcp/|udp/]VIPPORT=packet|offload)"#.into())
        );
        assert!(mode("sctp/80=packet")
            .unwrap_err()
            .contains(r#""sctp" is not tcp or udp"#));
        assert!(mode("0=packet").unwrap_err().contains("is not a port"));
        assert!(mode("80").unwrap_err().contains("no mode given"));
    }

    #[test]
    fn add_server_notation() {
        let add = |p: &str, sp: Option<u16>, a: &str, w: u64| Edit::AddServer {
            protocol: p.into(),
            service_port: sp,
            address: a.into(),
            weight: w,
        };
        assert_eq!(
            add_server("tcp/80=172.16.0.5:8080"),
            Ok(add("tcp", Some(80), "172.16.0.5:8080", 1))
        );
        assert!(add_server("0=172.16.0.5:80")
            .unwrap_err()
            .contains("VIP port \"0\" is not a port"));
        assert_eq!(
            add_server("172.16.0.5:80"),
            Ok(add("tcp", None, "172.16.0.5:80", 1))
        );
        assert_eq!(
            add_server("UDP/172.16.0.5:53,3"),
            Ok(add("udp", None, "172.16.0.5:53", 3))
        );
        for (bad, why) in [
            ("172.16.0.5", "is not ADDRESS:PORT"),
            ("172.16.0.300:80", "is not an IPv4 address"),
            ("172.16.0.5:0", "has no valid port"),
            ("172.16.0.5:99999", "has no valid port"),
            ("sctp/172.16.0.5:80", "\"sctp\" is not tcp or udp"),
            ("172.16.0.5:80,0", "weight 0 is out of range"),
            ("172.16.0.5:80,x", "weight \"x\" is not a number"),
            ("0=172.16.0.5:80", "VIP port \"0\" is not a port"),
        ] {
            let err = add_server(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with("--add-server"), "{err}");
        }
    }

    #[test]
    fn redundancy_flags() {
        assert_eq!(
            credentials("slb"),
            Ok(Edit::Credentials {
                user: "slb".into(),
                password: None
            })
        );
        assert_eq!(
            credentials("slb,pw"),
            Ok(Edit::Credentials {
                user: "slb".into(),
                password: Some(Secret("pw".into()))
            })
        );
        assert!(credentials("slb,").is_err());
        assert!(credentials("Root!")
            .unwrap_err()
            .contains("is not a user name"));
        assert_eq!(
            backup_slb("10.0.0.2,slb,22"),
            Ok(Edit::BackupSlb {
                address: "10.0.0.2".into(),
                user: "slb".into(),
                port: 22,
                password: None
            })
        );
        assert_eq!(
            backup_slb("10.0.0.2,slb,pw,2222"),
            Ok(Edit::BackupSlb {
                address: "10.0.0.2".into(),
                user: "slb".into(),
                port: 2222,
                password: Some(Secret("pw".into()))
            })
        );
        assert!(backup_slb("10.0.0.2,slb")
            .unwrap_err()
            .contains("expected ADDRESS,USER,PORT"));
        assert!(backup_slb("10.0.0,slb,22")
            .unwrap_err()
            .contains("not an IPv4 address"));
        assert!(backup_slb("10.0.0.2,slb,0")
            .unwrap_err()
            .contains("not a port"));
        assert!(port("--ssh-port", "70000")
            .unwrap_err()
            .contains("not a port"));
    }

    #[test]
    fn set_notation() {
        assert_eq!(
            set("udp/53:health.interval_ms=500"),
            Ok(Edit::Set {
                protocol: "udp".into(),
                port: 53,
                key: "health.interval_ms".into(),
                value: "500".into()
            })
        );
        assert!(set("80").unwrap_err().contains("no setting given"));
        assert!(set("80:=3").unwrap_err().contains("no KEY=VALUE"));
        assert!(set("sctp/80:a=1")
            .unwrap_err()
            .contains("is not tcp or udp"));
        assert!(set("0:a=1").unwrap_err().contains("is not a port"));
    }

    #[test]
    fn server_state_notation() {
        assert_eq!(
            server_state("drain", "172.16.0.2:80", Some(30), 1000),
            Ok(Edit::ServerState {
                server: "172.16.0.2:80".into(),
                state: "drain".into(),
                until: Some(1030)
            })
        );
        assert_eq!(
            server_state("maint", "172.16.0.2", Some(30), 1000),
            Ok(Edit::ServerState {
                server: "172.16.0.2".into(),
                state: "maint".into(),
                until: None
            })
        );
        assert!(server_state("ready", "172.16.0", None, 0)
            .unwrap_err()
            .starts_with("--ready"));
    }

    #[test]
    fn addresses_networks_and_devices() {
        assert_eq!(ipv4("--address", "10.0.0.1"), Ok("10.0.0.1".into()));
        assert_eq!(
            ipv4("--address", "10.0.0"),
            Err("--address \"10.0.0\": not an IPv4 address".into())
        );
        assert_eq!(
            cidr("--cluster-network", "172.16.0.0/24"),
            Ok("172.16.0.0/24".into())
        );
        assert!(cidr("--cluster-network", "172.16.0.1/24")
            .unwrap_err()
            .contains("host bits are set"));
        assert!(cidr("--cluster-network", "172.16.0.0")
            .unwrap_err()
            .contains("expected ADDRESS/PREFIX"));
        assert_eq!(device("--address-dev", "eth0"), Ok("eth0".into()));
        assert!(device("--address-dev", "eth 0").is_err());
        assert!(server_port("172.16.0.2")
            .unwrap_err()
            .starts_with("--rm-server-port"));
    }
}
