//! `tokensync status NAME`: the credential and what it depends on, for a person at 3 a.m., in the
//! manner of cert-manager's `cmctl status certificate`.
//!
//! Two halves: [`fetch`] reads the objects and keeps only names, times and counts in a
//! [`Snapshot`] (a Secret's values never enter it: its key names do, and whether a one-time
//! input was already used); [`render`] is a pure function of the snapshot, so every case is a unit
//! test. The status is read as JSON, not through the typed struct, so that conditions and fields
//! newer than this binary are still shown.

use std::collections::BTreeSet;
use std::fmt::Write;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::crd::{
    ClientAuthentication, GrantType, HttpMethod, HttpRequestSpec, HttpSpec, InputRole,
    ProviderCredential, ProviderCredentialSpec, STATE_SECRET_SUFFIX,
};
use crate::token::Inputs;

/// The annotation on the output Secret with the token's expiry (as the controller writes it).
pub const EXPIRES_AT_ANNOTATION: &str = "tokensync.dev/expires-at";
/// The annotation on the output Secret with the token's fingerprint.
pub const FINGERPRINT_ANNOTATION: &str = "tokensync.dev/fingerprint";
/// Keys of the state Secret (`controller::state`): read for presence, times and counts only.
const STATE_REFRESH_TOKEN: &str = "refresh_token";
const STATE_REFRESH_EXPIRES_AT: &str = "refresh_expires_at";
const STATE_TOKEN: &str = "token";
const STATE_EXPIRES_AT: &str = "expires_at";
const STATE_PENDING: &str = "pending_revocations";
const STATE_USED_INPUTS: &str = "used_inputs";
/// Events shown, newest last.
const EVENTS_SHOWN: usize = 10;

/// The result of reading one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    /// The apiserver refused or failed (e.g. Forbidden: the user may not read Secrets).
    Failed(String),
}

impl<T> Lookup<T> {
    pub fn found(&self) -> Option<&T> {
        match self {
            Lookup::Found(t) => Some(t),
            _ => None,
        }
    }

    fn from_result<E: std::fmt::Display>(r: Result<Option<T>, E>) -> Self {
        match r {
            Ok(Some(t)) => Lookup::Found(t),
            Ok(None) => Lookup::NotFound,
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> Lookup<U> {
        match self {
            Lookup::Found(t) => Lookup::Found(f(t)),
            Lookup::NotFound => Lookup::NotFound,
            Lookup::Failed(e) => Lookup::Failed(e),
        }
    }
}

/// Everything `status` shows, read at `now`. Holds no secret value.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub namespace: String,
    pub name: String,
    pub now: Timestamp,
    pub credential: Lookup<Credential>,
    pub inputs: Lookup<InputsSecret>,
    pub output: Lookup<OutputSecret>,
    pub state: Lookup<StateSecret>,
    /// `spec.http.upstream`: its name and the credential.
    pub upstream: Option<(String, Lookup<Credential>)>,
    pub ca: Option<CaSource>,
    pub events: Lookup<Vec<EventLine>>,
}

/// A ProviderCredential as read: the spec typed, the status as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    /// The spec, or why it does not parse (a newer CRD than this binary).
    pub spec: Result<ProviderCredentialSpec, String>,
    pub status: Value,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub created: Option<Timestamp>,
    pub deleting: bool,
}

impl Credential {
    /// From the object as JSON (a `DynamicObject`, or a manifest).
    pub fn from_json(obj: &Value) -> Self {
        let meta = &obj["metadata"];
        Self {
            spec: serde_json::from_value(obj["spec"].clone()).map_err(|e| e.to_string()),
            status: obj["status"].clone(),
            uid: meta["uid"].as_str().map(str::to_string),
            generation: meta["generation"].as_i64(),
            created: time_at(meta, "creationTimestamp"),
            deleting: !meta["deletionTimestamp"].is_null(),
        }
    }

    fn condition(&self, type_: &str) -> Option<Condition> {
        conditions(&self.status)
            .into_iter()
            .find(|c| c.type_ == type_)
    }
}

/// The inputs Secret: its key names, and which of them hold a one-time input the controller
/// already exchanged (compared by fingerprint with the state Secret's `used_inputs`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputsSecret {
    pub keys: BTreeSet<String>,
    pub used: BTreeSet<String>,
    /// It carries the opt-in label `tokensync.dev/inputs=true`.
    pub opted_in: bool,
}

