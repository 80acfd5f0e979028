//! The Secrets a reconcile reads, from memory instead of the apiserver: two label-selected
//! watches keep the Secrets this controller writes (`app.kubernetes.io/managed-by=tokensync`:
//! outputs and state) and the inputs Secrets their owners opted in (`tokensync.dev/inputs=true`).
//! A reconcile with nothing to do sends no request at all, and a new credential reads nothing
//! before its token request.
//!
//! What is kept, and what is not:
//! - only Secrets a credential names (the [`Dependents`] index), with at most
//!   [`MAX_CACHED_BYTES`] of data; anyone can label a Secret, so any other is kept as a stub
//!   without data, and read from the apiserver when a credential comes to name it;
//! - no `managedFields`, and of the annotations only tokensync's own (a client-side `kubectl
//!   apply` copies the whole Secret into an annotation);
//! - Secrets of every other kind are not watched at all. A CA bundle is read when a credential
//!   that names one is reconciled.
//!
//! Our own writes are read back at once: a write is kept in an overlay until the watch delivers
//! it (or a relist that began after it ends), so a reconcile never sees a state Secret older
//! than the one it wrote itself (a rotated refresh token presented twice is a dead session).

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
use super::output::{MANAGED_BY_LABEL, MANAGER};

/// Data kept per Secret at most; a larger Secret is read from the apiserver when needed.
pub const MAX_CACHED_BYTES: usize = 64 * 1024;
/// Marks a Secret kept without its data.
const STUB: &str = "tokensync.dev/cache-stub";
/// Secrets listed per page when a watch (re)lists: a page is held whole while it is read, and a
/// Secret's metadata can be as large as its data (client-side `kubectl apply` keeps a copy in
/// an annotation), so pages stay small.
const PAGE: u32 = 50;

/// (namespace, name)
type Key = (String, String);

/// What the cache knows of a Secret.
#[derive(Debug)]
pub enum Cached {
    /// Not there (as of the watch, and not written by us since).
    Absent,
    Present(Arc<Secret>),
    /// There, but kept without its data: read it from the apiserver.
    Unknown,
}

/// The watched Secrets of one controller (one namespace, or all).
#[derive(Clone)]
pub struct SecretCache {
    scope: Option<String>,
    managed: Store<Secret>,
    inputs: Store<Secret>,
    overlay: Arc<Overlay>,
    /// Whether each watch has listed (any number of reconciles may wait on it; a `Store`
    /// wakes one waiter only).
    listed: Arc<tokio::sync::watch::Sender<[bool; 2]>>,
}

impl SecretCache {
    /// Once both watches have listed.
    pub async fn wait_until_ready(&self) {
        let _ = self
            .listed
            .subscribe()
            .wait_for(|listed| listed.iter().all(|l| *l))
            .await;
    }

    /// The Secret `name` in `ns` as last written or watched.
    pub fn get(&self, ns: &str, name: &str) -> Cached {
        if let Some(written) = self.overlay.get(ns, name) {
            return Cached::Present(written);
        }
        let key = ObjectRef::new(name).within(ns);
        let found = self.managed.get(&key).or_else(|| self.inputs.get(&key));
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
        self.overlay.insert(s);
    }

    fn covers(&self, ns: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| s == ns)
    }
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

/// Our writes not yet delivered by the watch, each with the relist generation it was made in.
#[derive(Default)]
struct Overlay {
    inner: Mutex<OverlayInner>,
}

#[derive(Default)]
struct OverlayInner {
    written: HashMap<Key, (u64, Arc<Secret>)>,
    /// Writes so far (a sequence number for each).
    seq: u64,
    /// The sequence number when the relist in progress of each watch began.
    relists: [Option<u64>; 2],
}

impl Overlay {
    fn lock(&self) -> MutexGuard<'_, OverlayInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.lock()
            .written
            .get(&(ns.to_string(), name.to_string()))
            .map(|(_, s)| s.clone())
    }

    fn insert(&self, secret: Secret) {
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        inner.written.insert(key, (seq, Arc::new(secret)));
    }

    /// A watch event, after it reached the store: our write is in the store once the watch
    /// delivered its version, or the object is gone, or a relist begun after it has ended.
    fn observe(&self, watch: usize, event: &watcher::Event<Secret>) {
        let mut inner = self.lock();
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                let delivered = inner.written.get(&key).is_some_and(|(_, w)| {
                    w.resource_version().is_some() && w.resource_version() == s.resource_version()
                });
                if delivered {
                    inner.written.remove(&key);
                }
            }
            watcher::Event::Delete(s) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                inner.written.remove(&key);
            }
            watcher::Event::Init => {
                let seq = inner.seq;
                if let Some(slot) = inner.relists.get_mut(watch) {
                    *slot = Some(seq);
                }
            }
            watcher::Event::InitDone => {
                if let Some(began) = inner.relists.get_mut(watch).and_then(Option::take) {
                    inner.written.retain(|_, (seq, _)| *seq > began);
                }
            }
        }
    }
}

