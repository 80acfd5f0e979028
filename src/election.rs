//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): with several
//! replicas, only the holder of the lease runs the controllers. A replica that loses the lease
//! stops its controllers (in-flight reconciles finish) and stands by.

use std::sync::Arc;

use futures::FutureExt;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

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

/// Run the controllers while this process holds the lease, until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    lease: LeaseConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> kube_lease_manager::Result<()> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    let shutdown = shutdown.shared();
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        info!(identity = %lease.identity, lease = %lease.name, "leading: starting the controllers");
        ctx.health.set_leading(true);
        ctx.metrics.set_leader(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controllers = tokio::spawn(controller::run(ctx.clone(), async {
            let _ = stopped.await;
        }));
        let lost = tokio::select! {
            _ = shutdown.clone() => false,
            changed = leading.wait_for(|l| !*l) => changed.is_ok(),
        };
        let _ = stop.send(());
        let _ = controllers.await;
        ctx.health.set_leading(false);
        ctx.metrics.set_leader(false);
        if !lost {
            break;
        }
        warn!(identity = %lease.identity, "lost the lease: controllers stopped, standing by");
    }
    // hand the lease over at once instead of letting it expire
    drop(leading);
    if let Ok(Ok(manager)) = task.await {
        manager.release().await?;
    }
    Ok(())
}
