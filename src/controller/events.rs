//! Events are published off the reconcile's path, as client-go's broadcaster does: a reconcile
//! queues its events and goes on. The token and the status, what workloads and people depend
//! on, never wait behind an Event write. Events of one object go through one worker, in order
//! (the recorder patches a repeated event into a series, which must not race); a few workers
//! share the objects. Events are best-effort in Kubernetes: when a queue is full (the apiserver
//! far behind), an event is dropped with a log line rather than holding a renewal back. At
//! shutdown the queues are drained for a moment.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;

/// Events waiting at most, per worker; beyond that new ones are dropped.
const QUEUE: usize = 5_000;
/// Workers, each publishing one event at a time.
const WORKERS: usize = 4;

type Item = (Event, ObjectReference);

pub struct Events {
    txs: Vec<mpsc::Sender<Item>>,
    rxs: Mutex<Vec<mpsc::Receiver<Item>>>,
}

impl Events {
    pub fn new() -> Self {
        let (txs, rxs) = (0..WORKERS).map(|_| mpsc::channel(QUEUE)).unzip();
        Self {
            txs,
            rxs: Mutex::new(rxs),
        }
    }

    /// Start the workers, each publishing through a recorder of its own (once; later calls do
    /// nothing). A recorder keeps the events it published (for series) and sweeps all of them
    /// at every publish: one per worker sweeps a quarter, and an object's events all go
    /// through one worker, so its series stays whole.
    pub fn start(&self, recorder: impl Fn() -> Recorder) {
        let rxs = std::mem::take(&mut *self.rxs.lock().unwrap_or_else(|e| e.into_inner()));
        for mut rx in rxs {
            let recorder = recorder();
            tokio::spawn(async move {
                futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                    .for_each(|(event, reference)| {
                        let recorder = recorder.clone();
                        async move {
                            if let Err(error) = recorder.publish(&event, &reference).await {
                                tracing::warn!(%error, reason = %event.reason, "could not publish event");
                            }
                        }
                    })
                    .await;
            });
        }
    }

    /// Queue an event about `reference` (dropped, with a log line, when its queue is full).
    pub fn queue(&self, event: Event, reference: ObjectReference) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&reference.namespace, &reference.name).hash(&mut h);
        let shard = usize::try_from(h.finish() % WORKERS as u64).unwrap_or(0);
        if let Err(e) = self.txs[shard].try_send((event, reference)) {
            let (event, _) = match e {
                mpsc::error::TrySendError::Full(x) | mpsc::error::TrySendError::Closed(x) => x,
            };
            tracing::warn!(reason = %event.reason, "event queue full; event dropped");
        }
    }

    /// Wait until the queues are empty, at most `limit` (at shutdown).
    pub async fn drain(&self, limit: Duration) {
        let empty = || self.txs.iter().all(|tx| tx.capacity() == tx.max_capacity());
        let deadline = tokio::time::Instant::now() + limit;
        while !empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the last one taken may still be on its way
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}
