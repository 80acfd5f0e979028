//! One reconcile: the finalizer around it, a panic kept to its own credential, and missing RBAC
//! reported on the object. The work itself is gather -> plan -> execute (`gather.rs`,
//! `plan.rs`, `execute.rs`); deletion revokes tokens (`revoke.rs`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, ResourceExt};
use tracing::{Instrument, error};

use super::execute::requeue_at;
use super::plan::{self, Failed};
use super::{Context, Error, status};
use crate::crd::ProviderCredential;
use crate::reason::Reason;
use crate::renewal;

/// Held while a ProviderCredential with a revoke request exists, so its tokens are revoked.
pub const FINALIZER: &str = "tokensync.dev/revoke";
/// A new value of this annotation renews the token at once (`tokensync refresh NAME`).
pub const FORCE_REFRESH_ANNOTATION: &str = "tokensync.dev/force-refresh";

pub async fn reconcile(pc: Arc<ProviderCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pc.namespace().ok_or(Error::NoNamespace)?;
    let span = tracing::info_span!("reconcile", namespace = %ns, credential = %pc.name_any());
    ctx.metrics.reconciled();
    let started = std::time::Instant::now();
    // a panic is a defect, but it stays with this credential: the others keep renewing
    let outcome = AssertUnwindSafe(with_finalizer(pc.clone(), &ctx, &ns))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    ctx.metrics
        .reconcile_duration(started.elapsed().as_secs_f64());
    let (reason, message) = match outcome {
        Err(_) => {
            error!(parent: &span, "reconcile panicked; retrying with backoff");
            (
                Reason::InternalError,
                "the reconcile panicked (a defect in tokensync; see the operator's log); retrying with backoff".to_string(),
            )
        }
        Ok(Err(e)) if forbidden(&e).is_some() => {
            // missing RBAC is the operator's misconfiguration, not a crash: say so on the object
            (Reason::Forbidden, forbidden(&e).unwrap_or_default())
        }
        Ok(other) => return other,
    };
    let r = Reconcile::new(pc.clone(), &ctx, &ns);
    r.fail_before_gather(Failed::new(reason, message))
        .instrument(span)
        .await
}

async fn with_finalizer(
    pc: Arc<ProviderCredential>,
    ctx: &Arc<Context>,
    ns: &str,
) -> Result<Action, Error> {
    let revocable = pc.spec.http.as_ref().is_some_and(|h| h.revoke.is_some());
    let has_finalizer = pc.finalizers().iter().any(|f| f == FINALIZER);
    if !revocable && !has_finalizer {
        return Reconcile::new(pc, ctx, ns).run_gated().await;
    }
    let api: Api<ProviderCredential> = Api::namespaced(ctx.client.clone(), ns);
    finalizer(&api, FINALIZER, pc, |event| async {
        match event {
            FinalizerEvent::Apply(pc) => Reconcile::new(pc, ctx, ns).run_gated().await,
            FinalizerEvent::Cleanup(pc) => Reconcile::new(pc, ctx, ns).cleanup().await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The apiserver's message when `error` is a 403.
fn forbidden(error: &Error) -> Option<String> {
    use kube::runtime::finalizer::Error as F;
    match error {
        Error::Kube(kube::Error::Api(s)) if s.code == 403 => Some(s.message.clone()),
        Error::Finalizer(f) => match f.as_ref() {
            F::ApplyFailed(e) | F::CleanupFailed(e) => forbidden(e),
            F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                if s.code == 403 =>
            {
                Some(s.message.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

pub(super) struct Reconcile<'a> {
    pub(super) pc: Arc<ProviderCredential>,
    pub(super) ctx: &'a Context,
    pub(super) secrets: Api<Secret>,
}

impl<'a> Reconcile<'a> {
    fn new(pc: Arc<ProviderCredential>, ctx: &'a Context, ns: &str) -> Self {
        Self {
            pc,
            ctx,
            secrets: Api::namespaced(ctx.client.clone(), ns),
        }
    }

    /// A failure found before the inputs could be read (a 403, a panic) backs off before
    /// anything is tried again, unless the spec or a forced renewal changed since.
    async fn run_gated(&self) -> Result<Action, Error> {
        let now = renewal::now();
        let status = self.pc.status.clone().unwrap_or_default();
        let early = [Reason::Forbidden, Reason::InternalError];
        if let Some(f) = status::last_failure(&status)
            && early.iter().any(|r| {
                Some(r.as_str()) == status.last_failure.as_ref().map(|l| l.reason.as_str())
            })
            && f.source.generation == self.pc.metadata.generation.unwrap_or_default()
            && f.source.force_refresh == plan::source(&self.pc, None).force_refresh
            && now < f.next_attempt_at
        {
            return Ok(requeue_at(f.next_attempt_at, now));
        }
        self.run().await
    }

    /// Record a failure found before the snapshot was gathered.
    async fn fail_before_gather(&self, failed: Failed) -> Result<Action, Error> {
        let snap = super::gather::Snapshot {
            pc: self.pc.clone(),
            source: plan::source(&self.pc, None),
            output: None,
            inputs: None,
            inputs_opted_in: false,
            state_secret: None,
            upstream: None,
            http: Err((Reason::InternalError, String::new())),
            upstream_of_others: false,
        };
        self.fail(&snap, failed).await
    }
}
