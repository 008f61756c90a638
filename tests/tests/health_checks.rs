//! slbd's active health checks beyond a TCP connect, end to end against the real slbd: an
//! HTTP check that wants a status and a body text, TLS checks with and without certificate
//! verification, and a script check whose exit status sets the server's weight (keepalived's
//! misc_dynamic). The real servers are `tests/health/server.py` (HTTP or HTTPS whose /health
//! answer a file switches) and the lab's own lab-server; the script is
//! `tests/health/exit-status.sh`. In both data-path modes: the checks are the same, the
//! traffic that must follow them takes either path.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slb_tests::*;

const T: Duration = Duration::from_secs(5);
/// Fast checks, so that each change is seen within a second: down after 2 × 200 ms, up
/// after 2 more.
fn fast(extra: Value) -> Value {
    let mut h = json!({"interval_ms": 200, "timeout_ms": 150, "fall": 2, "rise": 2});
    for (k, v) in extra.as_object().expect("an object") {
        h[k] = v.clone();
    }
    h
}

fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("health")
        .join(name)
}

/// Starts `server.py` as real server `i` on `port`, its /health answer switched by files in
/// the returned directory; HTTPS when `tls` names a certificate and key.
fn serve(lab: &Lab, i: usize, port: u16, tls: Option<(&Path, &Path)>) -> (Proc, PathBuf) {
    let dir = lab.dir().join(format!("s{}-{port}", i + 1));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.server(i), "python3"])
        .arg(helper("server.py"))
        .args([
            "--name",
            &format!("s{}", i + 1),
            "--port",
            &port.to_string(),
        ])
        .arg("--dir")
        .arg(&dir);
    if let Some((cert, key)) = tls {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs server.py");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    assert_eq!(
        line.trim(),
        "ready",
        "server.py for s{} did not start",
        i + 1
    );
    (Proc(child), dir)
}

