//! Class 3 of the HTTP front's hardening: a connection that never completes
//! a request is closed. hyper's `header_read_timeout` only starts at the
//! first byte, and any byte (an HTTP/2 PING too) used to count as activity,
//! so a client could hold a connection, and a `max_connections` slot, for
//! ever without asking anything. Each case checks that the server closes the
//! socket within a bounded time and still answers afterwards.

use crate::support::{Demo, Server};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A demo served with these `[http]` settings.
fn serve_with(http: &str) -> (Demo, Server) {
    let demo = Demo::new();
    let config = demo.dir().join("peerhost.toml");
    let mut text =
        std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("read {config:?}: {e}"));
    // `peerhost init` writes the defaults as the last table: replace it.
    let at = text
        .find("[http]")
        .unwrap_or_else(|| panic!("`peerhost init` wrote no [http] table"));
    text.truncate(at);
    text.push_str(&format!("[http]\n{http}\n"));
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("write {config:?}: {e}"));
    let server = demo.serve(&[]);
    (demo, server)
}

fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("write timeout: {e}"));
    stream
}

fn still_answers(server: &Server) {
    let (status, body) = server.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// Whether a read error means the server closed the connection (rather than
/// that nothing arrived within the read timeout).
fn closed_by(error: &std::io::Error) -> bool {
    !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const ACK: u8 = 0x1;
const END_STREAM_AND_HEADERS: u8 = 0x5;

/// One HTTP/2 frame: 9-byte header (length, type, flags, stream), payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or_else(|e| panic!("frame length: {e}"));
    let mut bytes = length.to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A raw HTTP/2 client: it answers the server's SETTINGS and PINGs as a
/// real client does (so hyper's own keep-alive never closes it), and
/// records the frames it receives.
struct H2 {
    stream: TcpStream,
    received: Vec<u8>,
    /// (type, stream) of every complete frame received.
    frames: Vec<(u8, u32)>,
    closed: bool,
}

impl H2 {
    fn open(server: &Server) -> H2 {
        let mut h2 = H2 {
            stream: connect(server),
            received: Vec::new(),
            frames: Vec::new(),
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello);
        h2
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).is_err() {
            self.closed = true;
        }
    }

    /// Reads what arrives within the read timeout; answers SETTINGS and
    /// PINGs; notes a closed connection.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.received.extend_from_slice(&buf[..n]),
            Err(e) if closed_by(&e) => self.closed = true,
            Err(_) => {}
        }
        while self.received.len() >= 9 {
            let length = usize::from(self.received[0]) << 16
                | usize::from(self.received[1]) << 8
                | usize::from(self.received[2]);
            if self.received.len() < 9 + length {
                break;
            }
            let frame_bytes: Vec<u8> = self.received.drain(..9 + length).collect();
            let (kind, flags) = (frame_bytes[3], frame_bytes[4]);
            let stream = u32::from_be_bytes([
                frame_bytes[5] & 0x7f,
                frame_bytes[6],
                frame_bytes[7],
                frame_bytes[8],
            ]);
            self.frames.push((kind, stream));
            if kind == SETTINGS && flags & ACK == 0 {
                self.send(&frame(SETTINGS, ACK, 0, &[]));
            }
            if kind == PING && flags & ACK == 0 {
                self.send(&frame(PING, ACK, 0, &frame_bytes[9..]));
            }
        }
    }

    /// Sends a PING every 200 ms (and reads in between) until the server
    /// closes the connection or `bound` passes; returns the time taken.
    fn ping_until_closed(&mut self, bound: Duration) -> Duration {
        let started = Instant::now();
        let mut next_ping = started;
        let mut count: u64 = 0;
        while !self.closed && started.elapsed() < bound {
            if Instant::now() >= next_ping {
                count += 1;
                self.send(&frame(PING, 0, 0, &count.to_be_bytes()));
                next_ping += Duration::from_millis(200);
            }
            self.pump();
        }
        started.elapsed()
    }
}

#[test]
fn class_3_a_connection_that_never_sends_a_byte_is_closed() {
    // The idle timeout is long: what closes the connection is the header
    // timeout, counted from accept, not from a first byte that never comes.
    let (_demo, server) = serve_with("header_timeout_ms = 500\nidle_timeout_ms = 30000");
    let mut stream = connect(&server);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => panic!("the server sent {:?} unasked", &buf[..n]),
            Err(e) if closed_by(&e) => break true,
            Err(_) if started.elapsed() > Duration::from_secs(10) => break false,
            Err(_) => {}
        }
    };
    let waited = started.elapsed();
    assert!(
        closed,
        "a silent connection was still open after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "a silent connection was closed after {waited:?} (header_timeout_ms = 500)"
    );
    still_answers(&server);
}

#[test]
fn class_3_a_connection_kept_alive_without_a_request_is_closed() {
    // HTTP/2 preface, SETTINGS, then PINGs every 200 ms, never a request:
    // bytes arrive all the time, but no request starts.
    let (_demo, server) = serve_with("header_timeout_ms = 500\nidle_timeout_ms = 30000");
    let mut h2 = H2::open(&server);
    let waited = h2.ping_until_closed(Duration::from_secs(10));
    assert!(
        h2.closed,
        "a connection sending only PINGs was still open after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "a connection sending only PINGs was closed after {waited:?} (header_timeout_ms = 500)"
    );
    assert!(
        h2.frames.iter().any(|&(kind, _)| kind == PING),
        "the server never answered a PING: {:?}",
        h2.frames
    );
    still_answers(&server);
}

#[test]
fn class_3_a_connection_kept_alive_by_pings_after_its_last_request_is_closed() {
    // One real request, answered; then only PINGs: the idle timeout counts
    // from the answer, whatever bytes arrive since.
    let (_demo, server) = serve_with("header_timeout_ms = 500\nidle_timeout_ms = 1500");
    let mut h2 = H2::open(&server);
    // GET /healthz on stream 1. HPACK: :method GET (static 2), :scheme http
    // (static 6), :path as a literal with static name 4, not indexed.
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    h2.send(&frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    let asked = Instant::now();
    while !h2.frames.contains(&(HEADERS, 1))
        && !h2.closed
        && asked.elapsed() < Duration::from_secs(5)
    {
        h2.pump();
    }
    assert!(
        h2.frames.contains(&(HEADERS, 1)),
        "no answer to GET /healthz over HTTP/2: {:?}",
        h2.frames
    );
    h2.ping_until_closed(Duration::from_secs(10));
    let waited = asked.elapsed();
    assert!(
        h2.closed,
        "a connection sending only PINGs after its request was still open after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(1200) && waited < Duration::from_secs(5),
        "a connection sending only PINGs after its request was closed after {waited:?} \
         (idle_timeout_ms = 1500)"
    );
    still_answers(&server);
}
