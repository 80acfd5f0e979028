//! How the watches list: as a stream when the apiserver serves streaming lists (the `WatchList`
//! feature: on by default in Kubernetes 1.32 and from 1.34; off in 1.33), otherwise in pages.
//!
//! A streaming list sends the initial objects as watch events, one at a time, from the
//! apiserver's watch cache: no page is buffered whole (a Secret's metadata can be as large as
//! its data), and no round trip per page (10,000 inputs Secrets are 200 pages of 50). Whether
//! it is served is asked once per controller with a watch that matches nothing.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::watcher;

/// A label no object carries: the probe's watch lists nothing.
const PROBE_SELECTOR: &str = "tokensync.dev/list-probe=never";
/// The annotation of the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
/// How long the probe waits for that bookmark.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// How the watches list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lists {
    /// The apiserver streams the initial objects.
    Streaming,
    /// Paginated lists (`page_size` objects per page).
    Pages,
}

impl Lists {
    /// The watcher configuration to start from.
    pub fn config(self, page_size: u32) -> watcher::Config {
        match self {
            Lists::Streaming => watcher::Config::default().streaming_lists(),
            Lists::Pages => watcher::Config::default().page_size(page_size),
        }
    }
}

/// `Streaming` when a streaming list of `secrets` (a watch with `sendInitialEvents`) ends its
/// initial events with the bookmark that says so; `Pages` when the apiserver refuses it (the
/// feature gate is off) or ignores it (older than 1.27).
pub async fn probe(secrets: &Api<Secret>) -> Lists {
    let params = WatchParams::streaming_lists()
        .labels(PROBE_SELECTOR)
        .timeout(PROBE_WAIT.as_secs() as u32);
    let answered = async {
        let stream = secrets.watch(&params, "0").await.ok()?;
        let mut stream = std::pin::pin!(stream);
        match stream.next().await? {
            Ok(WatchEvent::Bookmark(bookmark)) => Some(
                bookmark
                    .metadata
                    .annotations
                    .get(INITIAL_EVENTS_END)
                    .is_some_and(|v| v == "true"),
            ),
            _ => Some(false),
        }
    };
    let streaming = tokio::time::timeout(PROBE_WAIT + Duration::from_secs(2), answered)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    if streaming {
        tracing::info!("the apiserver serves streaming lists: watches list as a stream");
        Lists::Streaming
    } else {
        tracing::info!("the apiserver does not serve streaming lists: watches list in pages");
        Lists::Pages
    }
}
