//! The `s3` backend: a peer's kv in an S3 bucket (or any S3-compatible
//! store), for state several workers share.
//!
//! Each key is one object, `<prefix>/kv/<hex of the key>` (hex keeps byte
//! order and prefixes), holding a header line (the owner, the revision)
//! and the JSON text. The usage ledger is `<prefix>/usage.json`.
//!
//! S3 has no transactions across objects. A transaction here is
//! optimistic: its reads remember each object's ETag, and its writes are
//! conditional puts on them (`If-Match`, or `If-None-Match: *` for a key
//! that was absent); a conflict runs the transaction again, up to
//! [`ATTEMPTS`] times. So a single-key operation (`set`, `set_if`,
//! `increment`, `delete`) is exact under concurrent writers at any number
//! of workers. A `*_many` write is not atomic against readers or a failure
//! half way: its keys land one by one. The ledger is updated after the
//! keys (compare-and-swap too), so quotas are checked against the usage as
//! the transaction began: concurrent writers at several workers may pass a
//! quota by what they write at the same moment. A revision is 128 random
//! bits written into the object, not its ETag.
//!
//! Credentials come from `credentials` (a TOML file outside the namespace
//! with `access_key_id`, `secret_access_key` and optionally
//! `session_token`), else from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`;
//! never from logic. Requests run on one small runtime of the process.

use super::{Charge, CheckedValue, Entry, KvBackend, KvError, Ledger, Page, Txn, Usage};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How many times a transaction runs before conflicts make it give up.
pub const ATTEMPTS: usize = 16;

/// Requests in flight at once when many keys are read or written.
const CONCURRENCY: usize = 32;

/// One request's time, retries included.
const REQUEST: Duration = Duration::from_secs(10);

/// `[storage.s3]` of a `peer.toml`.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Where in the bucket this peer's objects are; default `peers/<name>`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The endpoint, for an S3-compatible store (`http://127.0.0.1:9000`);
    /// default AWS's for the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region; default `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// A TOML file with the credentials, relative to the peer's directory;
    /// default: the environment.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

/// An entry as read, with its object's ETag; none for an absent key.
type Tagged = Option<(Entry, Option<String>)>;

/// A peer's kv store in S3.
pub struct S3Kv {
    store: Result<Arc<AmazonS3>, String>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Kv")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn failed(message: impl std::fmt::Display) -> KvError {
    KvError::Backend {
        backend: "s3",
        message: message.to_string(),
    }
}

/// The process's runtime for S3 requests (reqwest needs tokio).
fn runtime() -> Result<&'static tokio::runtime::Runtime, KvError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("peerhost-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| failed(format!("cannot start the S3 runtime: {e}")))
}

/// Runs `request` on the S3 runtime and waits for it, from any thread
/// (a tokio worker gives its place up while it waits).
pub(crate) fn block<T: Send + 'static>(
    request: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, KvError> {
    let runtime = runtime()?;
    let (send, receive) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = send.send(request.await);
    });
    crate::files::off_async(|| receive.recv()).map_err(|_| failed("the S3 request was lost"))
}

pub(crate) fn is_conflict(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// Refuses a prefix that is not plain path segments.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if prefix.is_empty()
        || prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || !s.chars().all(plain))
    {
        return Err(format!(
            "the S3 prefix {prefix:?} must be segments of [A-Za-z0-9._-] separated by `/`"
        ));
    }
    Ok(())
}

impl S3Kv {
    /// The store `config` names for peer `name` in `peer_dir`. What is
    /// wrong with it (no credentials, a bad prefix) is an error of every
    /// operation, and of [`KvBackend::check`].
    pub fn new(config: &S3Config, name: &str, peer_dir: &Path) -> S3Kv {
        let prefix = config
            .prefix
            .clone()
            .unwrap_or_else(|| format!("peers/{name}"));
        let store = check_prefix(&prefix).and_then(|()| build(config, peer_dir));
        S3Kv {
            store: store.map(Arc::new),
            bucket: config.bucket.clone(),
            prefix,
        }
    }

