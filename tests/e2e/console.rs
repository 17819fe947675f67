//! The web console in a real browser: headless Chromium driven through
//! chromedriver (fantoccini). Sign in with the operator token, open bob,
//! see alice's grants, watch a script sent from the CLI appear in the live
//! tail without a reload; without the token every page is refused.
//! Screenshots of each page go to `target/console-screenshots/`.

use crate::support::{Demo, agent, peerhost, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = crate::support::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent().get(&format!("{url}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the screenshots of a run go.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
fn without_the_token_every_console_page_is_refused() {
    let demo = Demo::new();
    let server = demo.serve(&[]);
    for path in [
        "/console",
        "/console/peers/bob",
        "/console/peers/bob/audit/stream",
        "/console/assets/htmx.min.js",
        "/console/peers/nobody",
    ] {
        let url = format!("{}{path}", server.url);
        let response = agent().get(&url).call().expect("GET");
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let response = agent()
            .get(&url)
            .header("cookie", "peerhost_console=0000")
            .call()
            .expect("GET");
        assert_eq!(
            response.status().as_u16(),
            401,
            "{path} with a wrong cookie"
        );
    }
    let response = agent()
        .post(&format!("{}/console/login", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .send("token=not-the-token")
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401);
    // The token file is the operator's alone.
    let token = demo.dir().join("state/console.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token)
            .expect("console.token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[test]
fn in_chromium_the_operator_signs_in_sees_alices_grants_and_watches_the_audit_tail() {
    if !(Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()) {
        eprintln!(
            "\n!!! CONSOLE BROWSER TEST SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing (`make browser` installs them) !!!\n"
        );
        return;
    }
    let demo = Demo::new();
    let dir = demo.dir();
    let server = demo.serve(&[]);
    // The token is printed by serve and kept beside peerhost.toml.
    let token = std::fs::read_to_string(dir.join("state/console.token"))
        .expect("console.token")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    // Some use first: alice's scripts at bob, one of them refused.
    for script in ["1", "2", "kv::get(\"private/x\")"] {
        let _ = server.eval("bob", Some("alice"), script);
    }
    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let shots = screenshots();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio.block_on(async {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .expect("a browser session");
        let result = drive(&browser, &server.url, &token, &dir, &shots).await;
        let _ = browser.close().await;
        result.unwrap_or_else(|e| panic!("{e}"));
    });
    drop(driver);
}

/// The browser's part, its errors as text.
async fn drive(
    browser: &fantoccini::Client,
    base: &str,
    token: &str,
    dir: &Path,
    shots: &Path,
) -> Result<(), String> {
    use fantoccini::Locator;
    let e = |what: &str| {
        let what = what.to_owned();
        move |e: fantoccini::error::CmdError| format!("{what}: {e}")
    };
    let shoot = |name: &'static str| async move {
        let png = browser.screenshot().await.map_err(e("screenshot"))?;
        std::fs::write(shots.join(name), png).map_err(|err| format!("{name}: {err}"))
    };
    // Without the cookie the console sends the browser to sign in.
    browser
        .goto(&format!("{base}/console/peers/bob"))
        .await
        .map_err(e("goto"))?;
    let source = browser.source().await.map_err(e("source"))?;
    if !source.contains("Sign in with the operator token") {
        return Err(format!("not refused without the token: {source}"));
    }
    shoot("login.png").await?;
    browser
        .find(Locator::Id("token"))
        .await
        .map_err(e("token field"))?
        .send_keys(token)
        .await
        .map_err(e("typing"))?;
    browser
        .find(Locator::Id("sign-in"))
        .await
        .map_err(e("sign-in button"))?
        .click()
        .await
        .map_err(e("sign in"))?;
    let peers = browser
        .wait()
        .for_element(Locator::Id("peers"))
        .await
        .map_err(e("peers table"))?;
    let listed = peers.text().await.map_err(e("peers text"))?;
    if !(listed.contains("alice") && listed.contains("bob") && listed.contains("sqlite")) {
        return Err(format!("the peers page lists: {listed}"));
    }
    shoot("peers.png").await?;
    // Open bob: alice's grants are there.
    browser
        .find(Locator::LinkText("bob"))
        .await
        .map_err(e("bob's link"))?
        .click()
        .await
        .map_err(e("open bob"))?;
    let grants = browser
        .wait()
        .for_element(Locator::Id("grants"))
        .await
        .map_err(e("grants table"))?
        .text()
        .await
        .map_err(e("grants text"))?;
    for expected in ["alice", "get_public", "script.accept", "alice-reads-public"] {
        if !grants.contains(expected) {
            return Err(format!("bob's grants lack {expected}: {grants}"));
        }
    }
    let chain = browser
        .find(Locator::Id("chain"))
        .await
        .map_err(e("chain"))?
        .text()
        .await
        .map_err(e("chain text"))?;
    if !chain.starts_with("chain verified") {
        return Err(format!("the chain: {chain}"));
    }
    let usage = browser
        .find(Locator::Id("usage"))
        .await
        .map_err(e("usage chart"))?
        .html(false)
        .await
        .map_err(e("usage chart"))?;
    if !(usage.contains("alice") && usage.contains("3 invocations")) {
        return Err(format!("the usage chart: {usage}"));
    }
    shoot("bob.png").await?;
    // A marker that a reload would lose; then a script from the CLI.
    browser
        .execute("window.peerhostMarker = 42; return 1;", vec![])
        .await
        .map_err(e("marker"))?;
    let rows_before = browser
        .find_all(Locator::Css("#audit-lines tr"))
        .await
        .map_err(e("rows"))?
        .len();
    let script = "kv::get(\"public/motd\")";
    let out = peerhost()
        .args(["send", "--dir"])
        .arg(dir)
        .args([
            "--url", base, "--from", "alice", "--to", "bob", "-e", script,
        ])
        .output()
        .map_err(|err| format!("peerhost send: {err}"))?;
    if !out.status.success() {
        return Err(format!("peerhost send: {:?}", text(&out)));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = browser
            .find_all(Locator::Css("#audit-lines tr"))
            .await
            .map_err(e("rows"))?;
        let mut newest = String::new();
        if let Some(first) = rows.first() {
            newest = first.text().await.map_err(e("row text"))?;
        }
        if rows.len() > rows_before && newest.contains("kv.get") && newest.contains("alice") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the live tail did not show alice's kv.get: {} rows (from {rows_before}), newest {newest:?}",
                rows.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marker = browser
        .execute("return window.peerhostMarker;", vec![])
        .await
        .map_err(e("marker"))?;
    if marker != serde_json::json!(42) {
        return Err(format!("the page was reloaded (marker {marker})"));
    }
    browser
        .execute(
            "document.getElementById('chain').scrollIntoView(); return 1;",
            vec![],
        )
        .await
        .map_err(e("scroll"))?;
    shoot("bob-live-tail.png").await?;
    Ok(())
}

/// The `(id, data)` of the next `line` event on an SSE stream.
fn next_event(reader: &mut impl std::io::BufRead) -> Option<(u64, String)> {
    let (mut id, mut data, mut event) = (None, String::new(), String::new());
    for _ in 0..1000 {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if event == "line" {
                return Some((id?, data));
            }
            (id, data, event) = (None, String::new(), String::new());
        } else if let Some(rest) = line.strip_prefix("event:") {
            event = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("id:") {
            id = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.trim());
        }
    }
    None
}

#[test]
fn the_live_tail_outlasts_the_idle_timeout_and_resumes_without_repeating_a_line() {
    let demo = Demo::new();
    let config = demo.dir().join("peerhost.toml");
    let text = std::fs::read_to_string(&config).expect("peerhost.toml");
    assert!(text.contains("idle_timeout_ms = 120000"), "{text}");
    std::fs::write(
        &config,
        text.replace("idle_timeout_ms = 120000", "idle_timeout_ms = 1500"),
    )
    .expect("peerhost.toml");
    let server = demo.serve(&[]);
    let token = std::fs::read_to_string(demo.dir().join("state/console.token"))
        .expect("console.token")
        .trim()
        .to_owned();
    let open = |last: Option<u64>| {
        let mut request = agent()
            .get(&format!("{}/console/peers/bob/audit/stream", server.url))
            .header("cookie", &format!("peerhost_console={token}"));
        if let Some(last) = last {
            request = request.header("last-event-id", &last.to_string());
        }
        let response = request.call().expect("GET the stream");
        assert_eq!(response.status().as_u16(), 200);
        std::io::BufReader::new(response.into_body().into_reader())
    };
    let mut stream = open(None);
    // Quiet for twice the idle timeout: the stream must stay open.
    std::thread::sleep(Duration::from_millis(3000));
    let (status, body) = server.eval("bob", Some("alice"), "1");
    assert_eq!(status, 200, "{body}");
    let (first, data) = next_event(&mut stream).expect("a line after the idle timeout");
    assert!(data.contains("script.accept"), "{data}");
    drop(stream);
    // Back with the last id it saw: only lines after it.
    let mut stream = open(Some(first));
    let (status, body) = server.eval("bob", Some("alice"), "kv::get(\"public/motd\")");
    assert_eq!(status, 200, "{body}");
    let (next, data) = next_event(&mut stream).expect("the next line");
    assert!(next > first, "{next} after {first}");
    assert!(data.contains("script.accept"), "{data}");
    let (_, data) = next_event(&mut stream).expect("its kv.get");
    assert!(data.contains("kv.get"), "{data}");
}
