//! A worker: one `peerhost serve` process (or one in-process CLI run)
//! hosting the peers of a deployment, shared or isolated.

use crate::deployment::Deployment;
use crate::error::InvocationError;
use crate::peer::valid_name;
use crate::policy::ANONYMOUS;
use crate::runtime::{Invocation, Runtime};
use serde_json::Value;
use std::sync::Arc;

/// The peers hosted here and the runtime that runs them.
#[derive(Debug)]
pub struct Worker {
    /// The deployment, restricted to the hosted peers.
    pub deployment: Deployment,
    /// The shared runtime.
    pub runtime: Arc<Runtime>,
}

impl Worker {
    /// A worker for `deployment` on `runtime`.
    pub fn new(deployment: Deployment, runtime: Arc<Runtime>) -> Worker {
        Worker {
            deployment,
            runtime,
        }
    }

    /// The names of the hosted peers, sorted.
    pub fn peer_names(&self) -> Vec<String> {
        self.deployment.peers.keys().cloned().collect()
    }

    /// Runs `invocation` at `peer` for `caller` (a peer name or `anonymous`).
    pub async fn invoke(
        &self,
        peer: &str,
        caller: &str,
        invocation: Invocation,
    ) -> Result<Value, InvocationError> {
        if caller != ANONYMOUS && !valid_name(caller) {
            return Err(InvocationError::invalid(format!(
                "`{caller}` is not a valid caller name"
            )));
        }
        let Some(target) = self.deployment.peers.get(peer) else {
            return Err(InvocationError::not_found(format!(
                "no peer `{peer}` is hosted here"
            )));
        };
        self.runtime.invoke(target, caller, invocation).await
    }
}
