//! The invocation vocabulary: what a caller asks of a peer ([`Invocation`]),
//! with who asks and how deep in a chain of delegations ([`InvocationRequest`]), and
//! the bounds every transport and the runtime share.

use crate::identity::Caller;
use serde_json::Value;
use std::time::Instant;

/// Largest result an invocation may return, in bytes of JSON.
pub const MAX_RESULT: usize = 1 << 20;

/// Longest chain of delegations (A→B is 1); deeper is refused with `limit`.
pub const MAX_DEPTH: u32 = 8;

/// One invocation, as asked of a peer.
#[derive(Clone, Debug)]
pub enum Invocation {
    /// Call the exported logic function `function` with `args`.
    Call {
        /// The function's name.
        function: String,
        /// A JSON array of positional arguments, or one argument.
        args: Value,
    },
    /// Evaluate a script with `params` bound as `params`.
    Script {
        /// Rhai source.
        script: String,
        /// Any JSON value.
        params: Value,
    },
    /// Show the peer's logic (decided as `logic.read`); answered by the
    /// host, no guest runs.
    ShowLogic {
        /// One module (`main`, `text`, `lib/text`), or all of them.
        module: Option<String>,
    },
    /// Replace or add logic modules (name, source); the owner's only.
    PushLogic {
        /// The modules, by name.
        files: Vec<(String, String)>,
    },
    /// Replace the policy; the owner's only.
    PushPolicy {
        /// The new `policy.cedar`.
        text: String,
    },
}

impl Invocation {
    /// Whether the host answers it itself, with no guest.
    pub fn is_host_operation(&self) -> bool {
        !matches!(self, Invocation::Call { .. } | Invocation::Script { .. })
    }
}

/// One invocation asked of a peer by an authenticated (or anonymous) caller.
#[derive(Clone, Debug)]
pub struct InvocationRequest {
    /// Who asks, as the target knows them.
    pub caller: Caller,
    /// What to run.
    pub invocation: Invocation,
    /// How many delegations led here.
    pub depth: u32,
    /// The deadline of the invocation that delegated this one, if any: a
    /// nested invocation never outlives its parent.
    pub deadline: Option<Instant>,
    /// The trace this invocation is part of (see [`crate::trace`]): the
    /// context of the invocation that asked for it when handed to the
    /// worker (none: it starts a trace), its own once the worker runs it.
    pub trace: Option<crate::trace::TraceContext>,
}

/// Where an invocation stands in its chain: how many delegations led to
/// it, and the trace it is part of (its own context, see [`crate::trace`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// How many delegations led here.
    pub depth: u32,
    /// The invocation's place in its trace, if it has one.
    pub trace: Option<crate::trace::TraceContext>,
}
