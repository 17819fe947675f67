//! `peerhost:peer/kv`: the guest's view of its peer's kv store. Every call
//! is decided by the policy, then goes to the peer's [`KvBackend`](crate::kv::KvBackend)
//! (`crate::kv`); the capability knows no backend.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::kv::Host;
use crate::kv::{CheckedValue, KvError, MAX_KEY, encode_key};
use crate::policy::{Action, Resource};

impl Host for InvocationState {
    fn get(&mut self, key: String) -> Result<Option<String>, GuestError> {
        encode_key(&key)?;
        self.authority
            .check(Action::KvGet, &Resource::Key(key.clone()))?;
        Ok(self.authority.peer.kv.get(&key)?)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), GuestError> {
        encode_key(&key)?;
        self.authority
            .check(Action::KvSet, &Resource::Key(key.clone()))?;
        let value = CheckedValue::new(&key, &value)?;
        self.authority.writes.charge(value.bytes() as u64)?;
        Ok(self.authority.peer.kv.put(&value)?)
    }

    fn delete(&mut self, key: String) -> Result<bool, GuestError> {
        encode_key(&key)?;
        self.authority
            .check(Action::KvDelete, &Resource::Key(key.clone()))?;
        Ok(self.authority.peer.kv.delete(&key)?)
    }

    fn list(&mut self, prefix: String) -> Result<Vec<String>, GuestError> {
        if prefix.len() > MAX_KEY {
            return Err(KvError::BadKey { key: prefix }.into());
        }
        self.authority
            .check(Action::KvList, &Resource::Key(prefix.clone()))?;
        Ok(self.authority.peer.kv.list(&prefix, self.deadline)?)
    }
}
