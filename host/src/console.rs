//! The web console at `/console` of a running worker: read-only pages
//! rendered on the server (maud), with htmx and its server-sent-events
//! extension served from the binary (no JavaScript build step, no network).
//!
//! - `/console`: the hosted peers: id, owner, storage, invocations over the
//!   last half hour (a sparkline).
//! - `/console/peers/{peer}`: its grants (the `audit grants` report as a
//!   table, over-broad grants and policies that never apply flagged), its
//!   audit log (the chain verified, the last lines, new ones appearing live
//!   through server-sent events from `…/audit/stream`), usage per caller
//!   (an SVG chart) and its logic modules with their doc comments and
//!   sources.
//!
//! Access: an operator token, 64 hex digits, in `state/console.token` of
//! the deployment (created `0600` at the first start, shown in that start's
//! banner).
//! `POST /console/login` with it sets an `HttpOnly`, `SameSite=Strict`
//! cookie scoped to `/console`; without that cookie every other console
//! route answers 401. No route changes anything, so there is no request
//! to forge (CSRF) and nothing for a script in a page to do but read.

use crate::worker::Worker;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;
use std::time::Duration;

/// The token's file, in the deployment directory (its `state/`, with the
/// rest of what the worker keeps).
pub const TOKEN_FILE: &str = "state/console.token";

/// The cookie that carries the token.
pub const COOKIE: &str = "peerhost_console";

/// How often the live tail looks for new audit lines.
pub const TAIL_EVERY: Duration = Duration::from_millis(250);

/// Audit lines a peer's page shows.
pub const SHOWN_LINES: usize = 50;

/// Bytes of the end of an audit log read for a peer's page.
pub const TAIL_BYTES: u64 = 256 * 1024;

/// The largest audit log whose chain a peer's page verifies.
pub const MAX_VERIFIED: u64 = 16 << 20;

/// Peers the peers page names without reading them.
pub const SHOWN_UNREAD: usize = 200;

/// Callers the usage chart shows (the busiest).
pub const SHOWN_CALLERS: usize = 20;

const HTMX: &str = include_str!("console/htmx.min.js");
const SSE: &str = include_str!("console/sse.min.js");

/// The operator token of the deployment at `root`: read from
/// [`TOKEN_FILE`], or created there (`0600`) when there is none.
pub fn token(root: &std::path::Path) -> std::io::Result<String> {
    token_or_new(root).map(|(token, _)| token)
}

/// [`token`], and whether it was created just now.
pub fn token_or_new(root: &std::path::Path) -> std::io::Result<(String, bool)> {
    use std::io::Write;
    let path = root.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_token(text.trim()) => return Ok((text.trim().to_owned(), false)),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a console token (64 hex digits); remove it to have a new one made",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let token = hex::encode(secret);
    // Written whole beside it, then linked into place: a worker starting
    // at the same time reads a whole token, or finds this one there.
    let temporary = path.with_extension(format!("{}.tmp", &token[..16]));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, &path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok((token, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            token_or_new(root).map(|(token, _)| (token, false))
        }
        Err(e) => Err(e),
    }
}

fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Marks an answer that goes on until the client leaves (the live tail):
/// the HTTP front counts it in flight until its body ends, so the idle
/// watchdog leaves its connection open.
#[derive(Clone, Copy, Debug)]
pub struct LiveAnswer;

/// What every console route sees.
#[derive(Clone, Debug)]
struct Console {
    worker: Arc<Worker>,
    token: Arc<str>,
}

/// The console's routes, to nest at `/console`; `None` when its token
/// cannot be had (the reason is logged).
pub fn router<S: Clone + Send + Sync + 'static>(worker: Arc<Worker>) -> Option<Router<S>> {
    let token = match token(&worker.deployment.root) {
        Ok(token) => token,
        Err(e) => {
            tracing::warn!(target: "peerhost::console", "no console: cannot read or create its token: {e}");
            return None;
        }
    };
    let console = Console {
        worker,
        token: token.into(),
    };
    Some(
        Router::new()
            .route("/", get(peers_page))
            .route("/peers/{peer}", get(peer_page))
            .route("/peers/{peer}/audit/stream", get(audit_stream))
            .route("/assets/htmx.min.js", get(|| async { script(HTMX) }))
            .route("/assets/sse.min.js", get(|| async { script(SSE) }))
            .route_layer(axum::middleware::from_fn_with_state(
                console.clone(),
                signed_in,
            ))
            .route("/login", get(|| async { login_page(None) }).post(login))
            .fallback(|| async {
                page(
                    StatusCode::NOT_FOUND,
                    "not found",
                    html! { p { "No such page." } },
                )
            })
            .with_state(console),
    )
}

