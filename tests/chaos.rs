//! Chaos soak (ignored by the normal suite; run it with `cargo xtask chaos [--minutes N]`).
//!
//! 20 mixed ProviderCredentials from `examples/` in one namespace, token lifetimes of 30-60 s,
//! the operator as a separate process (the built `tokensync run`) SIGKILLed at random moments
//! and restarted 0-5 s later, and random vendor faults (500/503, hung connections, 429 with
//! Retry-After, empty-bodied statuses, malformed bodies) switched on and off. After the chaos
//! phase every fault is cleared and the operator runs undisturbed for one token lifetime plus
//! 30 s, so that what is left broken is broken for good.
//!
//! Every output Secret is sampled every second. The run prints a table and writes it as JSON
//! (`CHAOS_OUT`, default `target/chaos.json`):
//! - expired tokens served while healthy: distinct tokens an output Secret held after they had
//!   expired (by the fake's own record of the token, else the `tokensync.dev/expires-at`
//!   annotation), at a moment when every vendor the credential needs had been healthy for longer
//!   than one token lifetime (target 0);
//! - authorization-code credentials lost: ended needing a person (NeedsNewInputs or
//!   RefreshTokenRejected was seen), never got a token after the code's, or hold no live token at
//!   the end (target 0);
//! - token requests per credential per token lifetime while settled (healthy for longer than one
//!   lifetime): from the fakes' counters, sampled every second. A renewal at two thirds of the
//!   lifetime (the default policy, and the examples') costs 1.5 per lifetime, so the table shows
//!   the ratio to that too (target <= 1.05);
//! - peak token requests per minute per failing credential, over the vendor's fault windows.
//!
//! It asserts nothing about the operator: it fails only when the harness itself breaks.
//! With `CHAOS_LIES=1`, a seventh of the fault windows are lies instead: the vendor answers an
//! absurd `expires_in` (`1e15`, `-30`, `0`, `"3600"`, a year) or absolute expiry for tokens that
//! really live their short lifetime. An operator that believes them serves expired tokens after
//! the lie ends; it is off by default because no operator can be blamed for all of it.
//!
//! Environment: `CHAOS_MINUTES` (default 10; fractions allowed), `CHAOS_SEED` (default: from the
//! clock; printed), `CHAOS_OUT`, `CHAOS_TOKENSYNC_BIN` (the operator binary; default the one
//! cargo built for this test), `KUBECONFIG`. The operator's log goes to `target/chaos-operator.log`
//! (or `CHAOS_LOG`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokensync::crd::ProviderCredential;
use tokensync_fakes::State;

/// Token lifetimes the fakes give, per vendor (seconds).
const LIFETIMES: [(Vendor, u64); 6] = [
    (Vendor::AltitudeAngel, 30),
    (Vendor::Pix4d, 45),
    (Vendor::Dronetag, 40),
    (Vendor::DronetagPat, 60),
    (Vendor::AirMap, 50),
    (Vendor::JsonLogin, 35),
];
/// Dronetag login sessions (refresh tokens) live this long: new password grants happen too.
const DRONETAG_SESSION: u64 = 150;
/// Token requests per lifetime of a renewal at two thirds of the lifetime.
const EXPECTED_PER_LIFETIME: f64 = 1.5;
const CODE_PLACEHOLDER: &str = "paste-the-authorization-code-here";

/// What the namespace holds: an example, how many copies, the vendor whose token the output
/// holds, and every vendor the credential needs.
struct Plan {
    example: &'static str,
    copies: usize,
    vendor: Vendor,
    needs: &'static [Vendor],
    authorization_code: bool,
}

const PLANS: &[Plan] = &[
    Plan {
        example: "altitude-angel-client-credentials.yaml",
        copies: 4,
        vendor: Vendor::AltitudeAngel,
        needs: &[Vendor::AltitudeAngel],
        authorization_code: false,
    },
    Plan {
        example: "pix4d-client-credentials.yaml",
        copies: 4,
        vendor: Vendor::Pix4d,
        needs: &[Vendor::Pix4d],
        authorization_code: false,
    },
    Plan {
        example: "dronetag-oidc.yaml",
        copies: 3,
        vendor: Vendor::Dronetag,
        needs: &[Vendor::Dronetag],
        authorization_code: false,
    },
    // minted with the token of dronetag-0
    Plan {
        example: "dronetag-pat.yaml",
        copies: 1,
        vendor: Vendor::DronetagPat,
        needs: &[Vendor::Dronetag, Vendor::DronetagPat],
        authorization_code: false,
    },
    Plan {
        example: "airmap.yaml",
        copies: 3,
        vendor: Vendor::AirMap,
        needs: &[Vendor::AirMap],
        authorization_code: false,
    },
    Plan {
        example: "json-login-platform.yaml",
        copies: 3,
        vendor: Vendor::JsonLogin,
        needs: &[Vendor::JsonLogin],
        authorization_code: false,
    },
    Plan {
        example: "altitude-angel-user-token.yaml",
        copies: 2,
        vendor: Vendor::AltitudeAngel,
        needs: &[Vendor::AltitudeAngel],
        authorization_code: true,
    },
];