impl InputsSecret {
    /// Key names of `secret`; `used_fingerprints` are the state Secret's `used_inputs`.
    pub fn read(secret: &Secret, used_fingerprints: &[String]) -> Self {
        let inputs = Inputs::from_secret(secret);
        let mut keys = BTreeSet::new();
        let mut used = BTreeSet::new();
        for (key, value) in inputs.iter() {
            keys.insert(key.clone());
            if used_fingerprints.contains(&value.fingerprint()) {
                used.insert(key.clone());
            }
        }
        let opted_in = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::controller::INPUTS_LABEL))
            .is_some_and(|v| v == "true");
        Self {
            keys,
            used,
            opted_in,
        }
    }
}

/// The output Secret's key names and the operator's annotations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutputSecret {
    pub keys: BTreeSet<String>,
    /// Its controller owner reference is this credential.
    pub owned: bool,
    pub expires_at: Option<String>,
    pub fingerprint: Option<String>,
}

impl OutputSecret {
    pub fn read(secret: &Secret, owner_uid: Option<&str>) -> Self {
        let annotation = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .cloned()
        };
        Self {
            keys: key_names(secret),
            owned: owned(secret, owner_uid),
            expires_at: annotation(EXPIRES_AT_ANNOTATION),
            fingerprint: annotation(FINGERPRINT_ANNOTATION),
        }
    }
}

/// What the state Secret holds, as presence, times and counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateSecret {
    pub owned: bool,
    pub refresh_token: bool,
    pub refresh_expires_at: Option<Timestamp>,
    /// A token the provider issued is stored (written out first, then kept for restores).
    pub token: bool,
    pub token_expires_at: Option<Timestamp>,
    /// Replaced tokens still to revoke; `None` when the key does not parse.
    pub pending_revocations: Option<usize>,
    /// Fingerprints of one-time inputs already exchanged (only their number is shown).
    pub used_inputs: Vec<String>,
}

impl StateSecret {
    pub fn read(secret: &Secret, owner_uid: Option<&str>) -> Self {
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let time = |k: &str| text(k).and_then(|t| t.trim().parse().ok());
        let pending = match text(STATE_PENDING) {
            None => Some(0),
            Some(t) => serde_json::from_str::<Vec<Value>>(&t).ok().map(|v| v.len()),
        };
        Self {
            owned: owned(secret, owner_uid),
            refresh_token: text(STATE_REFRESH_TOKEN).is_some_and(|t| !t.is_empty()),
            refresh_expires_at: time(STATE_REFRESH_EXPIRES_AT),
            token: text(STATE_TOKEN).is_some_and(|t| !t.is_empty()),
            token_expires_at: time(STATE_EXPIRES_AT),
            pending_revocations: pending,
            used_inputs: text(STATE_USED_INPUTS)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        }
    }
}

/// The CA bundle of `spec.tls` and whether its key is there.
#[derive(Clone, Debug, PartialEq)]
pub struct CaSource {
    /// `Secret` or `ConfigMap`.
    pub kind: &'static str,
    pub name: String,
    pub key: String,
    /// Whether the object has the key.
    pub key_present: Lookup<bool>,
}

/// One event about the credential.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    pub time: Option<Timestamp>,
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

impl EventLine {
    pub fn read(e: &Event) -> Self {
        let series = e.series.as_ref();
        let time = series
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.first_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Self {
            time,
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: series.and_then(|s| s.count).or(e.count).unwrap_or(1).max(1),
        }
    }
}

/// A condition read from the status JSON (any type, so newer ones show too).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: Option<Timestamp>,
    pub observed_generation: Option<i64>,
}

pub fn conditions(status: &Value) -> Vec<Condition> {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Condition {
            type_: text_at(c, "type"),
            status: text_at(c, "status"),
            reason: text_at(c, "reason"),
            message: text_at(c, "message"),
            since: time_at(c, "lastTransitionTime"),
            observed_generation: c["observedGeneration"].as_i64(),
        })
        .collect()
}

/// An input the spec needs, by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub key: String,
    /// What it is for, e.g. `client id` or `spec.http.login`.
    pub purpose: String,
    /// An authorization code or bootstrap refresh token: exchanged once, then the refresh token
    /// in the state Secret carries on.
    pub one_time: bool,
}

