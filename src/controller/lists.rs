//! How the watches list: as a stream when the apiserver serves streaming lists (the `WatchList`
//! feature: on by default in Kubernetes 1.32 and from 1.34; off in 1.33), otherwise in pages.
//!
//! A streaming list sends the initial objects as watch events, one at a time, from the
//! apiserver's watch cache: no page is buffered whole (a Secret's metadata can be as large as
//! its data), and no round trip per page (10,000 inputs Secrets are 200 pages of 50). Whether
//! it is served is asked once at start with a watch that matches nothing. The credentials
//! and the inputs Secrets stream; the outputs and state Secrets are always listed in pages,
//! which are consistent reads (see cache.rs).

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use kube::runtime::watcher::{self, watcher};
use serde::de::DeserializeOwned;

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

/// A watch of `api` with `config` that lists as `lists` says (in pages of `page_size`). A
/// streaming list the apiserver refuses later (a 4xx to `sendInitialEvents`: an upgrade to 1.33,
/// or another apiserver of an HA control plane without the feature) ends the streaming watch
/// for good, and a watch that lists in pages takes over: it lists again (`Init`), as any
/// relist does.
pub fn watch<K>(
    api: Api<K>,
    lists: Lists,
    config: watcher::Config,
    page_size: u32,
) -> BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let pages = watcher(api.clone(), config.clone().page_size(page_size));
    match lists {
        Lists::Pages => pages.boxed(),
        Lists::Streaming => watcher(api, config.streaming_lists())
            .take_while(|event| {
                let refused = event.as_ref().err().is_some_and(streaming_refused);
                if refused {
                    tracing::warn!("the apiserver refused a streaming list; this watch lists in pages from now on");
                }
                futures::future::ready(!refused)
            })
            .chain(pages)
            .boxed(),
    }
}

/// Whether a watch error says the apiserver does not serve streaming lists: the request that
/// starts the watch is invalid to it (400, or 422 where the feature gate is off). Anything else
/// (RBAC, load, an expired version, an outage) the watch retries with backoff, as pages would.
fn streaming_refused(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) if matches!(status.code, 400 | 422)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn start_failed(code: u16) -> watcher::Error {
        let mut status = kube::core::Status::failure("no", "Invalid");
        status.code = code;
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn only_a_client_error_to_a_watch_start_ends_streaming() {
        assert!(streaming_refused(&start_failed(400)));
        assert!(streaming_refused(&start_failed(422)));
        for code in [401, 403, 404, 410, 429, 500, 503] {
            assert!(!streaming_refused(&start_failed(code)), "{code}");
        }
        let mut gone = kube::core::Status::failure("too old", "Expired");
        gone.code = 410;
        assert!(!streaming_refused(&watcher::Error::WatchError(Box::new(
            gone
        ))));
    }
}
