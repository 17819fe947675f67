//! Peer identities: Ed25519 keys and their `did:key` ids.
//!
//! A peer id is `did:key:z` + base58btc(`0xed 0x01` ‖ 32-byte public key):
//! self-certifying, so anyone holding an id can verify a signature made by
//! that peer with no central service. Secret keys live in
//! `keys/<name>.key` (mode 0600), are created once and never overwritten.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The principal of a request with no authenticated caller.
pub const ANONYMOUS: &str = "anonymous";

/// The multicodec prefix of an Ed25519 public key (`ed25519-pub`, varint 0xed).
const ED25519_PUB: [u8; 2] = [0xed, 0x01];

/// The prefix of every peer id.
pub const DID_KEY_PREFIX: &str = "did:key:z";

/// A peer's public identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(VerifyingKey);

/// Most bytes of a malformed id an error repeats (an id is 56).
pub const MAX_SHOWN: usize = 100;

/// Why a text is not a usable peer id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Not `did:key:z…` with base58btc.
    #[error("`{0}` is not a peer id: expected did:key:z6Mk… (Ed25519, base58btc)")]
    Syntax(String),
    /// Another key type than Ed25519.
    #[error("`{0}` is not an Ed25519 did:key")]
    KeyType(String),
    /// Not a point on the curve, or a low-order (weak) key that any
    /// signature could match.
    #[error("`{0}` holds an invalid or low-order Ed25519 key")]
    WeakKey(String),
}

impl PeerId {
    /// The public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.0
    }

    /// A peer id for `key`, refusing low-order keys.
    pub fn from_key(key: VerifyingKey) -> Result<PeerId, IdError> {
        if key.is_weak() {
            return Err(IdError::WeakKey(did_of(&key)));
        }
        Ok(PeerId(key))
    }

    /// Verifies `signature` over `message` with this id's key, strictly:
    /// non-canonical signatures and small-order components are refused.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

fn did_of(key: &VerifyingKey) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&ED25519_PUB);
    bytes.extend_from_slice(key.as_bytes());
    format!("{DID_KEY_PREFIX}{}", bs58::encode(bytes).into_string())
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&did_of(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<PeerId, IdError> {
        // The text comes from a client and reaches error messages and audit
        // lines: it is cut to MAX_SHOWN bytes there.
        let syntax = || {
            let mut shown = text.to_owned();
            crate::error::truncate_with_ellipsis(&mut shown, MAX_SHOWN);
            IdError::Syntax(shown)
        };
        let encoded = text.strip_prefix(DID_KEY_PREFIX).ok_or_else(syntax)?;
        // 34 bytes are at most 47 base58 characters: refuse anything longer
        // before decoding.
        if encoded.len() > 48 {
            return Err(syntax());
        }
        let bytes = bs58::decode(encoded).into_vec().map_err(|_| syntax())?;
        let Some(key) = bytes.strip_prefix(&ED25519_PUB[..]) else {
            return Err(IdError::KeyType(text.to_owned()));
        };
        let key: [u8; 32] = key.try_into().map_err(|_| syntax())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| IdError::WeakKey(text.to_owned()))?;
        PeerId::from_key(key)
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A peer's secret key: signs envelopes in the peer's name.
pub struct PeerKey {
    key: SigningKey,
    id: PeerId,
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A key file that cannot be created or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file exists already: keys are never overwritten.
    #[error("{0}: already exists; keys are never overwritten")]
    Exists(String),
    /// Reading, writing or the system's randomness failed.
    #[error("{path}: {message}")]
    Io {
        /// The key file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The file is not a peerhost key file.
    #[error("{path}: not a peerhost key file: {message}")]
    Malformed {
        /// The key file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    secret: String,
}

impl PeerKey {
    /// A fresh key from the system's randomness.
    pub fn generate() -> Result<PeerKey, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(PeerKey::from_seed(seed))
    }

    fn from_seed(seed: [u8; 32]) -> PeerKey {
        let key = SigningKey::from_bytes(&seed);
        // A key made from a seed is a hash of it: never of low order.
        let id = PeerId(key.verifying_key());
        PeerKey { key, id }
    }

    /// This key's public id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// The `id` the key file at `path` says it holds, read without deriving
    /// it from the secret (what [`PeerKey::load`] checks).
    pub fn read_id(path: &Path) -> Result<String, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let file: KeyFile = toml::from_str(&text).map_err(|e| KeyError::Malformed {
            path: shown,
            message: e.message().to_owned(),
        })?;
        Ok(file.id)
    }

    /// Loads the key file at `path`, checking that its `id` matches its secret.
    pub fn load(path: &Path) -> Result<PeerKey, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let malformed = |message: String| KeyError::Malformed {
            path: shown.clone(),
            message,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| malformed(e.message().to_owned()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(file.secret.trim(), &mut seed)
            .map_err(|e| malformed(format!("`secret` must be 64 hex digits: {e}")))?;
        let key = PeerKey::from_seed(seed);
        if key.id.to_string() != file.id {
            return Err(malformed(format!(
                "its `id` {} is not the id of its secret ({})",
                file.id, key.id
            )));
        }
        Ok(key)
    }

    /// Writes this key to a new file `path` readable by its owner only.
    /// An existing file is never overwritten.
    pub fn create_file(&self, path: &Path, peer: &str) -> Result<(), KeyError> {
        use std::io::Write;
        let shown = path.display().to_string();
        let io = |e: std::io::Error| KeyError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(shown.clone())
            } else {
                io(e)
            }
        })?;
        let text = format!(
            "# The secret key of peer `{peer}`. Whoever holds this file can act as the peer:\n\
             # keep it private (mode 0600) and only where the peer must sign.\n\
             id = \"{}\"\nsecret = \"{}\"\n",
            self.id,
            hex::encode(self.key.to_bytes())
        );
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// Who asked for an invocation, as the target peer sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated peer id; none for an unsigned request.
    pub id: Option<PeerId>,
    /// The principal name in the target's policy: the petname from its
    /// contacts, its own name, the id itself for an unknown peer, or
    /// `anonymous`.
    pub principal: String,
}

