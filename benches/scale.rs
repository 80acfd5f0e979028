//! The scale benchmark (issue 11): the operator binary against the local control plane and the
//! in-process fake vendor APIs, in one run:
//!
//! 1. `--unrelated` M Secrets of 100 KiB random data in the watched namespace that the operator
//!    neither owns nor references: half created plainly, half as client-side `kubectl apply`
//!    creates them (the whole object again in the `last-applied-configuration` annotation).
//! 2. `baseline_s`: a plain client, as concurrent as the controller, creating N output-sized
//!    Secrets and N status patches in a namespace the operator does not watch: the apiserver's
//!    write limit on this machine, measured in the same run. `floor_s`: the same client making
//!    the writes any correct operator must make for the cold sync's credentials (also the state
//!    Secret of each credential whose refresh token rotates, and one Event each), without the
//!    reads, token requests and watches; `floor_ratio` = floor / baseline is the best
//!    `cold_sync_ratio` possible, `cold_sync_over_floor` how far the operator is from it.
//! 3. `cold_sync_s`: N ProviderCredentials waiting (half Pix4D client credentials, half Dronetag
//!    password grant with rotating refresh tokens), the operator started, time until all are Ready.
//! 4. Steady state for `--steady-secs` with 60 s tokens: token requests, apiserver writes (from
//!    the apiserver's own /metrics), changes a watch sees, renewals per second, expired samples.
//! 5. A restart with every token valid (the tokens are made long-lived first): requests and
//!    writes in the 30 s after it, and the time until /readyz and N reconciles.
//! 6. The operator's peak and final RSS, and its CPU per 1000 renewals.
//!
//! Run it with `cargo xtask bench` (control plane, release build, this bench); directly:
//! `KUBECONFIG=... TOKENSYNC_BIN=target/release/tokensync cargo bench --bench scale -- --n 40`.
//! Flags: `--n 1000 --unrelated 2000 --out bench.json --steady-secs 300 --latency-ms 20`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use tokensync::crd::ProviderCredential;
use tokensync_fakes::{FakeProviders, Fault, Vendor};

const NS: &str = "tokensync-bench";
const BASELINE_NS: &str = "tokensync-bench-baseline";
const FIELD_MANAGER: &str = "tokensync-bench";
/// The label the operator puts on the Secrets it writes (src/controller/output.rs).
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=tokensync";
/// The expiry the operator records on an output Secret (src/controller/output.rs).
const EXPIRES_AT_ANNOTATION: &str = "tokensync.dev/expires-at";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// `tokensync run --concurrency 8` runs up to 4 x 8 reconciles at once.
const OPERATOR_CONCURRENCY: usize = 8;
const CLIENT_CONCURRENCY: usize = 4 * OPERATOR_CONCURRENCY;
const UNRELATED_CONCURRENCY: usize = 16;
const UNRELATED_BYTES: usize = 100 * 1024;
const STEADY_LIFETIME: u64 = 60;
/// Tokens issued before the restart live this long, so that no renewal falls into its window.
const LONG_LIFETIME: u64 = 3600;
const RESTART_WINDOW: Duration = Duration::from_secs(30);
const SAMPLES_PER_SECOND: usize = 20;
const VENDORS: [Vendor; 2] = [Vendor::Pix4d, Vendor::Dronetag];

type Res<T = ()> = Result<T, String>;

/// Errors as text with what was being done.
trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

#[derive(Debug)]
struct Args {
    n: usize,
    unrelated: usize,
    out: PathBuf,
    steady_secs: u64,
    latency_ms: u64,
}

impl Args {
    fn parse() -> Res<Self> {
        let mut args = Args {
            n: 1000,
            unrelated: 2000,
            out: target_dir().join("bench.json"),
            steady_secs: 300,
            latency_ms: 20,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            // cargo bench passes --bench to every bench binary
            if arg == "--bench" {
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let number = |v: String| -> Res<u64> {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag} {v:?}: a whole number"))
            };
            match flag.as_str() {
                "--n" => args.n = number(value()?)? as usize,
                "--unrelated" => args.unrelated = number(value()?)? as usize,
                "--out" => args.out = PathBuf::from(value()?),
                "--steady-secs" => args.steady_secs = number(value()?)?,
                "--latency-ms" => args.latency_ms = number(value()?)?,
                _ => {
                    return Err(format!(
                        "unknown argument {arg:?}; usage: scale [--n 1000] [--unrelated 2000] [--out bench.json] [--steady-secs 300] [--latency-ms 20]"
                    ));
                }
            }
        }
        if args.n == 0 {
            return Err("--n must be at least 1".into());
        }
        Ok(args)
    }
}

fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

fn operator_bin() -> PathBuf {
    std::env::var_os("TOKENSYNC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/tokensync"))
}

fn log(what: impl Display) {
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    eprintln!("[scale {now}] {what}");
}

/// xorshift64*: random bytes for the unrelated Secrets and random picks for the samples.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A base64url-looking string, e.g. a token of `len` characters.
    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|_| ALPHABET[(self.next() % 64) as usize] as char)
            .collect()
    }
}

// ------------------------------------------------------------------------------------ objects

fn pc_resource() -> ApiResource {
    ApiResource::erase::<ProviderCredential>(&())
}

fn pc_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &pc_resource())
}

fn output_name(i: usize) -> String {
    format!("bench-{i}-token")
}

/// The inputs Secret and the ProviderCredential `i`: even ones Pix4D client credentials (a new
/// grant per renewal), odd ones Dronetag's password grant (then refresh tokens, rotated).
fn credential(i: usize, ns: &str, base: &str) -> (Secret, DynamicObject) {
    let name = format!("bench-{i}");
    let inputs = format!("{name}-inputs");
    let mut values = BTreeMap::from([
        (
            "client_id".to_string(),
            tokensync_fakes::CLIENT_ID.to_string(),
        ),
        (
            "client_secret".to_string(),
            tokensync_fakes::CLIENT_SECRET.to_string(),
        ),
    ]);
    let oauth2 = if i.is_multiple_of(2) {
        json!({
            "tokenUrl": format!("{base}/pix4d/oauth2/token/"),
            "grantType": "client_credentials",
            "extraParams": {"token_format": "jwt"},
        })
    } else {
        values.insert("username".into(), tokensync_fakes::USERNAME.into());
        values.insert("password".into(), tokensync_fakes::PASSWORD.into());
        json!({
            "tokenUrl": format!("{base}/dronetag-auth/realms/dcp/protocol/openid-connect/token"),
            "grantType": "password",
        })
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(inputs.clone()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([(
                "tokensync.dev/inputs".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        string_data: Some(values),
        ..Default::default()
    };
    let pc = DynamicObject::new(&name, &pc_resource())
        .within(ns)
        .data(json!({
            "spec": {
                "inputs": {"secretName": inputs},
                "oauth2": oauth2,
                "output": {"secretName": output_name(i)},
            }
        }));
    (secret, pc)
}

/// An unrelated Secret of 100 KiB random data; with `kubectl_apply`, also the annotation
/// client-side `kubectl apply` writes: the whole object as JSON, data included.
fn unrelated(i: usize, kubectl_apply: bool, rng: &mut Rng) -> Res<Secret> {
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("unrelated-{i}")),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "blob".to_string(),
            ByteString(rng.bytes(UNRELATED_BYTES)),
        )])),
        ..Default::default()
    };
    if kubectl_apply {
        let mut applied = serde_json::to_value(&secret).ctx("serializing a Secret")?;
        applied["apiVersion"] = json!("v1");
        applied["kind"] = json!("Secret");
        applied["metadata"]["annotations"] = json!({});
        secret.metadata.annotations = Some(BTreeMap::from([(
            LAST_APPLIED.to_string(),
            applied.to_string() + "\n",
        )]));
    }
    Ok(secret)
}

