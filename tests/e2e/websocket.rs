//! The WebSocket transport: contacts with `ws://` URLs, one connection
//! between two workers carrying many envelopes, reconnection, and the
//! `[http]` limits on the worker's side of it.

use crate::cluster::normalised;
use crate::delegation::chain_fixture;
use crate::support::{Demo, Server, kind, sign};
use peerhost::Invocation;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Points every contact `name` of every peer at `ws://127.0.0.1:port`.
fn ws_contacts(dir: &Path, ports: &[(&str, u16)]) {
    for entry in std::fs::read_dir(dir.join("peers")).expect("peers/") {
        let path = entry.expect("entry").path().join("contacts.toml");
        let Ok(contacts) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut out = String::new();
        let mut section = String::new();
        for line in contacts.lines() {
            if let Some(name) = line
                .trim()
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
            {
                section = name.to_owned();
            }
            if line.trim_start().starts_with("url") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line.trim_start().starts_with("id")
                && let Some((_, port)) = ports.iter().find(|(name, _)| *name == section)
            {
                out.push_str(&format!("url = \"ws://127.0.0.1:{port}\"\n"));
            }
        }
        std::fs::write(&path, out).expect("contacts");
    }
}

fn script(text: &str) -> Invocation {
    Invocation::Script {
        script: text.to_owned(),
        params: Value::Null,
    }
}

/// The delegation suite (a script allowed and one denied, A→B→A, A→B→C,
/// the depth limit, `peers::send`) between three workers joined by
/// WebSocket answers as in one worker, with the same audit lines.
#[test]
fn the_delegation_suite_passes_over_websocket_like_in_one_worker() {
    let demo = Demo::new();
    chain_fixture(&demo);
    let dir = demo.dir();
    let run = |alice: &Server, bob: &Server| -> Vec<(u16, Value)> {
        vec![
            bob.send(&sign(
                &dir,
                "alice",
                "bob",
                &script("kv::get(\"public/motd\")"),
            )),
            bob.send(&sign(
                &dir,
                "alice",
                "bob",
                &script("kv::get(\"private/diary\")"),
            )),
            alice.call("alice", "ask_bob", Some("alice"), "[]"),
            bob.call("bob", "relay", Some("alice"), "[]"),
            alice.call("alice", "bounce", Some("alice"), "[]"),
            alice.eval(
                "alice",
                Some("alice"),
                "peers::send(\"bob\", \"kv::get(`public/motd`)\")",
            ),
        ]
    };
    let peers = ["alice", "bob", "carol"];
    let shared = demo.serve(&[]);
    let one = run(&shared, &shared);
    drop(shared);
    let one_audit: Vec<_> = peers.iter().map(|p| normalised(&dir, p)).collect();
    for peer in peers {
        let _ = std::fs::remove_file(dir.join("peers").join(peer).join("audit/audit.jsonl"));
    }

    let ports = [
        ("alice", crate::support::free_port()),
        ("bob", crate::support::free_port()),
        ("carol", crate::support::free_port()),
    ];
    ws_contacts(&dir, &ports);
    let alice = Server::start_at(&dir, ports[0].1, &["--peer", "alice"]);
    let bob = Server::start_at(&dir, ports[1].1, &["--peer", "bob"]);
    let carol = Server::start_at(&dir, ports[2].1, &["--peer", "carol"]);
    let two = run(&alice, &bob);
    assert_eq!(
        one, two,
        "results differ between one worker and three over WebSocket"
    );
    assert_eq!(one[0], (200, json!("Hello from bob")));
    assert_eq!(one[1].0, 403);
    assert_eq!(one[2], (200, json!("pong")));
    assert_eq!(one[3], (200, json!("pong")));
    assert_eq!(one[4].0, 413, "{:?}", one[4]);
    assert_eq!(one[5], (200, json!("Hello from bob")));
    let three_audit: Vec<_> = peers.iter().map(|p| normalised(&dir, p)).collect();
    assert_eq!(one_audit, three_audit, "audit lines differ over WebSocket");
    drop((alice, bob, carol));
}