/// What is kept of a watched Secret: no managed fields, only tokensync's annotations, and the
/// data only when `keep_data`.
fn trim(secret: &mut Secret, keep_data: bool) {
    secret.metadata.managed_fields = None;
    if let Some(annotations) = secret.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("tokensync.dev/") && k != STUB);
    }
    if !keep_data {
        secret.data = None;
        secret.string_data = None;
        secret.annotations_mut().insert(STUB.into(), "true".into());
    }
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
    let listed = Arc::new(tokio::sync::watch::Sender::new([false; 2]));
    let one = |index: usize, selector: String, writer: reflector::store::Writer<Secret>| {
        let (api, credentials, ctx, overlay, listed) = (
            api.clone(),
            credentials.clone(),
            ctx.clone(),
            overlay.clone(),
            listed.clone(),
        );
        let config = watcher::Config::default().labels(&selector).page_size(PAGE);
        let secrets = watcher(api, config)
            .default_backoff()
            .modify(move |s: &mut Secret| {
                let named = !ctx
                    .dependents
                    .of(&s.namespace().unwrap_or_default(), &s.name_any())
                    .is_empty();
                trim(s, named && data_bytes(s) <= MAX_CACHED_BYTES);
            })
            .reflect(writer)
            .map_ok(move |event| {
                overlay.observe(index, &event);
                if matches!(event, watcher::Event::InitDone) {
                    listed.send_modify(|l| l[index] = true);
                }
                event
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
) -> kube::Result<Option<Secret>> {
    match cache.map(|c| c.get(ns, name)) {
        Some(Cached::Present(s)) => Ok(Some(Secret::clone(&s))),
        Some(Cached::Absent) if absent == IfAbsent::Absent => Ok(None),
        // served from the apiserver's watch cache, not etcd: a Secret that appears a moment
        // later meets a create that fails (409), and a changed one triggers a reconcile
        Some(_) => match secrets.get_with(name, &GetParams::any()).await {
            Ok(s) => Ok(Some(s)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        },
        // no cache (or reads that must be current): a quorum read
        None => secrets.get_opt(name).await,
    }
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
        s.metadata.resource_version = Some(rv.into());
        s
    }

    /// Our write is read back until the watch delivers it, whatever came before.
    #[test]
    fn a_write_is_read_back_until_the_watch_delivers_it() {
        let o = Overlay::default();
        o.insert(secret("x-tokensync-state", "7"));
        // an older event of the same Secret (delivered late) does not end it
        o.observe(0, &watcher::Event::Apply(secret("x-tokensync-state", "5")));
        assert_eq!(
            o.get("ns", "x-tokensync-state")
                .and_then(|s| s.resource_version()),
            Some("7".into())
        );
        assert!(o.get("other", "x-tokensync-state").is_none());
        o.observe(0, &watcher::Event::Apply(secret("x-tokensync-state", "7")));
        assert!(o.get("ns", "x-tokensync-state").is_none());
        // a deletion ends it too
        o.insert(secret("y", "9"));
        o.observe(1, &watcher::Event::Delete(secret("y", "10")));
        assert!(o.get("ns", "y").is_none());
    }

    /// A relist that began after a write holds it (the list is consistent); one that began
    /// before may not.
    #[test]
    fn a_relist_begun_after_a_write_ends_it() {
        let o = Overlay::default();
        o.insert(secret("before", "3"));
        o.observe(0, &watcher::Event::Init);
        o.insert(secret("during", "4"));
        o.observe(1, &watcher::Event::InitDone); // the other watch's relist: nothing ends
        assert!(o.get("ns", "before").is_some());
        o.observe(0, &watcher::Event::InitDone);
        assert!(o.get("ns", "before").is_none());
        assert!(o.get("ns", "during").is_some());
    }

    /// What is kept of a watched Secret: never managed fields or a kubectl copy; data only
    /// when asked, and a stub says it is missing.
    #[test]
    fn trimmed_secrets_keep_only_what_reconciles_read() {
        let mut s = secret("in", "1");
        s.metadata.annotations = Some(
            [
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                ("tokensync.dev/issued-at", "2026-01-01T00:00:00Z"),
                (STUB, "true"),
            ]
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
        assert!(s.annotations().contains_key(STUB));
    }
}