/// A Secret the size and shape of an output Secret, for the baseline.
fn output_like(i: usize, owner: &DynamicObject, rng: &mut Rng) -> Secret {
    let now = jiff::Timestamp::now();
    let expires = (now + jiff::SignedDuration::from_secs(60)).to_string();
    let annotations = BTreeMap::from([
        (
            "tokensync.dev/provider-credential".to_string(),
            owner.name_any(),
        ),
        ("tokensync.dev/issued-at".to_string(), now.to_string()),
        (EXPIRES_AT_ANNOTATION.to_string(), expires.clone()),
        ("tokensync.dev/renew-at".to_string(), now.to_string()),
        ("tokensync.dev/source".to_string(), "grant".to_string()),
        ("tokensync.dev/fingerprint".to_string(), rng.text(8)),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(output_name(i)),
            namespace: Some(BASELINE_NS.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "tokensync".to_string(),
            )])),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: pc_resource().api_version,
                kind: pc_resource().kind,
                name: owner.name_any(),
                uid: owner.uid().unwrap_or_default(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("token".to_string(), ByteString(rng.text(1400).into_bytes())),
            ("token_type".to_string(), ByteString(b"Bearer".to_vec())),
            ("expires_at".to_string(), ByteString(expires.into_bytes())),
        ])),
        ..Default::default()
    }
}

/// The Event the controller records for a new token, for the floor.
fn event_like(owner: &DynamicObject) -> k8s_openapi::api::events::v1::Event {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    k8s_openapi::api::events::v1::Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name_any())),
            ..Default::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        action: Some("Issue".into()),
        reason: Some("TokenIssued".into()),
        note: Some("a token was issued; it expires in 60 s".into()),
        type_: Some("Normal".into()),
        reporting_controller: Some("tokensync".into()),
        reporting_instance: Some("tokensync-bench".into()),
        regarding: Some(ObjectReference {
            api_version: Some(pc_resource().api_version),
            kind: Some(pc_resource().kind),
            name: Some(owner.name_any()),
            namespace: owner.namespace(),
            uid: owner.uid(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The status the controller writes after a renewal, for the baseline.
fn status_like(rng: &mut Rng) -> Value {
    let now = jiff::Timestamp::now();
    let later = |s: i64| (now + jiff::SignedDuration::from_secs(s)).to_string();
    json!({
        "apiVersion": pc_resource().api_version,
        "kind": pc_resource().kind,
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "TokenRefreshed",
                "message": format!("token refreshed; it expires at {}", later(60)),
                "lastTransitionTime": now.to_string(), "observedGeneration": 1,
            }],
            "observedGeneration": 1,
            "expiresAt": later(60),
            "renewAt": later(40),
            "lastRefreshAt": now.to_string(),
            "tokenFingerprint": rng.text(8),
            "inputsHash": rng.text(16),
            "nextAttemptAt": later(40),
        }
    })
}

// ------------------------------------------------------------------------------------ cluster

