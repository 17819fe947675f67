//! `peerhost:peer/log`: a guest's diagnostics in the worker's log, tagged
//! with the peer and the caller.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::log::{Host, Level};
use crate::policy::{Action, Resource};

/// Longest log line kept, in bytes; the rest is cut.
pub const MAX_LINE: usize = 4096;

/// Most log lines of one invocation; the next is refused with `limit`.
/// Each line is also an audit line: without a bound, one script could
/// write megabytes of both.
pub const MAX_LINES: u32 = 1_000;

impl Host for InvocationState {
    fn write(&mut self, level: Level, message: String) -> Result<(), GuestError> {
        if self.log_lines >= MAX_LINES {
            return Err(GuestError::Limit(format!(
                "this invocation has written {MAX_LINES} log lines, the most it may"
            )));
        }
        self.log_lines += 1;
        let authority = &self.authority;
        authority.check(Action::LogWrite, &Resource::Peer)?;
        let mut message = message;
        crate::error::truncate_with_ellipsis(&mut message, MAX_LINE);
        let peer = authority.peer.name.as_str();
        let caller = authority.caller.principal.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "peerhost::guest", peer, caller, "{message}"),
            Level::Debug => tracing::debug!(target: "peerhost::guest", peer, caller, "{message}"),
            Level::Info => tracing::info!(target: "peerhost::guest", peer, caller, "{message}"),
            Level::Warn => tracing::warn!(target: "peerhost::guest", peer, caller, "{message}"),
            Level::Error => tracing::error!(target: "peerhost::guest", peer, caller, "{message}"),
        }
        Ok(())
    }
}
