//! Envelopes: the signed wire form of an invocation between peers.
//!
//! On the wire an envelope is a JSON object (`POST /v1/envelopes`); what is
//! signed is not that JSON but a canonical byte string built from its fields
//! (see [`Envelope::signed_bytes`]): a domain tag, then every field in a fixed
//! order, each length-prefixed, so that no two envelopes share signed bytes.
//! The body (a script, or a function's name) is signed through its SHA-256,
//! which the audit log records as the script's provenance.
//!
//! [`Envelope::open`] checks, in order: size, syntax, version, ids (valid
//! Ed25519, not low-order), body hash, the signature (`verify_strict`), and
//! the validity window (issued-at at most [`CLOCK_SKEW`] in the future,
//! not expired, at most [`MAX_LIFETIME`] long). Replays are refused by a
//! [`crate::replay::ReplayGuard`], which remembers each nonce on disk until
//! its envelope expires.

use crate::error::{ErrorKind, InvocationError};
use crate::identity::{PeerId, PeerKey};
use crate::invocation::Invocation;
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The envelope format this host speaks.
pub const VERSION: u32 = 1;

/// Largest envelope accepted, in bytes of JSON.
pub const MAX_ENVELOPE: usize = 1 << 20;

/// How far in the future an envelope's issued-at may be (clocks differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Longest validity window an envelope may claim; nonces are remembered this long.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// Validity window of the envelopes this host signs.
pub const LIFETIME: Duration = Duration::from_secs(60);

const DOMAIN: &[u8] = b"peerhost-envelope\0";

/// Call of a function or delegated script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `body` is a Rhai script, `params` bound as `params`.
    Script,
    /// `body` is the name of an exported function, `params` its arguments.
    Call,
    /// `body` names one logic module to show, or is empty for all.
    Logic,
    /// `body` is a JSON object of logic modules, name to source: a push by the owner.
    LogicPush,
    /// `body` is the new `policy.cedar`: a push by the owner.
    PolicyPush,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Script => 1,
            Kind::Call => 2,
            Kind::Logic => 3,
            Kind::LogicPush => 4,
            Kind::PolicyPush => 5,
        }
    }
}

/// One signed invocation, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Format version, [`VERSION`].
    pub v: u32,
    /// The signer: the peer asking for the invocation.
    pub caller: String,
    /// The peer that is to run it.
    pub target: String,
    /// Script or call.
    pub kind: Kind,
    /// The script's source, or the function's name.
    pub body: String,
    /// SHA-256 of `body`, lowercase hex: what the signature covers.
    pub body_sha256: String,
    /// JSON text: the script's `params` or the call's arguments.
    pub params: String,
    /// How many delegations led to this one (0: sent by a person or a top-level invocation).
    pub depth: u32,
    /// 128 random bits, lowercase hex: refused if seen again before expiry.
    pub nonce: String,
    /// Milliseconds since the Unix epoch.
    pub issued_at: u64,
    /// Milliseconds since the Unix epoch; refused from then on.
    pub expires_at: u64,
    /// The W3C `traceparent` of the invocation that sent this one, if it
    /// is part of a trace (see [`crate::trace`]); signed when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Ed25519 signature of [`Envelope::signed_bytes`], lowercase hex.
    pub signature: String,
}

/// Why an envelope was refused. Nothing runs for a refused envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Over [`MAX_ENVELOPE`].
    #[error("the envelope is {0} bytes; the limit is {MAX_ENVELOPE}")]
    TooLarge(usize),
    /// Not an envelope: bad JSON, missing or unknown fields, bad hex.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Another format version.
    #[error("envelope version {0} is not supported (this host speaks {VERSION})")]
    Version(u32),
    /// The caller or target id is not a usable Ed25519 did:key.
    #[error("{0}")]
    BadId(String),
    /// The body does not hash to `body_sha256`.
    #[error("the body does not match its SHA-256")]
    BodyHash,
    /// The signature does not verify under the caller's key.
    #[error("the signature does not verify for caller {0}")]
    Signature(String),
    /// Issued further in the future than the clock skew allows.
    #[error("issued {0} ms in the future (allowed skew: {skew} s)", skew = CLOCK_SKEW.as_secs())]
    FutureDated(u64),
    /// Past its expiry.
    #[error("expired {0} ms ago")]
    Expired(u64),
    /// A validity window longer than [`MAX_LIFETIME`], or ending before it starts.
    #[error("the validity window is longer than {max} s or negative", max = MAX_LIFETIME.as_secs())]
    Lifetime,
    /// The nonce was seen before: a replay.
    #[error("nonce {0} was already used: replay refused")]
    Replayed(String),
    /// Too many envelopes in flight to remember one more nonce.
    #[error("too many envelopes in flight; retry later")]
    Busy,
    /// The replay records could not be read or written: refused, since
    /// nothing proves the envelope is new.
    #[error("cannot check for replay: {0}")]
    Storage(String),
    /// A push older than (or as old as) the last one accepted.
    #[error(
        "this {kind} was issued at {issued_at} ms, not after the last {kind} accepted ({last} ms): pushes are accepted once and in order"
    )]
    PushOutOfOrder {
        /// `logic.push` or `policy.push`.
        kind: String,
        /// When this push was issued (ms since the Unix epoch).
        issued_at: u64,
        /// When the last one accepted was.
        last: u64,
    },
}

