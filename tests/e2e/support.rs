//! Fixtures shared by the end-to-end tests: a fresh demo deployment in a
//! temporary directory, the real `peerhost` binary as a CLI or as a server
//! on a free loopback port, and a small HTTP client.

use peerhost::Envelope;
use peerhost::Invocation;
use peerhost::{PeerId, PeerKey};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// The binary under test.
pub fn peerhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peerhost"))
}

/// A temporary directory holding a fresh `peerhost init` deployment.
pub struct Demo {
    pub tmp: tempfile::TempDir,
}

impl Demo {
    pub fn new() -> Demo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let out = peerhost()
            .arg("init")
            .arg(tmp.path().join("demo"))
            .output()
            .expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Demo { tmp }
    }

    /// The deployment directory.
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("demo")
    }

    /// `peers/<name>/data`.
    pub fn data(&self, peer: &str) -> PathBuf {
        self.dir().join("peers").join(peer).join("data")
    }

    /// Keeps `peer`'s namespace on `fs` (`dir`, `sqlite`, `s3` with
    /// [`Demo::set_s3`]): `[storage] fs`.
    pub fn set_fs(&self, peer: &str, fs: &str) {
        let path = self.dir().join("peers").join(peer).join("peer.toml");
        let text = std::fs::read_to_string(&path).expect("peer.toml");
        assert!(text.contains("kv = \"sqlite\"\n"), "{text}");
        let text = text.replace(
            "kv = \"sqlite\"\n",
            &format!("kv = \"sqlite\"\nfs = \"{fs}\"\n"),
        );
        std::fs::write(&path, text).expect("peer.toml");
    }

    /// Gives `peer` the bucket of `moto` under a prefix of this demo's own
    /// (`[storage.s3]` and its credentials file), for `kv` or `fs = "s3"`.
    pub fn set_s3(&self, peer: &str, moto: &crate::moto::Moto) {
        let dir = self.dir().join("peers").join(peer);
        std::fs::write(dir.join("s3.toml"), crate::moto::CREDENTIALS).expect("s3.toml");
        let demo = self
            .tmp
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a temp dir name");
        let mut config = std::fs::read_to_string(dir.join("peer.toml")).expect("peer.toml");
        config.push_str(&moto.section(&format!("e2e/{demo}/{peer}")));
        std::fs::write(dir.join("peer.toml"), config).expect("peer.toml");
    }

    /// Runs the CLI in-process over this deployment.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = peerhost();
        let (verb, rest) = args.split_first().expect("a verb");
        command.arg(verb).arg("--dir").arg(self.dir()).args(rest);
        command.output().expect("run peerhost")
    }

    /// Starts `peerhost serve` over this deployment with `extra` arguments.
    pub fn serve(&self, extra: &[&str]) -> Server {
        Server::start(&self.dir(), extra)
    }
}

/// A running `peerhost serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub banner: String,
    /// The deployment it serves: keys to sign requests with.
    pub dir: PathBuf,
    /// Where its stderr (its log) goes.
    log: tempfile::TempPath,
}

