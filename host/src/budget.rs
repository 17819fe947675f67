//! What an invocation may write: audit lines, and bytes of kv values, files
//! and audit lines, per invocation and per caller per minute.
//!
//! Until peers get byte quotas of their storage, these bounds keep one
//! script (or one caller running many) from filling a shared worker's disk
//! or its audit log:
//!
//! - at most [`MAX_AUDIT_LINES`] audit lines per invocation; the decisions
//!   past it are still made (a denial still denies), counted, and summed up
//!   in one [`DROPPED`] line when the invocation ends ([`AuditLines`]);
//! - at most [`MAX_WRITE_PER_INVOCATION`] bytes per invocation ([`Writes`]);
//! - at most [`MAX_WRITE_PER_CALLER_MINUTE`] bytes per caller at one peer
//!   in any minute ([`CallerWrites`], held on the [`Peer`]); strangers, the
//!   callers without a petname there, share one budget.
//!
//! Bytes are those of kv values set, of file writes (descriptor writes and
//! every output stream of a file), and of audit lines written. A kv write
//! past a bound is refused with `limit` before anything is written; a file
//! write past it traps, and the invocation ends with `limit`. Audit lines
//! are charged but never refused for bytes (their count is bounded): they
//! use up what the invocation and the caller may still write.

use crate::bindings::GuestError;
use crate::identity::Caller;
use crate::peer::Peer;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime_wasi_io::bytes::Bytes;
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{DynOutputStream, OutputStream, StreamError, StreamResult};

/// Audit lines one invocation writes; the decisions past it are counted
/// and summed up in one [`DROPPED`] line at its end. 256 lines are a few
/// hundred KiB at most (each field is cut to [`crate::audit::MAX_FIELD`]).
pub const MAX_AUDIT_LINES: u32 = 256;

/// The `action` of the line that sums up the lines an invocation did not
/// write past [`MAX_AUDIT_LINES`].
pub const DROPPED: &str = "audit.dropped";

/// Bytes one invocation may write: kv values, files and its audit lines.
pub const MAX_WRITE_PER_INVOCATION: u64 = 16 << 20;

/// Bytes one caller may write at one peer in any minute, over all its
/// invocations there (strangers share one such budget per peer).
pub const MAX_WRITE_PER_CALLER_MINUTE: u64 = 64 << 20;

/// Callers whose writes a peer tracks one by one; past it, a new caller
/// shares the strangers' budget until entries expire.
pub const MAX_CALLERS: usize = 10_000;

/// The window of [`MAX_WRITE_PER_CALLER_MINUTE`].
pub const WINDOW: Duration = Duration::from_secs(60);

/// Seconds of one slot of a window: bytes are forgotten between 60 and 65
/// seconds after they were written, never earlier.
const SLOT_SECS: u64 = 5;

/// Slots kept per caller: enough to cover [`WINDOW`] whole at any moment.
const SLOTS: usize = (WINDOW.as_secs() / SLOT_SECS) as usize + 1;

/// Distinct actions a [`DROPPED`] line names; others are summed as `other`.
const MAX_NAMED_ACTIONS: usize = 32;

/// A write refused for bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteLimit {
    /// The invocation's bound.
    #[error(
        "this invocation would have written {written} bytes (kv values, files and audit lines); \
         one invocation may write at most {MAX_WRITE_PER_INVOCATION}"
    )]
    Invocation {
        /// Bytes with the refused write.
        written: u64,
    },
    /// The caller's bound at this peer.
    #[error(
        "`{caller}` has written {written} bytes at `{peer}` in the last minute; \
         {bytes} more would pass the {limit}-byte budget of a caller per minute (strangers share one): retry later"
    )]
    Caller {
        /// Who pays (`strangers` for callers without a petname).
        caller: String,
        /// The peer written at.
        peer: String,
        /// Bytes written in the window so far.
        written: u64,
        /// Bytes refused.
        bytes: u64,
        /// The budget.
        limit: u64,
    },
}

impl From<WriteLimit> for GuestError {
    fn from(e: WriteLimit) -> GuestError {
        GuestError::Limit(e.to_string())
    }
}

/// Who pays at a peer for what an invocation writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payer {
    /// A caller with a name there: a petname, the peer itself, `anonymous`.
    Named(String),
    /// A caller the peer knows only by its id: all of them share one budget,
    /// so that fresh keys buy no fresh bytes.
    Stranger,
}

