//! The ProviderCredential controller: wiring of watches, the reconcile steps and error policy.

mod output;
mod reconcile;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt, core::PartialObjectMeta};

pub use output::{ANNOTATION_PREFIX, MANAGED_BY_LABEL, MANAGER};
pub use status::{REASON_ISSUED, REASON_RENEWED};

use crate::crd::ProviderCredential;

/// What the operator's flags set.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Allow plain-http token URLs (tests and the demo; never in production).
    pub allow_insecure_http: bool,
    /// Timeout of one HTTP request to a provider.
    pub request_timeout: Duration,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The name events are reported under.
    pub reporter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            allow_insecure_http: false,
            request_timeout: Duration::from_secs(30),
            concurrency: 4,
            reporter: "tokensync".into(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub http: reqwest::Client,
    pub recorder: Recorder,
    pub config: Config,
}

impl Context {
    pub fn new(client: Client, config: Config) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokensync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: config.reporter.clone(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Ok(Self {
            client,
            http,
            recorder,
            config,
        })
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
}

fn error_policy(_pc: Arc<ProviderCredential>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
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

/// Run the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = ctx.config.namespace.as_deref();
    let pcreds: Api<ProviderCredential> = api(&ctx.client, ns);
    let secrets: Api<PartialObjectMeta<Secret>> = api(&ctx.client, ns);
    let controller = Controller::new(pcreds, watcher::Config::default().any_semantic());
    let store = controller.store();
    let config = kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency);
    controller
        .with_config(config)
        // One metadata-only watch over Secrets: an output Secret changed or deleted by hand, or an
        // inputs Secret created or changed, maps back to the ProviderCredentials naming it.
        .watches(secrets, watcher::Config::default(), move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|pc| {
                    pc.namespace() == ns
                        && (pc.spec.inputs.secret_name == name
                            || pc.spec.output.secret_name == name)
                })
                .map(|pc| ObjectRef::from_obj(&*pc))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
}
