//! The ProviderCredential controller: wiring of watches, the reconcile steps and error policy.

mod cache;
mod events;
mod execute;
mod gather;
mod index;
pub mod lists;
mod output;
mod plan;
mod reconcile;
mod revoke;
mod state;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};

pub use gather::INPUTS_LABEL;
pub use index::{Dependents, OwnWrites};
pub use output::{MANAGED_BY_LABEL, MANAGER};
pub use reconcile::{FINALIZER, FORCE_REFRESH_ANNOTATION};

use crate::admin::Health;
use crate::crd::ProviderCredential;
use crate::metrics::Metrics;
use crate::providers::{self, Egress};
use crate::reason::Reason;

/// What the operator's flags set.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only these namespaces; all namespaces when empty.
    pub namespaces: Vec<String>,
    /// Allow plain-http token URLs (tests and the demo; never in production).
    pub allow_insecure_http: bool,
    /// Token hosts requests may go to (`*.example.com` for subdomains); any when empty.
    pub allowed_hosts: Vec<String>,
    /// Timeout of one HTTP request to a provider.
    pub request_timeout: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The name events are reported under.
    pub reporter: String,
    /// Attempts to revoke a replaced or deleted token before giving up with a Warning event.
    pub max_revoke_attempts: u32,
    /// Whether the controllers run only while holding a leader lease (for readiness).
    pub leader_election: bool,
    /// How the watches list; `None`: asked of the apiserver ([`lists::probe`]).
    pub lists: Option<lists::Lists>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            allow_insecure_http: false,
            allowed_hosts: Vec::new(),
            request_timeout: Duration::from_secs(30),
            concurrency: 4,
            reporter: "tokensync".into(),
            max_revoke_attempts: 5,
            leader_election: false,
            lists: None,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub http: reqwest::Client,
    pub egress: Egress,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub config: Config,
    pub slots: Slots,
    /// OIDC discovery documents, cached per issuer.
    pub discovery: providers::Discovery,
    /// Which credentials depend on which Secret.
    pub dependents: Dependents,
    /// The Secrets this controller wrote, at the version it wrote.
    pub own_writes: OwnWrites,
    /// The watched Secrets of each running controller.
    pub caches: Arc<cache::Caches>,
    /// Events waiting to be published (off the reconciles' path).
    pub events: events::Events,
}

/// Token requests running at once: new credentials and those whose last attempt failed have a
/// budget of their own, so a hung or failing provider never takes the slots renewals need.
pub struct Slots {
    pub renewals: tokio::sync::Semaphore,
    pub others: tokio::sync::Semaphore,
}

impl Slots {
    fn new(concurrency: u16) -> Self {
        let n = usize::from(concurrency.max(1));
        Self {
            renewals: tokio::sync::Semaphore::new(n),
            others: tokio::sync::Semaphore::new(n),
        }
    }
}

impl Context {
    pub fn new(client: Client, config: Config) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: providers::http_client(config.request_timeout, &[])?,
            client,
            egress: Egress {
                allow_insecure_http: config.allow_insecure_http,
                allowed_hosts: config.allowed_hosts.clone(),
            },
            metrics: Arc::default(),
            health: Arc::new(Health::new(config.leader_election)),
            slots: Slots::new(config.concurrency),
            discovery: providers::Discovery::default(),
            dependents: Dependents::default(),
            own_writes: OwnWrites::default(),
            caches: Arc::default(),
            events: events::Events::new(),
            config,
        })
    }

    /// A recorder of Events, reporting as this controller (and pod).
    fn new_recorder(&self) -> Recorder {
        Recorder::new(
            self.client.clone(),
            Reporter {
                controller: self.config.reporter.clone(),
                instance: std::env::var("POD_NAME").ok(),
            },
        )
    }

    /// An HTTP client that also trusts the CA certificates in `pem` (on top of the system roots).
    pub fn http_with_ca(&self, pem: &[u8]) -> Result<reqwest::Client, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the CA bundle is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("the CA bundle holds no PEM certificate".into());
        }
        providers::http_client(self.config.request_timeout, &certs).map_err(|e| e.to_string())
    }
}