impl From<EnvelopeError> for InvocationError {
    fn from(e: EnvelopeError) -> InvocationError {
        let kind = match e {
            EnvelopeError::TooLarge(_) | EnvelopeError::Busy => ErrorKind::Limit,
            EnvelopeError::Storage(_) => ErrorKind::Failed,
            _ => ErrorKind::Invalid,
        };
        InvocationError::new(kind, format!("envelope refused: {e}"))
    }
}

/// An envelope whose signature, hash and validity window were checked.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The authenticated caller.
    pub caller: PeerId,
    /// The target it was signed for.
    pub target: PeerId,
    /// What to run.
    pub invocation: Invocation,
    /// SHA-256 of the body.
    pub body_sha256: [u8; 32],
    /// Delegation depth.
    pub depth: u32,
    /// The nonce.
    pub nonce: [u8; 16],
    /// Issue time, milliseconds since the Unix epoch (the caller's clock).
    pub issued_at: u64,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at: u64,
    /// The sender's place in a trace, when it sent one.
    pub trace: Option<crate::trace::TraceContext>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A [`EnvelopeError::Malformed`], its message cut to
/// [`crate::error::MAX_FIELD`]: a parser's words may quote the client's
/// text (`invalid type: string "…"`), and they reach the audit line, the
/// trace and the answer.
fn malformed(message: String) -> EnvelopeError {
    let mut message = message;
    crate::error::truncate_with_ellipsis(&mut message, crate::error::MAX_FIELD);
    EnvelopeError::Malformed(message)
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], EnvelopeError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| {
        EnvelopeError::Malformed(format!("`{what}` must be {} lowercase hex digits", 2 * N))
    })?;
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(EnvelopeError::Malformed(format!(
            "`{what}` must be lowercase hex"
        )));
    }
    Ok(out)
}

/// The body and params of an invocation, as an envelope carries them.
pub fn body_and_params(invocation: &Invocation) -> (Kind, String, String) {
    let null = || "null".to_owned();
    match invocation {
        Invocation::Script { script, params } => (Kind::Script, script.clone(), params.to_string()),
        Invocation::Call { function, args } => (Kind::Call, function.clone(), args.to_string()),
        Invocation::ShowLogic { module } => {
            (Kind::Logic, module.clone().unwrap_or_default(), null())
        }
        Invocation::PushLogic { files } => {
            let files: serde_json::Map<String, Value> = files
                .iter()
                .map(|(name, source)| (name.clone(), Value::String(source.clone())))
                .collect();
            (Kind::LogicPush, Value::Object(files).to_string(), null())
        }
        Invocation::PushPolicy { text } => (Kind::PolicyPush, text.clone(), null()),
    }
}

/// SHA-256 of `body`.
pub fn sha256(body: &str) -> [u8; 32] {
    Sha256::digest(body.as_bytes()).into()
}

impl Envelope {
    /// Signs `invocation` by `key` for `target`, valid for [`LIFETIME`] from `now`.
    pub fn seal(
        key: &PeerKey,
        target: PeerId,
        invocation: &Invocation,
        depth: u32,
        now: SystemTime,
    ) -> Result<Envelope, getrandom::Error> {
        Envelope::seal_traced(key, target, invocation, depth, None, now)
    }