/// Lets a request with the token's cookie through; 401 otherwise.
async fn signed_in(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned());
    match presented {
        Some(value) if same(value.as_bytes(), console.token.as_bytes()) => next.run(request).await,
        _ => login_page(Some("Sign in with the operator token to see the console.")),
    }
}

/// Compares in time independent of where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /console/login`, form field `token`.
async fn login(State(console): State<Console>, body: Bytes) -> Response {
    let given = std::str::from_utf8(&body)
        .ok()
        .into_iter()
        .flat_map(|form| form.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    if !same(given.as_bytes(), console.token.as_bytes()) {
        return login_page(Some("That is not this worker's operator token."));
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/console".to_owned()),
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict",
                    console.token
                ),
            ),
        ],
    )
        .into_response()
}

fn login_page(problem: Option<&str>) -> Response {
    let status = if problem.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    page(
        status,
        "sign in",
        html! {
            @if let Some(problem) = problem { p.problem { (problem) } }
            form method="post" action="/console/login" {
                label for="token" { "Operator token (in the deployment's " code { (TOKEN_FILE) } ")" }
                br;
                input #token type="password" name="token" autocomplete="off" size="66";
                button #sign-in type="submit" { "Sign in" }
            }
        },
    )
}

fn script(source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        source,
    )
        .into_response()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
th{background:#f3f3f3}code,pre{font-size:.85rem}pre{background:#f7f7f7;padding:.5rem;overflow:auto}\
.deny{color:#a00}.allow{color:#070}.flag{background:#fde8c8}.problem{color:#a00}.ok{color:#070}\
nav a{margin-right:1rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}";

fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "peerhost · " (title) }
                style { (maud::PreEscaped(STYLE)) }
                script src="/console/assets/htmx.min.js" {}
                script src="/console/assets/sse.min.js" {}
            }
            body {
                nav { a href="/console" { "peers" } }
                h1 { (title) }
                (body)
            }
        }
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// One peer's row on the peers page, read off the async workers.
struct PeerRow {
    name: String,
    id: String,
    owner: String,
    kv: String,
    namespace: String,
    activity: Vec<u32>,
}

async fn peers_page(State(console): State<Console>) -> Response {
    let worker = console.worker.clone();
    // The peers read so far; the others are named, not read (a worker may
    // host many thousands, each read at its first use).
    let loaded: Vec<(Arc<crate::peer::Peer>, Vec<u32>)> = worker
        .deployment
        .peers
        .loaded()
        .map(|peer| {
            let activity = peer.activity.last(30);
            (peer.clone(), activity)
        })
        .collect();
    let read: std::collections::HashSet<&str> =
        loaded.iter().map(|(peer, _)| peer.name.as_str()).collect();
    let unread: Vec<String> = worker
        .peer_names()
        .into_iter()
        .filter(|name| !read.contains(name.as_str()))
        .collect();
    // Their storage sizes are reads of the backends: off the async workers.
    let measured = tokio::task::spawn_blocking(move || {
        loaded
            .into_iter()
            .map(|(peer, activity)| peer_row(&peer, activity))
            .collect::<Vec<_>>()
    })
    .await;
    let (rows, problems) = match measured {
        Ok(rows) => (rows, Vec::new()),
        Err(e) => (
            Vec::new(),
            vec![format!("the peers could not be measured: {e}")],
        ),
    };
    page(
        StatusCode::OK,
        "peers",
        html! {
            @for problem in &problems { p.problem { (problem) } }
            @if !unread.is_empty() {
                p #unread {
                    "Not used since the worker started: "
                    @for (i, name) in unread.iter().take(SHOWN_UNREAD).enumerate() {
                        @if i > 0 { ", " }
                        a href={ "/console/peers/" (name) } { (name) }
                    }
                    @if unread.len() > SHOWN_UNREAD { " and " (unread.len() - SHOWN_UNREAD) " more" }
                }
            }
            table #peers {
                tr { th { "peer" } th { "id" } th { "owner" } th { "kv" } th { "namespace" } th { "invocations, last 30 min" } }
                @for row in &rows {
                    tr {
                        td { a href={ "/console/peers/" (row.name) } { (row.name) } }
                        td { code { (row.id) } }
                        td { (row.owner) }
                        td { (row.kv) }
                        td { (row.namespace) }
                        td { (sparkline(&row.activity)) " " (row.activity.iter().map(|&n| u64::from(n)).sum::<u64>()) }
                    }
                }
            }
        },
    )
}

