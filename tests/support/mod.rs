//! Fixtures for integration tests: an in-process metering emulator and the real
//! `entitlement-gate` binary run with a clean, loopback-only environment.

#![allow(dead_code, unused_imports)] // Each test crate uses its own subset.

pub mod license;

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use entitlement_gate::domain::anchor_rules::AWS_JAVA_SAMPLE_PUBLIC_KEY as AWS_JAVA_SAMPLE_1024_BIT_PUBLIC_KEY;
pub use metering_emulator::keys::shared_2048;
pub use metering_emulator::{Config, RunningEmulator, TokenFault};
use serde_json::Value;

pub mod meter;

pub const PAID: &str = "prod-paid";
pub const UNPAID: &str = "prod-unpaid";
/// The workload identity every gate and `verify` run gets unless a test says otherwise, as the
/// Helm chart sets the pod UID in both containers.
pub const WORKLOAD: &str = "test-pod-uid";

/// An emulator where `prod-paid` is entitled and `prod-unpaid` is not.
pub fn emulator_config() -> Config {
    Config::new(shared_2048()).entitle(PAID).refuse(UNPAID)
}

pub fn emulator() -> RunningEmulator {
    metering_emulator::spawn(emulator_config())
}

pub fn emulator_with(edit: impl FnOnce(&mut Config)) -> RunningEmulator {
    let mut config = emulator_config();
    edit(&mut config);
    metering_emulator::spawn(config)
}

/// A gate invocation: `entitlement-gate check` against `endpoint`, with the emulator's public key
/// in a file, dummy credentials and nothing inherited from the host's AWS setup.
pub struct Gate {
    pub dir: tempfile::TempDir,
    command: Command,
}

impl Gate {
    pub fn check(emulator: &RunningEmulator) -> Self {
        Self::subcommand(emulator, "check")
    }

    /// Any subcommand (`exec`, `verify`, `doctor`) with the same environment as `check`.
    pub fn subcommand(emulator: &RunningEmulator, name: &str) -> Self {
        Self::against(&emulator.endpoint_url(), emulator.public_key_pem(), &[name])
    }