/// Rewrites a file whole (rename), so that a check never reads it half written.
fn put(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The rotation state (`up`/`down`) of each server of each service, from `slbctl --status`.
fn states(lab: &Lab, slbd: &Slbd) -> Vec<Vec<String>> {
    let (code, out, err) = lab.slbctl(slbd, &["--status", "--json"]);
    assert_eq!(code, 0, "slbctl --status: {err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["state"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .collect()
}

/// Waits until the servers of service `svc` are in `want`'s states.
fn wait_states(lab: &Lab, slbd: &Slbd, svc: usize, want: &[&str], why: &str) {
    let started = Instant::now();
    loop {
        let now = states(lab, slbd);
        if now[svc] == want {
            return;
        }
        assert!(
            started.elapsed() < T,
            "{why}: service {svc}'s servers are {:?}, expected {want:?} within {T:?}; log:\n{}",
            now[svc],
            slbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until slbd's log has a line containing every one of `parts`.
fn wait_for_log(slbd: &Slbd, parts: &[&str]) {
    let started = Instant::now();
    while !slbd
        .log_text()
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
    {
        assert!(
            started.elapsed() < T,
            "no log line with {parts:?} within {T:?}; log:\n{}",
            slbd.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lab's configuration with only `services`.
fn config_with(lab: &Lab, services: Value) -> Value {
    let mut config = lab.config(0);
    config["services"] = services;
    config
}

fn servers(n: usize, port: u16) -> Value {
    (0..n)
        .map(|i| Value::from(format!("{}:{port}", server_ip(i))))
        .collect()
}

fn an_http_check_takes_out_a_server_answering_503_or_the_wrong_body_and_brings_it_back_on_200(
    mode: &'static str,
) {
    if !can_run("an_http_check_takes_out_a_server_answering_503_or_the_wrong_body") {
        return;
    }
    let lab = Lab::new_in(3, mode).unwrap();
    let served: Vec<_> = (0..3).map(|i| serve(&lab, i, 8080, None)).collect();
    let dir = |i: usize| served[i].1.clone();
    put(&dir(1).join("status"), "503");
    put(&dir(2).join("body"), "sick");
    let health = fast(json!({"http": {"path": "/health", "expect_body": "healthy"}}));
    let config = config_with(
        &lab,
        json!([{"protocol": "tcp", "port": 80, "mode": mode, "servers": servers(3, 8080),
                "health": health}]),
    );
    let slbd = lab.start_slbd(&config);

    wait_states(
        &lab,
        &slbd,
        0,
        &["up", "down", "down"],
        "s2 answers 503 and s3 lacks \"healthy\"",
    );
    wait_for_log(
        &slbd,
        &["server left rotation", "172.16.0.3:8080", "http 503"],
    );
    wait_for_log(
        &slbd,
        &["server left rotation", "172.16.0.4:8080", "http body"],
    );
    let (_, out, _) = lab.slbctl(&slbd, &["--status", "--json"]);
    let st: Value = serde_json::from_str(&out).unwrap();
    let why = |i: usize| st["services"][0]["servers"][i]["down_reason"].clone();
    assert_eq!(
        (why(0), why(1), why(2)),
        (Value::Null, json!("http 503"), json!("http body")),
        "--status says why each is down"
    );
    let (_, table, _) = lab.slbctl(&slbd, &["--status"]);
    assert!(table.contains("http 503"), "{table}");
    let counts = spread(&lab, 30);
    assert_eq!(
        counts,
        [("s1".to_string(), 30)].into(),
        "every request goes to the one healthy server"
    );

    put(&dir(1).join("status"), "200");
    put(&dir(2).join("body"), "healthy");
    wait_states(
        &lab,
        &slbd,
        0,
        &["up", "up", "up"],
        "s2 and s3 answer 200 healthy again",
    );
    let counts = spread(&lab, 30);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["s1", "s2", "s3"],
        "all three serve again: {counts:?}"
    );
}

/// openssl in `dir`: `name`.pem and `name`.key, a CA certificate, or with `signer` a server
/// certificate for `health.test` that the CA `signer` signed.
fn certificate(dir: &Path, name: &str, signer: Option<&str>) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let key_args = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
    ];
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    match signer {
        None => {
            let subject = format!("/CN=slb test {name}");
            let mut args = vec!["req", "-x509"];
            args.extend(key_args);
            args.extend([key_s, "-out", cert_s, "-days", "2", "-subj", &subject]);
            run(&args);
        }
        Some(ca) => {
            let ext = dir.join(format!("{name}.ext"));
            std::fs::write(
                &ext,
                "subjectAltName=DNS:health.test\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            let csr = format!("{name}.csr");
            let mut args = vec!["req"];
            args.extend(key_args);
            args.extend([key_s, "-out", &csr, "-subj", "/CN=health.test"]);
            run(&args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                cert_s,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ]);
        }
    }
    (cert, key)
}

fn a_tls_check_passes_against_a_self_signed_server_and_fails_when_the_ca_does_not_match(
    mode: &'static str,
) {
    if !can_run("a_tls_check_passes_against_a_self_signed_server_and_fails_when_the_ca") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let (ca, _) = certificate(lab.dir(), "ca", None);
    let (other_ca, _) = certificate(lab.dir(), "other-ca", None);
    let (cert, key) = certificate(lab.dir(), "server", Some("ca"));
    let served: Vec<_> = (0..2)
        .map(|i| serve(&lab, i, 8443, Some((&cert, &key))))
        .collect();
    let service = |port: u16, health: Value| {
        json!({"protocol": "tcp", "port": port, "mode": mode, "servers": servers(2, 8443),
               "health": fast(health)})
    };
    let config = config_with(
        &lab,
        json!([
            // HTTPS without verification: the certificate's issuer is unknown to slbd.
            service(443, json!({"tls": true, "http": {"path": "/health"}})),
            // A bare handshake verified against a CA that did not sign the certificate.
            service(444, json!({"tls": {"ca_file": other_ca}})),
            // HTTPS verified against the CA that did, under the certificate's name.
            service(
                445,
                json!({"tls": {"ca_file": ca, "server_name": "health.test"},
                                "http": {"path": "/health", "expect_body": "healthy"}})
            ),
        ]),
    );
    let slbd = lab.start_slbd(&config);

    wait_states(
        &lab,
        &slbd,
        1,
        &["down", "down"],
        "the certificate does not chain to other-ca",
    );
    wait_for_log(&slbd, &["server left rotation", "tcp/444", "reason=tls"]);
    assert_eq!(
        states(&lab, &slbd),
        vec![vec!["up", "up"], vec!["down", "down"], vec!["up", "up"]],
        "tls: true and the right CA keep both servers in"
    );
    assert!(
        !slbd
            .log_text()
            .lines()
            .any(|l| l.contains("server left rotation") && !l.contains("tcp/444")),
        "only tcp/444's servers left; log:\n{}",
        slbd.log_text()
    );

    // The checks of tcp/443 and tcp/445 see the HTTP answer through TLS.
    put(&served[0].1.join("status"), "503");
    wait_states(&lab, &slbd, 0, &["down", "up"], "s1 answers 503 over HTTPS");
    wait_states(&lab, &slbd, 2, &["down", "up"], "s1 answers 503 over HTTPS");
    wait_for_log(&slbd, &["server left rotation", "tcp/445", "http 503"]);
}

fn a_script_check_with_dynamic_weight_changes_the_ratio_share(mode: &'static str) {
    if !can_run("a_script_check_with_dynamic_weight_changes_the_ratio_share") {
        return;
    }
    let lab = Lab::new_in(2, mode).unwrap();
    let dir = lab.dir().join("exit");
    std::fs::create_dir_all(&dir).unwrap();
    let exit_with =
        |i: usize, status: u8| put(&dir.join(server_ip(i).to_string()), &status.to_string());
    // Exit 12 is weight 10, exit 3 weight 1.
    exit_with(0, 12);
    exit_with(1, 3);
    let script = json!({
        "command": ["/bin/sh", helper("exit-status.sh"), &dir, "tcp/80"],
        "dynamic_weight": true,
    });
    let health = json!({"interval_ms": 300, "timeout_ms": 250, "fall": 2, "rise": 2,
                        "script": script});
    let mut config = config_with(
        &lab,
        json!([{"protocol": "tcp", "port": 80, "mode": mode, "servers": servers(2, SERVER_HTTP_PORT),
                "health": health}]),
    );
    config["algorithm"] = "RATIO".into();
    let slbd = lab.start_slbd(&config);

    let weight_set = |i: usize, w: u32| {
        let server = format!("server={}:{SERVER_HTTP_PORT}", server_ip(i));
        let weight = format!("weight=\"{w}\"");
        wait_for_log(&slbd, &["script set the server's weight", &server, &weight]);
    };
    weight_set(0, 10);
    weight_set(1, 1);
    let share = |counts: &std::collections::BTreeMap<String, usize>, s: &str| {
        counts.get(s).copied().unwrap_or(0)
    };
    let counts = spread(&lab, 200);
    eprintln!("weights 10:1 -> {counts:?}");
    assert!(
        share(&counts, "s1") >= 160 && share(&counts, "s2") >= 1,
        "s1 (weight 10) should get about 10 of every 11 new connections: {counts:?}"
    );

    exit_with(0, 3);
    exit_with(1, 12);
    weight_set(0, 1);
    weight_set(1, 10);
    let counts = spread(&lab, 200);
    eprintln!("weights 1:10 -> {counts:?}");
    assert!(
        share(&counts, "s2") >= 160 && share(&counts, "s1") >= 1,
        "the share flips with the weights: {counts:?}"
    );
    assert_eq!(
        states(&lab, &slbd)[0],
        ["up", "up"],
        "a dynamic weight is up"
    );
}

in_both_modes!(
    an_http_check_takes_out_a_server_answering_503_or_the_wrong_body_and_brings_it_back_on_200,
    a_tls_check_passes_against_a_self_signed_server_and_fails_when_the_ca_does_not_match,
    a_script_check_with_dynamic_weight_changes_the_ratio_share,
);