    /// Where the objects are: `s3://<bucket>/<prefix>`.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Deletes every object of the kv store (the values under `kv/`, a
    /// page of at most 1,000 at a time, and the ledger); answers how many
    /// were deleted. The namespace's objects under the same prefix (`fs/`)
    /// stay.
    pub fn remove_all(&self) -> Result<u64, KvError> {
        let store = self.store()?;
        let prefix = format!("{}/kv/", self.prefix);
        let mut removed = 0;
        let (ledger, path) = (store.clone(), self.ledger_path());
        match block(async move { ledger.head(&path).await })? {
            Ok(_) => {
                let (ledger, path) = (store.clone(), self.ledger_path());
                block(async move { ledger.delete(&path).await })?.map_err(failed)?;
                removed += 1;
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(failed(e)),
        }
        loop {
            let options = PaginatedListOptions {
                max_keys: Some(1000),
                ..Default::default()
            };
            let (lister, listed) = (store.clone(), prefix.clone());
            let page = block(async move { lister.list_paginated(Some(&listed), options).await })?
                .map_err(failed)?;
            if page.result.objects.is_empty() {
                return Ok(removed);
            }
            for object in page.result.objects {
                let store = store.clone();
                block(async move { store.delete(&object.location).await })?.map_err(failed)?;
                removed += 1;
            }
        }
    }

    fn store(&self) -> Result<Arc<AmazonS3>, KvError> {
        self.store.clone().map_err(failed)
    }

    fn key_path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/kv/{}", self.prefix, hex::encode(key)))
    }

    fn ledger_path(&self) -> ObjectPath {
        ObjectPath::from(format!("{}/usage.json", self.prefix))
    }

    /// The object at `path` and its ETag, if any.
    fn read(&self, path: ObjectPath) -> Result<Option<(String, Option<String>)>, KvError> {
        block(fetch(self.store()?, path))?.map_err(failed)
    }

    /// Writes `text` at `path` if it is still as read (`None`: absent);
    /// `Ok(false)` on a conflict.
    fn write(
        &self,
        path: ObjectPath,
        text: String,
        read: Option<Option<String>>,
    ) -> Result<bool, KvError> {
        block(put_object(self.store()?, path, Some(text), read))?.map_err(failed)
    }

    /// The entries under `keys` and their ETags, [`CONCURRENCY`] requests
    /// in flight.
    fn entries<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Tagged>, KvError> {
        let store = self.store()?;
        let paths: Vec<ObjectPath> = keys.iter().map(|k| self.key_path(k.as_ref())).collect();
        let texts = block(async move {
            futures::stream::iter(paths)
                .map(|path| fetch(store.clone(), path))
                .buffered(CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
        })?
        .map_err(failed)?;
        keys.iter()
            .zip(texts)
            .map(|(key, text)| match text {
                None => Ok(None),
                Some((text, e_tag)) => Ok(Some((parse(key.as_ref(), &text)?, e_tag))),
            })
            .collect()
    }

    fn entry(&self, key: &str) -> Result<Tagged, KvError> {
        match self.read(self.key_path(key))? {
            None => Ok(None),
            Some((text, e_tag)) => Ok(Some((parse(key, &text)?, e_tag))),
        }
    }

    fn ledger(&self) -> Result<(Ledger, Option<String>), KvError> {
        match self.read(self.ledger_path())? {
            None => Ok((Ledger::default(), None)),
            Some((text, e_tag)) => {
                let ledger = serde_json::from_str(&text)
                    .map_err(|e| failed(format!("the usage ledger is not readable: {e}")))?;
                Ok((ledger, e_tag))
            }
        }
    }
}

/// The object at `path` and its ETag, if any.
async fn fetch(
    store: Arc<AmazonS3>,
    path: ObjectPath,
) -> Result<Option<(String, Option<String>)>, object_store::Error> {
    match store.get(&path).await {
        Ok(result) => {
            let e_tag = result.meta.e_tag.clone();
            let bytes = result.bytes().await?;
            Ok(Some((String::from_utf8_lossy(&bytes).into_owned(), e_tag)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Puts `text` at `path` (none: deletes it) if it is still as read
/// (`Some(None)`: absent; `None`: whatever it is); `Ok(false)` on a
/// conflict.
async fn put_object(
    store: Arc<AmazonS3>,
    path: ObjectPath,
    text: Option<String>,
    read: Option<Option<String>>,
) -> Result<bool, object_store::Error> {
    let Some(text) = text else {
        store.delete(&path).await?;
        return Ok(true);
    };
    let mode = match read {
        None => PutMode::Overwrite,
        Some(None) => PutMode::Create,
        Some(Some(e_tag)) => PutMode::Update(UpdateVersion {
            e_tag: Some(e_tag),
            version: None,
        }),
    };
    match store
        .put_opts(
            &path,
            PutPayload::from(text.into_bytes()),
            PutOptions::from(mode),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn build(config: &S3Config, peer_dir: &Path) -> Result<AmazonS3, String> {
    // rustls needs one crypto provider for the process; another may be
    // installed already (then that one serves).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (key, secret, token) = match &config.credentials {
        Some(file) => {
            let path = peer_dir.join(file);
            let inside = ["data", "logic"]
                .iter()
                .any(|d| path.starts_with(peer_dir.join(d)));
            if inside
                || file
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(format!(
                    "the S3 credentials file {} must not be in the namespace or logic",
                    file.display()
                ));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the S3 credentials {}: {e}", path.display()))?;
            let c: Credentials = toml::from_str(&text)
                .map_err(|e| format!("the S3 credentials {}: {e}", path.display()))?;
            (c.access_key_id, c.secret_access_key, c.session_token)
        }
        None => match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(key), Ok(secret)) => (key, secret, std::env::var("AWS_SESSION_TOKEN").ok()),
            _ => {
                return Err("no S3 credentials: set `credentials` in [storage.s3], or \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    .to_owned());
            }
        },
    };
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(
            config
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".to_owned()),
        )
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: REQUEST,
            backoff: Default::default(),
        });
    if let Some(token) = token {
        builder = builder.with_token(token);
    }
    let mut options = ClientOptions::new()
        .with_timeout(REQUEST)
        .with_connect_timeout(Duration::from_secs(3));
    if let Some(endpoint) = &config.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
        options = options.with_allow_http(endpoint.starts_with("http://"));
    }
    builder
        .with_client_options(options)
        .build()
        .map_err(|e| format!("cannot use the S3 bucket `{}`: {e}", config.bucket))
}

/// An object's text as an entry: `<hex of the owner> <revision>\n<value>`.
fn parse(key: &str, text: &str) -> Result<Entry, KvError> {
    let corrupt = |reason: &str| KvError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let (header, value) = text.split_once('\n').ok_or_else(|| corrupt("no header"))?;
    let (owner, revision) = header
        .split_once(' ')
        .ok_or_else(|| corrupt("a bad header"))?;
    let owner = hex::decode(owner)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| corrupt("a badly encoded owner"))?;
    Ok(Entry {
        value: value.to_owned(),
        revision: revision.to_owned(),
        owner,
    })
}

fn object_text(entry: &Entry) -> String {
    format!(
        "{} {}\n{}",
        hex::encode(&entry.owner),
        entry.revision,
        entry.value
    )
}

fn new_revision() -> Result<String, KvError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| failed(format!("no randomness for a revision: {e}")))?;
    Ok(hex::encode(bytes))
}