impl Payer {
    /// Who pays for `caller`'s writes at `peer`.
    pub fn of(peer: &Peer, caller: &Caller) -> Payer {
        match caller.id {
            Some(id) if id != peer.id && peer.contacts.petname(&id).is_none() => Payer::Stranger,
            _ => Payer::Named(caller.principal.clone()),
        }
    }

    fn name(&self) -> &str {
        match self {
            Payer::Named(name) => name,
            Payer::Stranger => "strangers",
        }
    }
}

/// Bytes written over the last minute, in slots of [`SLOT_SECS`].
#[derive(Clone, Debug)]
struct Window {
    slots: [u64; SLOTS],
    /// The newest slot counted in `slots`.
    last: u64,
}

impl Window {
    fn new(slot: u64) -> Window {
        Window {
            slots: [0; SLOTS],
            last: slot,
        }
    }

    /// Forgets the slots that left the window by `slot`.
    fn advance(&mut self, slot: u64) {
        let gap = slot.saturating_sub(self.last).min(SLOTS as u64);
        for step in 1..=gap {
            self.slots[((self.last + step) % SLOTS as u64) as usize] = 0;
        }
        self.last = self.last.max(slot);
    }

    fn total(&self) -> u64 {
        self.slots.iter().fold(0, |sum, n| sum.saturating_add(*n))
    }

    fn add(&mut self, bytes: u64) {
        let slot = &mut self.slots[(self.last % SLOTS as u64) as usize];
        *slot = slot.saturating_add(bytes);
    }

    /// Whether everything it counted has left the window by `slot`.
    fn expired(&self, slot: u64) -> bool {
        slot >= self.last + SLOTS as u64
    }
}

#[derive(Debug)]
struct Windows {
    origin: Instant,
    named: HashMap<String, Window>,
    shared: Window,
    /// The slot in which expired entries were last dropped.
    swept: u64,
}

/// What each caller wrote at one peer over the last minute, against a
/// per-minute budget: at most [`MAX_CALLERS`] entries, dropped once their
/// bytes left the window.
#[derive(Debug)]
pub struct CallerWrites {
    per_minute: u64,
    windows: Mutex<Windows>,
}

impl Default for CallerWrites {
    fn default() -> Self {
        CallerWrites::new(MAX_WRITE_PER_CALLER_MINUTE)
    }
}

impl CallerWrites {
    /// A budget of `per_minute` bytes per caller.
    pub fn new(per_minute: u64) -> CallerWrites {
        CallerWrites {
            per_minute,
            windows: Mutex::new(Windows {
                origin: Instant::now(),
                named: HashMap::new(),
                shared: Window::new(0),
                swept: 0,
            }),
        }
    }

    /// Charges `bytes` to `payer` at `now`: refused (nothing charged) with
    /// the bytes already written in the window when they would pass the
    /// budget, unless `always` (audit lines, which are bounded in number).
    fn charge(&self, payer: &Payer, bytes: u64, always: bool, now: Instant) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let windows = &mut *windows;
        let slot = now.saturating_duration_since(windows.origin).as_secs() / SLOT_SECS;
        if slot != windows.swept || windows.named.len() >= MAX_CALLERS {
            windows.named.retain(|_, window| !window.expired(slot));
            windows.swept = slot;
        }
        let window = match payer {
            Payer::Named(name)
                if windows.named.contains_key(name) || windows.named.len() < MAX_CALLERS =>
            {
                windows
                    .named
                    .entry(name.clone())
                    .or_insert_with(|| Window::new(slot))
            }
            // Strangers, and anyone while the table is full.
            _ => &mut windows.shared,
        };
        window.advance(slot);
        let written = window.total();
        if !always && written.saturating_add(bytes) > self.per_minute {
            return Err(written);
        }
        window.add(bytes);
        Ok(())
    }

    /// Callers tracked one by one (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .named
            .len()
    }
}

/// The bytes one invocation has written, charged to its payer at its peer
/// too. Shared with the file output streams the invocation opened.
#[derive(Debug)]
pub struct Writes {
    peer: Arc<Peer>,
    payer: Payer,
    written: AtomicU64,
}

impl Writes {
    /// The writes of an invocation by `caller` at `peer`, none yet.
    pub fn new(peer: &Arc<Peer>, caller: &Caller) -> Writes {
        Writes {
            payer: Payer::of(peer, caller),
            peer: peer.clone(),
            written: AtomicU64::new(0),
        }
    }