/// Errors that reach the error policy: only talking to the apiserver fails this way; provider
/// failures are handled inside reconcile (a condition, an event and a backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the ProviderCredential has no namespace")]
    NoNamespace,
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("revocation of a token failed (attempt {attempts}); retrying")]
    RevocationPending { attempts: u32 },
    #[error("the ProviderCredential changed since it was read; reconciling it again")]
    Stale,
    #[error("Secret {0:?} exists and is not owned by this ProviderCredential")]
    NotOurs(String),
}

impl Error {
    /// The object changed since it was read (directly or inside the finalizer's reconcile).
    fn is_stale(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Stale => true,
            Error::Finalizer(e) => matches!(
                e.as_ref(),
                F::ApplyFailed(Error::Stale) | F::CleanupFailed(Error::Stale)
            ),
            _ => false,
        }
    }

    /// How long to wait before the next try.
    fn retry_after(&self) -> Duration {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::RevocationPending { attempts } => {
                Duration::try_from(crate::renewal::backoff(*attempts))
                    .unwrap_or(Duration::from_secs(5))
            }
            Error::Finalizer(e) => match e.as_ref() {
                F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner.retry_after(),
                _ => Duration::from_secs(5),
            },
            _ => Duration::from_secs(5),
        }
    }
}

fn error_policy(_pc: Arc<ProviderCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale() {
        // not a failure: the newer object is on its way through the watch
        tracing::debug!(%error, "stale view");
        return Action::requeue(Duration::from_secs(1));
    }
    tracing::warn!(%error, "reconcile failed; retrying");
    ctx.metrics.reconcile_error(
        match error {
            Error::RevocationPending { .. } => Reason::RevocationPending,
            _ => Reason::KubernetesAPI,
        }
        .as_str(),
    );
    Action::requeue(error.retry_after())
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What of a ProviderCredential triggers a reconcile when it changes: its spec (generation),
/// a forced renewal (annotation), deletion and finalizers. Not its status.
fn triggers(pc: &ProviderCredential) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pc.metadata.uid.hash(&mut h);
    pc.metadata.generation.hash(&mut h);
    pc.annotations().get(FORCE_REFRESH_ANNOTATION).hash(&mut h);
    pc.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    pc.finalizers().hash(&mut h);
    Some(h.finish())
}

/// How long a reconcile waits after its last trigger (see `run_one`).
const DEBOUNCE: Duration = Duration::from_secs(1);
/// ProviderCredentials per page when the watch lists in pages (kube's default; each is trimmed
/// of managedFields and last-applied copies once read).
const CREDENTIALS_PAGE: u32 = 500;

/// What the controller keeps of a ProviderCredential: not its managed fields nor a client-side
/// apply's copy of the whole object.
fn trim(pc: &mut ProviderCredential) {
    pc.metadata.managed_fields = None;
    pc.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Run the controllers (one per watched namespace, or one for all) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    ctx.events.start(|| ctx.new_recorder());
    let namespaces: Vec<Option<String>> = if ctx.config.namespaces.is_empty() {
        vec![None]
    } else {
        // one controller per namespace, even when a namespace is named twice
        let unique: std::collections::BTreeSet<&String> = ctx.config.namespaces.iter().collect();
        unique.into_iter().cloned().map(Some).collect()
    };
    ctx.health.starting(namespaces.len());
    // whether the apiserver serves streaming lists is its own property: asked once, in the
    // first watched scope (the operator's RBAC may be namespaced)
    let lists = match ctx.config.lists {
        Some(lists) => lists,
        None => {
            let scope = namespaces.first().cloned().flatten();
            lists::probe(&api(&ctx.client, scope.as_deref())).await
        }
    };
    futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| run_one(ctx.clone(), ns, lists, shutdown.clone())),
    )
    .await;
    // what the last reconciles queued still goes out (within the termination grace period)
    ctx.events.drain(Duration::from_secs(3)).await;
}

