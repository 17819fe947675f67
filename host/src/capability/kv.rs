//! `peerhost:peer/kv`: the guest's view of its peer's kv store. Every call
//! is decided by the policy (the `*-many` calls once for every key), then
//! goes to the peer's [`KvBackend`](crate::kv::KvBackend) through the
//! operations of `crate::kv`; the capability knows no backend. What is
//! written is charged to the caller (caller pays): its bytes count against
//! the invocation's write budget and the storage quotas of `[quotas]`.

use super::InvocationState;
use crate::bindings::GuestError;
use crate::bindings::peerhost::peer::kv::{Entry, Host, Page};
use crate::kv::{self, Charge, CheckedValue, KvError};
use crate::policy::{Action, Resource};
use crate::quota::Quotas;

impl InvocationState {
    /// Checks `key`, then decides `action` on it.
    fn decide_key(&self, action: Action, key: &str) -> Result<(), GuestError> {
        kv::check_key(key)?;
        self.authority.check(action, &Resource::Key(key.to_owned()))
    }

    /// Runs `write` charged to the caller: the owner of what it writes.
    fn charged<T>(
        &self,
        write: impl FnOnce(&dyn kv::KvBackend, &Charge<'_>) -> Result<T, KvError>,
    ) -> Result<T, GuestError> {
        let authority = &self.authority;
        let owner = Quotas::kv_owner(&authority.caller.principal);
        let (peer, owner_quota) = authority.peer.config.quotas.kv(owner);
        let charge = Charge {
            owner,
            peer,
            owner_quota,
        };
        match write(authority.peer.kv.as_ref(), &charge) {
            Ok(done) => Ok(done),
            Err(e @ KvError::Quota { .. }) => {
                authority.record_quota_refusal(&e.to_string());
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Host for InvocationState {
    fn get(&mut self, key: String) -> Result<Option<String>, GuestError> {
        self.decide_key(Action::KvGet, &key)?;
        Ok(self.authority.peer.kv.get(&key)?.map(|entry| entry.value))
    }

    fn get_entry(&mut self, key: String) -> Result<Option<Entry>, GuestError> {
        self.decide_key(Action::KvGet, &key)?;
        Ok(self.authority.peer.kv.get(&key)?.map(|entry| Entry {
            value: entry.value,
            revision: entry.revision,
        }))
    }

    fn exists(&mut self, key: String) -> Result<bool, GuestError> {
        self.decide_key(Action::KvExists, &key)?;
        Ok(kv::exists(self.authority.peer.kv.as_ref(), &key)?)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), GuestError> {
        self.decide_key(Action::KvSet, &key)?;
        let value = CheckedValue::new(&key, &value)?;
        self.authority.writes.charge(value.bytes() as u64)?;
        self.charged(|kv, charge| kv::set(kv, charge, &value))?;
        Ok(())
    }

    fn set_if(
        &mut self,
        key: String,
        value: String,
        revision: Option<String>,
    ) -> Result<Option<String>, GuestError> {
        self.decide_key(Action::KvSetIf, &key)?;
        let value = CheckedValue::new(&key, &value)?;
        self.authority.writes.charge(value.bytes() as u64)?;
        self.charged(|kv, charge| kv::set_if(kv, charge, &value, revision.as_deref()))
    }

    fn delete(&mut self, key: String) -> Result<bool, GuestError> {
        self.decide_key(Action::KvDelete, &key)?;
        self.charged(|kv, charge| kv::delete(kv, charge, &key))
    }

    fn list(&mut self, prefix: String) -> Result<Vec<String>, GuestError> {
        kv::check_prefix(&prefix)?;
        self.authority
            .check(Action::KvList, &Resource::Key(prefix.clone()))?;
        Ok(kv::list_all(
            self.authority.peer.kv.as_ref(),
            &prefix,
            self.deadline,
        )?)
    }

    fn list_page(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<Page, GuestError> {
        kv::check_prefix(&prefix)?;
        self.authority
            .check(Action::KvList, &Resource::Key(prefix.clone()))?;
        let page = kv::list_page(
            self.authority.peer.kv.as_ref(),
            &prefix,
            cursor.as_deref(),
            limit as usize,
            self.deadline,
        )?;
        Ok(Page {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<String>>, GuestError> {
        batch(keys.len())?;
        for key in &keys {
            self.decide_key(Action::KvGetMany, key)?;
        }
        Ok(kv::get_many(self.authority.peer.kv.as_ref(), &keys)?)
    }

    fn set_many(&mut self, entries: Vec<(String, String)>) -> Result<(), GuestError> {
        batch(entries.len())?;
        // Every key is decided and every value checked before anything is
        // written: a denial or a bad value writes none.
        for (key, _) in &entries {
            self.decide_key(Action::KvSetMany, key)?;
        }
        let values = entries
            .iter()
            .map(|(key, value)| CheckedValue::new(key, value))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = values.iter().map(|v| v.bytes() as u64).sum();
        self.authority.writes.charge(bytes)?;
        self.charged(|kv, charge| kv::set_many(kv, charge, &values))
    }

    fn delete_many(&mut self, keys: Vec<String>) -> Result<u32, GuestError> {
        batch(keys.len())?;
        for key in &keys {
            self.decide_key(Action::KvDeleteMany, key)?;
        }
        self.charged(|kv, charge| kv::delete_many(kv, charge, &keys))
    }

    fn increment(&mut self, key: String, by: i64) -> Result<i64, GuestError> {
        self.decide_key(Action::KvIncrement, &key)?;
        // A counter is at most 20 bytes of text.
        self.authority.writes.charge(20)?;
        self.charged(|kv, charge| kv::increment(kv, charge, &key, by))
    }
}

/// Refuses a batch larger than [`kv::MAX_BATCH`] before any decision.
fn batch(count: usize) -> Result<(), GuestError> {
    if count > kv::MAX_BATCH {
        return Err(KvError::TooMany {
            count,
            limit: kv::MAX_BATCH,
        }
        .into());
    }
    Ok(())
}
