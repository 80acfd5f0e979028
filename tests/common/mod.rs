//! Integration test harness: the real local control plane (started by `xtask/cluster.sh` when
//! none runs), a namespace per test, the operator in-process scoped to that namespace, and the
//! fake vendor APIs.
// Each test binary uses a part of this harness.
#![allow(dead_code, unused_imports)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use tokensync::controller::{self, Config, Context};
use tokensync::crd::ProviderCredential;

pub use tokensync_fakes::{FakeProviders, Fault, Vendor};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cluster_sh(args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(root().join("xtask/cluster.sh"))
        .args(args)
        .output()
        .expect("bash runs xtask/cluster.sh")
}

/// The admin kubeconfig of a running control plane; starts one when none runs. A control plane
/// that cannot start fails the test with the reason: tests that need it are never skipped.
fn kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let up = cluster_sh(&["up"]);
        assert!(
            up.status.success(),
            "the local control plane did not start:\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
        let out = cluster_sh(&["kubeconfig"]);
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Path of a cached tool (`kubectl`, `helm`).
pub fn tool(name: &str) -> String {
    let out = cluster_sh(&["bin", name]);
    assert!(out.status.success(), "no {name}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn kubeconfig_path() -> PathBuf {
    kubeconfig().to_path_buf()
}

/// Logs of every operator this test binary runs, to grep for secrets.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;
impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::new("info,tokensync=trace,kube=debug");
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| Capture)
            .with_ansi(false)
            .init();
    });
}

pub async fn client() -> Client {
    init_logging();
    let path = tokio::task::spawn_blocking(kubeconfig).await.unwrap();
    let kc = Kubeconfig::read_from(path).expect("kubeconfig reads");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    let client = Client::try_from(config).expect("client builds");
    install_crd(&client).await;
    client
}

