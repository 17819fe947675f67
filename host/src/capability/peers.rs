//! `peerhost:peer/peers`: delegation. The sender's own policy decides the
//! outbound action (`peers.send` / `peers.call` on `Contact::"<petname>"`);
//! the [`Router`](super::Router) (the worker) then routes the invocation to the
//! target, in this process or, signed with the sender's key, to the
//! contact's worker. `call-local` runs one of this peer's own functions in a
//! fresh invocation, decided by the host like any call.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::peers::Host;
use crate::invocation::MAX_DEPTH;
use crate::invocation::{Invocation, InvocationRequest};
use crate::policy::{Action, Resource};
use serde_json::Value;

fn json(text: &str, what: &str) -> Result<Value, GuestError> {
    serde_json::from_str(text)
        .map_err(|e| GuestError::Invalid(format!("{what} is not valid JSON: {e}")))
}

impl InvocationState {
    fn next_depth(&self) -> Result<u32, GuestError> {
        let depth = self.authority.depth + 1;
        if depth > MAX_DEPTH {
            return Err(GuestError::Limit(format!(
                "delegation depth limit of {MAX_DEPTH} reached"
            )));
        }
        Ok(depth)
    }

    async fn delegate(
        &mut self,
        action: Action,
        petname: String,
        invocation: Invocation,
    ) -> Result<String, GuestError> {
        let authority = &self.authority;
        authority.check(action, &Resource::Contact(petname.clone()))?;
        let depth = self.next_depth()?;
        let from = authority.peer.clone();
        let Some(contact) = from.contacts.get(&petname).cloned() else {
            return Err(GuestError::NotFound(format!(
                "`{}` has no contact `{petname}` (peers/{}/contacts.toml)",
                from.name, from.name
            )));
        };
        let router = self.router()?;
        self.release_lane();
        let value = router
            .delegate(
                &from,
                &petname,
                &contact,
                invocation,
                crate::invocation::Chain {
                    depth,
                    trace: self.authority.trace,
                },
                self.deadline,
            )
            .await
            .map_err(GuestError::from)?;
        Ok(value.to_string())
    }
}

impl Host for InvocationState {
    async fn send(
        &mut self,
        peer: String,
        script: String,
        params: String,
    ) -> Result<String, GuestError> {
        let params = json(&params, "params")?;
        self.delegate(
            Action::PeersSend,
            peer,
            Invocation::Script { script, params },
        )
        .await
    }

    async fn call(
        &mut self,
        peer: String,
        function: String,
        args: String,
    ) -> Result<String, GuestError> {
        let args = json(&args, "args")?;
        self.delegate(Action::PeersCall, peer, Invocation::Call { function, args })
            .await
    }

    async fn call_local(&mut self, function: String, args: String) -> Result<String, GuestError> {
        let args = json(&args, "args")?;
        let depth = self.next_depth()?;
        let authority = &self.authority;
        let peer = authority.peer.clone();
        // The call is decided with the current principal: the caller's
        // grants in a script, the peer's own in one of its functions.
        let caller = if authority.principal == peer.name {
            peer.caller(peer.id)
        } else {
            authority.caller.clone()
        };
        let invoke = InvocationRequest {
            caller,
            invocation: Invocation::Call { function, args },
            depth,
            deadline: Some(self.deadline),
            trace: authority.trace,
        };
        let router = self.router()?;
        self.release_lane();
        let value = router.run(&peer, invoke).await.map_err(GuestError::from)?;
        Ok(value.to_string())
    }
}