struct S3Txn<'a> {
    kv: &'a S3Kv,
    charge: &'a Charge<'a>,
    ledger: Ledger,
    /// Each key read: its entry and ETag as read.
    read: HashMap<String, Tagged>,
    /// Each key written: its new entry, or none for a delete; in order.
    staged: Vec<(String, Option<Entry>)>,
    /// What the writes change in the ledger: (owner, bytes, added).
    counts: Vec<(String, u64, bool)>,
}

impl S3Txn<'_> {
    fn current(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some((_, staged)) = self.staged.iter().rev().find(|(k, _)| k == key) {
            return Ok(staged.clone());
        }
        if !self.read.contains_key(key) {
            let entry = self.kv.entry(key)?;
            self.read.insert(key.to_owned(), entry);
        }
        Ok(self
            .read
            .get(key)
            .and_then(|e| e.as_ref())
            .map(|(e, _)| e.clone()))
    }

    fn count(&mut self, owner: &str, bytes: u64, add: bool) {
        self.ledger.count(owner, bytes, add);
        self.counts.push((owner.to_owned(), bytes, add));
    }
}

impl Txn for S3Txn<'_> {
    fn get(&mut self, key: &str) -> Result<Option<Entry>, KvError> {
        self.current(key)
    }

    fn put(&mut self, value: &CheckedValue<'_>) -> Result<String, KvError> {
        let key = value.key();
        let old = self.current(key)?;
        let counts = self.ledger.put(self.charge, old.as_ref(), value)?;
        self.counts.extend(counts);
        let owner = self.charge.owner;
        let revision = new_revision()?;
        let entry = Entry {
            value: value.value().to_owned(),
            revision: revision.clone(),
            owner: owner.to_owned(),
        };
        self.staged.push((key.to_owned(), Some(entry)));
        Ok(revision)
    }

    fn prefetch(&mut self, keys: &[&str]) -> Result<(), KvError> {
        let mut missing: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|key| !self.read.contains_key(*key))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for (key, entry) in missing.iter().zip(self.kv.entries(&missing)?) {
            self.read.insert((*key).to_owned(), entry);
        }
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool, KvError> {
        let Some(old) = self.current(key)? else {
            return Ok(false);
        };
        self.count(&old.owner, (key.len() + old.value.len()) as u64, false);
        self.staged.push((key.to_owned(), None));
        Ok(true)
    }
}