async fn run_one(
    ctx: Arc<Context>,
    ns: Option<String>,
    lists: lists::Lists,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pcreds: Api<ProviderCredential> = api(&ctx.client, ns.as_deref());
    // credentials that just became another's upstream are reconciled at once (see Dependents)
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let (store, writer) = reflector::store();
    let index_ctx = ctx.clone();
    let scope = ns.clone();
    let secrets: Api<Secret> = api(&ctx.client, ns.as_deref());
    // a credential read from a lagging watch cache is safe: a status written from it is applied
    // at the resourceVersion read (a 409 when older), and Secrets come from consistent lists
    let credentials = lists::watch(
        pcreds,
        lists,
        watcher::Config::default().any_semantic(),
        CREDENTIALS_PAGE,
    )
    .modify(trim)
    .map_ok(move |event| {
        for upstream in index_ctx.dependents.observe(scope.as_deref(), &event) {
            let _ = wake.unbounded_send(upstream);
        }
        event
    })
    .reflect(writer)
    .applied_objects()
    // a change of the status alone (our own writes) triggers nothing: the reconcile that
    // wrote it has planned its next wake
    .predicate_filter(triggers, Default::default());
    let controller = Controller::for_stream(credentials, store.clone()).reconcile_on(woken);
    let _store_guard = ctx.metrics.watch_store(store.clone());
    let health = ctx.health.clone();
    let synced = store.clone();
    tokio::spawn(async move {
        // Store::wait_until_ready registers one waker at a time, and the controller waits on the
        // same store, so poll again now and then: the first poll after the sync sees it ready.
        loop {
            let wait = synced.wait_until_ready();
            match tokio::time::timeout(Duration::from_millis(250), wait).await {
                Ok(Ok(())) => break health.synced_one(),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    });
    // reconciles that wait for a request slot hold no connection: allow more of them than
    // slots, so that reconciles with nothing to request are never stuck behind slow requests
    // A reconcile runs a moment after its last trigger (DEBOUNCE): the watch events of its
    // own last writes (output Secret, then status) arrive together, so the reconcile they
    // trigger sees the status it wrote, finds nothing to do and writes nothing.
    let config = kube::runtime::controller::Config::default()
        .concurrency(ctx.config.concurrency.saturating_mul(4))
        .debounce(DEBOUNCE);
    // Two label-selected watches of Secrets (see cache.rs): the outputs and state Secrets this
    // controller writes, and the opted-in inputs Secrets. They keep what reconciles read, and
    // map a changed or deleted Secret back to the credentials that depend on it (a lookup in
    // the index, not a scan). A Secret event carrying our own write maps to nothing.
    let (cache, [managed, inputs]) =
        cache::watch(secrets, lists, ns.clone(), store.clone(), ctx.clone());
    let _cache = ctx.caches.register(cache);
    let mapper = |ctx: Arc<Context>| {
        move |secret: Secret| {
            if ctx.own_writes.is_own(&secret) {
                return Vec::new();
            }
            let ns = secret.namespace().unwrap_or_default();
            ctx.dependents.of(&ns, &secret.name_any())
        }
    };
    controller
        .with_config(config)
        .watches_stream(managed, mapper(ctx.clone()))
        .watches_stream(inputs, mapper(ctx.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_map_back_to_the_credentials_that_use_them() {
        let pc: ProviderCredential = serde_saphyr::from_str(
            r#"
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata: {name: dronetag-pat, namespace: ns}
spec:
  inputs: {secretName: dronetag-login}
  output: {secretName: dronetag-pat-token}
  http:
    login: {url: "https://api.example/v2/pats/tokens"}
    upstream: {providerCredential: dronetag}
"#,
        )
        .unwrap();
        let d = Dependents::default();
        d.observe(None, &watcher::Event::Apply(pc));
        let hit = |name: &str| !d.of("ns", name).is_empty();
        assert!(hit("dronetag-login"));
        assert!(hit("dronetag-pat-token"));
        assert!(hit("dronetag-tokensync-state"));
        assert!(!hit("dronetag-pat-tokensync-state"));
        assert!(!hit("unrelated"));
        assert!(!d.of("other-ns", "dronetag-login").iter().any(|_| true));
    }

    #[test]
    fn the_kept_credential_drops_what_the_controller_never_reads() {
        let mut pc: ProviderCredential = serde_saphyr::from_str(
            r#"
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata:
  name: x
  annotations: {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "tokensync.dev/force-refresh": "now"}
  managedFields: [{manager: kubectl, operation: Apply}]
spec: {inputs: {secretName: i}, output: {secretName: o}}
"#,
        )
        .unwrap();
        trim(&mut pc);
        assert!(pc.metadata.managed_fields.is_none());
        assert_eq!(pc.annotations().len(), 1);
    }
}
