//! A NATS cluster for tests, shared by the e2e suite and the bench
//! (included with `#[path]`): `nats-server` nodes from the virtualenv that
//! `make nats-server` fills, on free loopback ports, each with its own
//! client, cluster and monitor port and JetStream store, routed to each
//! other; killed when dropped. Absent, said loudly, when the server is not
//! installed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One node of the cluster.
pub struct Node {
    child: Option<Child>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    monitor: u16,
    config: PathBuf,
}

/// A running cluster of nodes.
pub struct NatsCluster {
    /// The nodes, in the order they were started.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

impl Node {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server binary, when installed.
pub fn binary() -> Option<PathBuf> {
    let binary =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/nats-server");
    if binary.is_file() {
        Some(binary)
    } else {
        eprintln!(
            "\n!!! NATS TESTS SKIPPED: {} is missing (`make nats-server` installs it) !!!\n",
            binary.display()
        );
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// GETs `path` of the monitor at `port`; the body, if it answered.
fn monitor(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

impl NatsCluster {
    /// Starts `n` routed nodes with JetStream (bounded: 30 s), each
    /// refusing messages over `max_payload` bytes; none when the server is
    /// not installed.
    pub fn start(n: usize, max_payload: Option<usize>) -> Option<NatsCluster> {
        let binary = binary()?;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, &(client, route, monitor)) in ports.iter().enumerate() {
            let routes = ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &(_, r, _))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let store = dir.path().join(format!("n{i}"));
            let payload = max_payload
                .map(|b| format!("max_payload: {b}\n"))
                .unwrap_or_default();
            let config = dir.path().join(format!("n{i}.conf"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: peerhost-test\n  listen: \"127.0.0.1:{route}\"\n  \
                     routes: [{routes}]\n}}\n"
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nhost: \"127.0.0.1\"\nport: {client}\n\
                     http: \"127.0.0.1:{monitor}\"\n{payload}\
                     jetstream {{\n  store_dir: \"{}\"\n}}\n{cluster}",
                    store.display()
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut node = Node {
                child: None,
                url: format!("nats://127.0.0.1:{client}"),
                monitor,
                config,
            };
            node.child = Some(spawn(&binary, &node.config));
            nodes.push(node);
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        cluster.wait_ready(n);
        Some(cluster)
    }

    /// Waits until every running node is routed to the `n - 1` others and
    /// JetStream answers on it.
    fn wait_ready(&self, n: usize) {
        let started = Instant::now();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            loop {
                // Each remote appears once per pooled route: look for names.
                let routed = monitor(node.monitor, "/routez").is_some_and(|body| {
                    (0..n).filter(|&j| j != i).all(|j| {
                        body.contains(&format!("\"remote_name\": \"n{j}\""))
                            || body.contains(&format!("\"remote_name\":\"n{j}\""))
                    })
                });
                let healthy = monitor(node.monitor, "/healthz").is_some();
                if routed && healthy {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the NATS cluster did not form: {:?}",
                    monitor(node.monitor, "/routez")
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The client URLs of the running nodes, comma-separated (`--nats`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` (SIGKILL): its clients move to the other nodes.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }
}

fn spawn(binary: &std::path::Path, config: &std::path::Path) -> Child {
    Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"))
}
