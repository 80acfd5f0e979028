//! Prometheus metrics. Counters and histograms are recorded as things happen; the
//! per-credential gauges (expiry, renewal, readiness, in the style of cert-manager's
//! `certmanager_certificate_expiration_timestamp_seconds`) are computed at scrape time from the
//! controllers' caches, so a deleted ProviderCredential leaves no stale series behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::ProviderCredential;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    token_requests: Family<Labels, Counter>,
    request_duration: Family<Labels, Histogram>,
    reconcile_errors: Family<Labels, Counter>,
    reconciles: Counter,
    leader: Gauge,
    credentials: Arc<Credentials>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The per-credential gauges, read from the running controllers' caches on each scrape.
#[derive(Default)]
struct Credentials {
    /// Each cache with the id of the [`StoreGuard`] that keeps it here.
    stores: Mutex<Vec<(u64, Store<ProviderCredential>)>>,
    next_id: AtomicU64,
}

impl Credentials {
    fn stores(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Store<ProviderCredential>)>> {
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps a controller's cache in the per-credential gauges until dropped: when its controller
/// stops (a standby, or the end of a leadership term), its credentials leave the metrics.
#[must_use = "the cache leaves the metrics when the guard is dropped"]
pub struct StoreGuard {
    credentials: Arc<Credentials>,
    id: u64,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        self.credentials.stores().retain(|(id, _)| *id != self.id);
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

impl prometheus_client::collector::Collector for Credentials {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pcreds: Vec<Arc<ProviderCredential>> =
            self.stores().iter().flat_map(|(_, s)| s.state()).collect();
        let id = |pc: &ProviderCredential| -> Labels {
            vec![
                ("namespace", pc.namespace().unwrap_or_default()),
                ("name", pc.name_any()),
            ]
        };
        let times = [
            (
                "credential_expiration_timestamp_seconds",
                "The time the current token expires, in Unix seconds",
                (|s: &crate::crd::ProviderCredentialStatus| s.expires_at.clone())
                    as fn(&crate::crd::ProviderCredentialStatus) -> _,
            ),
            (
                "credential_renewal_timestamp_seconds",
                "The time the controller will renew the token, in Unix seconds",
                |s| s.renew_at.clone(),
            ),
        ];
        for (name, help, field) in times {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for pc in &pcreds {
                if let Some(t) = pc.status.as_ref().and_then(field) {
                    let labels = id(pc);
                    ConstGauge::new(t.0.as_second()).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "credential_ready_status",
            "The Ready condition of each ProviderCredential (1 for its current status)",
            None,
            MetricType::Gauge,
        )?;
        for pc in &pcreds {
            let current = pc
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or("Unknown", |c| c.status.as_str());
            for condition in ["True", "False", "Unknown"] {
                let mut labels = id(pc);
                labels.push(("condition", condition.into()));
                ConstGauge::new(i64::from(condition == current))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokensync");
        let token_requests = Family::<Labels, Counter>::default();
        registry.register(
            "token_requests",
            "Token requests to providers, by provider kind and result",
            token_requests.clone(),
        );
        let request_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "token_request_duration_seconds",
            "Duration of token requests, by provider kind",
            request_duration.clone(),
        );
        let reconcile_errors = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by reason",
            reconcile_errors.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process holds the leader lease (or runs without election)",
            leader.clone(),
        );
        let credentials = Arc::new(Credentials::default());
        registry.register_collector(Box::new(credentials.clone()));
        Self {
            registry,
            token_requests,
            request_duration,
            reconcile_errors,
            reconciles,
            leader,
            credentials,
        }
    }
}

impl Metrics {
    /// A token request finished after `seconds` with `result` (`success` or a condition reason).
    pub fn token_request(&self, provider: &str, result: &str, seconds: f64) {
        let provider = ("provider", provider.to_string());
        self.token_requests
            .get_or_create(&vec![provider.clone(), ("result", result.to_string())])
            .inc();
        self.request_duration
            .get_or_create(&vec![provider])
            .observe(seconds);
    }

    pub fn reconcile_error(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Let the per-credential gauges read this controller's cache while the guard lives.
    pub fn watch_store(&self, store: Store<ProviderCredential>) -> StoreGuard {
        let id = self.credentials.next_id.fetch_add(1, Ordering::Relaxed);
        self.credentials.stores().push((id, store));
        StoreGuard {
            credentials: self.credentials.clone(),
            id,
        }
    }

    /// Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_encode() {
        let m = Metrics::default();
        m.token_request("oauth2", "success", 0.02);
        m.token_request("oauth2", "Unauthorized", 0.01);
        m.reconcile_error("InputsNotFound");
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains(
                r#"tokensync_token_requests_total{provider="oauth2",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tokensync_token_request_duration_seconds_count{provider="oauth2"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tokensync_reconcile_errors_total{reason="InputsNotFound"} 1"#),
            "{text}"
        );
        assert!(text.contains("tokensync_leader 1"), "{text}");
    }

    #[test]
    fn a_store_leaves_the_metrics_with_its_guard() {
        let pc: ProviderCredential = serde_saphyr::from_str(
            r#"
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata: {name: pc, namespace: ns}
spec:
  inputs: {secretName: login}
  output: {secretName: token}
  http:
    login: {url: "https://api.example/token"}
"#,
        )
        .unwrap();
        let series =
            r#"tokensync_credential_ready_status{namespace="ns",name="pc",condition="Unknown"} 1"#;
        let m = Metrics::default();
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(pc));
        let first = m.watch_store(store.clone());
        let second = m.watch_store(store);
        assert_eq!(m.encode().matches(series).count(), 2);
        drop(first);
        assert_eq!(m.encode().matches(series).count(), 1);
        drop(second);
        assert_eq!(m.encode().matches(series).count(), 0);
    }
}
