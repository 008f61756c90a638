//! A real server for the lab: an HTTP/1.0 responder on TCP that names itself, with a bulk
//! download (`GET /bytes/N`), a bulk upload that answers the SHA-256 of what it received
//! (`POST /sink`), a long-lived connection (`GET /hold`: names itself, then echoes each line
//! after its name until the client closes), a UDP echo that prefixes its name, and with
//! `--agent ADDR:PORT --agent-file PATH` an agent-check agent answering the file's first line. Threads and std only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use sha2::{Digest, Sha256};
use slb_tests::pattern;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let name = get("--name").expect("--name NAME");
    if let Some(addr) = get("--udp") {
        let sock = UdpSocket::bind(&addr).expect("bind udp");
        let name = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        });
    }
    // An agent-check agent: each connection gets the file's first line (what the test
    // wrote there last), then the connection closes.
    if let (Some(addr), Some(file)) = (get("--agent"), get("--agent-file")) {
        let listener = TcpListener::bind(&addr).expect("bind agent");
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let line = std::fs::read_to_string(&file).unwrap_or_default();
                let _ = conn.write_all(line.lines().next().unwrap_or("").as_bytes());
                let _ = conn.write_all(b"\n");
            }
        });
    }
    let addr = get("--tcp").expect("--tcp ADDR:PORT");
    let listener = TcpListener::bind(&addr).expect("bind tcp");
    println!("ready");
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &name);
        });
    }
}

fn serve(conn: TcpStream, name: &str) -> std::io::Result<()> {
    // Answers are written in pieces: without this, Nagle holds each piece after the first
    // until the client's delayed ACK (40 ms a request).
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        write!(
            out,
            "HTTP/1.0 200 OK\r\nX-Server: {name}\r\nContent-Length: {n}\r\n\r\n"
        )?;
        let mut sent = 0;
        let mut chunk = vec![0u8; 1 << 16];
        while sent < n {
            let len = chunk.len().min(n - sent);
            pattern(sent as u64, &mut chunk[..len]);
            out.write_all(&chunk[..len])?;
            sent += len;
        }
    } else if path == "/hold" {
        // A long-lived connection: say who we are, then answer each line with our name and
        // the line, until the client closes.
        write!(out, "HTTP/1.0 200 OK\r\nX-Server: {name}\r\n\r\n{name}\n")?;
        out.flush()?;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            write!(out, "{name} {line}")?;
            out.flush()?;
            line.clear();
        }
    } else if path == "/sink" {
        let mut hasher = Sha256::new();
        let mut left = length;
        let mut chunk = vec![0u8; 1 << 16];
        while left > 0 {
            let n = reader.read(&mut chunk[..left.min(1 << 16)])?;
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
            left -= n;
        }
        let body = format!("{name} {} {:x}\n", length - left, hasher.finalize());
        write!(
            out,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    } else if path == "/reset" {
        // An application that answers, then aborts the connection (SO_LINGER 0: a reset, not
        // a FIN), as some do on errors or at shutdown.
        let body = format!("{name}\n");
        write!(
            out,
            "HTTP/1.0 200 OK\r\nX-Server: {name}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        out.flush()?;
        let abort = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&out, nix::sys::socket::sockopt::Linger, &abort)?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        return Ok(());
    } else {
        let body = format!("{name}\n");
        write!(
            out,
            "HTTP/1.0 200 OK\r\nX-Server: {name}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
    out.flush()
}