/// Apply the generated CRD from `crds/` (so the tests exercise the file that ships) and wait
/// until it is established.
async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(root().join("crds/tokensync.dev_providercredentials.yaml"))
        .expect("crds/ exists: run cargo xtask gen");
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("tokensync-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applies");
    eventually("CRD established", Duration::from_secs(30), || async {
        let crd = api.get(&crd.name_any()).await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

/// The usual start of a test: a client, a namespace of its own, and the fake vendor APIs.
pub async fn setup(prefix: &str) -> (Client, TestNs, FakeProviders) {
    let client = client().await;
    let ns = TestNs::new(&client, prefix).await;
    let fakes = FakeProviders::start(0).await.unwrap();
    (client, ns, fakes)
}

/// Poll `f` every 200 ms until it gives `Some`; panic naming `what` after `timeout`. The
/// timeout bounds a wait for a state; it is not a measure of speed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            if let Some(path) = std::env::var_os("TOKENSYNC_TEST_LOG_DUMP") {
                let _ = std::fs::write(path, captured_logs());
            }
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace of its own for one test.
pub struct TestNs {
    pub client: Client,
    pub name: String,
}

impl TestNs {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{:x}", nanos ^ std::process::id());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"tokensync.dev/test": "true"}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
        Self {
            client: client.clone(),
            name,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Apply a multi-document manifest (Secrets and ProviderCredentials) into this namespace.
    pub async fn apply(&self, manifest: &str) {
        for doc in manifest.split("\n---") {
            let value: serde_json::Value = match serde_saphyr::from_str(doc) {
                Ok(v) if !v_is_null(&v) => v,
                _ => continue,
            };
            let pp = PatchParams::apply("tokensync-tests").force();
            match value["kind"].as_str() {
                Some("Secret") => {
                    let s: Secret = serde_json::from_value(value).unwrap();
                    self.api::<Secret>()
                        .patch(&s.name_any(), &pp, &Patch::Apply(&s))
                        .await
                        .unwrap();
                }
                Some("ProviderCredential") => {
                    let p: ProviderCredential = serde_json::from_value(value).unwrap();
                    self.api::<ProviderCredential>()
                        .patch(&p.name_any(), &pp, &Patch::Apply(&p))
                        .await
                        .unwrap();
                }
                other => panic!("unexpected kind {other:?} in a manifest"),
            }
        }
    }

    /// Apply `examples/NAME` with its vendor URLs pointed at `fakes`.
    pub async fn apply_example(&self, name: &str, fakes: &FakeProviders) {
        let text = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
        self.apply(&tokensync_fakes::rewrite_urls(&text, &fakes.base_url()))
            .await;
    }

    pub async fn pcred(&self, name: &str) -> ProviderCredential {
        self.api::<ProviderCredential>().get(name).await.unwrap()
    }

    /// Wait until `name`'s Ready condition has `status` (and `reason`, when given).
    pub async fn wait_ready(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> ProviderCredential {
        let api = self.api::<ProviderCredential>();
        let pc = eventually(
            &format!("{name} Ready={status} {reason:?}"),
            Duration::from_secs(60),
            || async {
                let pc = api.get(name).await.ok()?;
                let c = ready(&pc)?;
                (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(pc)
            },
        )
        .await;
        // the event with the same reason follows the status write
        if let Some(reason) = reason.filter(|r| *r != "RenewalFailing") {
            self.wait_event(name, reason).await;
        }
        pc
    }

    /// Wait until an event about `name` has `reason`.
    pub async fn wait_event(&self, name: &str, reason: &str) {
        eventually(
            &format!("an event {reason} about {name}"),
            Duration::from_secs(30),
            || async {
                let events = self.events(name).await;
                events
                    .iter()
                    .any(|e| e.reason.as_deref() == Some(reason))
                    .then_some(())
            },
        )
        .await
    }

    /// Wait until a renewal of `name` fails with `reason` (its `Degraded` condition; `Ready`
    /// stays True while a valid token is in place).
    pub async fn wait_failing(&self, name: &str, reason: &str) -> ProviderCredential {
        let api = self.api::<ProviderCredential>();
        let pc = eventually(
            &format!("{name} Degraded=True {reason}"),
            Duration::from_secs(60),
            || async {
                let pc = api.get(name).await.ok()?;
                let c = degraded(&pc)?;
                (c.status == "True" && c.reason == reason).then_some(pc)
            },
        )
        .await;
        self.wait_event(name, reason).await;
        pc
    }

    /// The events about `name`.
    pub async fn events(&self, name: &str) -> Vec<Event> {
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
        self.api::<Event>().list(&lp).await.unwrap().items
    }

    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}

fn v_is_null(v: &serde_json::Value) -> bool {
    v.is_null()
}

pub fn ready(
    pc: &ProviderCredential,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn degraded(
    pc: &ProviderCredential,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
}

pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Every distinct value a Secret's key took, in order, seen through a watch.
pub struct TokenLog {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub value: String,
    pub issued_at: Option<jiff::Timestamp>,
    pub expires_at: Option<jiff::Timestamp>,
}

impl TokenLog {
    pub fn start(ns: &TestNs, secret: &str, key: &str) -> Self {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api = ns.api::<Secret>();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={secret}"));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        let key = key.to_string();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, cfg).applied_objects().boxed();
            while let Some(Ok(s)) = stream.next().await {
                let Some(value) = secret_text(&s, &key) else {
                    continue;
                };
                let time = |k: &str| s.annotations().get(k).and_then(|v| v.parse().ok());
                let mut seen = sink.lock().unwrap();
                if seen.last().is_none_or(|l: &Seen| l.value != value) {
                    seen.push(Seen {
                        value,
                        issued_at: time("tokensync.dev/issued-at"),
                        expires_at: time("tokensync.dev/expires-at"),
                    });
                }
            }
        });
        Self { seen, task }
    }

    pub fn values(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `n` distinct values were written.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Seen> {
        eventually(&format!("{n} distinct tokens"), timeout, || async {
            let v = self.values();
            (v.len() >= n).then_some(v)
        })
        .await
    }

    /// Every token the fake issued for `vendor` was written to the Secret, once: no token request
    /// was wasted or duplicated (one request per rotation).
    pub async fn assert_every_issued_token_written(&self, fakes: &FakeProviders, vendor: Vendor) {
        let issued: Vec<String> = fakes
            .state
            .issued(vendor)
            .into_iter()
            .map(|i| i.token)
            .collect();
        eventually(
            "the Secret saw every issued token",
            Duration::from_secs(10),
            || async {
                let seen: Vec<String> = self.values().into_iter().map(|s| s.value).collect();
                (seen == issued).then_some(())
            },
        )
        .await;
        let distinct: std::collections::BTreeSet<&String> = issued.iter().collect();
        assert_eq!(distinct.len(), issued.len(), "a token was issued twice");
    }

    /// Each token was replaced before it expired.
    pub fn assert_renewed_before_expiry(&self) {
        let seen = self.values();
        for pair in seen.windows(2) {
            let (old, new) = (&pair[0], &pair[1]);
            if let (Some(expired), Some(issued)) = (old.expires_at, new.issued_at) {
                assert!(
                    issued < expired,
                    "a token was replaced at {issued}, after it expired at {expired}"
                );
            }
        }
    }
}

impl Drop for TokenLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator, in-process, watching one namespace.
pub struct Operator {
    pub ctx: Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    pub fn start(client: &Client, namespace: &str) -> Self {
        Self::start_with(
            client,
            Config {
                namespaces: vec![namespace.into()],
                allow_insecure_http: true,
                ..Config::default()
            },
        )
    }

    pub fn start_with(client: &Client, config: Config) -> Self {
        let ctx = Arc::new(Context::new(client.clone(), config).unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(ctx.clone(), async {
            let _ = rx.await;
        }));
        Self {
            ctx,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Run the controller only while holding the Lease `lease` in `namespace`.
    pub fn start_elected(
        client: &Client,
        namespace: &str,
        lease: &str,
        identity: &str,
        duration: u64,
    ) -> Self {
        let config = Config {
            namespaces: vec![namespace.into()],
            allow_insecure_http: true,
            leader_election: true,
            ..Config::default()
        };
        let ctx = Arc::new(Context::new(client.clone(), config).unwrap());
        let lease = tokensync::election::LeaseConfig {
            name: lease.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration_seconds: duration,
            grace_seconds: 1,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = ctx.clone();
        let task = tokio::spawn(async move {
            tokensync::election::run(c, lease, async {
                let _ = rx.await;
            })
            .await
            .expect("leader election runs");
        });
        Self {
            ctx,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Kill: no graceful shutdown, no lease release.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// The operator's /metrics text.
    pub fn metrics(&self) -> String {
        self.ctx.metrics.encode()
    }

    /// Stop gracefully: in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// oidc-provider (npm), a real OpenID Certified OAuth 2.0 server, on loopback.
pub struct OidcServer {
    pub base: String,
    _child: tokio::process::Child,
}

pub const OIDC_CLIENT_SECRET: &str = "oidc-secret-&=+%/";

fn oidc_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = root().join("tests/oidc");
        let cache = std::env::var_os("TOKENSYNC_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tokensync")
            });
        let package = std::fs::read_to_string(src.join("package.json")).unwrap();
        // one install per package.json content, reused across runs
        let dir = cache.join(format!(
            "oidc-provider-{}",
            tokensync::token::fingerprint(package.as_bytes())
        ));
        if !dir.join("node_modules/oidc-provider/package.json").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("package.json"), &package).unwrap();
            let out = std::process::Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .output()
                .expect("npm runs");
            assert!(
                out.status.success(),
                "npm install oidc-provider failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

impl OidcServer {
    /// Start with access tokens living `access_ttl` seconds.
    pub async fn start(access_ttl: u64) -> Self {
        use tokio::io::AsyncBufReadExt;
        let dir = tokio::task::spawn_blocking(oidc_dir).await.unwrap();
        std::fs::copy(root().join("tests/oidc/server.mjs"), dir.join("server.mjs")).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg("server.mjs")
            .current_dir(dir)
            .env("ACCESS_TTL", access_ttl.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("oidc-provider starts")
            .unwrap()
            .expect("oidc-provider prints its URL");
        Self {
            base,
            _child: child,
        }
    }

    /// A fresh authorization code for `tokensync-post`, as a person would get in a browser.
    pub async fn code(&self) -> String {
        let v: serde_json::Value = reqwest::get(format!("{}/test/code", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["code"].as_str().unwrap().to_string()
    }
}

/// A private CA and a server certificate for 127.0.0.1 it signed (made with openssl).
pub struct PrivateCa {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl PrivateCa {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tokensync-ca-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(script)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=tokensync-test-private-ca 2>/dev/null",
        );
        sh(
            "openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null \
            && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > ext \
            && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.crt 2>/dev/null",
        );
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let ca = Self {
            ca_pem: read("ca.crt"),
            cert_pem: read("server.crt"),
            key_pem: read("server.key"),
        };
        std::fs::remove_dir_all(&dir).unwrap();
        ca
    }
}

/// A real Keycloak on loopback (`xtask/keycloak.sh`: a Java 21 runtime from PyPI and the Keycloak
/// distribution from Maven Central, both cached), with the realm `dcp` of
/// `tests/keycloak/dcp-realm.json` imported into an in-memory database: the Dronetag realm's
/// settings with short lifetimes. One per test binary, shared by its tests; it stops when the
/// test binary exits (the script watches this process).
pub struct KeycloakServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// How long installing (when not cached) and starting took.
    pub started_in: Duration,
    pub log: PathBuf,
}

/// The realm's client secret (as in the examples: characters that need form-encoding).
pub const KEYCLOAK_CLIENT_SECRET: &str = tokensync_fakes::CLIENT_SECRET;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status of a plain-http GET to a loopback `url`, without a client library (blocking).
fn http_status(url: &str) -> Option<u16> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl KeycloakServer {
    /// The shared server, started on first use (blocking: call from `spawn_blocking`, or use
    /// [`KeycloakServer::get`]). A Keycloak that cannot start fails the test with its log.
    pub fn shared() -> &'static KeycloakServer {
        static SERVER: OnceLock<KeycloakServer> = OnceLock::new();
        SERVER.get_or_init(Self::start)
    }

    pub async fn get() -> &'static KeycloakServer {
        tokio::task::spawn_blocking(Self::shared).await.unwrap()
    }

    fn start() -> Self {
        let started = std::time::Instant::now();
        let install = cluster_like("keycloak.sh", &["install"]);
        assert!(
            install.status.success(),
            "Keycloak could not be installed:\n{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let (port, mgmt) = (free_port(), free_port());
        let log = std::env::temp_dir().join(format!("tokensync-keycloak-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = std::process::Command::new("bash")
            .arg(root().join("xtask/keycloak.sh"))
            .args(["run", &port.to_string(), &mgmt.to_string()])
            .arg(root().join("tests/keycloak/dcp-realm.json"))
            .arg(std::process::id().to_string())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("bash runs xtask/keycloak.sh");
        let base = format!("http://127.0.0.1:{port}");
        let discovery = format!("{base}/realms/dcp/.well-known/openid-configuration");
        // a cold first start builds Keycloak's configuration; on 2 busy cores that takes minutes
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            if http_status(&discovery) == Some(200) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "Keycloak exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Keycloak did not answer in 10 minutes:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let started_in = started.elapsed();
        eprintln!(
            "Keycloak at {base} ready in {started_in:.1?} (log: {})",
            log.display()
        );
        Self {
            base,
            started_in,
            log,
        }
    }

    /// The realm `dcp`'s issuer, as Keycloak names it.
    pub fn issuer(&self) -> String {
        format!("{}/realms/dcp", self.base)
    }

    pub fn token_url(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    pub fn userinfo_url(&self) -> String {
        format!("{}/protocol/openid-connect/userinfo", self.issuer())
    }

    /// A manifest from `examples/` with Dronetag's auth host pointed at this Keycloak (and the
    /// other vendor hosts at `fakes`, when given).
    pub fn example(&self, name: &str, fakes: Option<&FakeProviders>) -> String {
        let text = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
        let text = text.replace("https://auth.dronetag.app/realms/dcp", &self.issuer());
        match fakes {
            Some(f) => tokensync_fakes::rewrite_urls(&text, &f.base_url()),
            None => text,
        }
    }
}

/// Run one of the project's scripts in `xtask/`.
fn cluster_like(script: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(root().join("xtask").join(script))
        .args(args)
        .output()
        .expect("bash runs the script")
}

/// The claims of a JWT, without verifying it.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