    pub fn against(endpoint: &str, public_key_pem: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("public-key.pem");
        std::fs::write(&key, public_key_pem).expect("write key");
        // Empty AWS config files: nothing from the host, and no SDK warning about missing ones.
        let aws_config = dir.path().join("aws-config");
        std::fs::write(&aws_config, "").expect("write aws config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_entitlement-gate"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("AWS_CONFIG_FILE", &aws_config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &aws_config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env(
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_MARKETPLACE_METERING", endpoint)
            .env("ENTITLEMENT_GATE_WORKLOAD_ID", WORKLOAD)
            .env("ENTITLEMENT_GATE_PRODUCT_CODE", PAID)
            .env("ENTITLEMENT_GATE_PUBLIC_KEY_FILE", &key)
            .env(
                "ENTITLEMENT_GATE_TERMINATION_LOG",
                dir.path().join("termination-log"),
            )
            // Fast retries: these tests check what is retried, not the tuned timing (bench/storm.py).
            .env("ENTITLEMENT_GATE_RETRY_BASE", "100ms")
            .env("ENTITLEMENT_GATE_RETRY_CAP", "400ms")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self { dir, command }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    /// Sends stderr to `file` (e.g. `/dev/full`) instead of capturing it.
    pub fn stderr_to(mut self, file: std::fs::File) -> Self {
        self.command.stderr(file);
        self
    }

    pub fn product(self, code: &str) -> Self {
        self.env("ENTITLEMENT_GATE_PRODUCT_CODE", code)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Feeds `input` on stdin.
    pub fn run_with_stdin(mut self, input: &str) -> Finished {
        use std::io::Write as _;
        self.command.stdin(Stdio::piped());
        let started = Instant::now();
        let mut child = self.command.spawn().expect("spawn entitlement-gate");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        let output = child.wait_with_output().expect("wait");
        Finished::new(self.dir, output, started.elapsed())
    }

    /// Runs to completion.
    pub fn run(mut self) -> Finished {
        let started = Instant::now();
        let output = self.command.output().expect("run entitlement-gate");
        Finished::new(self.dir, output, started.elapsed())
    }

    /// Starts with a stdin pipe that stays open (and empty) until the run ends.
    pub fn spawn_with_open_stdin(mut self) -> (Running, std::process::ChildStdin) {
        self.command.stdin(Stdio::piped());
        let mut child = self.command.spawn().expect("spawn entitlement-gate");
        let stdin = child.stdin.take().expect("stdin");
        (
            Running {
                dir: self.dir,
                child,
            },
            stdin,
        )
    }

    /// Starts without waiting.
    pub fn spawn(mut self) -> Running {
        let child = self.command.spawn().expect("spawn entitlement-gate");
        Running {
            dir: self.dir,
            child,
        }
    }
}

pub struct Running {
    pub dir: tempfile::TempDir,
    pub child: Child,
}

impl Running {
    /// Waits until the process catches SIGTERM, i.e. has installed its handlers (read from
    /// `SigCgt` in /proc, so no guess about how long start-up takes).
    pub fn wait_for_signal_handlers(&self) {
        let status = format!("/proc/{}/status", self.child.id());
        let catches_sigterm = || {
            std::fs::read_to_string(&status)
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|line| {
                        line.strip_prefix("SigCgt:")
                            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
                    })
                })
                .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
        };
        assert!(
            wait_until(Duration::from_secs(30), catches_sigterm),
            "the process never installed its signal handlers"
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits for exit; also returns how long that took from now.
    pub fn wait(self) -> Finished {
        let started = Instant::now();
        let output = self.child.wait_with_output().expect("wait");
        Finished::new(self.dir, output, started.elapsed())
    }
}

/// A finished run and what it left behind.
pub struct Finished {
    pub dir: tempfile::TempDir,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    fn new(dir: tempfile::TempDir, output: Output, elapsed: Duration) -> Self {
        Self {
            dir,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }

    /// Asserts the exit code, showing stderr when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "stderr:\n{}", self.stderr);
        self
    }

    pub fn termination_log(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("termination-log")).ok()
    }

    /// The failure sentence: in the termination log, and the same on stderr.
    #[track_caller]
    pub fn reason(&self) -> String {
        let reason = self.termination_log().expect("termination log written");
        assert!(
            self.stderr.contains(&reason),
            "stderr lacks the reason:\n{}",
            self.stderr
        );
        reason
    }

    pub fn handoff_in(&self, dir: &Path) -> Option<Value> {
        let text = std::fs::read_to_string(dir.join("entitlement.json")).ok()?;
        Some(serde_json::from_str(&text).expect("handoff is JSON"))
    }
}

/// Claims of a compact JWT, decoded without verification (for assertions only).
pub fn jwt_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload segment");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// Polls `condition` for up to `limit`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// A nonce the gate of workload `id` would have made.
pub fn bound_nonce(id: &str) -> String {
    let workload = entitlement_gate::domain::workload::WorkloadId {
        id: id.to_owned(),
        source: entitlement_gate::domain::workload::WorkloadIdSource::Configured,
    };
    entitlement_gate::domain::nonce::Nonce::generate(&workload)
        .expect("OS randomness")
        .as_str()
        .to_owned()
}

/// Creates a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A loopback HTTP server that answers every request with the same raw response, for answers
/// no emulator gives (redirects, hostile text) and for the ECS task metadata endpoint.
pub struct CannedServer {
    addr: std::net::SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CannedServer {
    /// Answers with `status` (e.g. `302 Found`), `content_type` and `body`, then closes.
    pub fn start(status: &str, content_type: &str, body: &str) -> Self {
        use std::io::{BufRead as _, Read as _, Write as _};
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nx-amzn-requestid: canned-request\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(stream);
                let mut content_length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        content_length = value.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; content_length];
                let _ = reader.read_exact(&mut body);
                let _ = reader.get_mut().write_all(response.as_bytes());
            }
        });
        Self { addr, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A running sidecar; its log goes to a file (a long run would fill a pipe nobody reads).
pub struct Sidecar {
    pub running: Running,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Sidecar {
    /// Starts `gate`, which listens on [`Sidecar::socket_of`]'s socket.
    pub fn spawn(gate: Gate) -> Sidecar {
        let socket = Sidecar::socket_of(&gate);
        let log = gate.path("stderr.log");
        let running = gate
            .stderr_to(std::fs::File::create(&log).expect("log file"))
            .spawn();
        Sidecar {
            running,
            socket,
            log,
        }
    }

    /// The Unix socket a sidecar started from `gate` listens on.
    pub fn socket_of(gate: &Gate) -> PathBuf {
        gate.path("sidecar.sock")
    }

    /// Starts and waits until `/readyz` answers 200.
    pub fn ready(gate: Gate) -> Sidecar {
        let mut sidecar = Sidecar::spawn(gate);
        sidecar.wait_ready();
        sidecar
    }

    pub fn wait_ready(&mut self) {
        let ready = wait_until(Duration::from_secs(60), || {
            if let Ok(Some(status)) = self.running.child.try_wait() {
                panic!("the sidecar exited ({status}):\n{}", self.log());
            }
            self.try_request("GET", "/readyz", "")
                .is_some_and(|(status, _)| status == 200)
        });
        assert!(ready, "the sidecar never became ready:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        http(&self.socket, method, path, body.as_bytes())
    }

    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("no answer to {method} {path}:\n{}", self.log()))
    }

    /// A request with a JSON answer.
    pub fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = self.request(method, path, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }

    /// The value of a Prometheus sample, e.g. `entitlement_gate_meter_carried_hours_total`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.request("GET", "/metrics", "");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
            .parse()
            .expect("a number")
    }

    pub fn terminate(&self) {
        self.running.signal(libc::SIGTERM);
    }

    /// SIGTERM, then the exit.
    pub fn stop(self) -> Ended {
        self.terminate();
        self.wait()
    }

    pub fn wait(self) -> Ended {
        let log = self.log.clone();
        let finished = self.running.wait();
        Ended {
            code: finished.code,
            log: std::fs::read_to_string(log).unwrap_or_default(),
            termination_log: finished.termination_log(),
            dir: finished.dir,
        }
    }
}

pub struct Ended {
    pub code: Option<i32>,
    pub log: String,
    pub termination_log: Option<String>,
    pub dir: tempfile::TempDir,
}

impl Ended {
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "log:\n{}", self.log);
        self
    }

    /// The failure sentence: in the termination log and the same in the log.
    #[track_caller]
    pub fn reason(&self) -> String {
        let reason = self.termination_log.clone().expect("a termination log");
        assert!(self.log.contains(&reason), "the log lacks {reason:?}");
        reason
    }
}

/// One HTTP/1.1 request over a Unix socket; `None` when nothing listens (yet).
pub fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    http_answer(socket, method, path, body).map(|answer| (answer.status, answer.body))
}

/// An HTTP answer: its status, its head (the status line and headers) and its body.
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// A header's value, by its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 request over a Unix socket, with the whole answer; `None` when nothing listens.
pub fn http_answer(socket: &Path, method: &str, path: &str, body: &[u8]) -> Option<HttpAnswer> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: meter\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    // A refused body may be answered before it is all read, and the rest then refused.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(HttpAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}