impl Server {
    /// Serves `dir` on a free loopback port.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_at(dir, 0, extra)
    }

    /// Serves `dir` on loopback `port` (0: any free port).
    pub fn start_at(dir: &Path, port: u16, extra: &[&str]) -> Server {
        Server::start_with(dir, port, extra, &[])
    }

    /// Serves `dir` on loopback `port` with `env` set for the server.
    pub fn start_with(dir: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Server {
        // The server's log goes to a file beside the deployment: a pipe
        // nobody drains would block a chatty server.
        let log = tempfile::NamedTempFile::new().expect("log file");
        let stderr = log.reopen().expect("log file");
        let mut child = peerhost()
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn peerhost serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_default();
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_owned);
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("peerhost serve did not print its URL; it printed {banner:?}\n{log}");
        };
        Server {
            child,
            url,
            banner,
            dir: dir.to_owned(),
            log: log.into_temp_path(),
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs `body` to `path`, unsigned; returns status and JSON.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.try_post(path, body)
            .unwrap_or_else(|e| panic!("POST {path} ({} bytes): {e}", body.len()))
    }

    /// Like [`Server::post`], but a transport error is returned, not a panic.
    pub fn try_post(&self, path: &str, body: &str) -> Result<(u16, Value), ureq::Error> {
        let request = agent()
            .post(&format!("{}{path}", self.url))
            .header("content-type", "application/json");
        let mut response = request.send(body)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// GETs `path`; returns status and body text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let mut response = agent()
            .get(&format!("{}{path}", self.url))
            .call()
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().expect("body"))
    }

    /// Calls `function` of `peer` with `args` (JSON text) as `caller`:
    /// signed with its key (see [`sign`]), or unsigned for `None`.
    pub fn call(
        &self,
        peer: &str,
        function: &str,
        caller: Option<&str>,
        args: &str,
    ) -> (u16, Value) {
        match caller {
            None => self.post(&format!("/v1/peers/{peer}/call/{function}"), args),
            Some(caller) => {
                let args = if args.trim().is_empty() {
                    Value::Array(Vec::new())
                } else {
                    serde_json::from_str(args).expect("args are JSON")
                };
                let invocation = Invocation::Call {
                    function: function.to_owned(),
                    args,
                };
                self.send(&sign(&self.dir, caller, peer, &invocation))
            }
        }
    }

    /// Evaluates `script` at `peer` as `caller` (see [`Server::call`]).
    pub fn eval(&self, peer: &str, caller: Option<&str>, script: &str) -> (u16, Value) {
        match caller {
            None => {
                let body = serde_json::json!({ "script": script }).to_string();
                self.post(&format!("/v1/peers/{peer}/eval"), &body)
            }
            Some(caller) => {
                let invocation = Invocation::Script {
                    script: script.to_owned(),
                    params: Value::Null,
                };
                self.send(&sign(&self.dir, caller, peer, &invocation))
            }
        }
    }

    /// POSTs an envelope to `/v1/envelopes`.
    pub fn send(&self, envelope: &Envelope) -> (u16, Value) {
        let body = serde_json::to_string(envelope).expect("envelope JSON");
        self.post("/v1/envelopes", &body)
    }
}

/// How many lines of `peer`'s audit log (deployment `dir`) record `action`
/// and contain `text`.
pub fn audited(dir: &Path, peer: &str, action: &str, text: &str) -> usize {
    let log = dir.join("peers").join(peer).join("audit/audit.jsonl");
    let action = format!("\"action\":\"{action}\"");
    std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .filter(|line| line.contains(&action) && line.contains(text))
        .count()
}

/// The id of peer `name` of the deployment at `dir`.
pub fn peer_id(dir: &Path, name: &str) -> PeerId {
    let text =
        std::fs::read_to_string(dir.join("peers").join(name).join("peer.toml")).expect("peer.toml");
    let config: toml::Value = toml::from_str(&text).expect("peer.toml parses");
    match config.get("id").and_then(|id| id.as_str()) {
        Some(id) => id.parse().expect("a peer id"),
        None => key(dir, name).id(),
    }
}

/// The key of `name` in `dir/keys/`, or, for a name without a key there, a
/// stranger's key (stable per name within one test process).
pub fn key(dir: &Path, name: &str) -> PeerKey {
    let path = dir.join("keys").join(format!("{name}.key"));
    if !path.exists() {
        PeerKey::generate()
            .expect("randomness")
            .create_file(&path, name)
            .expect("stranger key");
    }
    PeerKey::load(&path).expect("key loads")
}

/// `invocation` for `target`, sealed by `caller`'s key.
pub fn sign(dir: &Path, caller: &str, target: &str, invocation: &Invocation) -> Envelope {
    Envelope::seal(
        &key(dir, caller),
        peer_id(dir, target),
        invocation,
        0,
        SystemTime::now(),
    )
    .expect("seal")
}

/// A script with `params` for `target`, sealed by `caller`'s key.
pub fn sign_with_params(
    dir: &Path,
    caller: &str,
    target: &str,
    script: &str,
    params: Value,
) -> Envelope {
    let invocation = Invocation::Script {
        script: script.to_owned(),
        params,
    };
    sign(dir, caller, target, &invocation)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now (for a server the test starts on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An HTTP client that returns error statuses as responses, with a 30 s bound.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The `error.kind` of an API error body.
pub fn kind(body: &Value) -> &str {
    body["error"]["kind"].as_str().unwrap_or("<no error kind>")
}

/// stdout and stderr of a CLI run, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Server {
    /// Runs the CLI against this server (`VERB --dir DIR --url URL REST…`;
    /// the deployment holds the keys that sign).
    pub fn cli(&self, args: &[&str]) -> Output {
        let (verb, rest) = args.split_first().expect("a verb");
        peerhost()
            .arg(verb)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--url", &self.url])
            .args(rest)
            .output()
            .expect("run peerhost")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the server has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