/// The input keys the spec needs: from `spec.inputs.keys` and the grant type for `oauth2`, from
/// the `inputs.NAME` the templates use for `http`.
pub fn expected_inputs(spec: &ProviderCredentialSpec) -> Vec<Expected> {
    let keys = &spec.inputs.keys;
    let mut out = Vec::new();
    let mut push = |role: InputRole, purpose: &str, one_time: bool| {
        out.push(Expected {
            key: keys.key(role).to_string(),
            purpose: purpose.to_string(),
            one_time,
        })
    };
    if let Some(o) = &spec.oauth2 {
        push(InputRole::ClientId, "client id", false);
        if o.client_authentication != ClientAuthentication::None {
            push(InputRole::ClientSecret, "client secret", false);
        }
        match o.grant_type {
            GrantType::ClientCredentials => {}
            GrantType::Password => {
                push(InputRole::Username, "password grant", false);
                push(InputRole::Password, "password grant", false);
            }
            GrantType::RefreshToken => push(InputRole::RefreshToken, "bootstrap", true),
            GrantType::AuthorizationCode => {
                push(InputRole::Code, "authorization code", true);
                push(InputRole::RedirectUri, "authorization code", false);
            }
        }
    } else if let Some(h) = &spec.http {
        for (key, used_by) in template_inputs(h) {
            out.push(Expected {
                key,
                purpose: used_by.into_iter().collect::<Vec<_>>().join(", "),
                one_time: false,
            });
        }
    }
    out
}

/// The `inputs.NAME` (and `inputs['NAME']`) the templates of `http` use, with the requests that
/// use each (`spec.http.login`, ...).
pub fn template_inputs(http: &HttpSpec) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut found: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let requests: [(&str, Option<&HttpRequestSpec>); 3] = [
        ("spec.http.login", Some(&http.login)),
        ("spec.http.refresh", http.refresh.as_ref()),
        ("spec.http.revoke", http.revoke.as_ref()),
    ];
    for (path, request) in requests {
        let Some(r) = request else { continue };
        let mut texts: Vec<&str> = vec![r.url.as_str()];
        texts.extend(r.headers.values().map(String::as_str));
        texts.extend(r.form.iter().flatten().map(|(_, v)| v.as_str()));
        if let Some(json) = &r.json {
            json_strings(json, &mut texts);
        }
        for text in texts {
            for key in input_names(text) {
                found.entry(key).or_default().insert(path.to_string());
            }
        }
    }
    found
}

fn json_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// The names after `inputs.` or in `inputs['...']` in a template's text.
fn input_names(text: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("inputs") {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + "inputs".len()..];
        rest = after;
        if before.is_some_and(|c| ident(c) || c == '.') {
            continue;
        }
        let after = after.trim_start();
        if let Some(name) = after.strip_prefix('.') {
            let name = name.trim_start();
            let end = name.find(|c: char| !ident(c)).unwrap_or(name.len());
            if end > 0 {
                names.push(name[..end].to_string());
            }
        } else if let Some(inner) = after.strip_prefix('[') {
            let inner = inner.trim_start();
            if let Some(q) = inner.chars().next().filter(|q| *q == '\'' || *q == '"') {
                let inner = &inner[1..];
                if let Some(end) = inner.find(q) {
                    names.push(inner[..end].to_string());
                }
            }
        }
    }
    names
}

/// Whether `secret`'s controller owner reference names the credential with `uid`.
fn owned(secret: &Secret, uid: Option<&str>) -> bool {
    secret.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && o.kind == "ProviderCredential" && Some(o.uid.as_str()) == uid
    })
}

fn key_names(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flatten().map(|(k, _)| k.clone());
    let string_data = secret.string_data.iter().flatten().map(|(k, _)| k.clone());
    data.chain(string_data).collect()
}

fn text_at(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_string()
}

fn time_at(v: &Value, field: &str) -> Option<Timestamp> {
    v[field].as_str().and_then(|t| t.parse().ok())
}

// ------------------------------------------------------------------------------------ rendering