fn lifetime(vendor: Vendor) -> u64 {
    LIFETIMES
        .iter()
        .find(|(v, _)| *v == vendor)
        .map(|(_, l)| *l)
        .unwrap_or(60)
}

/// Vendors a credential whose output holds `vendor`'s token needs.
fn needs(vendor: Vendor) -> &'static [Vendor] {
    PLANS
        .iter()
        .find(|p| p.vendor == vendor)
        .map(|p| p.needs)
        .unwrap_or(&[])
}

/// Whether a counter route of the fakes is a token request to `vendor` (not discovery, not a
/// revocation, not the second counter of a rejected refresh).
fn is_token_request(vendor: Vendor, route: &str) -> bool {
    match vendor {
        Vendor::AltitudeAngel => route.starts_with("altitude-angel token "),
        Vendor::Pix4d => route.starts_with("pix4d token "),
        Vendor::Dronetag => route.starts_with("dronetag token ") && !route.ends_with(" rejected"),
        Vendor::DronetagPat => route == "dronetag-pat pats",
        Vendor::AirMap => route == "airmap ro" || route == "airmap delegation",
        Vendor::JsonLogin => route == "json-login login" || route == "json-login tokens create",
    }
}

fn token_requests(state: &State, vendor: Vendor) -> u64 {
    state
        .counters()
        .iter()
        .filter(|(route, _)| is_token_request(vendor, route))
        .map(|(_, n)| n)
        .sum()
}

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo * 1000, hi * 1000))
    }
}

fn random_fault(rng: &mut Rng) -> Fault {
    match rng.range(0, 5) {
        0 => Fault::Status(500),
        1 => Fault::Status(503),
        2 => Fault::Hang,
        3 => Fault::RateLimited {
            retry_after_secs: rng.range(5, 30),
        },
        4 => Fault::EmptyStatus([400, 502, 503][rng.range(0, 2) as usize]),
        _ => Fault::Malformed,
    }
}

/// What a vendor does wrong in a window: a fault, or (with `CHAOS_LIES=1`) answering an absurd
/// expiry for the tokens it issues, which really live their configured lifetime.
#[derive(Clone, Debug)]
enum Trouble {
    Fault(Fault),
    /// `(expires_in, absolute expiry)` answered instead of the truth, where the vendor has them.
    Lie(Option<Value>, Option<Value>),
}

impl Trouble {
    fn random(rng: &mut Rng, vendor: Vendor, lies: bool) -> Self {
        if !lies || rng.range(0, 6) != 0 {
            return Trouble::Fault(random_fault(rng));
        }
        let pick = |rng: &mut Rng, values: &[Value]| {
            values[rng.range(0, values.len() as u64 - 1) as usize].clone()
        };
        match vendor {
            Vendor::JsonLogin => Trouble::Lie(
                None,
                Some(pick(rng, &[json!(1e18), json!(-1), json!("tomorrow")])),
            ),
            Vendor::DronetagPat => Trouble::Lie(
                None,
                Some(pick(
                    rng,
                    &[json!("9999-12-31T23:59:59Z"), json!("soon"), json!(0)],
                )),
            ),
            _ => Trouble::Lie(
                Some(pick(
                    rng,
                    &[
                        json!(1e15),
                        json!(-30),
                        json!(0),
                        json!("3600"),
                        json!(31536000),
                    ],
                )),
                None,
            ),
        }
    }

    fn apply(&self, state: &State, vendor: Vendor) {
        match self {
            Trouble::Fault(f) => state.set_fault(vendor, f.clone()),
            Trouble::Lie(expires_in, expires_at) => {
                state.set_expires_in_override(vendor, expires_in.clone());
                state.set_expires_at_override(vendor, expires_at.clone());
            }
        }
    }

    fn clear(state: &State, vendor: Vendor) {
        state.clear_fault(vendor);
        state.set_expires_in_override(vendor, None);
        state.set_expires_at_override(vendor, None);
    }

    fn to_json(&self) -> Value {
        match self {
            Trouble::Fault(f) => json!(f),
            Trouble::Lie(expires_in, expires_at) => {
                json!({"lie": {"expires_in": expires_in, "expires_at": expires_at}})
            }
        }
    }
}

/// When each vendor was faulty, in seconds since the run started.
#[derive(Default)]
struct Health {
    windows: BTreeMap<Vendor, Vec<Window>>,
}