async fn install_crd(client: &Client) -> Res {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ProviderCredential::crd();
    let name = crd.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .ctx("applying the CRD")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crd = api.get(&name).await.ctx("reading the CRD")?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the CRD was not Established within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delete namespace `ns` and wait until it is gone, at most `limit`.
async fn delete_namespace(client: &Client, ns: &str, limit: Duration) -> Res {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.delete(ns, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(format!("deleting namespace {ns}: {e}")),
    }
    let started = Instant::now();
    let mut finalizers_dropped = false;
    while api
        .get_opt(ns)
        .await
        .ctx(format!("reading namespace {ns}"))?
        .is_some()
    {
        if !finalizers_dropped && started.elapsed() > Duration::from_secs(20) {
            // no operator runs to remove its finalizers: drop them, or the namespace never goes
            finalizers_dropped = true;
            let pcs = pc_api(client, ns);
            let names: Vec<String> = pcs
                .list_metadata(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| !p.finalizers().is_empty())
                        .map(|p| p.name_any())
                        .collect()
                })
                .unwrap_or_default();
            if !names.is_empty() {
                log(format!(
                    "dropping the finalizers of {} ProviderCredentials in {ns}",
                    names.len()
                ));
            }
            let patch = json!({"metadata": {"finalizers": null}});
            for name in names {
                let _ = pcs
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
        if started.elapsed() > limit {
            return Err(format!(
                "namespace {ns} still exists {} s after its deletion",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log(format!(
        "namespace {ns} deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn create_namespace(client: &Client, ns: &str) -> Res {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &namespace)
        .await
        .ctx(format!("creating namespace {ns}"))?;
    Ok(())
}

/// Run `f(i)` for every i in 0..n, `concurrency` at a time; the first error fails all.
async fn for_each<F, Fut>(n: usize, concurrency: usize, f: F) -> Res
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Res>,
{
    stream::iter((0..n).map(f))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// Requests counted by the apiserver (`apiserver_request_total`), by (resource[/subresource],
/// verb, code).
type ApiCounts = BTreeMap<(String, String, String), u64>;

/// The verbs the operator writes with. Deletions are left out: the operator never deletes (its
/// Secrets go by owner references), while kube-controller-manager's namespace and garbage
/// collectors delete in the background (namespaces left by earlier runs), which would be
/// counted against the operator otherwise.
const WRITE_VERBS: &[&str] = &["POST", "CREATE", "PUT", "UPDATE", "PATCH", "APPLY"];

async fn apiserver_counts(client: &Client) -> Res<ApiCounts> {
    let request = kube::core::Request::new("/metrics")
        .list(&ListParams::default())
        .ctx("building GET /metrics")?;
    let text = client
        .request_text(request)
        .await
        .ctx("reading the apiserver's /metrics")?;
    let mut counts = ApiCounts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut label = HashMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                label.insert(k, v.trim_end_matches('"'));
            }
        }
        let verb = label.get("verb").copied().unwrap_or("");
        // reads are kept for `by_resource` (what the phase cost the apiserver); the write
        // counts below filter them out; watches are long-lived and counted once
        if verb == "WATCH" {
            continue;
        }
        let mut resource = label.get("resource").copied().unwrap_or("").to_string();
        if let Some(sub) = label.get("subresource").filter(|s| !s.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        let code = label.get("code").copied().unwrap_or("").to_string();
        let value = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *counts
            .entry((resource, verb.to_string(), code))
            .or_default() += value;
    }
    Ok(counts)
}

/// Writes between two snapshots.
struct Writes(ApiCounts);

impl Writes {
    fn between(before: &ApiCounts, after: &ApiCounts) -> Self {
        let mut delta = ApiCounts::new();
        for (key, v) in after {
            let d = v.saturating_sub(before.get(key).copied().unwrap_or(0));
            if d > 0 {
                delta.insert(key.clone(), d);
            }
        }
        Writes(delta)
    }

    /// Writes to resources `which` selects; only successful ones with `ok_only`.
    fn count(&self, which: impl Fn(&str) -> bool, ok_only: bool) -> u64 {
        self.0
            .iter()
            .filter(|((r, verb, code), _)| {
                which(r)
                    && WRITE_VERBS.contains(&verb.as_str())
                    && (!ok_only || code.starts_with('2'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn secrets(&self, ok_only: bool) -> u64 {
        self.count(|r| r == "secrets", ok_only)
    }

    /// Writes to ProviderCredentials: their status, and the object itself if ever written.
    fn credentials(&self, ok_only: bool) -> u64 {
        self.count(|r| r.starts_with("providercredentials"), ok_only)
    }

    fn events(&self) -> u64 {
        self.count(|r| r == "events", false)
    }

    /// `{"secrets": {"APPLY": 12, "POST 409": 1}, ...}`: verbs, with the code when not 2xx.
    fn by_resource(&self) -> Value {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((resource, verb, code), v) in &self.0 {
            let key = if code.starts_with('2') {
                verb.clone()
            } else {
                format!("{verb} {code}")
            };
            *out.entry(resource.clone())
                .or_default()
                .entry(key)
                .or_default() += v;
        }
        json!(out)
    }
}

fn token_requests(fakes: &FakeProviders) -> BTreeMap<String, u64> {
    fakes.state.counters()
}

fn requests_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(k, v)| v.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .sum()
}

fn requests_detail(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let parts = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k}: {d}"))
        })
        .collect::<Vec<_>>();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

// ------------------------------------------------------------------------------------ watch

/// What the bench's own watches saw: changes (a new resourceVersion) of the operator's Secrets
/// and of the ProviderCredentials, renewals (a new token in an output Secret), readiness.
#[derive(Default)]
struct Seen {
    pcs: HashMap<String, (String, bool)>,
    ready: usize,
    pc_changes: u64,
    secrets: HashMap<String, SecretSeen>,
    output_changes: u64,
    state_changes: u64,
    /// When each renewal was seen.
    renewals: Vec<Instant>,
    /// Lists after the first (a watch that had to start over may merge changes).
    relists: u64,
    errors: u64,
}

struct SecretSeen {
    rv: String,
    token: u64,
    /// When its token last changed (or was first seen).
    token_at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    pc_changes: u64,
    output_changes: u64,
    state_changes: u64,
    renewals: usize,
    relists: u64,
}

impl Seen {
    fn counts(&self) -> Counts {
        Counts {
            pc_changes: self.pc_changes,
            output_changes: self.output_changes,
            state_changes: self.state_changes,
            renewals: self.renewals.len(),
            relists: self.relists,
        }
    }

    fn pc(&mut self, pc: &DynamicObject) {
        let name = pc.name_any();
        let rv = pc.resource_version().unwrap_or_default();
        let ready = pc.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        match self.pcs.get(&name) {
            Some((old_rv, _)) if *old_rv == rv => return,
            Some((_, was_ready)) => self.ready -= usize::from(*was_ready),
            None => {}
        }
        self.pc_changes += 1;
        self.ready += usize::from(ready);
        self.pcs.insert(name, (rv, ready));
    }

    fn pc_deleted(&mut self, pc: &DynamicObject) {
        if let Some((_, ready)) = self.pcs.remove(&pc.name_any()) {
            self.ready -= usize::from(ready);
            self.pc_changes += 1;
        }
    }

    fn secret(&mut self, secret: &Secret) {
        let name = secret.name_any();
        let rv = secret.resource_version().unwrap_or_default();
        let is_output = name.starts_with("bench-") && name.ends_with("-token");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match secret.data.as_ref().and_then(|d| d.get("token")) {
            Some(token) => token.0.hash(&mut hasher),
            None => {
                for (k, v) in secret.data.iter().flatten() {
                    k.hash(&mut hasher);
                    v.0.hash(&mut hasher);
                }
            }
        }
        let token = hasher.finish();
        let now = Instant::now();
        match self.secrets.get_mut(&name) {
            Some(seen) if seen.rv == rv => return,
            Some(seen) => {
                seen.rv = rv;
                if is_output && seen.token != token {
                    seen.token = token;
                    seen.token_at = now;
                    self.renewals.push(now);
                }
            }
            None => {
                self.secrets.insert(
                    name,
                    SecretSeen {
                        rv,
                        token,
                        token_at: now,
                    },
                );
            }
        }
        if is_output {
            self.output_changes += 1;
        } else {
            self.state_changes += 1;
        }
    }

    fn secret_deleted(&mut self, secret: &Secret) {
        let name = secret.name_any();
        if self.secrets.remove(&name).is_some() {
            if name.ends_with("-token") {
                self.output_changes += 1;
            } else {
                self.state_changes += 1;
            }
        }
    }

    /// Output Secrets whose token was issued after `since`.
    fn renewed_since(&self, since: Instant) -> usize {
        self.secrets
            .iter()
            .filter(|(name, s)| name.ends_with("-token") && s.token_at > since)
            .count()
    }
}

/// Watch the ProviderCredentials and the operator's Secrets of the bench namespace into `seen`.
fn watch(client: &Client, seen: Arc<Mutex<Seen>>) -> Vec<tokio::task::JoinHandle<()>> {
    let pcs = watcher(pc_api(client, NS), watcher::Config::default()).default_backoff();
    let s = seen.clone();
    let pc_task = tokio::spawn(async move {
        let mut pcs = std::pin::pin!(pcs);
        let mut lists = 0;
        while let Some(event) = pcs.next().await {
            let mut seen = s.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                Ok(watcher::Event::Apply(pc) | watcher::Event::InitApply(pc)) => seen.pc(&pc),
                Ok(watcher::Event::Delete(pc)) => seen.pc_deleted(&pc),
                Ok(watcher::Event::Init) => {
                    lists += 1;
                    seen.relists += u64::from(lists > 1);
                }
                Ok(watcher::Event::InitDone) => {}
                Err(_) => seen.errors += 1,
            }
        }
    });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secrets = watcher(secrets, watcher::Config::default().labels(MANAGED_BY)).default_backoff();
    let secret_task = tokio::spawn(async move {
        let mut secrets = std::pin::pin!(secrets);
        let mut lists = 0;
        while let Some(event) = secrets.next().await {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => seen.secret(&s),
                Ok(watcher::Event::Delete(s)) => seen.secret_deleted(&s),
                Ok(watcher::Event::Init) => {
                    lists += 1;
                    seen.relists += u64::from(lists > 1);
                }
                Ok(watcher::Event::InitDone) => {}
                Err(_) => seen.errors += 1,
            }
        }
    });
    vec![pc_task, secret_task]
}

// ------------------------------------------------------------------------------------ operator

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn spawn(log: PathBuf) -> Res<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ctx("finding a free port")?;
        let file = std::fs::File::create(&log).ctx(format!("creating {}", log.display()))?;
        let bin = operator_bin();
        let child = tokio::process::Command::new(&bin)
            .args(["run", "--allow-insecure-http", "--namespace", NS])
            .arg(format!("--concurrency={OPERATOR_CONCURRENCY}"))
            .arg(format!("--http-addr=127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("TOKENSYNC_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .ctx(format!(
                "starting {} (set TOKENSYNC_BIN, or build it: cargo build --release --bin tokensync)",
                bin.display()
            ))?;
        let pid = child.id().ok_or("the operator exited at once")?;
        Ok(Operator {
            child,
            pid,
            port,
            log,
        })
    }

    /// An error if the process has exited.
    fn alive(&mut self) -> Res {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the operator exited ({status}); see {}",
                self.log.display()
            )),
            Err(e) => Err(format!("the operator: {e}")),
        }
    }

    /// SIGTERM, and wait for it to exit (SIGKILL after 60 s).
    async fn stop(&mut self) -> Res {
        if self.child.try_wait().ctx("the operator")?.is_some() {
            return Ok(());
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status.ctx("waiting for the operator")?;
                if !status.success() {
                    log(format!("the operator exited with {status} after SIGTERM"));
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                Err("the operator did not exit within 60 s of SIGTERM".into())
            }
        }
    }

    async fn http(&self, http: &reqwest::Client, path: &str) -> Option<(u16, String)> {
        let response = http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }
}

/// A `/proc/PID/status` field (VmHWM, VmRSS) in KiB.
/// The operator stopped (SIGSTOP) while counters are read, and continued (SIGCONT) when
/// dropped. What it had sent before the stop lands meanwhile: the pause waits for that.
struct Paused(u32);

impl Paused {
    async fn new(pid: u32) -> Res<Self> {
        signal(pid, "-STOP")?;
        let paused = Self(pid);
        // writes in flight complete and their watch events arrive
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(paused)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(e) = signal(self.0, "-CONT") {
            log(format!("warning: could not continue the operator: {e}"));
        }
    }
}

fn signal(pid: u32, sig: &str) -> Res {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .ctx("running kill")?;
    if !status.success() {
        return Err(format!("kill {sig} {pid} failed"));
    }
    Ok(())
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Res<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ctx(format!("reading /proc/{pid}/stat"))?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields 14 and 15 of stat(5); the first one after the name is field 3
    let field = |n: usize| -> Res<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat has no field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// CPU ticks of every process sharing the machine's cores in a phase: the bench itself, the
/// operator (when running), and the control plane (pids from the files `xtask/cluster.sh`
/// writes beside the kubeconfig).
struct CpuSnapshot(BTreeMap<&'static str, u64>);

impl CpuSnapshot {
    fn take(operator: Option<u32>) -> Self {
        let mut ticks = BTreeMap::new();
        let mut add = |name: &'static str, pid: Option<u32>| {
            if let Some(t) = pid.and_then(|pid| cpu_ticks(pid).ok()) {
                ticks.insert(name, t);
            }
        };
        add("bench", Some(std::process::id()));
        add("operator", operator.filter(|p| *p != 0));
        let dir = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .and_then(|k| k.parent().map(PathBuf::from));
        for name in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            let pid = dir.as_ref().and_then(|d| {
                std::fs::read_to_string(d.join(format!("{name}.pid")))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            });
            add(name, pid);
        }
        CpuSnapshot(ticks)
    }

    /// CPU seconds per process since `before`, and their sum.
    fn since(&self, before: &CpuSnapshot) -> Value {
        let hz = clock_ticks_per_second();
        let mut out = serde_json::Map::new();
        let mut total = 0.0;
        for (name, after) in &self.0 {
            let Some(b) = before.0.get(name) else {
                continue;
            };
            let s = after.saturating_sub(*b) as f64 / hz;
            total += s;
            out.insert((*name).to_string(), round(s, 1));
        }
        out.insert("total".into(), round(total, 1));
        Value::Object(out)
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of an unlabelled Prometheus sample, e.g. `tokensync_reconciles_total`.
fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

// ------------------------------------------------------------------------------------ the run

struct Bench {
    args: Args,
    client: Client,
    fakes: FakeProviders,
    seen: Arc<Mutex<Seen>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    operator: Option<Operator>,
    /// The running operator's pid, for the memory sampler.
    pid: Arc<AtomicU32>,
    peak_hwm_kib: Arc<AtomicU64>,
    rng: Rng,
    logs: PathBuf,
    report: BTreeMap<&'static str, Value>,
    writes_by_resource: BTreeMap<&'static str, Value>,
    /// CPU seconds per process in the timed phases.
    cpu_by_phase: BTreeMap<&'static str, Value>,
}

fn round(v: f64, places: i32) -> Value {
    let m = 10f64.powi(places);
    json!((v * m).round() / m)
}

impl Bench {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn operator(&mut self) -> Res<&mut Operator> {
        self.operator.as_mut().ok_or_else(|| "no operator".into())
    }

    /// Wait until the control plane is idle (at most 5 minutes): the garbage collector works
    /// through a deleted namespace's objects long after the namespace is gone (live GETs of
    /// each dependent), and that work must not be counted against the next phase.
    async fn wait_for_quiet_control_plane(&self, phase: &str) {
        const WINDOW: Duration = Duration::from_secs(2);
        // idle, the three use about 0.1 s of CPU in 2 s
        const QUIET_CPU_S: f64 = 0.4;
        let started = Instant::now();
        loop {
            let before = CpuSnapshot::take(None);
            tokio::time::sleep(WINDOW).await;
            let used = CpuSnapshot::take(None).since(&before);
            let busy: f64 = ["kube-apiserver", "etcd", "kube-controller-manager"]
                .iter()
                .filter_map(|k| used[*k].as_f64())
                .sum();
            if busy <= QUIET_CPU_S {
                log(format!(
                    "{phase}: the control plane is idle ({:.0} s)",
                    started.elapsed().as_secs_f64()
                ));
                return;
            }
            if started.elapsed() > Duration::from_secs(300) {
                log(format!(
                    "warning: {phase}: the control plane still uses {busy:.1} CPU seconds in {} s; going on",
                    WINDOW.as_secs()
                ));
                return;
            }
        }
    }

    fn set(&mut self, key: &'static str, value: Value) {
        self.report.insert(key, value);
    }

    async fn run(&mut self) -> Res {
        let started = Instant::now();
        install_crd(&self.client).await?;
        let limit = Duration::from_secs(300);
        delete_namespace(&self.client, NS, limit).await?;
        delete_namespace(&self.client, BASELINE_NS, limit).await?;
        create_namespace(&self.client, NS).await?;
        self.unrelated().await?;
        self.baseline(false).await?;
        self.baseline(true).await?;
        self.cold_sync().await?;
        if self.args.steady_secs > 0 {
            self.wait_for_quiet_events("steady state").await?;
            self.steady().await?;
        }
        self.restart().await?;
        let pid = self.operator()?.pid;
        let rss = proc_status_kib(pid, "VmRSS");
        self.peak_hwm_kib
            .fetch_max(proc_status_kib(pid, "VmHWM"), Ordering::SeqCst);
        self.set("rss_mib_end", round(rss as f64 / 1024.0, 1));
        self.set(
            "peak_rss_mib",
            round(self.peak_hwm_kib.load(Ordering::SeqCst) as f64 / 1024.0, 1),
        );
        log(format!("done in {:.0} s", started.elapsed().as_secs_f64()));
        Ok(())
    }

    /// 1: Secrets the operator neither owns nor references, half of them as `kubectl apply`
    /// creates them.
    async fn unrelated(&mut self) -> Res {
        let m = self.args.unrelated;
        if m == 0 {
            return Ok(());
        }
        log(format!(
            "creating {m} unrelated Secrets of 100 KiB ({} with the kubectl last-applied annotation)",
            m / 2
        ));
        let started = Instant::now();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let seed = self.rng.next();
        for_each(m, UNRELATED_CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let secret = unrelated(i, i % 2 == 1, &mut rng)?;
                api.create(&PostParams::default(), &secret)
                    .await
                    .ctx(format!("creating unrelated Secret {i}"))?;
                Ok(())
            }
        })
        .await?;
        log(format!(
            "unrelated Secrets created in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// 2: the apiserver's write limit: N output-sized Secrets and N status patches by a plain
    /// client as concurrent as the controller, in a namespace the operator does not watch.
    /// With `floor`, the writes any correct operator must make for the cold sync's credentials
    /// (the same, plus the state Secret of every credential whose refresh token rotates and one
    /// Event each): what the cold sync cannot beat.
    async fn baseline(&mut self, floor: bool) -> Res {
        let n = self.args.n;
        let what = if floor { "floor" } else { "baseline" };
        create_namespace(&self.client, BASELINE_NS).await?;
        log(format!(
            "{what}: {n} ProviderCredentials in {BASELINE_NS} (untimed)"
        ));
        let pcs = pc_api(&self.client, BASELINE_NS);
        let base = self.fakes.base_url();
        let created: Arc<Mutex<Vec<Option<DynamicObject>>>> = Arc::new(Mutex::new(vec![None; n]));
        for_each(n, CLIENT_CONCURRENCY, |i| {
            let (pcs, created, base) = (pcs.clone(), created.clone(), base.clone());
            async move {
                let (_, pc) = credential(i, BASELINE_NS, &base);
                let pc = pcs
                    .create(&PostParams::default(), &pc)
                    .await
                    .ctx(format!("creating {what} ProviderCredential {i}"))?;
                created.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(pc);
                Ok(())
            }
        })
        .await?;
        let created: Vec<DynamicObject> =
            std::mem::take(&mut *created.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .flatten()
                .collect();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), BASELINE_NS);
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), BASELINE_NS);
        let seed = self.rng.next();
        let created = &created;
        log(format!(
            "{what}: {n} Secret creates and {n} status applies{}, {CLIENT_CONCURRENCY} at a time",
            if floor {
                format!(", {} state Secret creates and {n} Events", n / 2)
            } else {
                String::new()
            }
        ));
        self.wait_for_quiet_control_plane(what).await;
        let cpu_before = CpuSnapshot::take(None);
        let started = Instant::now();
        for_each(n, CLIENT_CONCURRENCY, |i| {
            let (secrets, pcs, events) = (secrets.clone(), pcs.clone(), events.clone());
            async move {
                let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let pc = &created[i];
                // the cold sync's odd credentials are Dronetag's: their refresh token rotates
                if floor && i % 2 == 1 {
                    let mut state = output_like(i, pc, &mut rng);
                    state.metadata.name = Some(format!("{}-tokensync-state", pc.name_any()));
                    secrets
                        .create(&PostParams::default(), &state)
                        .await
                        .ctx(format!("{what}: creating state Secret {i}"))?;
                }
                secrets
                    .create(&PostParams::default(), &output_like(i, pc, &mut rng))
                    .await
                    .ctx(format!("{what}: creating Secret {i}"))?;
                pcs.patch_status(
                    &pc.name_any(),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&status_like(&mut rng)),
                )
                .await
                .ctx(format!("{what}: applying the status of {i}"))?;
                if floor {
                    events
                        .create(&PostParams::default(), &event_like(pc))
                        .await
                        .ctx(format!("{what}: creating Event {i}"))?;
                }
                Ok(())
            }
        })
        .await?;
        let took = started.elapsed().as_secs_f64();
        let cpu = CpuSnapshot::take(None).since(&cpu_before);
        log(format!("{what}: {took:.2} s; CPU seconds {cpu}"));
        self.cpu_by_phase.insert(what, cpu);
        if floor {
            self.set("floor_s", round(took, 2));
        } else {
            self.set("baseline_s", round(took, 2));
        }
        // the cold sync had better not share the apiserver with this deletion; go on if it is slow
        if let Err(e) = delete_namespace(&self.client, BASELINE_NS, Duration::from_secs(600)).await
        {
            log(format!("warning: {e}; going on"));
        }
        Ok(())
    }

    /// 3: N credentials waiting, the operator started, time until all are Ready.
    async fn cold_sync(&mut self) -> Res {
        let n = self.args.n;
        let lifetime = if self.args.steady_secs > 0 {
            STEADY_LIFETIME
        } else {
            LONG_LIFETIME
        };
        for vendor in VENDORS {
            self.fakes.state.set_lifetime(vendor, lifetime);
            if self.args.latency_ms > 0 {
                self.fakes.state.set_fault(
                    vendor,
                    Fault::Delay(Duration::from_millis(self.args.latency_ms)),
                );
            }
        }
        log(format!(
            "cold sync: {n} ProviderCredentials and their inputs in {NS} (untimed; half Pix4D client credentials, half Dronetag password + refresh; {lifetime} s tokens, {} ms per token request)",
            self.args.latency_ms
        ));
        let pcs = pc_api(&self.client, NS);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let base = self.fakes.base_url();
        for_each(n, CLIENT_CONCURRENCY, |i| {
            let (pcs, secrets, base) = (pcs.clone(), secrets.clone(), base.clone());
            async move {
                let (inputs, pc) = credential(i, NS, &base);
                secrets
                    .create(&PostParams::default(), &inputs)
                    .await
                    .ctx(format!("creating inputs Secret {i}"))?;
                pcs.create(&PostParams::default(), &pc)
                    .await
                    .ctx(format!("creating ProviderCredential {i}"))?;
                Ok(())
            }
        })
        .await?;
        self.watches = watch(&self.client, self.seen.clone());
        // the watches have listed the credentials
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.seen().pcs.len() < n {
            if Instant::now() > deadline {
                return Err("the bench's watch did not list the credentials in 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        self.wait_for_quiet_control_plane("cold sync").await;
        let writes_before = apiserver_counts(&self.client).await?;
        let requests_before = token_requests(&self.fakes);
        log("cold sync: starting the operator");
        let cpu_before = CpuSnapshot::take(None);
        let started = Instant::now();
        let operator = Operator::spawn(self.logs.join("operator-1.log"))?;
        self.pid.store(operator.pid, Ordering::SeqCst);
        self.operator = Some(operator);
        let limit = Duration::from_secs(600 + n as u64 / 5);
        let mut last_report = Instant::now();
        loop {
            let ready = self.seen().ready;
            if ready >= n {
                break;
            }
            self.operator()?.alive()?;
            if started.elapsed() > limit {
                return Err(format!(
                    "only {ready} of {n} ProviderCredentials became Ready in {} s; see {}",
                    limit.as_secs(),
                    self.logs.join("operator-1.log").display()
                ));
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                log(format!(
                    "cold sync: {ready} of {n} Ready after {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cold = started.elapsed().as_secs_f64();
        // the operator started after the first snapshot: all its CPU time is the phase's
        let mut cpu_before = cpu_before;
        cpu_before.0.insert("operator", 0);
        let cpu = CpuSnapshot::take(Some(self.pid.load(Ordering::SeqCst))).since(&cpu_before);
        log(format!("cold sync: CPU seconds {cpu}"));
        self.cpu_by_phase.insert("cold_sync", cpu);
        // let the last writes land before counting them
        tokio::time::sleep(Duration::from_secs(1)).await;
        let writes = Writes::between(&writes_before, &apiserver_counts(&self.client).await?);
        let requests_after = token_requests(&self.fakes);
        log(format!(
            "cold sync: all {n} Ready in {cold:.2} s; token requests {} ({}); writes: {} Secret, {} credential, {} Event",
            requests_between(&requests_before, &requests_after),
            requests_detail(&requests_before, &requests_after),
            writes.secrets(false),
            writes.credentials(false),
            writes.events()
        ));
        self.writes_by_resource
            .insert("cold_sync", writes.by_resource());
        let baseline = self.report["baseline_s"].as_f64().unwrap_or(f64::NAN);
        let floor = self.report["floor_s"].as_f64().unwrap_or(f64::NAN);
        self.set("cold_sync_s", round(cold, 2));
        self.set("cold_sync_ratio", round(cold / baseline, 2));
        self.set("floor_ratio", round(floor / baseline, 2));
        self.set("cold_sync_over_floor", round(cold / floor, 2));
        Ok(())
    }

    /// 4: the steady state, tokens living 60 s.
    async fn steady(&mut self) -> Res {
        let secs = self.args.steady_secs;
        let n = self.args.n;
        log(format!(
            "steady state: {secs} s, sampling {SAMPLES_PER_SECOND} output Secrets a second"
        ));
        let pid = self.operator()?.pid;
        // the counters are read with the operator paused, so that no write falls between the
        // apiserver's count and the watch's (it would look like a write that changed nothing)
        let paused = Paused::new(pid).await?;
        let writes_before = apiserver_counts(&self.client).await?;
        let requests_before = token_requests(&self.fakes);
        let seen_before = self.seen().counts();
        let cpu_before = cpu_ticks(pid)?;
        drop(paused);
        let started = Instant::now();

        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let (mut samples, mut expired, mut missing, mut no_expiry) = (0u64, 0u64, 0u64, 0u64);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = started + Duration::from_secs(secs);
        let mut last_report = Instant::now();
        while Instant::now() < end {
            tick.tick().await;
            self.operator()?.alive()?;
            let picks: Vec<usize> = (0..SAMPLES_PER_SECOND.min(n))
                .map(|_| self.rng.below(n))
                .collect();
            let names: Vec<String> = picks.iter().map(|&i| output_name(i)).collect();
            let reads =
                futures::future::join_all(names.iter().map(|name| secrets.get_opt(name))).await;
            let now = jiff::Timestamp::now().as_second();
            for read in reads {
                samples += 1;
                match read.ctx("sampling an output Secret")? {
                    None => {
                        missing += 1;
                        expired += 1;
                    }
                    Some(secret) => match secret_expiry(&secret) {
                        Some(exp) if exp <= now => expired += 1,
                        Some(_) => {}
                        None => no_expiry += 1,
                    },
                }
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                let seen = self.seen().counts();
                log(format!(
                    "steady state: {:.0} s, {} renewals, {expired} expired of {samples} samples",
                    started.elapsed().as_secs_f64(),
                    seen.renewals - seen_before.renewals
                ));
                last_report = Instant::now();
            }
        }
        let window = started.elapsed().as_secs_f64();
        let paused = Paused::new(pid).await?;
        let cpu_after = cpu_ticks(pid)?;
        let writes = Writes::between(&writes_before, &apiserver_counts(&self.client).await?);
        let seen_after = self.seen().counts();
        let requests_after = token_requests(&self.fakes);
        drop(paused);
        let renewal_times: Vec<Instant> = self.seen().renewals[seen_before.renewals..].to_vec();

        let renewals = seen_after.renewals - seen_before.renewals;
        let requests = requests_between(&requests_before, &requests_after);
        let secret_changes = (seen_after.output_changes - seen_before.output_changes)
            + (seen_after.state_changes - seen_before.state_changes);
        let pc_changes = seen_after.pc_changes - seen_before.pc_changes;
        let ok_writes = writes.secrets(true) + writes.credentials(true);
        let all_writes = writes.secrets(false) + writes.credentials(false);
        let mut buckets = vec![0u64; secs as usize + 1];
        for t in &renewal_times {
            let s = t.saturating_duration_since(started).as_secs() as usize;
            buckets[s.min(secs as usize)] += 1;
        }
        let peak = buckets.iter().copied().max().unwrap_or(0);
        let cpu_s = (cpu_after - cpu_before) as f64 / clock_ticks_per_second();
        log(format!(
            "steady state: {renewals} renewals, {requests} token requests ({}), writes: {} Secret ({} ok), {} credential ({} ok), {} Event; the watch saw {} output Secret, {} state Secret, {pc_changes} credential changes",
            requests_detail(&requests_before, &requests_after),
            writes.secrets(false),
            writes.secrets(true),
            writes.credentials(false),
            writes.credentials(true),
            writes.events(),
            seen_after.output_changes - seen_before.output_changes,
            seen_after.state_changes - seen_before.state_changes,
        ));
        if seen_after.relists > seen_before.relists {
            log(
                "warning: the bench's watch listed again during the window; it may have merged changes (noop_writes overstated)",
            );
        }
        if missing > 0 || no_expiry > 0 {
            log(format!(
                "warning: {missing} sampled output Secrets missing (counted as expired), {no_expiry} without a readable expiry"
            ));
        }
        let per_renewal = |v: f64| {
            if renewals == 0 {
                Value::Null
            } else {
                round(v / renewals as f64, 2)
            }
        };
        self.set("renewals", json!(renewals));
        self.set("requests_per_lifetime", per_renewal(requests as f64));
        self.set("writes_per_renewal", per_renewal(all_writes as f64));
        // what the project's rules require: the output Secret and the status of every renewal,
        // and the state Secret of every refresh token that rotated (stored before anything
        // else can fail); the bench's watch counts the state Secret changes
        let rotated = seen_after.state_changes - seen_before.state_changes;
        self.set(
            "writes_per_renewal_floor",
            per_renewal((2 * renewals as u64 + rotated) as f64),
        );
        self.set("events_per_renewal", per_renewal(writes.events() as f64));
        self.set(
            "noop_writes",
            json!(ok_writes as i64 - (secret_changes + pc_changes) as i64),
        );
        self.set("peak_renewals_per_s", json!(peak));
        self.set("mean_renewals_per_s", round(renewals as f64 / window, 2));
        self.set("expired_samples", json!(expired));
        self.set("samples", json!(samples));
        self.set("cpu_s_per_1000_renewals", per_renewal(cpu_s * 1000.0));
        self.writes_by_resource
            .insert("steady", writes.by_resource());
        Ok(())
    }

    /// 5: SIGTERM and start again with every token valid for long.
    /// Wait until no Event was written for 3 s (at most 5 minutes): events are published off
    /// the reconciles' path, and those of one phase must not be counted in the next.
    async fn wait_for_quiet_events(&self, phase: &str) -> Res {
        let started = Instant::now();
        let mut last =
            Writes::between(&ApiCounts::new(), &apiserver_counts(&self.client).await?).events();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(3) {
            if started.elapsed() > Duration::from_secs(300) {
                return Err("Events were still being written after 5 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now =
                Writes::between(&ApiCounts::new(), &apiserver_counts(&self.client).await?).events();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        log(format!(
            "{phase}: the events so far are out ({:.1} s)",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    async fn restart(&mut self) -> Res {
        let n = self.args.n;
        if self.args.steady_secs > 0 {
            // 60 s tokens would be renewed in the restart's window anyway: wait until every
            // credential holds a long-lived one
            let switched = Instant::now();
            for vendor in VENDORS {
                self.fakes.state.set_lifetime(vendor, LONG_LIFETIME);
            }
            log(format!(
                "restart: waiting until every token lives {LONG_LIFETIME} s"
            ));
            let limit = Duration::from_secs(3 * STEADY_LIFETIME);
            loop {
                let renewed = self.seen().renewed_since(switched);
                if renewed >= n {
                    break;
                }
                self.operator()?.alive()?;
                if switched.elapsed() > limit {
                    return Err(format!(
                        "only {renewed} of {n} tokens were renewed within {} s of the switch to long-lived tokens",
                        limit.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // the status writes follow the Secret writes
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        // the first process publishes its events off the reconciles' path: let it finish
        // (events still queued would be published at its shutdown, inside the window)
        self.wait_for_quiet_events("restart").await?;
        self.wait_for_quiet_control_plane("restart").await;
        let pid = self.operator()?.pid;
        self.peak_hwm_kib
            .fetch_max(proc_status_kib(pid, "VmHWM"), Ordering::SeqCst);
        let writes_before = apiserver_counts(&self.client).await?;
        let requests_before = token_requests(&self.fakes);
        log("restart: SIGTERM");
        self.operator()?.stop().await?;
        let started = Instant::now();
        let operator = Operator::spawn(self.logs.join("operator-2.log"))?;
        self.pid.store(operator.pid, Ordering::SeqCst);
        self.operator = Some(operator);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .ctx("building an HTTP client")?;
        let limit = Duration::from_secs(300);
        let ready = loop {
            self.operator()?.alive()?;
            let op = self.operator()?;
            let readyz = op.http(&http, "/readyz").await;
            if readyz.is_some_and(|(status, _)| status == 200) {
                let reconciles = op
                    .http(&http, "/metrics")
                    .await
                    .and_then(|(_, text)| prometheus_value(&text, "tokensync_reconciles_total"))
                    .unwrap_or(0.0);
                if reconciles >= n as f64 {
                    break started.elapsed();
                }
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "the restarted operator was not ready with {n} reconciles within {} s",
                    limit.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(rest) = RESTART_WINDOW.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        self.operator()?.alive()?;
        let writes = Writes::between(&writes_before, &apiserver_counts(&self.client).await?);
        let requests_after = token_requests(&self.fakes);
        let requests = requests_between(&requests_before, &requests_after);
        let restart_writes = writes.secrets(false) + writes.credentials(false) + writes.events();
        log(format!(
            "restart: ready after {:.2} s; in {:.0} s: {requests} token requests ({}), {restart_writes} writes",
            ready.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            requests_detail(&requests_before, &requests_after),
        ));
        self.set("restart_requests", json!(requests));
        self.set("restart_writes", json!(restart_writes));
        self.set("restart_ready_s", round(ready.as_secs_f64(), 2));
        self.writes_by_resource
            .insert("restart", writes.by_resource());
        Ok(())
    }

    /// Stop the operator and the watches, delete the namespaces (without waiting long).
    async fn cleanup(&mut self) {
        if let Some(mut op) = self.operator.take()
            && let Err(e) = op.stop().await
        {
            log(format!("cleanup: {e}"));
        }
        for task in self.watches.drain(..) {
            task.abort();
        }
        for ns in [NS, BASELINE_NS] {
            let api: Api<Namespace> = Api::all(self.client.clone());
            match api.delete(ns, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => log(format!("cleanup: deleting namespace {ns}: {e}")),
            }
        }
    }
}

/// The earliest expiry an output Secret states (epoch seconds): the operator's annotation and the
/// `exp` of the token when it is a JWT.
fn secret_expiry(secret: &Secret) -> Option<i64> {
    let annotated = secret
        .annotations()
        .get(EXPIRES_AT_ANNOTATION)
        .and_then(|v| v.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second());
    let jwt = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .and_then(|t| jwt_exp(&t.0));
    match (annotated, jwt) {
        (Some(a), Some(j)) => Some(a.min(j)),
        (a, j) => a.or(j),
    }
}

fn jwt_exp(token: &[u8]) -> Option<i64> {
    use base64::Engine;
    let text = std::str::from_utf8(token).ok()?;
    let payload = text.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&claims).ok()?["exp"].as_i64()
}

// ------------------------------------------------------------------------------------ output

const KEYS: &[&str] = &[
    "n",
    "unrelated",
    "latency_ms",
    "baseline_s",
    "floor_s",
    "cold_sync_s",
    "cold_sync_ratio",
    "floor_ratio",
    "cold_sync_over_floor",
    "requests_per_lifetime",
    "writes_per_renewal",
    "writes_per_renewal_floor",
    "events_per_renewal",
    "noop_writes",
    "peak_renewals_per_s",
    "mean_renewals_per_s",
    "expired_samples",
    "samples",
    "renewals",
    "restart_requests",
    "restart_writes",
    "restart_ready_s",
    "peak_rss_mib",
    "rss_mib_end",
    "cpu_s_per_1000_renewals",
];

/// The target for `key`, and whether `report` meets it.
fn target(key: &str, report: &serde_json::Map<String, Value>) -> Option<(String, bool)> {
    let v = report.get(key)?.as_f64()?;
    let n = report.get("n")?.as_f64()?;
    let (text, met) = match key {
        "cold_sync_ratio" => ("<= 1.2".to_string(), v <= 1.2),
        "requests_per_lifetime" => ("1.00".to_string(), (v - 1.0).abs() < 0.005),
        "writes_per_renewal" => ("<= 2".to_string(), v <= 2.0),
        "events_per_renewal" => ("<= 1".to_string(), v <= 1.0),
        "noop_writes" | "expired_samples" | "restart_requests" | "restart_writes" => {
            ("0".to_string(), v == 0.0)
        }
        "peak_renewals_per_s" => {
            let mean = report.get("mean_renewals_per_s")?.as_f64()?;
            (format!("<= 3 x mean = {:.1}", 3.0 * mean), v <= 3.0 * mean)
        }
        // the issue sets 10 s at N = 1,000; at 10,000 the figure is reported, not judged
        "restart_ready_s" if n > 1000.0 => return None,
        "restart_ready_s" => ("<= 10".to_string(), v <= 10.0),
        "peak_rss_mib" if n > 1000.0 => ("<= 256 (N = 10,000)".to_string(), v <= 256.0),
        "peak_rss_mib" => ("<= 64".to_string(), v <= 64.0),
        _ => return None,
    };
    Some((text, met))
}

fn print_table(report: &serde_json::Map<String, Value>) {
    println!();
    println!("{:<26} {:>12}   target", "key", "value");
    for key in KEYS {
        let value = match report.get(*key) {
            Some(Value::Null) | None => "-".to_string(),
            Some(v) => v.to_string(),
        };
        let target = match target(key, report) {
            Some((text, true)) => format!("{text}   ok"),
            Some((text, false)) => format!("{text}   MISSED"),
            None => String::new(),
        };
        println!("{key:<26} {value:>12}   {target}");
    }
}

async fn main_inner(args: Args) -> Res<Value> {
    let client = Client::try_default()
        .await
        .ctx("connecting to the cluster (KUBECONFIG)")?;
    let fakes = FakeProviders::start(0)
        .await
        .ctx("starting the fake providers")?;
    let logs = target_dir().join("scale-bench");
    std::fs::create_dir_all(&logs).ctx(format!("creating {}", logs.display()))?;
    let mut bench = Bench {
        args,
        client,
        fakes,
        seen: Arc::default(),
        watches: Vec::new(),
        operator: None,
        pid: Arc::default(),
        peak_hwm_kib: Arc::default(),
        rng: Rng::seeded(),
        logs,
        report: BTreeMap::new(),
        writes_by_resource: BTreeMap::new(),
        cpu_by_phase: BTreeMap::new(),
    };
    log(format!(
        "n {}, unrelated {}, steady {} s, latency {} ms; operator {}, its logs in {}",
        bench.args.n,
        bench.args.unrelated,
        bench.args.steady_secs,
        bench.args.latency_ms,
        operator_bin().display(),
        bench.logs.display()
    ));
    // the operator's peak memory, whichever process runs
    let (pid, peak) = (bench.pid.clone(), bench.peak_hwm_kib.clone());
    let sampler = tokio::spawn(async move {
        loop {
            let p = pid.load(Ordering::SeqCst);
            if p != 0 {
                peak.fetch_max(proc_status_kib(p, "VmHWM"), Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let result = tokio::select! {
        r = bench.run() => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    sampler.abort();
    log("cleaning up: stopping the operator, deleting the namespaces");
    bench.cleanup().await;
    result?;

    let mut report = serde_json::Map::new();
    report.insert("n".into(), json!(bench.args.n));
    report.insert("unrelated".into(), json!(bench.args.unrelated));
    report.insert("latency_ms".into(), json!(bench.args.latency_ms));
    for key in KEYS {
        if !report.contains_key(*key) {
            let value = bench.report.get(key).cloned().unwrap_or(Value::Null);
            report.insert(key.to_string(), value);
        }
    }
    report.insert("writes_by_resource".into(), json!(bench.writes_by_resource));
    report.insert("cpu_s_by_phase".into(), json!(bench.cpu_by_phase));
    print_table(&report);
    let json = Value::Object(report);
    let out = &bench.args.out;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ctx(format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&json).ctx("serializing the report")?;
    std::fs::write(out, text + "\n").ctx(format!("writing {}", out.display()))?;
    println!("\nwrote {}", out.display());
    Ok(json)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    match main_inner(args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale: {e}");
            ExitCode::FAILURE
        }
    }
}