/// `peer`'s row on the peers page (reads its kv store's size).
fn peer_row(peer: &crate::peer::Peer, activity: Vec<u32>) -> PeerRow {
    let kv = match peer.kv.usage(None) {
        Ok(usage) => format!(
            "{} · {} bytes, {} keys",
            peer.kv.name(),
            usage.bytes,
            usage.keys
        ),
        Err(e) => format!("{} · unreadable: {e}", peer.kv.name()),
    };
    PeerRow {
        name: peer.name.clone(),
        id: peer.id.to_string(),
        owner: peer.config.owner.name.clone(),
        kv,
        namespace: peer
            .namespace
            .backend
            .as_ref()
            .map_or("dir", |b| b.name())
            .to_owned(),
        activity,
    }
}

/// A sparkline of `counts`, oldest first.
fn sparkline(counts: &[u32]) -> Markup {
    let (width, height) = (120.0_f64, 24.0_f64);
    let max = f64::from(counts.iter().copied().max().unwrap_or(0).max(1));
    let step = width / (counts.len().max(2) - 1) as f64;
    let points: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let x = i as f64 * step;
            let y = height - 2.0 - (f64::from(n) / max) * (height - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    html! {
        svg.sparkline width="120" height="24" viewBox="0 0 120 24" role="img" aria-label="invocations per minute" {
            polyline points=(points.join(" ")) fill="none" stroke="#36c" stroke-width="1.5" {}
        }
    }
}

async fn peer_page(State(console): State<Console>, Path(name): Path<String>) -> Response {
    let worker = console.worker.clone();
    let peer = match worker.peer(&name).await {
        Ok(peer) => peer,
        Err(e) => {
            return page(
                StatusCode::NOT_FOUND,
                &name,
                html! { p.problem { (e.message) } },
            );
        }
    };
    let body = tokio::task::spawn_blocking(move || peer_sections(&peer)).await;
    match body {
        Ok(body) => page(StatusCode::OK, &name, body),
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &name,
            html! { p.problem { "the page could not be made: " (e.to_string()) } },
        ),
    }
}