/// Whether the credential is Ready (the exit code of `status`).
pub fn ready(s: &Snapshot) -> bool {
    s.credential
        .found()
        .and_then(|c| c.condition("Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The exit code of `status`: 0 when Ready, 1 when not Ready or not found, 2 when the credential
/// could not be read (the apiserver unreachable, or access denied).
pub fn exit_code(s: &Snapshot) -> u8 {
    match &s.credential {
        Lookup::Failed(_) => 2,
        _ if ready(s) => 0,
        _ => 1,
    }
}

/// Control characters (a terminal escape in a provider's message) shown as `?`, on one line.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `3d4h`, `2h5m`, `40s`: the two largest units.
fn span(mut secs: i64) -> String {
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    for (unit, size) in units {
        if secs >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        } else if !parts.is_empty() {
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join("")
}

fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = t.as_second().saturating_sub(now.as_second());
    match secs {
        0 => "now".into(),
        s if s > 0 => format!("in {}", span(s)),
        s => format!("{} ago", span(s.saturating_neg())),
    }
}

/// `2026-11-26T09:00:00Z (in 3h)`.
fn when(t: Timestamp, now: Timestamp) -> String {
    format!("{t} ({})", relative(t, now))
}

fn when_opt(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(|| "-".into(), |t| when(t, now))
}

/// A URL without its query and fragment (which never need to be shown).
fn url_shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

macro_rules! line {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// The report: names, times and counts, never a secret value.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let id = format!("{}/{}", s.namespace, s.name);
    let c = match &s.credential {
        Lookup::Found(c) => c,
        Lookup::NotFound => {
            line!(
                out,
                "ProviderCredential {id}: not found (check the name and the namespace: -n NAMESPACE)"
            );
            return out;
        }
        Lookup::Failed(e) => {
            line!(out, "ProviderCredential {id}: cannot read it: {}", clean(e));
            return out;
        }
    };
    let now = s.now;
    line!(out, "ProviderCredential {id}");
    let observed = c.status["observedGeneration"].as_i64();
    line!(
        out,
        "  created {}, generation {}, observed {}",
        when_opt(c.created, now),
        c.generation.map_or("-".into(), |g| g.to_string()),
        observed.map_or("-".into(), |g| g.to_string()),
    );
    if c.deleting {
        line!(
            out,
            "  being deleted: its tokens are revoked, then the finalizer is removed"
        );
    }
    let spec = match &c.spec {
        Ok(spec) => Some(spec),
        Err(e) => {
            line!(
                out,
                "  the spec cannot be read by this tokensync: {}",
                clean(e)
            );
            None
        }
    };
    if let Some(spec) = spec {
        line!(out, "  provider: {}", provider(spec));
    }

    line!(out, "\nConditions:");
    let conds = conditions(&c.status);
    if conds.is_empty() {
        line!(
            out,
            "  none yet: the controller has not reconciled it (is the operator running, watching namespace {}?)",
            s.namespace
        );
    }
    for cond in &conds {
        line!(
            out,
            "  {:<10} {:<7} {:<22} since {}",
            clean(&cond.type_),
            clean(&cond.status),
            clean(&cond.reason),
            when_opt(cond.since, now)
        );
        if !cond.message.is_empty() {
            line!(out, "             {}", clean(&cond.message));
        }
    }

    line!(out, "\nToken:");
    let st = &c.status;
    let fields = [
        ("last refresh", "lastRefreshAt"),
        ("expires", "expiresAt"),
        ("renew at", "renewAt"),
        ("next attempt", "nextAttemptAt"),
        ("refresh token expires", "refreshTokenExpiresAt"),
    ];
    if let Some(fp) = st["tokenFingerprint"].as_str() {
        line!(out, "  {:<22} {}", "fingerprint", clean(fp));
    }
    for (label, field) in fields {
        if let Some(t) = time_at(st, field) {
            line!(out, "  {label:<22} {}", when(t, now));
        }
    }
    if let Some(t) = time_at(st, "expiresAt").filter(|t| *t <= now) {
        line!(out, "  EXPIRED {}", relative(t, now));
    }
    if st["expiresAt"].is_null() && st["tokenFingerprint"].is_null() {
        line!(out, "  no token issued yet");
    }
    let f = &st["lastFailure"];
    if f.is_object() {
        line!(
            out,
            "  {:<22} {} failed attempt(s), the last {} ({})",
            "failing",
            f["count"].as_u64().unwrap_or(0),
            when_opt(time_at(f, "at"), now),
            clean(f["reason"].as_str().unwrap_or("?"))
        );
    }

    if let Some(spec) = spec {
        inputs_section(&mut out, s, spec);
        if let Some((name, up)) = &s.upstream {
            upstream_line(&mut out, name, up, now);
        }
        ca_line(&mut out, s.ca.as_ref());
        output_section(&mut out, s, spec, st);
        state_section(&mut out, s, spec);
    }
    events_section(&mut out, &s.events, now);
    line!(out, "\n{}", next(s, c));
    out
}

fn provider(spec: &ProviderCredentialSpec) -> String {
    if let Some(o) = &spec.oauth2 {
        let endpoint = match (&o.token_url, &o.issuer_url) {
            (Some(u), _) => format!("token URL {}", url_shown(u)),
            (None, Some(u)) => format!("issuer {}", url_shown(u)),
            (None, None) => "no endpoint".into(),
        };
        format!("oauth2, grant {}, {endpoint}", o.grant_type.as_str())
    } else if let Some(h) = &spec.http {
        let mut s = format!(
            "http, login {} {}",
            method(h.login.method),
            url_shown(&h.login.url)
        );
        if let Some(r) = &h.refresh {
            let _ = write!(s, ", refresh {} {}", method(r.method), url_shown(&r.url));
        }
        clean(&s)
    } else {
        "none".into()
    }
}

fn method(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
    }
}

fn inputs_section(out: &mut String, s: &Snapshot, spec: &ProviderCredentialSpec) {
    let name = &spec.inputs.secret_name;
    line!(out, "\nInputs: Secret {name:?}");
    let expected = expected_inputs(spec);
    let refresh_token_held = s.state.found().is_some_and(|st| st.refresh_token);
    match &s.inputs {
        Lookup::Found(inputs) => {
            if !inputs.opted_in {
                line!(
                    out,
                    "  NOT OPTED IN: label it {}=true, or tokensync never sends its values",
                    crate::controller::INPUTS_LABEL
                );
            }
            for e in &expected {
                let state = if !inputs.keys.contains(&e.key) {
                    if e.one_time && refresh_token_held {
                        "absent (not needed while the refresh token lives)"
                    } else {
                        "MISSING"
                    }
                } else if inputs.used.contains(&e.key) {
                    "present (already exchanged: a new one is needed only if the refresh token is lost)"
                } else {
                    "present"
                };
                line!(out, "  {:<22} {state}  [{}]", e.key, e.purpose);
            }
            let others: Vec<&str> = inputs
                .keys
                .iter()
                .filter(|k| !expected.iter().any(|e| &e.key == *k))
                .map(String::as_str)
                .collect();
            if spec.http.is_some() && expected.is_empty() {
                line!(
                    out,
                    "  keys                   {}",
                    if others.is_empty() {
                        "none".into()
                    } else {
                        others.join(", ")
                    }
                );
            } else if !others.is_empty() {
                line!(out, "  other keys             {}", others.join(", "));
            }
        }
        Lookup::NotFound => {
            let keys: Vec<&str> = expected.iter().map(|e| e.key.as_str()).collect();
            line!(
                out,
                "  NOT FOUND: create it in namespace {}{}",
                s.namespace,
                if keys.is_empty() {
                    String::new()
                } else {
                    format!(" with the keys {}", keys.join(", "))
                }
            );
        }
        Lookup::Failed(e) => line!(out, "  cannot read it: {}", clean(e)),
    }
}

fn upstream_line(out: &mut String, name: &str, up: &Lookup<Credential>, now: Timestamp) {
    let text = match up {
        Lookup::Found(c) => {
            let ready = c
                .condition("Ready")
                .map_or("Ready unknown (not reconciled yet)".into(), |r| {
                    format!("Ready={} ({})", clean(&r.status), clean(&r.reason))
                });
            match time_at(&c.status, "expiresAt") {
                Some(t) => format!("{ready}, its token expires {}", when(t, now)),
                None => ready,
            }
        }
        Lookup::NotFound => "NOT FOUND".into(),
        Lookup::Failed(e) => format!("cannot read it: {}", clean(e)),
    };
    line!(out, "\nUpstream: ProviderCredential {name:?}: {text}");
}

fn ca_line(out: &mut String, ca: Option<&CaSource>) {
    let Some(ca) = ca else {
        line!(out, "\nCA bundle: none (the system roots)");
        return;
    };
    let state = match &ca.key_present {
        Lookup::Found(true) => "present".to_string(),
        Lookup::Found(false) => "KEY MISSING".into(),
        Lookup::NotFound => format!("{} NOT FOUND", ca.kind),
        Lookup::Failed(e) => format!("cannot read it: {}", clean(e)),
    };
    line!(
        out,
        "\nCA bundle: {} {:?} key {:?}: {state} (trusted besides the system roots)",
        ca.kind,
        ca.name,
        ca.key
    );
}

fn output_section(out: &mut String, s: &Snapshot, spec: &ProviderCredentialSpec, st: &Value) {
    line!(out, "\nOutput: Secret {:?}", spec.output.secret_name);
    match &s.output {
        Lookup::Found(o) => {
            if !o.owned {
                line!(
                    out,
                    "  NOT OWNED by this ProviderCredential: tokensync never writes it (SecretOwnedElsewhere)"
                );
            }
            let keys: Vec<&str> = o.keys.iter().map(String::as_str).collect();
            line!(out, "  {:<22} {}", "keys", keys.join(", "));
            let status_expiry = time_at(st, "expiresAt");
            let annotated = o
                .expires_at
                .as_deref()
                .map(|a| (a, a.parse::<Timestamp>().ok()));
            let expiry = match (annotated, status_expiry) {
                (None, None) => "none (the provider gives no expiry)".to_string(),
                (None, Some(t)) => format!(
                    "no {EXPIRES_AT_ANNOTATION} annotation; status.expiresAt is {}",
                    when(t, s.now)
                ),
                (Some((raw, None)), _) => format!("unreadable: {}", clean(raw)),
                (Some((_, Some(a))), Some(t)) if a == t => {
                    format!("{} (matches status.expiresAt)", when(a, s.now))
                }
                (Some((_, Some(a))), Some(t)) => format!(
                    "{}, but status.expiresAt is {}: the status is behind the Secret",
                    when(a, s.now),
                    when(t, s.now)
                ),
                (Some((_, Some(a))), None) => {
                    format!("{} (status.expiresAt is not set)", when(a, s.now))
                }
            };
            line!(out, "  {:<22} {expiry}", "expires (annotation)");
            if let (Some(a), Some(b)) = (&o.fingerprint, st["tokenFingerprint"].as_str())
                && a != b
            {
                line!(
                    out,
                    "  the Secret's token ({}) is not the one in status ({}): it was changed by hand or the status is behind",
                    clean(a),
                    clean(b)
                );
            }
        }
        Lookup::NotFound => line!(
            out,
            "  NOT FOUND: no token written yet{}",
            if st["lastRefreshAt"].is_null() {
                ""
            } else {
                " (deleted? the controller writes it again)"
            }
        ),
        Lookup::Failed(e) => line!(out, "  cannot read it: {}", clean(e)),
    }
}

fn state_section(out: &mut String, s: &Snapshot, spec: &ProviderCredentialSpec) {
    line!(out, "\nState: Secret \"{}{STATE_SECRET_SUFFIX}\"", s.name);
    match &s.state {
        Lookup::Found(st) => {
            if !st.owned {
                line!(
                    out,
                    "  NOT OWNED by this ProviderCredential (SecretOwnedElsewhere)"
                );
            }
            let refresh = if st.refresh_token {
                match st.refresh_expires_at {
                    Some(t) => format!("present, expires {}", when(t, s.now)),
                    None => "present, no known deadline".into(),
                }
            } else if has_refresh_request(spec) {
                "absent".into()
            } else {
                "absent (spec.http has no refresh request)".into()
            };
            line!(out, "  {:<22} {refresh}", "refresh token");
            if st.token {
                line!(
                    out,
                    "  {:<22} kept, expires {}",
                    "issued token",
                    when_opt(st.token_expires_at, s.now)
                );
            }
            line!(
                out,
                "  {:<22} {}",
                "pending revocations",
                st.pending_revocations
                    .map_or("unreadable".into(), |n| n.to_string())
            );
            line!(
                out,
                "  {:<22} {}",
                "one-time inputs used",
                st.used_inputs.len()
            );
        }
        Lookup::NotFound => line!(
            out,
            "  none: nothing to keep yet (written once there is a refresh token, a token to revoke or one another credential reads)"
        ),
        Lookup::Failed(e) => line!(out, "  cannot read it: {}", clean(e)),
    }
}

fn events_section(out: &mut String, events: &Lookup<Vec<EventLine>>, now: Timestamp) {
    match events {
        Lookup::Found(events) if !events.is_empty() => {
            line!(out, "\nEvents (newest last):");
            let mut events = events.clone();
            events.sort_by_key(|e| e.time);
            let skip = events.len().saturating_sub(EVENTS_SHOWN);
            for e in &events[skip..] {
                let count = if e.count > 1 {
                    format!(" (x{})", e.count)
                } else {
                    String::new()
                };
                line!(
                    out,
                    "  {:<10} {:<8} {:<22} {}{count}",
                    e.time.map_or("-".into(), |t| relative(t, now)),
                    clean(&e.type_),
                    clean(&e.reason),
                    clean(&e.message),
                );
            }
        }
        Lookup::Found(_) | Lookup::NotFound => line!(out, "\nEvents: none"),
        Lookup::Failed(e) => line!(out, "\nEvents: cannot list them: {}", clean(e)),
    }
}

fn has_refresh_request(spec: &ProviderCredentialSpec) -> bool {
    spec.oauth2.is_some() || spec.http.as_ref().is_some_and(|h| h.refresh.is_some())
}

/// The one-time input of the primary grant, if it has one: (key, what to put there).
fn one_time_input(spec: &ProviderCredentialSpec) -> Option<(&str, &'static str)> {
    let keys = &spec.inputs.keys;
    match spec.oauth2.as_ref()?.grant_type {
        GrantType::AuthorizationCode => {
            Some((keys.key(InputRole::Code), "a new authorization code"))
        }
        GrantType::RefreshToken => Some((keys.key(InputRole::RefreshToken), "a new refresh token")),
        GrantType::ClientCredentials | GrantType::Password => None,
    }
}

/// The one line that says what happens next.
fn next(s: &Snapshot, c: &Credential) -> String {
    let now = s.now;
    let st = &c.status;
    if c.deleting {
        return "next: deletion: the replaced tokens are revoked, then the finalizer is removed"
            .into();
    }
    let Ok(spec) = &c.spec else {
        return "next: unknown (the spec cannot be read)".into();
    };
    let inputs_name = &spec.inputs.secret_name;
    let f = &st["lastFailure"];
    if f.is_object() {
        let reason = f["reason"].as_str().unwrap_or("?");
        if reason == "NeedsNewInputs" || reason == "RefreshTokenRejected" {
            let what = one_time_input(spec).map_or_else(
                || "new inputs".to_string(),
                |(key, what)| format!("{what} (key {key})"),
            );
            return format!(
                "next: needs new inputs: a person must put {what} into Secret {inputs_name:?}; the controller tries again as soon as it changes"
            );
        }
        if s.inputs == Lookup::NotFound {
            return format!(
                "next: needs the inputs Secret {inputs_name:?}; the controller tries again as soon as it is created"
            );
        }
        return format!(
            "next: attempt at {} after failure {} ({})",
            when_opt(time_at(st, "nextAttemptAt"), now),
            f["count"].as_u64().unwrap_or(0),
            clean(reason)
        );
    }
    if s.inputs == Lookup::NotFound {
        return format!(
            "next: needs the inputs Secret {inputs_name:?}; the controller tries again as soon as it is created"
        );
    }
    let Some(at) = time_at(st, "renewAt").or_else(|| time_at(st, "nextAttemptAt")) else {
        return if conditions(st).is_empty() {
            format!(
                "next: waiting for the controller (is the operator running, watching namespace {}?)",
                s.namespace
            )
        } else {
            "next: no renewal scheduled".into()
        };
    };
    match via(s, spec, at) {
        Ok(grant) => format!("next: renew at {} via {grant}", when(at, now)),
        Err(why) => format!("next: needs new inputs by {}: {why}", when(at, now)),
    }
}

/// The request the next renewal makes, or why none can be made without a person.
fn via(s: &Snapshot, spec: &ProviderCredentialSpec, at: Timestamp) -> Result<String, String> {
    let st = s.state.found();
    let deadline = st.and_then(|st| st.refresh_expires_at);
    let refresh_alive = st.is_some_and(|st| st.refresh_token) && deadline.is_none_or(|d| d > at);
    if has_refresh_request(spec) && refresh_alive {
        return Ok("the refresh grant".into());
    }
    let expiring = match deadline {
        Some(d) if st.is_some_and(|st| st.refresh_token) && has_refresh_request(spec) => {
            format!(" (the refresh token expires {} before then)", d)
        }
        _ => String::new(),
    };
    if let Some(o) = &spec.oauth2 {
        if let Some((key, what)) = one_time_input(spec) {
            let usable = s
                .inputs
                .found()
                .map(|i| i.keys.contains(key) && !i.used.contains(key));
            if usable == Some(false) {
                return Err(format!(
                    "no usable refresh token{expiring}, and the one-time input {key:?} is used or absent: put {what} into Secret {:?}",
                    spec.inputs.secret_name
                ));
            }
        }
        return Ok(format!("the {} grant{expiring}", o.grant_type.as_str()));
    }
    Ok(format!("the login request{expiring}"))
}

// ------------------------------------------------------------------------------------- fetching

/// Read the credential and what it depends on. Values of Secrets are read only to take their
/// key names (and the fingerprints of one-time inputs) and are dropped here.
pub async fn fetch(client: &Client, namespace: &str, name: &str) -> Snapshot {
    let now = Timestamp::now();
    let resource = ApiResource::erase::<ProviderCredential>(&());
    let pcreds: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut snap = Snapshot {
        namespace: namespace.to_string(),
        name: name.to_string(),
        now,
        credential: Lookup::NotFound,
        inputs: Lookup::NotFound,
        output: Lookup::NotFound,
        state: Lookup::NotFound,
        upstream: None,
        ca: None,
        events: Lookup::NotFound,
    };
    let get_credential = |n: String| {
        let api = pcreds.clone();
        async move {
            Lookup::from_result(api.get_opt(&n).await)
                .map(|o| Credential::from_json(&serde_json::to_value(&o).unwrap_or_default()))
        }
    };
    snap.credential = get_credential(name.to_string()).await;
    let Lookup::Found(c) = &snap.credential else {
        return snap;
    };
    let uid = c.uid.clone();
    let state_name = format!("{name}{STATE_SECRET_SUFFIX}");
    let state_secret = Lookup::from_result(secrets.get_opt(&state_name).await);
    let used: Vec<String> = state_secret
        .found()
        .map(|s| StateSecret::read(s, uid.as_deref()).used_inputs)
        .unwrap_or_default();
    snap.state = state_secret.map(|s| StateSecret::read(&s, uid.as_deref()));
    if let Ok(spec) = c.spec.clone() {
        snap.inputs = Lookup::from_result(secrets.get_opt(&spec.inputs.secret_name).await)
            .map(|s| InputsSecret::read(&s, &used));
        snap.output = Lookup::from_result(secrets.get_opt(&spec.output.secret_name).await)
            .map(|s| OutputSecret::read(&s, uid.as_deref()));
        if let Some(up) = spec.http.as_ref().and_then(|h| h.upstream.as_ref()) {
            let name = up.provider_credential.clone();
            snap.upstream = Some((name.clone(), get_credential(name).await));
        }
        if let Some(tls) = &spec.tls {
            if let Some(r) = &tls.ca_bundle_secret {
                let found = Lookup::from_result(secrets.get_opt(&r.name).await)
                    .map(|s| key_names(&s).contains(&r.key));
                snap.ca = Some(CaSource {
                    kind: "Secret",
                    name: r.name.clone(),
                    key: r.key.clone(),
                    key_present: found,
                });
            } else if let Some(r) = &tls.ca_bundle_config_map {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let found = Lookup::from_result(maps.get_opt(&r.name).await).map(|m| {
                    m.data.iter().flatten().any(|(k, _)| k == &r.key)
                        || m.binary_data.iter().flatten().any(|(k, _)| k == &r.key)
                });
                snap.ca = Some(CaSource {
                    kind: "ConfigMap",
                    name: r.name.clone(),
                    key: r.key.clone(),
                    key_present: found,
                });
            }
        }
    }
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.name={name},involvedObject.kind=ProviderCredential");
    snap.events = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(list) => Lookup::Found(
            list.items
                .iter()
                // events of an earlier object of the same name are not this one's
                .filter(|e| uid.is_none() || e.involved_object.uid == uid)
                .map(EventLine::read)
                .collect(),
        ),
        Err(e) => Lookup::Failed(e.to_string()),
    };
    snap
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
