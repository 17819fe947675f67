//! `peerhost:peer/context`: who is running and for whom.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::context::{Host, InvocationContext, PeerRef};
use crate::policy::{Action, Resource};

impl Host for InvocationState {
    fn get(&mut self) -> Result<InvocationContext, GuestError> {
        let authority = &self.authority;
        authority.check(Action::ContextGet, &Resource::Peer)?;
        Ok(InvocationContext {
            target: PeerRef {
                name: authority.peer.name.clone(),
                id: Some(authority.peer.id.to_string()),
            },
            caller: PeerRef {
                name: authority.caller.principal.clone(),
                id: authority.caller_id.clone(),
            },
            kind: authority.kind,
            depth: authority.depth,
        })
    }
}
