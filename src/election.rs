//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): with several
//! replicas, only the holder of the lease runs the controllers. A replica that loses the lease
//! stops its controllers (in-flight reconciles finish) and stands by. If the controllers end on
//! their own while leading (a panic), the replica releases the lease and exits with an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info, warn};

use crate::controller::{self, Context};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a lease lasts without renewal: the longest a dead leader's lease blocks others.
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

/// Resolves when the controllers of a leadership term must stop.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// The controllers ended while this replica led: it released the lease to a standby.
    #[error("the controllers {0} while leading")]
    ControllersEnded(&'static str),
}

/// How a leadership term ended.
enum TermEnd {
    Shutdown,
    LostLease,
    /// The controllers ended on their own (the spawned task's result).
    Controllers(Result<(), tokio::task::JoinError>),
}

/// Run the controllers while this process holds the lease, until `shutdown` resolves. Returns
/// an error if the controllers end on their own (a panic, or the run future returning): the
/// lease is released so that a standby takes over, and the process should exit.
pub async fn run(
    ctx: Arc<Context>,
    lease: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    run_with(ctx, lease, shutdown, controller::run).await
}

/// [`run`] with `start` in place of [`controller::run`]: it runs the controllers of one term
/// until its `Stop` resolves (tests pass a stand-in).
pub async fn run_with<C>(
    ctx: Arc<Context>,
    lease: LeaseConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    start: impl Fn(Arc<Context>, Stop) -> C,
) -> Result<(), Error>
where
    C: Future<Output = ()> + Send + 'static,
{
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    let shutdown = shutdown.shared();
    let result = loop {
        tokio::select! {
            _ = shutdown.clone() => break Ok(()),
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break Ok(()) },
        }
        info!(identity = %lease.identity, lease = %lease.name, "leading: starting the controllers");
        ctx.health.set_leading(true);
        ctx.metrics.set_leader(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut controllers = tokio::spawn(start(
            ctx.clone(),
            Box::pin(async {
                let _ = stopped.await;
            }),
        ));
        let end = tokio::select! {
            ended = &mut controllers => TermEnd::Controllers(ended),
            _ = shutdown.clone() => TermEnd::Shutdown,
            // (an error: the lease watch itself ended; stop as on shutdown)
            changed = leading.wait_for(|l| !*l) => match changed {
                Ok(_) => TermEnd::LostLease,
                Err(_) => TermEnd::Shutdown,
            },
        };
        if !matches!(end, TermEnd::Controllers(_)) {
            let _ = stop.send(());
            let _ = controllers.await;
        }
        ctx.health.set_leading(false);
        ctx.metrics.set_leader(false);
        match end {
            TermEnd::LostLease => {
                warn!(identity = %lease.identity, "lost the lease: controllers stopped, standing by");
            }
            TermEnd::Shutdown => {
                info!(identity = %lease.identity, "shutting down: controllers stopped");
                break Ok(());
            }
            TermEnd::Controllers(ended) => {
                // nothing renews tokens any more: not ready, and the lease goes to a standby
                ctx.health.set_failed();
                let how = match ended {
                    Ok(()) => "returned",
                    Err(e) if e.is_panic() => "panicked",
                    Err(_) => "were cancelled",
                };
                error!(identity = %lease.identity, "the controllers {how} while leading: releasing the lease");
                break Err(Error::ControllersEnded(how));
            }
        }
    };
    // hand the lease over at once instead of letting it expire
    drop(leading);
    if let Ok(Ok(manager)) = task.await {
        manager.release().await?;
    }
    result
}