#[derive(Clone, Debug)]
struct Window {
    trouble: Trouble,
    start: f64,
    end: Option<f64>,
}

impl Health {
    fn open(&mut self, vendor: Vendor, trouble: Trouble, at: f64) {
        self.windows.entry(vendor).or_default().push(Window {
            trouble,
            start: at,
            end: None,
        });
    }

    fn close(&mut self, vendor: Vendor, at: f64) {
        if let Some(w) = self
            .windows
            .get_mut(&vendor)
            .and_then(|ws| ws.last_mut())
            .filter(|w| w.end.is_none())
        {
            w.end = Some(at);
        }
    }

    /// Any trouble (fault or lie) during `a..=b`.
    fn faulty_during(&self, vendor: Vendor, a: f64, b: f64) -> bool {
        self.windows.get(&vendor).is_some_and(|ws| {
            ws.iter()
                .any(|w| w.start <= b && w.end.is_none_or(|e| e >= a))
        })
    }

    /// A fault (requests fail) during `a..=b`.
    fn failing_during(&self, vendor: Vendor, a: f64, b: f64) -> bool {
        self.windows.get(&vendor).is_some_and(|ws| {
            ws.iter().any(|w| {
                matches!(w.trouble, Trouble::Fault(_))
                    && w.start <= b
                    && w.end.is_none_or(|e| e >= a)
            })
        })
    }

    /// Since when `vendor` has been healthy at `t` (0: the run's start); `None` if faulty at `t`.
    fn healthy_since(&self, vendor: Vendor, t: f64) -> Option<f64> {
        let mut since = 0.0;
        for w in self.windows.get(&vendor).into_iter().flatten() {
            if w.start > t {
                break;
            }
            match w.end {
                Some(e) if e <= t => since = e,
                _ => return None,
            }
        }
        Some(since)
    }

    /// Every vendor in `vendors` healthy throughout `a..=b` and for longer than `lifetime` before `a`.
    fn settled(&self, vendors: &[Vendor], lifetime: u64, a: f64, b: f64) -> bool {
        vendors.iter().all(|v| {
            !self.faulty_during(*v, a, b)
                && self
                    .healthy_since(*v, a)
                    .is_some_and(|since| a - since > lifetime as f64)
        })
    }
}

/// The operator as a separate process.
struct OperatorProcess {
    binary: PathBuf,
    namespace: String,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    starts: u32,
    kills: u32,
    /// Exits the harness did not cause (a crash), with their status.
    exits: Vec<String>,
}