    /// [`Envelope::seal`], sent from `trace`, the sender's place in a
    /// trace: the target's invocation joins it.
    pub fn seal_traced(
        key: &PeerKey,
        target: PeerId,
        invocation: &Invocation,
        depth: u32,
        trace: Option<&crate::trace::TraceContext>,
        now: SystemTime,
    ) -> Result<Envelope, getrandom::Error> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)?;
        let (kind, body, params) = body_and_params(invocation);
        let issued_at = unix_ms(now);
        let mut envelope = Envelope {
            v: VERSION,
            caller: key.id().to_string(),
            target: target.to_string(),
            kind,
            body_sha256: hex::encode(sha256(&body)),
            body,
            params,
            depth,
            nonce: hex::encode(nonce),
            issued_at,
            expires_at: issued_at + LIFETIME.as_millis() as u64,
            traceparent: trace.map(crate::trace::TraceContext::traceparent),
            signature: String::new(),
        };
        envelope.signature = hex::encode(key.sign(&envelope.signed_bytes()).to_bytes());
        Ok(envelope)
    }

    /// The bytes the signature covers: a domain tag, then each field
    /// length-prefixed (u64, big-endian) in a fixed order, the body by its
    /// hash; the `traceparent`, when there is one, last (an envelope
    /// without one signs the same bytes as before it existed).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.params.len());
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&self.v.to_be_bytes());
        field(&mut out, self.caller.as_bytes());
        field(&mut out, self.target.as_bytes());
        out.push(self.kind.byte());
        field(&mut out, self.body_sha256.as_bytes());
        field(&mut out, self.params.as_bytes());
        out.extend_from_slice(&self.depth.to_be_bytes());
        field(&mut out, self.nonce.as_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.expires_at.to_be_bytes());
        if let Some(traceparent) = &self.traceparent {
            out.push(b't');
            field(&mut out, traceparent.as_bytes());
        }
        out
    }

    /// Parses an envelope from its JSON, refusing anything over [`MAX_ENVELOPE`].
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))
    }

    /// The caller id as claimed (not yet verified), for audit lines of refusals.
    pub fn claimed_caller(&self) -> &str {
        &self.caller
    }

    /// Checks everything but replay (see [`ReplayGuard`](crate::replay::ReplayGuard)) at time `now`.
    pub fn open(&self, now: SystemTime) -> Result<Opened, EnvelopeError> {
        if self.v != VERSION {
            return Err(EnvelopeError::Version(self.v));
        }
        let caller: PeerId = self
            .caller
            .parse()
            .map_err(|e| EnvelopeError::BadId(format!("caller: {e}")))?;
        let target: PeerId = self
            .target
            .parse()
            .map_err(|e| EnvelopeError::BadId(format!("target: {e}")))?;
        let body_sha256 = hex_array::<32>(&self.body_sha256, "body_sha256")?;
        let nonce = hex_array::<16>(&self.nonce, "nonce")?;
        let signature = Signature::from_bytes(&hex_array::<64>(&self.signature, "signature")?);
        if sha256(&self.body) != body_sha256 {
            return Err(EnvelopeError::BodyHash);
        }
        if !caller.verify(&self.signed_bytes(), &signature) {
            return Err(EnvelopeError::Signature(self.caller.clone()));
        }
        let now = unix_ms(now);
        if self.issued_at > now + CLOCK_SKEW.as_millis() as u64 {
            return Err(EnvelopeError::FutureDated(self.issued_at - now));
        }
        if self.expires_at <= now {
            return Err(EnvelopeError::Expired(now - self.expires_at));
        }
        if self.expires_at < self.issued_at
            || self.expires_at - self.issued_at > MAX_LIFETIME.as_millis() as u64
        {
            return Err(EnvelopeError::Lifetime);
        }
        let params: Value = serde_json::from_str(&self.params)
            .map_err(|e| malformed(format!("`params` is not JSON: {e}")))?;
        let trace = self
            .traceparent
            .as_deref()
            .map(crate::trace::TraceContext::parse)
            .transpose()
            .map_err(|e| malformed(e.to_string()))?;
        let invocation = match self.kind {
            Kind::Script => Invocation::Script {
                script: self.body.clone(),
                params,
            },
            Kind::Call => Invocation::Call {
                function: self.body.clone(),
                args: params,
            },
            Kind::Logic => Invocation::ShowLogic {
                module: (!self.body.is_empty()).then(|| self.body.clone()),
            },
            Kind::LogicPush => {
                let files: std::collections::BTreeMap<String, String> = serde_json::from_str(
                    &self.body,
                )
                .map_err(|e| {
                    malformed(format!(
                        "a logic push's body must be a JSON object of module name to source: {e}"
                    ))
                })?;
                Invocation::PushLogic {
                    files: files.into_iter().collect(),
                }
            }
            Kind::PolicyPush => Invocation::PushPolicy {
                text: self.body.clone(),
            },
        };
        Ok(Opened {
            caller,
            target,
            invocation,
            body_sha256,
            depth: self.depth,
            nonce,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            trace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> PeerKey {
        PeerKey::generate().expect("randomness")
    }

    fn script() -> Invocation {
        Invocation::Script {
            script: "kv::get(params.key)".into(),
            params: json!({"key": "public/motd"}),
        }
    }

    fn sealed(now: SystemTime) -> (PeerKey, PeerKey, Envelope) {
        let (alice, bob) = (key(), key());
        let envelope = Envelope::seal(&alice, bob.id(), &script(), 0, now).expect("seal");
        (alice, bob, envelope)
    }

    #[test]
    fn a_sealed_envelope_opens_through_json() {
        let now = SystemTime::now();
        let (alice, bob, envelope) = sealed(now);
        let wire = serde_json::to_vec(&envelope).expect("json");
        let opened = Envelope::from_json(&wire)
            .expect("parse")
            .open(now)
            .expect("open");
        assert_eq!(opened.caller, alice.id());
        assert_eq!(opened.target, bob.id());
        assert_eq!(opened.body_sha256, sha256("kv::get(params.key)"));
        assert!(matches!(opened.invocation, Invocation::Script { .. }));
    }

    /// Every field, changed by one character, makes the envelope refused.
    #[test]
    fn a_flipped_byte_in_any_field_is_refused() {
        let now = SystemTime::now();
        let (_, _, envelope) = sealed(now);
        let other = key();
        let flip = |text: &str| {
            let mut bytes = text.as_bytes().to_vec();
            let last = bytes.len() - 1;
            bytes[last] = if bytes[last] == b'a' { b'b' } else { b'a' };
            String::from_utf8(bytes).expect("ascii")
        };
        let mut cases: Vec<(&str, Envelope)> = Vec::new();
        let mut push = |name, change: &dyn Fn(&mut Envelope)| {
            let mut e = envelope.clone();
            change(&mut e);
            cases.push((name, e));
        };
        push("v", &|e| e.v += 1);
        push("caller", &|e| e.caller = other.id().to_string());
        push("target", &|e| e.target = other.id().to_string());
        push("kind", &|e| e.kind = Kind::Call);
        push("body", &|e| e.body.push(' '));
        push("body_sha256", &|e| e.body_sha256 = flip(&e.body_sha256));
        push("params", &|e| {
            e.params = r#"{"key":"private/diary"}"#.into()
        });
        push("depth", &|e| e.depth += 1);
        push("nonce", &|e| e.nonce = flip(&e.nonce));
        push("issued_at", &|e| e.issued_at -= 1);
        push("expires_at", &|e| e.expires_at += 1);
        push("signature", &|e| e.signature = flip(&e.signature));
        push("traceparent", &|e| {
            e.traceparent = Some(crate::trace::TraceContext::root().traceparent())
        });
        assert_eq!(cases.len(), 13);
        for (name, changed) in cases {
            assert!(
                changed.open(now).is_err(),
                "a changed `{name}` was accepted"
            );
        }
    }

    #[test]
    fn a_traceparent_is_signed_and_handed_to_the_target() {
        let now = SystemTime::now();
        let (alice, bob) = (key(), key());
        let trace = crate::trace::TraceContext::root();
        let envelope =
            Envelope::seal_traced(&alice, bob.id(), &script(), 1, Some(&trace), now).expect("seal");
        let opened = envelope.open(now).expect("open");
        let handed = opened.trace.expect("a trace");
        assert_eq!(
            (handed.trace_id, handed.span_id),
            (trace.trace_id, trace.span_id)
        );
        assert!(handed.remote, "it came in an envelope");
        // Changed or dropped, the signature no longer holds.
        let mut changed = envelope.clone();
        changed.traceparent = Some(trace.child().traceparent());
        assert!(matches!(
            changed.open(now),
            Err(EnvelopeError::Signature(_))
        ));
        let mut dropped = envelope.clone();
        dropped.traceparent = None;
        assert!(matches!(
            dropped.open(now),
            Err(EnvelopeError::Signature(_))
        ));
        // A malformed one, even signed, is refused.
        let mut bad = envelope;
        bad.traceparent = Some("00-xyz".into());
        bad.signature = hex::encode(alice.sign(&bad.signed_bytes()).to_bytes());
        assert!(matches!(bad.open(now), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn a_signature_by_another_key_is_a_forgery() {
        let now = SystemTime::now();
        let (alice, _, mut envelope) = sealed(now);
        let mallory = key();
        envelope.signature = hex::encode(mallory.sign(&envelope.signed_bytes()).to_bytes());
        assert_eq!(
            envelope.open(now).map(|_| ()),
            Err(EnvelopeError::Signature(alice.id().to_string()))
        );
    }

    #[test]
    fn low_order_and_unknown_keys_are_refused() {
        let now = SystemTime::now();
        let (_, _, mut envelope) = sealed(now);
        let mut identity = vec![0xed, 0x01, 1];
        identity.extend([0u8; 31]);
        envelope.caller = format!("did:key:z{}", bs58::encode(identity).into_string());
        // With the identity point as key, the all-zero-ish signature "R = identity, s = 0"
        // verifies under non-strict checking; the id itself is refused first.
        let mut forged = [0u8; 64];
        forged[0] = 1;
        envelope.signature = hex::encode(forged);
        assert!(matches!(envelope.open(now), Err(EnvelopeError::BadId(_))));
        envelope.caller = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".into();
        assert!(matches!(envelope.open(now), Err(EnvelopeError::BadId(_))));
    }

    #[test]
    fn expired_future_dated_and_overlong_envelopes_are_refused() {
        let now = SystemTime::now();
        let (alice, bob, _) = sealed(now);
        let at = |offset: i64| {
            if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs((-offset) as u64)
            }
        };
        let expired = Envelope::seal(&alice, bob.id(), &script(), 0, at(-120)).expect("seal");
        assert!(matches!(expired.open(now), Err(EnvelopeError::Expired(_))));
        let future = Envelope::seal(&alice, bob.id(), &script(), 0, at(120)).expect("seal");
        assert!(matches!(
            future.open(now),
            Err(EnvelopeError::FutureDated(_))
        ));
        let within_skew = Envelope::seal(&alice, bob.id(), &script(), 0, at(10)).expect("seal");
        assert!(within_skew.open(now).is_ok());
        let mut long = Envelope::seal(&alice, bob.id(), &script(), 0, now).expect("seal");
        long.expires_at = long.issued_at + MAX_LIFETIME.as_millis() as u64 + 1;
        long.signature = hex::encode(alice.sign(&long.signed_bytes()).to_bytes());
        assert_eq!(long.open(now).map(|_| ()), Err(EnvelopeError::Lifetime));
    }

    #[test]
    fn oversized_and_malformed_envelopes_are_refused() {
        let big = vec![b' '; MAX_ENVELOPE + 1];
        assert_eq!(
            Envelope::from_json(&big),
            Err(EnvelopeError::TooLarge(MAX_ENVELOPE + 1))
        );
        assert!(matches!(
            Envelope::from_json(b"{\"v\":1}"),
            Err(EnvelopeError::Malformed(_))
        ));
        let now = SystemTime::now();
        let (_, _, envelope) = sealed(now);
        let mut value = serde_json::to_value(&envelope).expect("json");
        value["extra"] = json!(1);
        assert!(matches!(
            Envelope::from_json(value.to_string().as_bytes()),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn class_7_a_parsers_words_quoting_the_body_are_cut() {
        let now = SystemTime::now();
        let (alice, _, mut envelope) = sealed(now);
        // A signed logic push whose body is a 600 KB string, not a map:
        // serde quotes the string whole in its error.
        envelope.kind = Kind::LogicPush;
        envelope.body = format!("\"{}\"", "b".repeat(600_000));
        envelope.body_sha256 = hex::encode(sha256(&envelope.body));
        envelope.signature = hex::encode(alice.sign(&envelope.signed_bytes()).to_bytes());
        match envelope.open(now) {
            Err(EnvelopeError::Malformed(message)) => {
                assert!(message.starts_with("a logic push's body"), "{message:.100}");
                assert!(
                    message.len() <= crate::error::MAX_FIELD + '…'.len_utf8()
                        && message.ends_with('…'),
                    "{} bytes",
                    message.len()
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
