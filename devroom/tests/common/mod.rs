//! Shared harness: spawn the built `devroom` binary on free ports and tear it down.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const API_KEY: &str = "devkey";
pub const API_SECRET: &str = "secret";

pub struct Devroom {
    child: Child,
    pub http: String,
    pub rtc: String,
    pub log: PathBuf,
}

impl Devroom {
    /// Starts `devroom --listen 127.0.0.1:0 --rtc-port 0 <extra>` and waits for its ready line.
    pub fn start(name: &str, extra: &[&str]) -> Devroom {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("devroom-{name}.log"));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_devroom"))
            .args(["--listen", "127.0.0.1:0", "--rtc-port", "0"])
            .args(extra)
            .env("RUST_LOG", std::env::var("DEVROOM_TEST_LOG").unwrap_or_else(|_| "devroom=debug,str0m=warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn devroom");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // keep draining so the child never blocks on a full pipe
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("devroom did not print its ready line; log: {}", log.display()));
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
        };
        Devroom {
            http: field("http"),
            rtc: field("rtc"),
            child,
            log,
        }
    }

    /// Runs devroom with `extra` expecting it to refuse to start; returns its stderr.
    pub fn try_start_fails(extra: &[&str]) -> String {
        let (status, _out, err) = run_with_timeout(
            Command::new(env!("CARGO_BIN_EXE_devroom"))
                .args(["--listen", "127.0.0.1:0", "--rtc-port", "0"])
                .args(extra),
            Duration::from_secs(10),
        );
        assert!(
            matches!(status, Some(s) if !s.success()),
            "devroom should have refused to start with {extra:?}"
        );
        err
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.http)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Devroom {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a deadline; kills it when the deadline passes.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (status, t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default())
}

/// Whether `python3` can import the given modules. In CI a missing module is a failure;
/// elsewhere the caller skips with the printed reason.
pub fn python_has(modules: &str, install_hint: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let msg = format!("python3 cannot import {modules}; install with: {install_hint}");
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and {msg}");
        }
        eprintln!("SKIP: {msg}");
    }
    ok
}

pub fn output_text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(name)
}

/// A plain HTTP/1.1 request (no TLS; reqwest's rustls feature unification would need a crypto
/// provider here). Returns (status, content-type, body).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let u = url::Url::parse(url).expect("url");
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", u.host_str().unwrap());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(Full::new(axum::body::Bytes::from(body))).unwrap())
        .await
        .expect("request");
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = res.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, ct, body)
}

/// A join token made with the official Rust SDK token builder.
pub fn join_token(identity: &str, room: &str) -> String {
    use livekit_api::access_token::{AccessToken, VideoGrants};
    AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(VideoGrants {
            room_join: true,
            room: room.to_string(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        })
        .to_jwt()
        .expect("token")
}

pub fn grant_token(grants: livekit_api::access_token::VideoGrants) -> String {
    livekit_api::access_token::AccessToken::with_api_key(API_KEY, API_SECRET)
        .with_identity("admin")
        .with_grants(grants)
        .to_jwt()
        .expect("token")
}
