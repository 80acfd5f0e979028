//! The Secrets a reconcile reads, from memory instead of the apiserver: two label-selected
//! watches keep the Secrets this controller writes (`app.kubernetes.io/managed-by=tokensync`:
//! outputs and state) and the inputs Secrets their owners opted in (`tokensync.dev/inputs=true`).
//! A reconcile with nothing to do sends no request at all.
//!
//! What is kept, and what is not:
//! - the data only of Secrets a credential reads (the [`Dependents`](super::Dependents) index:
//!   the Secrets it names and its own state), with at most [`MAX_CACHED_BYTES`] of data and
//!   [`MAX_CACHED_METADATA`] of metadata; anyone can label a Secret, so any other is kept as a
//!   stub (name, version, uid, controller owner, selector label) and read from etcd when needed;
//! - no `managedFields`, and of the annotations only the few tokensync reads (a client-side
//!   `kubectl apply` copies the whole Secret into an annotation);
//! - Secrets of every other kind are not watched at all. A CA bundle is read when a credential
//!   that names one is reconciled. A Secret missing from the cache that may be in the way (one
//!   that is not ours is not watched) is looked for at the apiserver's watch cache.
//!
//! Our own writes are read back at once: a write is kept in an overlay until the watch delivers
//! it or a later version, the Secret is deleted or recreated, or a relist that delivered it (or
//! began after it) ends, so a reconcile never sees a state Secret older than the one it wrote
//! itself (a rotated refresh token presented twice is a dead session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::GetParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::Context;
use super::gather::INPUTS_LABEL;
use super::lists::Lists;
use super::output::{MANAGED_BY_LABEL, MANAGER};

/// Data kept per Secret at most; a larger Secret is read from the apiserver when needed.
pub const MAX_CACHED_BYTES: usize = 64 * 1024;
/// Marks a Secret kept without its data.
const STUB: &str = "tokensync.dev/cache-stub";
/// Secrets listed per page when a watch (re)lists in pages (a streaming list has none): a page
/// is held whole while it is read, and a Secret's metadata can be as large as its data
/// (client-side `kubectl apply` keeps a copy in an annotation), so pages stay small.
const PAGE: u32 = 50;

/// (namespace, name)
type Key = (String, String);

/// What the cache knows of a Secret.
pub enum Cached {
    /// Not there (as of the watch, and not written by us since).
    Absent,
    Present(Arc<Secret>),
    /// There, but kept without its data: read it from the apiserver.
    Unknown,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the Secret's data
        match self {
            Cached::Absent => f.write_str("Absent"),
            Cached::Present(s) => write!(f, "Present({:?})", s.name_any()),
            Cached::Unknown => f.write_str("Unknown"),
        }
    }
}

/// The watched Secrets of one controller (one namespace, or all).
#[derive(Clone)]
pub struct SecretCache {
    scope: Option<String>,
    managed: Store<Secret>,
    inputs: Store<Secret>,
    overlay: Arc<Overlay>,
    /// Where each watch is (any number of reconciles may wait on it; a `Store` wakes one
    /// waiter only).
    listed: Arc<tokio::sync::watch::Sender<[Listing; 2]>>,
}

impl SecretCache {
    /// Whether the cache can be read: both watches have listed, and none has failed since.
    /// While it never listed, wait for it up to `wait`; once a watch has failed, not at all
    /// (reads go to the apiserver until it has listed again).
    pub async fn ready_within(&self, wait: std::time::Duration) -> bool {
        let ready = |l: &[Listing; 2]| l.iter().all(|l| *l == Listing::Listed);
        let mut rx = self.listed.subscribe();
        if rx.borrow().contains(&Listing::Failed) {
            return ready(&rx.borrow());
        }
        tokio::time::timeout(wait, rx.wait_for(ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The Secret `name` in `ns` as last written or watched.
    pub fn get(&self, ns: &str, name: &str) -> Cached {
        let key = ObjectRef::new(name).within(ns);
        let found = self
            .overlay
            .get(ns, name)
            .or_else(|| self.managed.get(&key))
            .or_else(|| self.inputs.get(&key));
        match found {
            None => Cached::Absent,
            Some(s) if s.annotations().contains_key(STUB) => Cached::Unknown,
            Some(s) => Cached::Present(s),
        }
    }

    /// Keep `written` (as the apiserver answered our write) until the watch delivers it.
    pub fn wrote(&self, written: &Secret) {
        let mut s = written.clone();
        trim(&mut s, true);
        let key = ObjectRef::new(&s.name_any()).within(&s.namespace().unwrap_or_default());
        self.overlay.insert(s, || self.managed.get(&key));
    }

    /// Forget our last write of a Secret: the apiserver has a newer version (a conflict).
    pub fn forget(&self, ns: &str, name: &str) {
        self.overlay.forget(ns, name);
    }

    fn covers(&self, ns: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| s == ns)
    }
}

/// Where a watch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    NotYet,
    Listed,
    /// Failed after it had listed; relisting.
    Failed,
}

/// The caches of the running controllers, by the namespace they watch (`None`: all).
#[derive(Default)]
pub struct Caches {
    inner: RwLock<Vec<SecretCache>>,
}

impl Caches {
    pub fn of(&self, ns: &str) -> Option<SecretCache> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.covers(ns))
            .cloned()
    }

    /// Register `cache` while the returned guard lives (one leadership term).
    pub fn register(self: &Arc<Self>, cache: SecretCache) -> Registered {
        let overlay = cache.overlay.clone();
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(cache);
        Registered {
            caches: self.clone(),
            overlay,
        }
    }
}