/// Sixteen clients at once call alice, who asks bob over one WebSocket:
/// all answered. bob's worker stops: a typed `failed` naming the URL;
/// it starts again on the same port: alice's worker reconnects.
#[test]
fn a_websocket_carries_many_envelopes_at_once_and_reconnects() {
    let demo = Demo::new();
    chain_fixture(&demo);
    let dir = demo.dir();
    let ports = [
        ("alice", crate::support::free_port()),
        ("bob", crate::support::free_port()),
    ];
    ws_contacts(&dir, &ports);
    let alice = Server::start_at(&dir, ports[0].1, &["--peer", "alice"]);
    let bob = Server::start_at(&dir, ports[1].1, &["--peer", "bob"]);
    let ask = || alice.call("alice", "ask_bob", Some("alice"), "[]");
    let answers: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| (0..8).map(|_| ask()).collect::<Vec<_>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("client"))
            .collect()
    });
    assert_eq!(answers.len(), 128);
    assert!(
        answers.iter().all(|a| a == &(200, json!("pong"))),
        "{:?}",
        answers.iter().find(|a| a.0 != 200)
    );
    drop(bob);
    let (status, body) = ask();
    assert_eq!((status, kind(&body)), (500, "failed"), "{body}");
    assert!(
        body.to_string().contains(&format!(
            "cannot reach the worker at ws://127.0.0.1:{} over WebSocket",
            ports[1].1
        )),
        "{body}"
    );
    let bob = Server::start_at(&dir, ports[1].1, &["--peer", "bob"]);
    let back = Instant::now();
    loop {
        let answer = ask();
        if answer == (200, json!("pong")) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "alice's worker did not reconnect: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((alice, bob));
}

/// The worker's side of a WebSocket keeps the `[http]` limits: at most
/// `max_connections` sockets, a frame no bigger than an envelope, closed
/// when idle; a frame that is not a request gets a typed answer.
#[test]
fn a_workers_websocket_keeps_the_http_limits() {
    let demo = Demo::new();
    let config = demo.dir().join("peerhost.toml");
    let text = std::fs::read_to_string(&config).expect("peerhost.toml");
    assert!(text.contains("max_connections = 1024") && text.contains("idle_timeout_ms = 120000"));
    std::fs::write(
        &config,
        text.replace("max_connections = 1024", "max_connections = 2")
            .replace("idle_timeout_ms = 120000", "idle_timeout_ms = 1500"),
    )
    .expect("peerhost.toml");
    let server = demo.serve(&[]);
    let url = format!("{}/v1/ws", server.url.replacen("http://", "ws://", 1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use futures::{SinkExt, StreamExt};
        let bound = Duration::from_secs(10);
        let (mut first, _) = tokio_tungstenite::connect_async(&url).await.expect("first");
        let (mut second, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("second");
        // A third is refused while two are open.
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503)
            }
            other => panic!("a third WebSocket was not refused: {:?}", other.map(|_| ())),
        }
        // Not a request: a typed answer, and the socket goes on.
        first.send(Message::text("not json")).await.expect("send");
        let answer = tokio::time::timeout(bound, first.next())
            .await
            .expect("in time");
        let answer: Value = match answer {
            Some(Ok(Message::Text(text))) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("no answer: {other:?}"),
        };
        assert_eq!(answer["id"], Value::Null);
        assert_eq!(answer["error"]["kind"], "invalid", "{answer}");
        let envelope = sign(
            &demo.dir(),
            "alice",
            "bob",
            &script("kv::get(\"public/motd\")"),
        );
        let frame = json!({ "id": 7, "envelope": envelope }).to_string();
        first.send(Message::text(frame)).await.expect("send");
        let answer = tokio::time::timeout(bound, first.next())
            .await
            .expect("in time");
        let answer: Value = match answer {
            Some(Ok(Message::Text(text))) => serde_json::from_str(&text).expect("JSON"),
            other => panic!("no answer: {other:?}"),
        };
        assert_eq!(answer, json!({ "id": 7, "result": "Hello from bob" }));
        // A frame over the envelope limit ends the connection.
        let huge = "x".repeat(peerhost::envelope::MAX_ENVELOPE + 4_096);
        let _ = second.send(Message::text(huge)).await;
        let ended = tokio::time::timeout(bound, async {
            loop {
                match second.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "an oversized frame did not end the connection"
        );
        // An idle socket is closed after idle_timeout_ms, pings or not.
        let ended = tokio::time::timeout(bound, async {
            let mut ping = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    frame = first.next() => match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(_)) => {}
                    },
                    _ = ping.tick() => {
                        let _ = first.send(Message::Ping(Vec::new().into())).await;
                    }
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an idle WebSocket kept open by pings");
        // Both gone (each frees its place as it ends): a new one is welcome.
        let mut tries = 0;
        while let Err(e) = tokio_tungstenite::connect_async(&url).await {
            tries += 1;
            assert!(tries < 40, "no new WebSocket after the others closed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    drop(server);
}