impl KvBackend for S3Kv {
    fn name(&self) -> &'static str {
        "s3"
    }

    /// Reads the ledger: the bucket answers, with these credentials.
    fn check(&self) -> Result<(), KvError> {
        self.ledger().map(|_| ())
    }

    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        super::check_key(key)?;
        Ok(self.entry(key)?.map(|(entry, _)| entry))
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, KvError> {
        for key in keys {
            super::check_key(key)?;
        }
        Ok(self
            .entries(keys)?
            .into_iter()
            .map(|entry| entry.map(|(entry, _)| entry))
            .collect())
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        _deadline: Instant,
    ) -> Result<Page, KvError> {
        let store = self.store()?;
        let dir = format!("{}/kv/", self.prefix);
        let raw_prefix = format!("{dir}{}", hex::encode(prefix));
        let offset = after.map(|after| format!("{dir}{}", hex::encode(after)));
        let mut keys = Vec::new();
        let mut token = None;
        // A page of S3 holds at most 1,000 keys: one or two requests.
        while keys.len() <= limit {
            let options = PaginatedListOptions {
                offset: offset.clone(),
                max_keys: Some(limit + 1 - keys.len()),
                page_token: token.take(),
                ..Default::default()
            };
            let (store, raw_prefix) = (store.clone(), raw_prefix.clone());
            let page =
                block(async move { store.list_paginated(Some(&raw_prefix), options).await })?
                    .map_err(failed)?;
            for object in page.result.objects {
                let name = object.location.as_ref();
                let key = name
                    .strip_prefix(&dir)
                    .and_then(|hex| hex::decode(hex).ok())
                    .and_then(|bytes| String::from_utf8(bytes).ok());
                if let Some(key) = key {
                    keys.push(key);
                }
            }
            match page.page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(Page::of(keys, limit))
    }

    fn usage(&self, owner: Option<&str>) -> Result<Usage, KvError> {
        let (ledger, _) = self.ledger()?;
        Ok(ledger.usage(owner))
    }

    fn owners(&self) -> Result<Vec<(String, Usage)>, KvError> {
        let (ledger, _) = self.ledger()?;
        Ok(ledger.into_owners())
    }

    fn transact(
        &self,
        charge: &Charge<'_>,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<(), KvError>,
    ) -> Result<(), KvError> {
        for _ in 0..ATTEMPTS {
            let (ledger, _) = self.ledger()?;
            let mut txn = S3Txn {
                kv: self,
                charge,
                ledger,
                read: HashMap::new(),
                staged: Vec::new(),
                counts: Vec::new(),
            };
            body(&mut txn)?;
            if txn.staged.is_empty() {
                return Ok(());
            }
            if !self.commit(&mut txn)? {
                continue;
            }
            return self.account(&txn.counts);
        }
        Err(failed(format!(
            "gave up after {ATTEMPTS} attempts: other writers kept changing the same keys"
        )))
    }
}

impl S3Kv {
    /// Writes a transaction's keys, each on the condition that it is as
    /// the transaction read it; `Ok(false)` on the first conflict.
    fn commit(&self, txn: &mut S3Txn<'_>) -> Result<bool, KvError> {
        // The last write of each key is what lands.
        let mut last: Vec<(String, Option<Entry>)> = Vec::new();
        for (key, entry) in txn.staged.drain(..) {
            last.retain(|(k, _)| *k != key);
            last.push((key, entry));
        }
        let writes: Vec<_> = last
            .into_iter()
            .map(|(key, entry)| {
                let read = txn
                    .read
                    .get(&key)
                    .cloned()
                    .flatten()
                    .map(|(_, e_tag)| e_tag);
                // A put is conditional on what was read; a delete is not.
                let condition = entry.as_ref().map(|_| read.flatten());
                (
                    self.key_path(&key),
                    entry.as_ref().map(object_text),
                    condition,
                )
            })
            .collect();
        let store = self.store()?;
        let landed = block(async move {
            futures::stream::iter(writes)
                .map(|(path, text, condition)| put_object(store.clone(), path, text, condition))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<bool>>()
                .await
        })?
        .map_err(failed)?;
        Ok(landed.into_iter().all(|landed| landed))
    }

    /// Applies `counts` to the ledger, compare-and-swap, retried.
    fn account(&self, counts: &[(String, u64, bool)]) -> Result<(), KvError> {
        for _ in 0..4 * ATTEMPTS {
            let (mut ledger, e_tag) = self.ledger()?;
            for (owner, bytes, add) in counts {
                ledger.count(owner, *bytes, *add);
            }
            let text = serde_json::to_string(&ledger).map_err(failed)?;
            if self.write(self.ledger_path(), text, Some(e_tag))? {
                return Ok(());
            }
        }
        Err(failed(
            "the usage ledger kept changing; the usage may be off",
        ))
    }
}