pub struct Registered {
    caches: Arc<Caches>,
    overlay: Arc<Overlay>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.caches
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !Arc::ptr_eq(&c.overlay, &self.overlay));
    }
}

/// Our writes (outputs and state, all selected by the managed watch) not yet in its store.
#[derive(Default)]
struct Overlay {
    inner: Mutex<OverlayInner>,
}

#[derive(Default)]
struct OverlayInner {
    written: HashMap<Key, Written>,
    /// Writes so far (a sequence number for each).
    seq: u64,
    /// The sequence number when the managed watch's relist in progress began.
    relist: Option<u64>,
}

struct Written {
    seq: u64,
    secret: Arc<Secret>,
    /// Delivered by a relist, which reaches the store when the relist ends.
    relisted: bool,
}

/// Whether an event's version is our write's or a later one. Resource versions are opaque to
/// clients, but the apiserver's are etcd revisions, numbers that only grow; a version that is
/// not a number counts as later (the entry ends, and the store is read).
fn at_or_after(event: Option<String>, ours: Option<String>) -> bool {
    match (event, ours) {
        (Some(e), Some(o)) => {
            e == o || !matches!((e.parse::<u64>(), o.parse::<u64>()), (Ok(e), Ok(o)) if e < o)
        }
        _ => true,
    }
}

/// Whether `event` (of the same name) is our write `ours`, a later version, or another object.
fn supersedes(event: &Secret, ours: &Secret) -> bool {
    at_or_after(event.resource_version(), ours.resource_version()) || event.uid() != ours.uid()
}

impl Overlay {
    fn lock(&self) -> MutexGuard<'_, OverlayInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.lock()
            .written
            .get(&(ns.to_string(), name.to_string()))
            .map(|w| w.secret.clone())
    }

    /// Keep `secret` unless the store already holds it or a later version (the watch can
    /// deliver a write before its response arrives). `stored` reads the store under the lock
    /// the watch takes after it updated the store.
    fn insert(&self, secret: Secret, stored: impl FnOnce() -> Option<Arc<Secret>>) {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let mut inner = self.lock();
        if stored().is_some_and(|s| {
            s.uid() == secret.uid() && at_or_after(s.resource_version(), secret.resource_version())
        }) {
            inner.written.remove(&key);
            return;
        }
        inner.seq += 1;
        let seq = inner.seq;
        let secret = Arc::new(secret);
        inner.written.insert(
            key,
            Written {
                seq,
                secret,
                relisted: false,
            },
        );
    }

    /// Forget what we wrote to a Secret (a conflict said the apiserver has a newer version).
    fn forget(&self, ns: &str, name: &str) {
        self.lock()
            .written
            .remove(&(ns.to_string(), name.to_string()));
    }

    /// An event of the managed watch, after it reached the store: an entry ends when the watch
    /// delivers its version or a later one, when the Secret is deleted, and when a relist that
    /// delivered it (or began after it) ends.
    fn observe(&self, event: &watcher::Event<Secret>) {
        let mut inner = self.lock();
        let key = |s: &Secret| (s.namespace().unwrap_or_default(), s.name_any());
        match event {
            watcher::Event::Apply(s) => {
                let k = key(s);
                if inner
                    .written
                    .get(&k)
                    .is_some_and(|w| supersedes(s, &w.secret))
                {
                    inner.written.remove(&k);
                }
            }
            watcher::Event::InitApply(s) => {
                if let Some(w) = inner.written.get_mut(&key(s))
                    && supersedes(s, &w.secret)
                {
                    w.relisted = true;
                }
            }
            watcher::Event::Delete(s) => {
                inner.written.remove(&key(s));
            }
            watcher::Event::Init => {
                inner.relist = Some(inner.seq);
            }
            watcher::Event::InitDone => {
                if let Some(began) = inner.relist.take() {
                    inner.written.retain(|_, w| w.seq > began && !w.relisted);
                }
            }
        }
    }
}

