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
    reconcile_duration: Histogram,
    leader: Gauge,
    credentials: Arc<Credentials>,
}

/// The content type of [`Metrics::encode`]'s output: the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the reconcile duration: from a no-op reconcile (milliseconds) to one that waits
/// out a provider's request timeout (30 s by default).
const RECONCILE_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The refresh token's deadline of a credential only a person can renew once it passes (the
/// `authorization_code` and `refresh_token` grants, whose one-time input is spent), read from
/// `status.refreshTokenExpiresAt` when the status has that field.
fn person_renews_by(pc: &ProviderCredential) -> Option<i64> {
    use crate::crd::GrantType;
    let grant = pc.spec.oauth2.as_ref()?.grant_type;
    if !matches!(
        grant,
        GrantType::AuthorizationCode | GrantType::RefreshToken
    ) {
        return None;
    }
    let status = serde_json::to_value(pc.status.as_ref()?).ok()?;
    time_field(&status, "refreshTokenExpiresAt")
}

/// An RFC 3339 time at `field` of a JSON object, in Unix seconds.
fn time_field(v: &serde_json::Value, field: &str) -> Option<i64> {
    let t: jiff::Timestamp = v.get(field)?.as_str()?.parse().ok()?;
    Some(t.as_second())
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
            "credential_renewal_failures",
            "Failed attempts in a row since the last success (status.lastFailure.count); 0 while renewals succeed",
            None,
            MetricType::Gauge,
        )?;
        for pc in &pcreds {
            if let Some(status) = &pc.status {
                let failures = status.last_failure.as_ref().map_or(0, |f| f.count);
                ConstGauge::new(i64::from(failures)).encode(m.encode_family(&id(pc))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "credential_refresh_token_expiration_timestamp_seconds",
            "The time the refresh token of an authorization_code or refresh_token credential expires, in Unix seconds: after it, only a person can renew the token (with new inputs)",
            None,
            MetricType::Gauge,
        )?;
        for pc in &pcreds {
            if let Some(t) = person_renews_by(pc) {
                ConstGauge::new(t).encode(m.encode_family(&id(pc))?)?;
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
        let reconcile_duration = Histogram::new(RECONCILE_BUCKETS);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, token requests included",
            reconcile_duration.clone(),
        );
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
            reconcile_duration,
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

    /// A reconcile took `seconds` (token requests and Secret writes included).
    pub fn reconcile_duration(&self, seconds: f64) {
        self.reconcile_duration.observe(seconds);
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

    /// The OpenMetrics text format ([`CONTENT_TYPE`]), ending in `# EOF`.
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
    fn reconcile_durations_fill_the_histogram() {
        let m = Metrics::default();
        m.reconcile_duration(0.003);
        m.reconcile_duration(0.2);
        m.reconcile_duration(45.0);
        let text = m.encode();
        for series in [
            "# TYPE tokensync_reconcile_duration_seconds histogram",
            r#"tokensync_reconcile_duration_seconds_bucket{le="0.005"} 1"#,
            r#"tokensync_reconcile_duration_seconds_bucket{le="0.25"} 2"#,
            r#"tokensync_reconcile_duration_seconds_bucket{le="30.0"} 2"#,
            r#"tokensync_reconcile_duration_seconds_bucket{le="60.0"} 3"#,
            r#"tokensync_reconcile_duration_seconds_bucket{le="+Inf"} 3"#,
            "tokensync_reconcile_duration_seconds_count 3",
        ] {
            assert!(text.contains(series), "{series} not in {text}");
        }
        // the format the content type names
        assert!(CONTENT_TYPE.starts_with("application/openmetrics-text"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_refresh_deadline_is_exported_only_where_a_person_renews() {
        let status = serde_json::json!({"refreshTokenExpiresAt": "2026-11-26T10:00:00Z"});
        assert_eq!(
            time_field(&status, "refreshTokenExpiresAt"),
            Some(1_795_687_200)
        );
        assert_eq!(time_field(&status, "absent"), None);
        assert_eq!(
            time_field(&serde_json::json!({"t": "not a time"}), "t"),
            None
        );
        // a credential whose status has no such field exports no series
        let pc: ProviderCredential = serde_saphyr::from_str(
            r#"
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata: {name: pc, namespace: ns}
spec:
  inputs: {secretName: login}
  output: {secretName: token}
  oauth2: {tokenUrl: "https://a.example/token", grantType: authorization_code}
status:
  expiresAt: "2026-11-26T10:00:00Z"
"#,
        )
        .unwrap();
        assert_eq!(person_renews_by(&pc), None);
        let m = Metrics::default();
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(pc));
        let _guard = m.watch_store(store);
        let text = m.encode();
        assert!(
            text.contains(
                "# TYPE tokensync_credential_refresh_token_expiration_timestamp_seconds gauge"
            ),
            "{text}"
        );
        assert!(
            !text.contains("tokensync_credential_refresh_token_expiration_timestamp_seconds{"),
            "{text}"
        );
        // a status without lastFailure: renewals succeed
        assert!(
            text.contains(r#"tokensync_credential_renewal_failures{namespace="ns",name="pc"} 0"#),
            "{text}"
        );
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