    /// Who pays.
    pub fn payer(&self) -> &Payer {
        &self.payer
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Admits `bytes` about to be written, or refuses them; refused bytes
    /// are not counted (they are not written), so a smaller write may pass.
    pub fn charge(&self, bytes: u64) -> Result<(), WriteLimit> {
        let written = self
            .written
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if written > MAX_WRITE_PER_INVOCATION {
            self.written.fetch_sub(bytes, Ordering::Relaxed);
            return Err(WriteLimit::Invocation { written });
        }
        self.peer
            .written
            .charge(&self.payer, bytes, false, Instant::now())
            .map_err(|in_window| {
                self.written.fetch_sub(bytes, Ordering::Relaxed);
                WriteLimit::Caller {
                    caller: self.payer.name().to_owned(),
                    peer: self.peer.name.clone(),
                    written: in_window,
                    bytes,
                    limit: self.peer.written.per_minute,
                }
            })
    }

    /// Counts `bytes` of audit lines already written.
    pub fn charge_audit(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
        let _ = self
            .peer
            .written
            .charge(&self.payer, bytes, true, Instant::now());
    }

    /// A new invocation on the same Store (a reused instance) starts afresh.
    pub fn reset(&self) {
        self.written.store(0, Ordering::Relaxed);
    }
}

/// Lines dropped past [`MAX_AUDIT_LINES`], by action and decision.
#[derive(Debug, Default)]
struct Dropped {
    allow: u32,
    deny: u32,
    actions: BTreeMap<String, u32>,
}

/// The audit lines of one invocation: how many were written, and what was
/// decided past [`MAX_AUDIT_LINES`] without a line.
#[derive(Debug, Default)]
pub struct AuditLines {
    written: AtomicU32,
    dropped: Mutex<Dropped>,
}

impl AuditLines {
    /// Whether the line of a decision on `action` is written; if not, the
    /// decision is counted for the summary.
    pub fn admit(&self, action: &str, allowed: bool) -> bool {
        let before = self
            .written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_AUDIT_LINES).then_some(n + 1)
            });
        if before.is_ok() {
            return true;
        }
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        if allowed {
            dropped.allow = dropped.allow.saturating_add(1);
        } else {
            dropped.deny = dropped.deny.saturating_add(1);
        }
        let known = dropped.actions.contains_key(action);
        let key = if known || dropped.actions.len() < MAX_NAMED_ACTIONS {
            action
        } else {
            "other"
        };
        let count = dropped.actions.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        false
    }

    /// The summary of the lines not written, if any: whether any of them
    /// was a denial, and the reason of the [`DROPPED`] line. Starts the
    /// count afresh.
    pub fn take_summary(&self) -> Option<(bool, String)> {
        let written = self.written.swap(0, Ordering::Relaxed);
        let dropped = std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()));
        let total = dropped.allow.saturating_add(dropped.deny);
        if total == 0 {
            return None;
        }
        let actions: Vec<String> = dropped
            .actions
            .iter()
            .map(|(action, n)| format!("{action} {n}"))
            .collect();
        Some((
            dropped.deny > 0,
            format!(
                "{total} audit lines of this invocation were not written \
                 ({written} were, the most one invocation writes): {} deny, {} allow; {}",
                dropped.deny,
                dropped.allow,
                actions.join(", ")
            ),
        ))
    }
}

/// A file's output stream whose writes are charged to the invocation that
/// opened it; a write past a bound traps with the [`WriteLimit`]. With a
/// [`Growth`], the bytes it writes past the file's end are charged to the
/// namespace's `fs_bytes` too, and a write past that quota traps with the
/// [`crate::namespace::FsQuotaError`] before any of it is written.
pub struct CountedStream {
    inner: DynOutputStream,
    writes: Arc<Writes>,
    growth: Option<Growth>,
}

/// Where a file's output stream writes, for the namespace's `fs_bytes`.
#[derive(Debug)]
pub struct Growth {
    /// The peer whose namespace the file is in.
    pub peer: Arc<Peer>,
    /// Where the next write lands.
    pub position: u64,
    /// The file's end, as far as this stream knows.
    pub end: u64,
}

impl std::fmt::Debug for CountedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedStream").finish_non_exhaustive()
    }
}