/// The annotations a reconcile reads from a Secret it wrote (see output.rs).
const KEPT_ANNOTATIONS: &[&str] = &[
    "tokensync.dev/provider-credential",
    "tokensync.dev/issued-at",
    "tokensync.dev/expires-at",
    "tokensync.dev/renew-at",
    "tokensync.dev/source",
    "tokensync.dev/fingerprint",
];
/// Metadata kept per Secret at most (labels, annotations, owners), beyond which it is a stub.
const MAX_CACHED_METADATA: usize = 8 * 1024;

/// What is kept of a watched Secret: no managed fields, no annotations but the few tokensync
/// reads; the data only when `keep_data`. A stub (no data) keeps only what maps it
/// to credentials: name, version, uid, the controller owner and the selector labels.
fn trim(secret: &mut Secret, keep_data: bool) {
    let meta = &mut secret.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, v| KEPT_ANNOTATIONS.contains(&k.as_str()) && v.len() <= 256);
    }
    if !keep_data || metadata_bytes(secret) > MAX_CACHED_METADATA {
        secret.data = None;
        secret.string_data = None;
        let meta = &mut secret.metadata;
        if let Some(labels) = meta.labels.as_mut() {
            labels.retain(|k, _| k == MANAGED_BY_LABEL || k == INPUTS_LABEL);
        }
        meta.owner_references = meta.owner_references.take().map(|refs| {
            refs.into_iter()
                .filter(|o| o.controller == Some(true))
                .take(1)
                .collect()
        });
        meta.annotations = Some([(STUB.to_string(), "true".to_string())].into());
        meta.finalizers = None;
    }
}

fn metadata_bytes(secret: &Secret) -> usize {
    let meta = &secret.metadata;
    let pairs = |m: &Option<std::collections::BTreeMap<String, String>>| -> usize {
        m.iter().flatten().map(|(k, v)| k.len() + v.len()).sum()
    };
    let owners: usize = meta
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.name.len() + o.kind.len() + o.api_version.len() + o.uid.len())
        .sum();
    let finalizers: usize = meta.finalizers.iter().flatten().map(String::len).sum();
    pairs(&meta.labels) + pairs(&meta.annotations) + owners + finalizers
}

fn data_bytes(secret: &Secret) -> usize {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len());
    let strings = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len());
    data.chain(strings).sum()
}