impl OperatorProcess {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the operator log opens");
        let child = tokio::process::Command::new(&self.binary)
            .args([
                "run",
                "--namespace",
                &self.namespace,
                "--allow-insecure-http",
                "--http-addr",
                "127.0.0.1:0",
                "--request-timeout",
                "5",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("the log file clones"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the tokensync binary starts");
        self.child = Some(child);
        self.starts += 1;
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no graceful shutdown.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
            self.kills += 1;
        }
    }

    /// Notice an exit the harness did not cause; `true` if the operator is gone.
    fn reap(&mut self, at: f64) -> bool {
        let exited = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        if let Some(status) = exited {
            eprintln!("chaos: t={at:.0}s the operator exited by itself: {status}");
            self.exits.push(format!("t={at:.0}s {status}"));
            self.child = None;
        }
        self.child.is_none()
    }
}

/// Run chaos until `end`: SIGKILLs every 20-90 s (restart after 0-5 s), and per vendor
/// alternating healthy spells of 45-150 s and fault spells of 10-60 s.
async fn drive(
    state: Arc<State>,
    health: Arc<Mutex<Health>>,
    mut operator: OperatorProcess,
    mut rng: Rng,
    start: Instant,
    end: Instant,
    lies: bool,
) -> OperatorProcess {
    let at = |t: Instant| t.duration_since(start).as_secs_f64();
    let mut next_kill = Instant::now() + rng.secs(20, 90);
    let mut restart_at: Option<Instant> = None;
    let mut next_toggle: BTreeMap<Vendor, Instant> = Vendor::ALL
        .iter()
        .map(|v| (*v, start + rng.secs(20, 90)))
        .collect();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if operator.running() && operator.reap(at(now)) {
            restart_at = Some(now + rng.secs(0, 5));
        }
        if operator.running() && now >= next_kill {
            operator.kill().await;
            let delay = rng.secs(0, 5);
            eprintln!(
                "chaos: t={:.0}s SIGKILL the operator; restart in {:.1}s",
                at(now),
                delay.as_secs_f64()
            );
            restart_at = Some(now + delay);
        }
        if !operator.running() && restart_at.is_some_and(|r| now >= r) {
            operator.start();
            restart_at = None;
            next_kill = now + rng.secs(20, 90);
        }
        for vendor in Vendor::ALL {
            if now < next_toggle[&vendor] {
                continue;
            }
            let mut h = health.lock().unwrap();
            if h.faulty_during(vendor, at(now), at(now)) {
                Trouble::clear(&state, vendor);
                h.close(vendor, at(now));
                eprintln!("chaos: t={:.0}s {} healthy", at(now), vendor.name());
                next_toggle.insert(vendor, now + rng.secs(45, 150));
            } else {
                let trouble = Trouble::random(&mut rng, vendor, lies);
                eprintln!("chaos: t={:.0}s {} {trouble:?}", at(now), vendor.name());
                trouble.apply(&state, vendor);
                h.open(vendor, trouble, at(now));
                next_toggle.insert(vendor, now + rng.secs(10, 60));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the chaos ends: faults off, the operator up
    let now = Instant::now();
    {
        let mut h = health.lock().unwrap();
        for vendor in Vendor::ALL {
            Trouble::clear(&state, vendor);
            h.close(vendor, at(now));
        }
    }
    operator.reap(at(now));
    if !operator.running() {
        operator.start();
    }
    operator
}

/// One credential and what was seen of it.
struct Cred {
    name: String,
    secret: String,
    vendor: Vendor,
    needs: &'static [Vendor],
    authorization_code: bool,
    lifetime: u64,
    tokens: BTreeSet<String>,
    expired_served: BTreeSet<String>,
    expired_seconds: u64,
    revoked_served: BTreeSet<String>,
    missing_seconds: u64,
    reasons: BTreeSet<String>,
    last_reason: Option<String>,
    /// Whether the last sample's token was alive (by the fake's record).
    alive_at_end: bool,
}

/// Requests to one vendor, by the state the vendor was in.
#[derive(Default)]
struct VendorLoad {
    settled_seconds: f64,
    settled_requests: u64,
    fault_seconds: f64,
    fault_requests: u64,
    other_requests: u64,
    /// (time, requests) of each sample interval inside a fault window.
    fault_timeline: Vec<(f64, u64)>,
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Parse an example into its documents, renamed with `-{i}` (the PAT's upstream to `dronetag-0`).
fn instance(example: &str, i: usize, base: &str, code: Option<String>) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("examples").join(example)).unwrap();
    let mut text = tokensync_fakes::rewrite_urls(&text, base);
    if let Some(code) = code {
        text = text.replace(CODE_PLACEHOLDER, &code);
    }
    let suffix = |v: &mut Value| {
        if let Some(s) = v.as_str() {
            *v = Value::String(format!("{s}-{i}"));
        }
    };
    text.split("\n---")
        .map(|doc| {
            serde_saphyr::from_str::<Value>(doc)
                .unwrap_or_else(|e| panic!("examples/{example} does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .map(|mut v| {
            suffix(&mut v["metadata"]["name"]);
            if v["kind"] == "ProviderCredential" {
                suffix(&mut v["spec"]["inputs"]["secretName"]);
                suffix(&mut v["spec"]["output"]["secretName"]);
                // (pointer_mut, not indexing: indexing would add the missing objects)
                if let Some(up) = v.pointer_mut("/spec/http/upstream/providerCredential") {
                    *up = Value::String(format!("{}-0", up.as_str().unwrap_or("")));
                }
            }
            v
        })
        .collect()
}

async fn create(ns: &TestNs, doc: Value) {
    let pp = PostParams::default();
    match doc["kind"].as_str() {
        Some("Secret") => {
            let s: Secret = serde_json::from_value(doc).unwrap();
            ns.api::<Secret>().create(&pp, &s).await.unwrap();
        }
        Some("ProviderCredential") => {
            let p: ProviderCredential = serde_json::from_value(doc).unwrap();
            ns.api::<ProviderCredential>()
                .create(&pp, &p)
                .await
                .unwrap();
        }
        other => panic!("unexpected kind {other:?} in an example"),
    }
}

fn ready_reason(pc: &ProviderCredential) -> Option<String> {
    ready(pc).map(|c| format!("{}/{}", c.status, c.reason))
}

#[tokio::test]
#[ignore = "a soak of CHAOS_MINUTES (default 10); run with `cargo xtask chaos`"]
async fn chaos() {
    let minutes: f64 = std::env::var("CHAOS_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|m: &f64| *m > 0.0)
        .unwrap_or(10.0);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let lies = std::env::var("CHAOS_LIES").is_ok_and(|v| v == "1");
    let out = std::env::var_os("CHAOS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/chaos.json"));
    let log = std::env::var_os("CHAOS_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/chaos-operator.log"));
    for path in [&out, &log] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
    }
    let _ = std::fs::remove_file(&log);
    let max_lifetime = LIFETIMES.iter().map(|(_, l)| *l).max().unwrap_or(60);
    let recovery = Duration::from_secs(max_lifetime + 30);
    eprintln!(
        "chaos: seed {seed} (CHAOS_SEED={seed} reproduces the schedule), {minutes} min of chaos + {}s of recovery; operator log {}",
        recovery.as_secs(),
        log.display()
    );
    let mut rng = Rng::new(seed);

    let (_client, ns, fakes) = setup("chaos").await;
    for (vendor, seconds) in LIFETIMES {
        fakes.state.set_lifetime(vendor, seconds);
    }
    fakes
        .state
        .set_refresh_lifetime(Vendor::Dronetag, DRONETAG_SESSION);

    // the credentials, upstreams first
    let mut creds: Vec<Cred> = Vec::new();
    for plan in PLANS {
        for i in 0..plan.copies {
            let code = plan
                .authorization_code
                .then(|| fakes.state.issue_code(Vendor::AltitudeAngel));
            for doc in instance(plan.example, i, &fakes.base_url(), code) {
                if doc["kind"] == "ProviderCredential" {
                    creds.push(Cred {
                        name: doc["metadata"]["name"].as_str().unwrap().to_string(),
                        secret: doc["spec"]["output"]["secretName"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        vendor: plan.vendor,
                        needs: plan.needs,
                        authorization_code: plan.authorization_code,
                        lifetime: lifetime(plan.vendor),
                        tokens: BTreeSet::new(),
                        expired_served: BTreeSet::new(),
                        expired_seconds: 0,
                        revoked_served: BTreeSet::new(),
                        missing_seconds: 0,
                        reasons: BTreeSet::new(),
                        last_reason: None,
                        alive_at_end: false,
                    });
                }
                create(&ns, doc).await;
            }
        }
    }
    eprintln!(
        "chaos: {} ProviderCredentials in namespace {}",
        creds.len(),
        ns.name
    );

    // a private copy of the binary: the shared target directory may get a new build meanwhile
    let binary = log.with_file_name(format!("chaos-tokensync-{}", std::process::id()));
    let built = std::env::var_os("CHAOS_TOKENSYNC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tokensync")));
    eprintln!("chaos: operator binary {}", built.display());
    std::fs::copy(&built, &binary).expect("the tokensync binary copies");
    let mut operator = OperatorProcess {
        binary: binary.clone(),
        namespace: ns.name.clone(),
        kubeconfig: kubeconfig_path(),
        log: log.clone(),
        child: None,
        starts: 0,
        kills: 0,
        exits: Vec::new(),
    };
    operator.start();
    let start = Instant::now();
    let chaos_end = start + Duration::from_secs_f64(minutes * 60.0);
    let end = chaos_end + recovery;
    let health = Arc::new(Mutex::new(Health::default()));
    let driver = tokio::spawn(drive(
        fakes.state.clone(),
        health.clone(),
        operator,
        Rng::new(rng.next()),
        start,
        chaos_end,
        lies,
    ));

    // sample every second
    let secrets: Api<Secret> = ns.api();
    let pcs: Api<ProviderCredential> = ns.api();
    let mut load: BTreeMap<Vendor, VendorLoad> = BTreeMap::new();
    let mut last_counts: BTreeMap<Vendor, u64> = Vendor::ALL
        .iter()
        .map(|v| (*v, token_requests(&fakes.state, *v)))
        .collect();
    let mut last_t = 0.0;
    let mut failed_samples = 0u64;
    let mut samples = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64();
        // requests since the last sample, by the state each vendor was in
        {
            let h = health.lock().unwrap();
            for vendor in Vendor::ALL {
                let count = token_requests(&fakes.state, vendor);
                let delta = count - last_counts[&vendor];
                last_counts.insert(vendor, count);
                let l = load.entry(vendor).or_default();
                if h.failing_during(vendor, last_t, t) {
                    l.fault_seconds += t - last_t;
                    l.fault_requests += delta;
                    l.fault_timeline.push((t, delta));
                } else if h.faulty_during(vendor, last_t, t) {
                    l.other_requests += delta;
                } else if h.settled(needs(vendor), lifetime(vendor), last_t, t) {
                    l.settled_seconds += t - last_t;
                    l.settled_requests += delta;
                } else {
                    l.other_requests += delta;
                }
            }
        }
        last_t = t;
        // what the fakes know and the time, both taken before the Secrets are read: a token seen
        // in a Secret was served at or after `epoch`, and a token revoked in `issued` was
        // revoked before it was seen
        let epoch = now_epoch();
        let issued: BTreeMap<Vendor, BTreeMap<String, tokensync_fakes::Issued>> = Vendor::ALL
            .iter()
            .map(|v| {
                let by_token = fakes
                    .state
                    .issued(*v)
                    .into_iter()
                    .map(|i| (i.token.clone(), i))
                    .collect();
                (*v, by_token)
            })
            .collect();
        let all = ListParams::default();
        let (secret_list, pc_list) = match tokio::join!(secrets.list(&all), pcs.list(&all)) {
            (Ok(s), Ok(p)) => (s.items, p.items),
            _ => {
                failed_samples += 1;
                continue;
            }
        };
        samples += 1;
        let by_name: BTreeMap<String, &Secret> =
            secret_list.iter().map(|s| (s.name_any(), s)).collect();
        let reasons: BTreeMap<String, Option<String>> = pc_list
            .iter()
            .map(|p| (p.name_any(), ready_reason(p)))
            .collect();
        let h = health.lock().unwrap();
        for cred in &mut creds {
            if let Some(Some(reason)) = reasons.get(&cred.name) {
                cred.reasons.insert(reason.clone());
                cred.last_reason = Some(reason.clone());
            }
            let settled = h.settled(cred.needs, cred.lifetime, t, t);
            let secret = by_name.get(&cred.secret);
            let Some(token) = secret.and_then(|s| secret_text(s, "token")) else {
                cred.alive_at_end = false;
                if settled {
                    cred.missing_seconds += 1;
                }
                continue;
            };
            cred.tokens.insert(token.clone());
            let record = issued[&cred.vendor].get(&token);
            let annotated = secret
                .and_then(|s| s.annotations().get("tokensync.dev/expires-at").cloned())
                .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                .map(|ts| ts.as_second() as f64);
            // the fake's record is the truth; a token issued after the snapshot has only its
            // annotation
            let expires = record.map(|r| r.expires_at as f64).or(annotated);
            let expired = expires.is_some_and(|e| e <= epoch);
            let revoked = record.is_some_and(|r| r.revoked);
            cred.alive_at_end = !expired && !revoked;
            if settled && expired {
                if cred.expired_served.insert(token.clone()) {
                    eprintln!(
                        "chaos: t={t:.0}s {} serves an expired token (expired {:.0}s ago) while its vendors are healthy",
                        cred.name,
                        epoch
                            - record
                                .map(|r| r.expires_at as f64)
                                .or(annotated)
                                .unwrap_or(epoch)
                    );
                }
                cred.expired_seconds += 1;
            }
            if settled && revoked {
                cred.revoked_served.insert(token);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut operator = driver.await.expect("the chaos driver runs");
    operator.reap(elapsed);
    let operator_exits = operator.exits.clone();

    // clean up: the operator takes the finalizers off as it deletes, then it stops
    let _ = pcs
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        while !pcs
            .list(&ListParams::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .is_ok();
    operator.kill().await;
    if !gone {
        eprintln!("chaos: ProviderCredentials still there after 60 s; removing their finalizers");
        for pc in pcs
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let patch = json!({"metadata": {"finalizers": null}});
            let _ = pcs
                .patch(
                    &pc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
    }
    ns.delete().await;
    let _ = std::fs::remove_file(&binary);

    // the report
    let health = health.lock().unwrap();
    let report = report(
        &creds,
        &load,
        &health,
        Summary {
            seed,
            lies,
            minutes,
            recovery_seconds: recovery.as_secs(),
            elapsed,
            operator_starts: operator.starts,
            operator_kills: operator.kills,
            operator_exits,
            samples,
            failed_samples,
        },
    );
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("chaos: wrote {}", out.display());
}

struct Summary {
    seed: u64,
    lies: bool,
    minutes: f64,
    recovery_seconds: u64,
    elapsed: f64,
    operator_starts: u32,
    operator_kills: u32,
    operator_exits: Vec<String>,
    samples: u64,
    failed_samples: u64,
}

/// Why an authorization-code credential counts as lost, if it does.
fn lost(cred: &Cred) -> Option<String> {
    let needs_person = cred
        .reasons
        .iter()
        .find(|r| r.ends_with("/NeedsNewInputs") || r.ends_with("/RefreshTokenRejected"));
    if let Some(r) = needs_person {
        return Some(format!("was {r}"));
    }
    if cred.tokens.len() < 2 {
        return Some(format!(
            "{} distinct token(s) in its Secret: none after the code's",
            cred.tokens.len()
        ));
    }
    if !cred.alive_at_end {
        return Some("no live token at the end".into());
    }
    None
}

/// Most requests in any 60 s inside fault windows.
fn peak_per_minute(timeline: &[(f64, u64)]) -> u64 {
    timeline
        .iter()
        .map(|(t, _)| {
            timeline
                .iter()
                .filter(|(u, _)| *u > t - 60.0 && u <= t)
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn report(
    creds: &[Cred],
    load: &BTreeMap<Vendor, VendorLoad>,
    health: &Health,
    s: Summary,
) -> Value {
    let count = |v: Vendor| creds.iter().filter(|c| c.vendor == v).count();
    let expired: usize = creds.iter().map(|c| c.expired_served.len()).sum();
    let expired_seconds: u64 = creds.iter().map(|c| c.expired_seconds).sum();
    let revoked: usize = creds.iter().map(|c| c.revoked_served.len()).sum();
    let missing_seconds: u64 = creds.iter().map(|c| c.missing_seconds).sum();
    let code_creds: Vec<&Cred> = creds.iter().filter(|c| c.authorization_code).collect();
    let lost_creds: Vec<(String, String)> = code_creds
        .iter()
        .filter_map(|c| lost(c).map(|why| (c.name.clone(), why)))
        .collect();

    let mut vendors = Vec::new();
    let (mut all_requests, mut all_lifetimes) = (0u64, 0.0f64);
    let mut peak_overall: Option<f64> = None;
    for vendor in Vendor::ALL {
        let l = load.get(&vendor);
        let n = count(vendor);
        let settled_seconds = l.map_or(0.0, |l| l.settled_seconds);
        let settled_requests = l.map_or(0, |l| l.settled_requests);
        let lifetimes = n as f64 * settled_seconds / lifetime(vendor) as f64;
        let per_lifetime = (lifetimes > 0.0).then(|| settled_requests as f64 / lifetimes);
        all_requests += settled_requests;
        all_lifetimes += lifetimes;
        let fault_seconds = l.map_or(0.0, |l| l.fault_seconds);
        let peak = (fault_seconds > 0.0 && n > 0).then(|| {
            peak_per_minute(&l.map(|l| l.fault_timeline.clone()).unwrap_or_default()) as f64
                / n as f64
        });
        if let Some(p) = peak {
            peak_overall = Some(peak_overall.map_or(p, |o: f64| o.max(p)));
        }
        let windows: Vec<Value> = health
            .windows
            .get(&vendor)
            .into_iter()
            .flatten()
            .map(|w| json!({"fault": w.trouble.to_json(), "start_s": round2(w.start), "end_s": w.end.map(round2)}))
            .collect();
        vendors.push(json!({
            "vendor": vendor.name(),
            "credentials": n,
            "lifetime_s": lifetime(vendor),
            "settled_seconds": round2(settled_seconds),
            "settled_requests": settled_requests,
            "requests_per_credential_per_lifetime": per_lifetime.map(round2),
            "requests_per_expected_renewal": per_lifetime.map(|p| round2(p / EXPECTED_PER_LIFETIME)),
            "fault_seconds": round2(fault_seconds),
            "fault_requests": l.map_or(0, |l| l.fault_requests),
            "recovering_requests": l.map_or(0, |l| l.other_requests),
            "peak_requests_per_minute_per_failing_credential": peak.map(round2),
            "expired_tokens_served_while_healthy": creds.iter().filter(|c| c.vendor == vendor).map(|c| c.expired_served.len()).sum::<usize>(),
            "fault_windows": windows,
        }));
    }
    let per_lifetime = (all_lifetimes > 0.0).then(|| all_requests as f64 / all_lifetimes);
    let credentials: Vec<Value> = creds
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "vendor": c.vendor.name(),
                "authorization_code": c.authorization_code,
                "distinct_tokens": c.tokens.len(),
                "expired_tokens_served_while_healthy": c.expired_served.len(),
                "expired_seconds_while_healthy": c.expired_seconds,
                "revoked_tokens_served_while_healthy": c.revoked_served.len(),
                "seconds_without_token_while_healthy": c.missing_seconds,
                "ready_reasons_seen": c.reasons,
                "last_ready": c.last_reason,
                "lost": if c.authorization_code { lost(c) } else { None },
            })
        })
        .collect();
    let report = json!({
        "seed": s.seed,
        "chaos_minutes": s.minutes,
        "lies": s.lies,
        "recovery_seconds": s.recovery_seconds,
        "elapsed_seconds": round2(s.elapsed),
        "operator_starts": s.operator_starts,
        "operator_kills": s.operator_kills,
        "operator_exits_not_caused_by_the_harness": s.operator_exits,
        "samples": s.samples,
        "failed_samples": s.failed_samples,
        "summary": {
            "expired_tokens_served_while_healthy": expired,
            "expired_credential_seconds_while_healthy": expired_seconds,
            "revoked_tokens_served_while_healthy": revoked,
            "credential_seconds_without_token_while_healthy": missing_seconds,
            "authorization_code_credentials": code_creds.len(),
            "authorization_code_credentials_lost": lost_creds.len(),
            "lost": lost_creds.iter().map(|(n, why)| json!({"name": n, "why": why})).collect::<Vec<_>>(),
            "token_requests_per_credential_per_lifetime_settled": per_lifetime.map(round2),
            "token_requests_per_expected_renewal_settled": per_lifetime.map(|p| round2(p / EXPECTED_PER_LIFETIME)),
            "peak_requests_per_minute_per_failing_credential": peak_overall.map(round2),
        },
        "vendors": vendors,
        "credentials": credentials,
    });
    print_table(&report);
    report
}

fn print_table(r: &Value) {
    let s = &r["summary"];
    let show = |v: &Value| match v {
        Value::Null => "n/a".to_string(),
        other => other.to_string(),
    };
    println!(
        "\nchaos run: seed {}, lies {}, {} min chaos + {} s recovery, {} operator starts, {} SIGKILLs, {} exits not caused by the harness, {} samples ({} failed)",
        r["seed"],
        r["lies"],
        r["chaos_minutes"],
        r["recovery_seconds"],
        r["operator_starts"],
        r["operator_kills"],
        r["operator_exits_not_caused_by_the_harness"]
            .as_array()
            .map_or(0, Vec::len),
        r["samples"],
        r["failed_samples"],
    );
    println!("{:<62} {:>10} {:>8}", "metric", "value", "target");
    let row = |name: &str, v: String, target: &str| println!("{name:<62} {v:>10} {target:>8}");
    row(
        "expired tokens served while healthy (distinct)",
        show(&s["expired_tokens_served_while_healthy"]),
        "0",
    );
    row(
        "  credential-seconds of it",
        show(&s["expired_credential_seconds_while_healthy"]),
        "0",
    );
    row(
        "revoked tokens served while healthy",
        show(&s["revoked_tokens_served_while_healthy"]),
        "0",
    );
    row(
        "credential-seconds with no token while healthy",
        show(&s["credential_seconds_without_token_while_healthy"]),
        "0",
    );
    row(
        "authorization-code credentials lost",
        format!(
            "{}/{}",
            s["authorization_code_credentials_lost"], s["authorization_code_credentials"]
        ),
        "0",
    );
    row(
        "token requests per credential per lifetime (settled)",
        show(&s["token_requests_per_credential_per_lifetime_settled"]),
        "1.5",
    );
    row(
        "  per expected renewal (renewal at 2/3 of the lifetime)",
        show(&s["token_requests_per_expected_renewal_settled"]),
        "<=1.05",
    );
    row(
        "peak token requests per minute per failing credential",
        show(&s["peak_requests_per_minute_per_failing_credential"]),
        "-",
    );
    for l in s["lost"].as_array().into_iter().flatten() {
        println!(
            "  lost: {} ({})",
            l["name"].as_str().unwrap_or(""),
            l["why"].as_str().unwrap_or("")
        );
    }
    println!(
        "\n{:<15} {:>5} {:>5} {:>8} {:>6} {:>9} {:>9} {:>7} {:>6} {:>9} {:>7}",
        "vendor",
        "creds",
        "life",
        "settled",
        "reqs",
        "req/life",
        "req/renew",
        "fault-s",
        "f-reqs",
        "peak/min",
        "expired"
    );
    for v in r["vendors"].as_array().into_iter().flatten() {
        println!(
            "{:<15} {:>5} {:>5} {:>8} {:>6} {:>9} {:>9} {:>7} {:>6} {:>9} {:>7}",
            v["vendor"].as_str().unwrap_or(""),
            show(&v["credentials"]),
            show(&v["lifetime_s"]),
            show(&v["settled_seconds"]),
            show(&v["settled_requests"]),
            show(&v["requests_per_credential_per_lifetime"]),
            show(&v["requests_per_expected_renewal"]),
            show(&v["fault_seconds"]),
            show(&v["fault_requests"]),
            show(&v["peak_requests_per_minute_per_failing_credential"]),
            show(&v["expired_tokens_served_while_healthy"]),
        );
    }
    println!(
        "\n{:<32} {:>6} {:>7} {:>7} {:>10}  last Ready",
        "credential", "tokens", "expired", "revoked", "no-token-s"
    );
    for c in r["credentials"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>6} {:>7} {:>7} {:>10}  {}",
            c["name"].as_str().unwrap_or(""),
            show(&c["distinct_tokens"]),
            show(&c["expired_tokens_served_while_healthy"]),
            show(&c["revoked_tokens_served_while_healthy"]),
            show(&c["seconds_without_token_while_healthy"]),
            show(&c["last_ready"]),
        );
    }
}
