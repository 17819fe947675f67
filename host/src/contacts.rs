//! A peer's address book: `peers/<name>/contacts.toml` maps petnames, the
//! names the owner's policy uses, to peer ids and, for peers hosted by
//! another worker, that worker's URL.
//!
//! ```toml
//! [bob]
//! id = "did:key:z6Mk…"
//! url = "http://127.0.0.1:7071"   # optional: where bob's worker listens
//! ```

use crate::config::{DeploymentError, Validate, load_toml};
use crate::identity::PeerId;
use crate::identity::{ANONYMOUS, valid_name};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One entry of the address book.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// The contact's peer id.
    pub id: PeerId,
    /// The base URL of the worker hosting the contact, when it is not this one.
    #[serde(default)]
    pub url: Option<String>,
}

/// A peer's contacts, by petname and by id.
#[derive(Clone, Debug, Default)]
pub struct Contacts {
    by_name: BTreeMap<String, Contact>,
    by_id: HashMap<PeerId, String>,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct ContactsFile(BTreeMap<String, Contact>);

impl Validate for ContactsFile {
    fn validate(&self, path: &Path, text: &str) -> Result<(), DeploymentError> {
        let at = |needle: &str, message: String| {
            let offset = text.find(needle).unwrap_or(0);
            DeploymentError::at_offset(path, text, offset, message)
        };
        let mut seen: HashMap<PeerId, &str> = HashMap::new();
        for (name, contact) in &self.0 {
            if !valid_name(name) {
                return Err(at(
                    &format!("[{name}]"),
                    format!("`{name}` is not a valid petname: use 1 to 63 of a-z, 0-9, `-`, `_`"),
                ));
            }
            if let Some(url) = &contact.url
                && !["http://", "https://", "ws://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
            {
                let why = if url.starts_with("wss://") {
                    " (WebSocket over TLS is not built in: use ws:// behind a TLS proxy, or https://)"
                } else {
                    ""
                };
                return Err(at(
                    url,
                    format!("`{url}` is not an http://, https:// or ws:// URL{why}"),
                ));
            }
            if let Some(other) = seen.insert(contact.id, name) {
                return Err(at(
                    &format!("[{name}]"),
                    format!("`{name}` and `{other}` have the same id: one petname per peer"),
                ));
            }
        }
        Ok(())
    }
}

/// Names the host gives principals (and the strangers' shared usage
/// account, [`crate::quota::STRANGERS`]) itself, never a contact's petname.
pub const RESERVED_PETNAMES: [&str; 3] = [ANONYMOUS, "unauthenticated", crate::quota::STRANGERS];

impl Contacts {
    /// Loads `path`, the address book of peer `owner` (whose id is
    /// `owner_id`, when known); a missing file is an empty address book.
    ///
    /// A petname is a principal in the owner's policy: one equal to the
    /// owner's own name, or to a name the host gives principals itself,
    /// would hand that contact rights it was never granted, so it is
    /// refused; so is a contact carrying the owner's own id.
    pub fn load(
        path: &Path,
        owner: &str,
        owner_id: Option<&PeerId>,
    ) -> Result<Contacts, DeploymentError> {
        if !path.exists() {
            return Ok(Contacts::default());
        }
        let ContactsFile(by_name) = load_toml(path)?;
        Contacts::checked(path, by_name, owner, owner_id)
    }

    /// Contacts parsed from `text`, as [`Contacts::load`] checks them.
    pub fn parse(
        path: &Path,
        text: &str,
        owner: &str,
        owner_id: Option<&PeerId>,
    ) -> Result<Contacts, DeploymentError> {
        let file: ContactsFile = crate::config::parse_toml(path, text)?;
        file.validate(path, text)?;
        Contacts::checked(path, file.0, owner, owner_id)
    }

    fn checked(
        path: &Path,
        by_name: BTreeMap<String, Contact>,
        owner: &str,
        owner_id: Option<&PeerId>,
    ) -> Result<Contacts, DeploymentError> {
        for (petname, contact) in &by_name {
            if petname == owner || RESERVED_PETNAMES.contains(&petname.as_str()) {
                return Err(DeploymentError::file(
                    path,
                    format!(
                        "`[{petname}]` is the peer's own name or a name the host reserves ({}): rename the contact",
                        RESERVED_PETNAMES.join(", ")
                    ),
                ));
            }
            if Some(&contact.id) == owner_id {
                return Err(DeploymentError::file(
                    path,
                    format!("`[{petname}]` has the peer's own id: a peer is not its own contact"),
                ));
            }
        }
        let by_id = by_name
            .iter()
            .map(|(name, contact)| (contact.id, name.clone()))
            .collect();
        Ok(Contacts { by_name, by_id })
    }

    /// The contact called `petname`.
    pub fn get(&self, petname: &str) -> Option<&Contact> {
        self.by_name.get(petname)
    }

    /// The petname of `id`, if the owner knows it.
    pub fn petname(&self, id: &PeerId) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// Every contact, by petname.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Contact)> {
        self.by_name.iter().map(|(name, c)| (name.as_str(), c))
    }
}