/// The two watches of one controller, started once `credentials` has listed (so that the index
/// knows which Secrets are named), and the cache they fill. Each stream yields the Secrets that
/// changed (or were deleted), for the controller to map to credentials.
pub fn watch(
    api: Api<Secret>,
    lists: Lists,
    scope: Option<String>,
    credentials: Store<crate::crd::ProviderCredential>,
    ctx: Arc<Context>,
) -> (
    SecretCache,
    [impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static; 2],
) {
    let (managed, managed_writer) = reflector::store();
    let (inputs, inputs_writer) = reflector::store();
    let overlay = Arc::new(Overlay::default());
    let listed = Arc::new(tokio::sync::watch::Sender::new([Listing::NotYet; 2]));
    let one = |index: usize, selector: String, writer: reflector::store::Writer<Secret>| {
        let (api, credentials, ctx, overlay, listed) = (
            api.clone(),
            credentials.clone(),
            ctx.clone(),
            overlay.clone(),
            listed.clone(),
        );
        let failed = listed.clone();
        // the outputs and state Secrets are listed consistently, in pages: a streaming list is
        // served from the apiserver's watch cache at whatever version it has, and a state
        // Secret older than the last one written (behind a lagging apiserver, after a leader
        // handover) would present a refresh token that has rotated already; the inputs
        // stream when the apiserver can (an older version of them is only a failed request)
        let lists = if index == 0 { Lists::Pages } else { lists };
        let config = watcher::Config::default().labels(&selector);
        let secrets = super::lists::watch(api, lists, config, PAGE)
            .default_backoff()
            .modify(move |s: &mut Secret| {
                let named = ctx
                    .dependents
                    .reads(&s.namespace().unwrap_or_default(), &s.name_any());
                trim(s, named && data_bytes(s) <= MAX_CACHED_BYTES);
            })
            .reflect(writer)
            .map_ok(move |event| {
                // our writes are all outputs and state Secrets: the managed watch's
                if index == 0 {
                    overlay.observe(&event);
                }
                if matches!(event, watcher::Event::InitDone) {
                    listed.send_modify(|l| l[index] = Listing::Listed);
                }
                event
            })
            .inspect_err(move |error| {
                // reads go to the apiserver until the watch has listed again
                failed.send_modify(|l| {
                    if l[index] == Listing::Listed {
                        l[index] = Listing::Failed;
                    }
                });
                tracing::warn!(%error, "the Secret watch failed; reading Secrets from the apiserver until it recovers");
            })
            .touched_objects();
        // nothing is listed before the credentials are (polled only from then on)
        futures::stream::once(async move {
            listed_once(&credentials).await;
            secrets
        })
        .flatten()
    };
    let streams = [
        one(0, format!("{MANAGED_BY_LABEL}={MANAGER}"), managed_writer),
        one(1, format!("{INPUTS_LABEL}=true"), inputs_writer),
    ];
    let cache = SecretCache {
        scope,
        managed,
        inputs,
        overlay,
        listed,
    };
    (cache, streams)
}

/// Once `store` has listed. `Store::wait_until_ready` wakes one waiter at a time and the
/// controller waits on the same store, so it is asked again now and then.
async fn listed_once<K: kube::Resource + Clone>(store: &Store<K>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(
        std::time::Duration::from_millis(250),
        store.wait_until_ready(),
    )
    .await
    .is_err()
    {}
}

/// The Secret `name` from the cache, or from the apiserver when the cache has it without data
/// (or does not have it and `absent` is [`IfAbsent::Ask`]).
pub async fn read(
    cache: Option<&SecretCache>,
    secrets: &Api<Secret>,
    ns: &str,
    name: &str,
    absent: IfAbsent,
) -> Result<Option<Secret>, super::Error> {
    Ok(match cache.map(|c| c.get(ns, name)) {
        Some(Cached::Present(s)) => Some(Secret::clone(&s)),
        Some(Cached::Absent) if absent == IfAbsent::Absent => None,
        // is a Secret that is not ours in the way? Served from the apiserver's watch cache,
        // not etcd: one that appears a moment later meets a create that fails (409)
        Some(Cached::Absent) => match secrets.get_with(name, &GetParams::any()).await {
            Ok(s) => Some(s),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(e) => return Err(e.into()),
        },
        // kept without data, or no cache (or reads that must be current): a quorum read
        Some(Cached::Unknown) | None => secrets.get_opt(name).await?,
    })
}

