//! moto's S3 server for tests, shared by the kv unit tests and the e2e
//! suite (included with `#[path]`): started on a free loopback port with one
//! bucket, `peerhost-test`, and killed when dropped. Absent, said loudly,
//! when `make s3-server` could not install it.

use std::time::{Duration, Instant};

/// The bucket every S3 test uses (each under its own prefix).
pub const BUCKET: &str = "peerhost-test";

/// A running moto server.
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The credentials file moto accepts, as `[storage.s3] credentials` reads it.
pub const CREDENTIALS: &str = "access_key_id = \"test\"\nsecret_access_key = \"test\"\n";

impl Moto {
    /// Starts moto and makes the bucket (bounded: 30 s); none when the
    /// server is not installed.
    pub fn start() -> Option<Moto> {
        let binary =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/moto_server");
        if !binary.is_file() {
            eprintln!(
                "\n!!! S3 TESTS SKIPPED: {} is missing (`make s3-server` installs it) !!!\n",
                binary.display()
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let request = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        let mut answer = String::new();
        loop {
            use std::io::{Read, Write};
            let sent = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                s.write_all(request.as_bytes())?;
                answer.clear();
                s.read_to_string(&mut answer)
            });
            if sent.is_ok() && answer.starts_with("HTTP/1.1 200") {
                return Some(moto);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no bucket: {answer}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A `[storage.s3]` section for a peer whose objects live under
    /// `prefix`, its credentials in `s3.toml` beside its `peer.toml`
    /// (see [`CREDENTIALS`]).
    pub fn section(&self, prefix: &str) -> String {
        format!(
            "\n[storage.s3]\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\n\
             credentials = \"s3.toml\"\n",
            self.endpoint
        )
    }
}
