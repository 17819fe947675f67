//! The HTTP front holds slow and greedy clients to the `[http]` limits:
//! slow headers, slow bodies, silent connections, too many headers, too many
//! connections. Each case checks the typed answer (or the closed
//! connection) and that the worker still answers afterwards.

use crate::support::{Demo, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A demo served with these `[http]` settings.
fn serve_with(http: &str) -> (Demo, Server) {
    let demo = Demo::new();
    let config = demo.dir().join("peerhost.toml");
    let mut text = std::fs::read_to_string(&config).expect("config");
    // `peerhost init` writes the defaults as the last table: replace it.
    let at = text.find("[http]").expect("init writes [http]");
    text.truncate(at);
    text.push_str(&format!("[http]\n{http}\n"));
    std::fs::write(&config, text).expect("config");
    let server = demo.serve(&[]);
    (demo, server)
}

fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads until the server closes the connection (or the read times out);
/// returns what arrived and how long it took.
fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn still_answers(server: &Server) {
    let (status, body) = server.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[test]
fn a_slowloris_client_is_dropped_after_the_header_timeout() {
    let (_demo, server) = serve_with("header_timeout_ms = 300");
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /v1/peers/alice/eval HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write");
    let (_, waited) = read_to_close(&mut stream);
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    still_answers(&server);
}

#[test]
fn a_trickled_body_is_refused_after_the_body_timeout() {
    let (_demo, server) = serve_with("body_timeout_ms = 300");
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /v1/peers/alice/eval HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"scr",
        )
        .expect("write");
    let (answer, waited) = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"kind\":\"limit\""), "{answer}");
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    still_answers(&server);
}

#[test]
fn a_silent_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_demo, server) = serve_with("idle_timeout_ms = 1500\nheader_timeout_ms = 60000");
    let mut stream = connect(&server);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (answer, waited) = read_to_close(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    still_answers(&server);
}

#[test]
fn forty_thousand_headers_are_refused_with_431() {
    let (_demo, server) = serve_with("header_timeout_ms = 10000");
    let mut stream = connect(&server);
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40_000 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    // The server may close while we still write: that is an answer too.
    let _ = stream.write_all(request.as_bytes());
    let (answer, _) = read_to_close(&mut stream);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    still_answers(&server);
}

#[test]
fn connections_beyond_the_limit_wait_until_one_is_free() {
    let (_demo, server) = serve_with("max_connections = 2\nheader_timeout_ms = 60000");
    // Two clients hold both connections without sending anything.
    let first = connect(&server);
    let second = connect(&server);
    // Give the server time to accept both.
    std::thread::sleep(Duration::from_millis(300));
    let mut third = connect(&server);
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (answer, _) = read_to_close(&mut third);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    still_answers(&server);
}

#[test]
fn a_64_mib_envelope_is_refused_without_reading_it_all() {
    let (_demo, server) = serve_with("body_timeout_ms = 30000");
    let mut stream = connect(&server);
    let size = 64usize << 20;
    stream
        .write_all(
            format!(
                "POST /v1/envelopes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write head");
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    // The server stops reading past its 1 MiB limit: writing fails or stalls.
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while sent < size && stream.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let (answer, _) = read_to_close(&mut stream);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer:.200}"
    );
    assert!(
        answer.is_empty() || answer.contains("\"kind\":\"limit\""),
        "{answer:.300}"
    );
    still_answers(&server);
}