impl CountedStream {
    /// `inner`, charged to `writes`, and its growth of the file to the
    /// namespace's quota when given.
    pub fn new(
        inner: DynOutputStream,
        writes: Arc<Writes>,
        growth: Option<Growth>,
    ) -> CountedStream {
        CountedStream {
            inner,
            writes,
            growth,
        }
    }

    fn charge(&mut self, bytes: usize) -> StreamResult<()> {
        self.writes
            .charge(bytes as u64)
            .map_err(|e| StreamError::Trap(e.into()))?;
        if let Some(growth) = &mut self.growth {
            let to = growth.position.saturating_add(bytes as u64);
            growth
                .peer
                .fs_usage
                .grow(to.saturating_sub(growth.end))
                .map_err(|e| StreamError::Trap(e.into()))?;
            growth.end = growth.end.max(to);
            growth.position = to;
        }
        Ok(())
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for CountedStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for CountedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    // The inner stream's own: a file's writes on the invoking thread, not
    // one background task per chunk (measured: most of a small file write).
    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn class_9_a_caller_is_refused_past_its_minute_budget_and_served_again_after_it() {
        let budget = CallerWrites::new(100);
        let alice = Payer::Named("alice".into());
        let start = budget
            .windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .origin;
        assert_eq!(budget.charge(&alice, 60, false, at(start, 1)), Ok(()));
        assert_eq!(budget.charge(&alice, 40, false, at(start, 30)), Ok(()));
        assert_eq!(budget.charge(&alice, 1, false, at(start, 59)), Err(100));
        // Another caller has a budget of its own.
        let bob = Payer::Named("bob".into());
        assert_eq!(budget.charge(&bob, 100, false, at(start, 59)), Ok(()));
        // The first 60 bytes leave the window after a minute, not before.
        assert_eq!(budget.charge(&alice, 60, false, at(start, 61)), Err(100));
        assert_eq!(budget.charge(&alice, 60, false, at(start, 66)), Ok(()));
        // Audit lines are charged even over the budget.
        assert_eq!(budget.charge(&alice, 500, true, at(start, 66)), Ok(()));
        assert_eq!(budget.charge(&alice, 1, false, at(start, 66)), Err(600));
    }

    #[test]
    fn class_9_strangers_share_one_budget_and_the_table_stays_bounded() {
        let budget = CallerWrites::new(100);
        let now = Instant::now();
        assert_eq!(budget.charge(&Payer::Stranger, 100, false, now), Ok(()));
        assert_eq!(budget.charge(&Payer::Stranger, 1, false, now), Err(100));
        assert_eq!(budget.tracked(), 0);
        // Past MAX_CALLERS names, a new one shares the strangers' budget.
        for n in 0..MAX_CALLERS {
            let payer = Payer::Named(format!("c{n}"));
            assert_eq!(budget.charge(&payer, 1, false, now), Ok(()));
        }
        assert_eq!(budget.tracked(), MAX_CALLERS);
        let late = Payer::Named("late".into());
        assert_eq!(budget.charge(&late, 1, false, now), Err(100));
        // A minute and a slot later every entry has expired and is dropped.
        let later = now + WINDOW + Duration::from_secs(2 * SLOT_SECS);
        assert_eq!(budget.charge(&late, 1, false, later), Ok(()));
        assert_eq!(budget.tracked(), 1);
    }

    #[test]
    fn class_8_lines_past_the_cap_are_counted_and_summed_up_once() {
        let lines = AuditLines::default();
        for _ in 0..MAX_AUDIT_LINES {
            assert!(lines.admit("kv.get", false));
        }
        for n in 0..1_000 {
            assert!(!lines.admit("kv.get", false));
            assert!(!lines.admit(&format!("action{n}"), true));
        }
        let (denied, reason) = lines.take_summary().unwrap_or_default();
        assert!(denied);
        assert!(
            reason.starts_with("2000 audit lines of this invocation were not written (256 were"),
            "{reason}"
        );
        assert!(
            reason.contains("1000 deny, 1000 allow") && reason.contains("kv.get 1000"),
            "{reason}"
        );
        assert!(reason.contains("other "), "{reason}");
        assert!(reason.len() < 1024, "{} bytes", reason.len());
        // The count starts afresh.
        assert_eq!(lines.take_summary(), None);
        assert!(lines.admit("kv.get", true));
    }
}