/// The sections of a peer's page: reads its policy, audit log, usage and
/// logic (files: off the async workers).
fn peer_sections(peer: &Arc<crate::peer::Peer>) -> Markup {
    let petnames: Vec<String> = peer.contacts.iter().map(|(p, _)| p.to_owned()).collect();
    let grants = crate::grants::analyse(&peer.name, &peer.policy(), &petnames);
    let audit_path = peer.audit.path().to_owned();
    // No log yet is an empty chain, not a broken one; a long one is left
    // to `peerhost audit verify`.
    let size = std::fs::metadata(&audit_path).map_or(0, |m| m.len());
    let chain = if size == 0 {
        Some(Ok((0, String::new())))
    } else if size <= MAX_VERIFIED {
        Some(crate::audit::verify(&audit_path))
    } else {
        None
    };
    let (lines, offset) = last_lines(&audit_path, SHOWN_LINES);
    let mut usage: Vec<(String, crate::quota::CallerUsage)> =
        peer.usage.snapshot().into_iter().collect();
    usage.sort_by(|a, b| {
        b.1.invocations
            .cmp(&a.1.invocations)
            .then_with(|| a.0.cmp(&b.0))
    });
    usage.truncate(SHOWN_CALLERS);
    let modules = peer.logic.modules();
    html! {
        p { "id " code { (peer.id.to_string()) } }
        h2 { "Grants" }
        @match &grants {
            Ok(report) => (grants_table(report)),
            Err(e) => p.problem { (e.to_string()) },
        }
        h2 { "Audit log" }
        @match &chain {
            Some(Ok((count, _))) => p #chain .ok { "chain verified: " (count) " lines" },
            Some(Err(e)) => p #chain .problem { "chain broken: " (e.to_string()) },
            None => p #chain { "the log is " (size) " bytes: run " code { "peerhost audit verify" } " to check its chain" },
        }
        table #audit {
            thead { tr { th { "time" } th { "caller" } th { "principal" } th { "action" } th { "resource" } th { "decision" } th { "trace" } } }
            tbody #audit-lines hx-ext="sse" sse-connect={ "/console/peers/" (peer.name) "/audit/stream?from=" (offset) } sse-swap="line" hx-swap="afterbegin" {
                @for line in lines.iter().rev() { (audit_row(line)) }
            }
        }
        h2 { "Usage per caller" }
        (usage_chart(&usage))
        h2 { "Logic" }
        @match &modules {
            Ok(modules) => {
                @for module in modules.iter() {
                    details.module {
                        summary { code { (module.name) } }
                        @match crate::host_operations::functions(&module.name, &module.source) {
                            Ok(functions) => {
                                ul {
                                    @for f in &functions {
                                        li { code { (f.name) "(" (f.params.join(", ")) ")" } @if !f.doc.is_empty() { " — " (f.doc) } }
                                    }
                                }
                            }
                            Err(e) => p.problem { (e) },
                        }
                        pre { (module.source) }
                    }
                }
            }
            Err(e) => p.problem { "cannot read the logic: " (e.to_string()) },
        }
    }
}

fn grants_table(report: &crate::grants::Report) -> Markup {
    let over_broad: Vec<&String> = report
        .warnings
        .iter()
        .filter(|w| w.starts_with("over-broad"))
        .collect();
    let flagged = |policies: &[String]| {
        policies.iter().any(|id| {
            over_broad
                .iter()
                .any(|w| w.contains(&format!("(policy {id})")))
        })
    };
    html! {
        @if !report.warnings.is_empty() {
            ul #warnings {
                @for warning in &report.warnings { li.flag { (warning) } }
            }
        }
        @let (owner, others): (Vec<_>, Vec<_>) = report
            .principals
            .iter()
            .partition(|p| p.who == crate::grants::Who::Owner);
        (grants_rows("grants", &others, &flagged))
        details {
            summary { "the owner's own grants" }
            (grants_rows("owner-grants", &owner, &flagged))
        }
    }
}

fn grants_rows(
    id: &str,
    principals: &[&crate::grants::PrincipalGrants],
    flagged: &dyn Fn(&[String]) -> bool,
) -> Markup {
    html! {
        table id=(id) {
            tr { th { "principal" } th { "who" } th { "action" } th { "resource" } th { "when" } th { "policies" } }
            @for principal in principals {
                @for (action, scopes) in &principal.grants {
                    @for scope in scopes {
                        tr class=[flagged(&scope.policies).then_some("flag")] {
                            td { (principal.principal) }
                            td { (format!("{:?}", principal.who).to_lowercase()) }
                            td { code { (action) } }
                            td { code { (scope.resource) }
                                @for except in &scope.except { br; "except " code { (except) } }
                            }
                            td { @if let Some(when) = &scope.when { code { (when) } }
                                @for unless in &scope.unless { br; "unless " code { (unless) } }
                            }
                            td { (scope.policies.join(", ")) }
                        }
                    }
                }
            }
        }
    }
}

fn audit_row(line: &crate::audit::Record) -> Markup {
    html! {
        tr.audit-line {
            td { (line.time) }
            td { (line.caller.name) }
            td { (line.principal) }
            td { code { (line.action) } }
            td { code { (line.resource) } }
            td class=(line.decision) { (line.decision) @if let Some(reason) = &line.reason { " · " (reason) } }
            td { code { (line.trace.as_deref().unwrap_or("")) } }
        }
    }
}

