//! Fixtures shared by the end-to-end tests: a fresh demo deployment in a
//! temporary directory, the real `peerhost` binary as a CLI or as a server
//! on a free loopback port, and a small HTTP client.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut child = peerhost()
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
            panic!("peerhost serve did not print its URL; it printed {banner:?}");
        };
        Server { child, url, banner }
    }

    /// POSTs `body` to `path` as `caller` (none: anonymous); returns status and JSON.
    pub fn post(&self, path: &str, caller: Option<&str>, body: &str) -> (u16, Value) {
        self.try_post(path, caller, body)
            .unwrap_or_else(|e| panic!("POST {path} ({} bytes): {e}", body.len()))
    }

    /// Like [`Server::post`], but a transport error is returned, not a panic.
    pub fn try_post(
        &self,
        path: &str,
        caller: Option<&str>,
        body: &str,
    ) -> Result<(u16, Value), ureq::Error> {
        let mut request = agent()
            .post(&format!("{}{path}", self.url))
            .header("content-type", "application/json");
        if let Some(caller) = caller {
            request = request.header("peerhost-caller", caller);
        }
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

    /// Calls `function` of `peer` with `args` (JSON text) as `caller`.
    pub fn call(
        &self,
        peer: &str,
        function: &str,
        caller: Option<&str>,
        args: &str,
    ) -> (u16, Value) {
        self.post(&format!("/v1/peers/{peer}/call/{function}"), caller, args)
    }

    /// Evaluates `script` at `peer` as `caller`.
    pub fn eval(&self, peer: &str, caller: Option<&str>, script: &str) -> (u16, Value) {
        let body = serde_json::json!({ "script": script }).to_string();
        self.post(&format!("/v1/peers/{peer}/eval"), caller, &body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns error statuses as responses, with a 30 s bound.
fn agent() -> ureq::Agent {
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
    /// Runs the CLI against this server (`VERB --url URL REST…`).
    pub fn cli(&self, args: &[&str]) -> Output {
        let (verb, rest) = args.split_first().expect("a verb");
        peerhost()
            .arg(verb)
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
