//! Events are published off the reconcile's path, as client-go's broadcaster does: a reconcile
//! queues its events and goes on; one worker publishes them in order, a few at a time. The
//! token and the status, what workloads and people depend on, never wait behind an Event write.
//! Events are best-effort in Kubernetes: when the queue is full (the apiserver far behind), an
//! event is dropped with a log line and counted rather than holding a renewal back.

use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;

/// Events waiting at most; beyond that new ones are dropped.
const QUEUE: usize = 20_000;
/// Event writes in flight at once.
const IN_FLIGHT: usize = 4;

pub struct Events {
    tx: mpsc::Sender<(Event, ObjectReference)>,
    rx: Mutex<Option<mpsc::Receiver<(Event, ObjectReference)>>>,
}

impl Events {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Start the worker that publishes through `recorder` (once; later calls do nothing).
    pub fn start(&self, recorder: Recorder) {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(rx) = rx else {
            return;
        };
        tokio::spawn(async move {
            tokio_stream_of(rx)
                .for_each_concurrent(IN_FLIGHT, |(event, reference)| {
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

    /// Queue an event (dropped, with a log line, when the queue is full).
    pub fn queue(&self, event: Event, reference: ObjectReference) {
        if let Err(e) = self.tx.try_send((event, reference)) {
            let (event, _) = match e {
                mpsc::error::TrySendError::Full(x) | mpsc::error::TrySendError::Closed(x) => x,
            };
            tracing::warn!(reason = %event.reason, "event queue full; event dropped");
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