/// A horizontal bar per caller: invocations, and how many were over quota.
fn usage_chart(usage: &[(String, crate::quota::CallerUsage)]) -> Markup {
    if usage.is_empty() {
        return html! { p { "No caller has used this peer since the worker started." } };
    }
    let max = usage
        .iter()
        .map(|(_, u)| u.invocations)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let row = 22.0_f64;
    let height = row * usage.len() as f64 + 4.0;
    html! {
        svg #usage width="760" height=(height) viewBox={ "0 0 760 " (height) } role="img" aria-label="invocations per caller" {
            @for (i, (caller, used)) in usage.iter().enumerate() {
                @let y = 2.0 + i as f64 * row;
                @let width = (used.invocations as f64 / max) * 300.0;
                text x="0" y=(y + 15.0) font-size="13" { (caller) }
                rect x="180" y=(y + 3.0) width=(format!("{width:.1}")) height="14" fill="#36c" {}
                text x=(format!("{:.1}", 186.0 + width)) y=(y + 15.0) font-size="12" {
                    (used.invocations) " invocations, " (format!("{:.0}", used.time_ms)) " ms"
                    @if used.over_quota > 0 { ", " (used.over_quota) " over quota" }
                }
            }
        }
    }
}

/// The last `n` audit records of the log at `path` (read from its last
/// [`TAIL_BYTES`]), and the offset after the last whole line (where the
/// live tail takes over).
fn last_lines(path: &std::path::Path, n: usize) -> (Vec<crate::audit::Record>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL_BYTES);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut text).is_err() {
        return (Vec::new(), 0);
    }
    // From the middle of the file, the first line may be cut: skip it.
    let first = if start > 0 {
        text.iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| i + 1)
    } else {
        0
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let records: Vec<crate::audit::Record> = text[first.min(complete)..complete]
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    let skip = records.len().saturating_sub(n);
    (
        records.into_iter().skip(skip).collect(),
        start + complete as u64,
    )
}

#[derive(serde::Deserialize)]
struct From {
    #[serde(default)]
    from: u64,
}

/// `GET /console/peers/{peer}/audit/stream?from=OFFSET`: every audit line
/// appended after byte `from`, as an event `line` holding a table row,
/// until the worker stops.
async fn audit_stream(
    State(console): State<Console>,
    Path(name): Path<String>,
    axum::extract::Query(From { from }): axum::extract::Query<From>,
    headers: axum::http::HeaderMap,
) -> Response {
    let worker = console.worker.clone();
    let peer = match worker.peer(&name).await {
        Ok(peer) => peer,
        Err(e) => return (StatusCode::NOT_FOUND, e.message).into_response(),
    };
    // A browser that reconnects says where it was (each event's id is
    // the offset after its line): it gets no line twice.
    let from = headers
        .get("last-event-id")
        .and_then(|id| id.to_str().ok())
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or(from);
    let path = peer.audit.path().to_owned();
    let state = (
        path,
        from,
        std::collections::VecDeque::<(String, u64)>::new(),
        worker,
    );
    let events = futures::stream::unfold(
        state,
        |(path, mut offset, mut pending, worker)| async move {
            loop {
                if let Some((row, after)) = pending.pop_front() {
                    let event = Event::default()
                        .event("line")
                        .id(after.to_string())
                        .data(row);
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (path, offset, pending, worker),
                    ));
                }
                if worker.is_stopping() {
                    return None;
                }
                tokio::time::sleep(TAIL_EVERY).await;
                let read_path = path.clone();
                let read = tokio::task::spawn_blocking(move || read_from(&read_path, offset)).await;
                if let Ok(Some((rows, next))) = read {
                    offset = next;
                    pending.extend(rows);
                }
            }
        },
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response.extensions_mut().insert(LiveAnswer);
    response
}

/// The audit rows after byte `offset` of the log at `path` (complete lines
/// only), and the offset after them; a log that shrank starts over.
fn read_from(path: &std::path::Path, offset: u64) -> Option<(Vec<(String, u64)>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let offset = if len < offset { 0 } else { offset };
    if len == offset {
        return Some((Vec::new(), offset));
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = Vec::new();
    file.take(4 << 20).read_to_end(&mut text).ok()?;
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut rows = Vec::new();
    let mut after = offset;
    for line in text[..complete].split_inclusive(|&b| b == b'\n') {
        after += line.len() as u64;
        if let Ok(record) = serde_json::from_slice::<crate::audit::Record>(line) {
            rows.push((audit_row(&record).into_string(), after));
        }
    }
    Some((rows, offset + complete as u64))
}
