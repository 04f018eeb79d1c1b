//! Conveyor binaries as child processes in tests: started with a settings
//! file and `--listen 127.0.0.1:0`, their stderr kept (for assertions and
//! for the failure report), their `/metrics` read over a plain socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The binary `name` of this workspace, next to `next_to` (a binary of the
/// caller's own package: `env!("CARGO_BIN_EXE_...")` in a test, the running
/// executable in the benchmark). A narrower `cargo test -p ...` or `cargo
/// build -p ...` may not have built it: it is built then, in `next_to`'s
/// profile.
pub fn sibling_binary(next_to: impl AsRef<Path>, name: &str) -> PathBuf {
    let next_to = next_to.as_ref();
    let path = next_to.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let release = next_to
            .parent()
            .and_then(|dir| dir.file_name())
            .is_some_and(|dir| dir == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "--bin", name]);
        if release {
            command.arg("--release");
        }
        let ok = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok && path.exists(), "cannot build {name}");
    }
    path
}

/// One child process, its stderr kept.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    /// Killed by the test on purpose (said so in the failure report).
    pub killed: bool,
}

impl Proc {
    /// Starts `binary` with `CONVEYOR_CONFIG=config`, `--listen
    /// 127.0.0.1:0` and `env` on top.
    pub fn start(name: &str, binary: &Path, config: &Path, env: &[(&str, &str)]) -> Proc {
        let mut command = Command::new(binary);
        command
            .env("CONVEYOR_CONFIG", config)
            .env("NO_COLOR", "1")
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
        let pid = child.id().expect("a running child");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = log.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            pid,
            log,
            killed: false,
        }
    }

    /// Whether a line of its stderr so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// The index of the first line of its stderr that contains `text`.
    pub fn first_line(&self, text: &str) -> Option<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .position(|l| l.contains(text))
    }

    /// The address its `/metrics` listens on, once it has logged it.
    pub fn listen_addr(&self) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter().find_map(|line| {
            let rest = line.split("ops endpoints listening").nth(1)?;
            let addr = rest.split("addr=").nth(1)?.split_whitespace().next()?;
            Some(addr.trim_matches('"').to_string())
        })
    }

    /// [`Proc::listen_addr`], waiting up to 30 s for the log line.
    pub async fn wait_listen_addr(&self) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = self.listen_addr() {
                return addr;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} (pid {}) never logged its /metrics address",
                self.name,
                self.pid
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.killed = true;
    }

    /// SIGTERM; it must exit 0 within 45 s.
    pub async fn sigterm_and_wait(mut self) {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(45), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} exits within 45 s of SIGTERM", self.name))
            .unwrap();
        assert!(status.success(), "{} exit status {status:?}", self.name);
    }
}

/// Every process of a test; their last log lines are printed if it fails.
#[derive(Default)]
pub struct Procs(pub Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                let log = p.log.lock().unwrap();
                let killed = if p.killed { ", killed" } else { "" };
                eprintln!("----- {} (pid {}{killed}), last log lines:", p.name, p.pid);
                for line in log.iter().rev().take(40).rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The value of the sample `series` (name and labels, as exposed) on the
/// `/metrics` page at `addr`.
pub async fn metric(addr: &str, series: &str) -> Option<f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