impl Caller {
    /// The caller of an unsigned request.
    pub fn anonymous() -> Caller {
        Caller {
            id: None,
            principal: ANONYMOUS.to_owned(),
        }
    }
}

/// Whether `name` can name a peer: 1 to 63 of `[a-z0-9_-]`, starting with a
/// letter or digit, and not the reserved `anonymous`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        && name != ANONYMOUS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_round_trips_and_starts_like_every_ed25519_did() {
        let key = PeerKey::from_seed([7; 32]);
        let text = key.id().to_string();
        assert!(text.starts_with("did:key:z6Mk"), "{text}");
        assert_eq!(text.parse::<PeerId>(), Ok(key.id()));
    }

    #[test]
    fn a_known_did_key_vector_parses() {
        // The Ed25519 example of the did:key method specification.
        let id = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
        assert_eq!(
            id.parse::<PeerId>().map(|p| p.to_string()),
            Ok(id.to_owned())
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let good = PeerKey::from_seed([1; 32]).id().to_string();
        for bad in [
            "",
            "did:key:",
            "did:web:example.com",
            "did:key:z0OIl",
            &good[..good.len() - 1],
            &format!("{good}1"),
        ] {
            assert!(bad.parse::<PeerId>().is_err(), "{bad}");
        }
        // A secp256k1 key (multicodec 0xe7).
        let mut other = vec![0xe7, 0x01];
        other.extend([2u8; 33]);
        let text = format!("did:key:z{}", bs58::encode(other).into_string());
        assert!(matches!(text.parse::<PeerId>(), Err(IdError::KeyType(_))));
    }

    #[test]
    fn low_order_keys_are_refused() {
        // The identity point (y = 1) has order 1: it would verify forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut bytes = ED25519_PUB.to_vec();
        bytes.extend(identity);
        let text = format!("did:key:z{}", bs58::encode(bytes).into_string());
        assert!(matches!(text.parse::<PeerId>(), Err(IdError::WeakKey(_))));
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/alice.key");
        let key = PeerKey::generate().expect("randomness");
        key.create_file(&path, "alice").expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read(&path).expect("read");
        let other = PeerKey::generate().expect("randomness");
        assert!(matches!(
            other.create_file(&path, "alice"),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(std::fs::read(&path).expect("read"), before);
        assert_eq!(PeerKey::load(&path).expect("load").id(), key.id());
    }

    #[test]
    fn a_key_file_whose_id_does_not_match_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        let b = PeerKey::from_seed([2; 32]);
        std::fs::write(
            &path,
            format!(
                "id = \"{}\"\nsecret = \"{}\"\n",
                b.id(),
                hex::encode([1u8; 32])
            ),
        )
        .expect("write");
        assert!(matches!(
            PeerKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn a_huge_malformed_id_is_cut_in_its_error() {
        let text = "x".repeat(1 << 20);
        let Err(e) = text.parse::<PeerId>() else {
            panic!("parsed")
        };
        assert!(
            e.to_string().len() < MAX_SHOWN + 100,
            "{} bytes",
            e.to_string().len()
        );
    }
}
