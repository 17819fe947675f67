//! `peerhost:peer/context`: who is running and for whom.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::context::{Host, InvocationContext};
use crate::policy::{Action, Resource};

impl Host for InvocationState {
    fn get(&mut self) -> Result<InvocationContext, GuestError> {
        let authority = &self.authority;
        authority.check(Action::ContextGet, &Resource::Peer)?;
        Ok(InvocationContext {
            target: authority.peer.name.clone(),
            caller: authority.caller.clone(),
            kind: authority.kind,
        })
    }
}