/// What a Secret missing from the cache means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfAbsent {
    /// It does not exist (a Secret the controller writes: every one carries the label).
    Absent,
    /// Ask the apiserver (an inputs Secret not opted in is not watched, but its absence and
    /// its missing label are different answers).
    Ask,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the Secrets themselves
        f.debug_struct("SecretCache")
            .field("scope", &self.scope)
            .field("managed", &self.managed.len())
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, rv: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some("ns".into());
        s.metadata.name = Some(name.into());
        s.metadata.uid = Some("u1".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    fn rv(o: &Overlay, name: &str) -> Option<String> {
        o.get("ns", name).and_then(|s| s.resource_version())
    }

    /// Our write is read back until the watch delivers it or a later version; an older event
    /// delivered late does not end it.
    #[test]
    fn a_write_is_read_back_until_the_watch_delivers_it() {
        let o = Overlay::default();
        o.insert(secret("x-tokensync-state", "7"), || None);
        o.observe(&watcher::Event::Apply(secret("x-tokensync-state", "5")));
        assert_eq!(rv(&o, "x-tokensync-state").as_deref(), Some("7"));
        assert!(o.get("other", "x-tokensync-state").is_none());
        o.observe(&watcher::Event::Apply(secret("x-tokensync-state", "7")));
        assert!(o.get("ns", "x-tokensync-state").is_none());
        // a later version (someone else's write after ours) ends it too
        o.insert(secret("out", "10"), || None);
        o.observe(&watcher::Event::Apply(secret("out", "12")));
        assert!(o.get("ns", "out").is_none());
        // so does a deletion, and a new object of the same name
        o.insert(secret("y", "9"), || None);
        o.observe(&watcher::Event::Delete(secret("y", "10")));
        assert!(o.get("ns", "y").is_none());
        o.insert(secret("z", "20"), || None);
        let mut recreated = secret("z", "3");
        recreated.metadata.uid = Some("u2".into());
        o.observe(&watcher::Event::Apply(recreated));
        assert!(o.get("ns", "z").is_none());
    }

    /// The watch may deliver our write before its response arrives: a write the store
    /// already holds is not kept (it would never be delivered again).
    #[test]
    fn a_write_the_store_already_holds_is_not_kept() {
        let o = Overlay::default();
        o.insert(secret("s", "8"), || Some(Arc::new(secret("s", "8"))));
        assert!(o.get("ns", "s").is_none());
        o.insert(secret("s", "9"), || Some(Arc::new(secret("s", "8"))));
        assert_eq!(rv(&o, "s").as_deref(), Some("9"));
        o.forget("ns", "s");
        assert!(o.get("ns", "s").is_none());
    }

    /// A relist reaches the store when it ends: what it delivered, and what was written before
    /// it began, end then, not before.
    #[test]
    fn a_relist_ends_what_it_delivered_when_it_is_done() {
        let o = Overlay::default();
        o.insert(secret("before", "3"), || None);
        o.observe(&watcher::Event::Init);
        o.insert(secret("during", "4"), || None);
        o.insert(secret("during-unlisted", "6"), || None);
        o.observe(&watcher::Event::InitApply(secret("during", "4")));
        assert_eq!(
            rv(&o, "during").as_deref(),
            Some("4"),
            "not in the store yet"
        );
        assert!(o.get("ns", "before").is_some());
        o.observe(&watcher::Event::InitDone);
        assert!(o.get("ns", "before").is_none());
        assert!(o.get("ns", "during").is_none());
        assert!(o.get("ns", "during-unlisted").is_some());
    }

    /// What is kept of a watched Secret: never managed fields or a kubectl copy; data only
    /// when asked; a stub says it is missing and keeps next to nothing.
    #[test]
    fn trimmed_secrets_keep_only_what_reconciles_read() {
        let mut s = secret("in", "1");
        s.metadata.annotations = Some(
            [
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                ("tokensync.dev/issued-at", "2026-01-01T00:00:00Z"),
                ("tokensync.dev/huge", "x"),
                (STUB, "true"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        s.metadata.labels = Some(
            [(INPUTS_LABEL, "true"), ("team", "a")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        s.metadata.managed_fields = Some(vec![Default::default()]);
        s.data = Some([("password".to_string(), ByteString(b"p".to_vec()))].into());
        let mut kept = s.clone();
        trim(&mut kept, true);
        assert!(kept.metadata.managed_fields.is_none());
        assert_eq!(
            kept.annotations().keys().collect::<Vec<_>>(),
            ["tokensync.dev/issued-at"],
            "a stub marker set by anyone else is not believed either"
        );
        assert_eq!(data_bytes(&kept), "password".len() + 1);
        trim(&mut s, false);
        assert!(s.data.is_none());
        assert_eq!(s.annotations().keys().collect::<Vec<_>>(), [STUB]);
        assert_eq!(s.labels().keys().collect::<Vec<_>>(), [INPUTS_LABEL]);
        // metadata beyond the cap makes a stub too (anyone can label a Secret)
        let mut big = secret("big", "1");
        big.metadata.labels = Some(
            (0..200)
                .map(|i| (format!("l{i}"), "v".repeat(60)))
                .collect(),
        );
        big.data = Some([("k".to_string(), ByteString(b"v".to_vec()))].into());
        trim(&mut big, true);
        assert!(big.data.is_none() && big.annotations().contains_key(STUB));
    }

    #[test]
    fn versions_compare_as_etcd_revisions() {
        let v = |s: &str| Some(s.to_string());
        assert!(at_or_after(v("10"), v("9")));
        assert!(at_or_after(v("9"), v("9")));
        assert!(!at_or_after(v("9"), v("10")));
        assert!(at_or_after(v("opaque"), v("10")));
    }
}
