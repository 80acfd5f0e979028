//! Fake vendor token APIs for tokensync's tests, demo and benchmarks.
//!
//! Each vendor is served under its own path prefix with the paths, field names, body encodings,
//! status codes and lifetimes of its documents (`shared/seeds/`): a client that gets a field name
//! or an encoding wrong fails here as it would at the vendor. Lifetimes are configurable (short in
//! tests); every request is counted; faults (status codes, delays, malformed or empty bodies,
//! hung connections, rate limiting), absurd lifetimes in the answers and a capped login session
//! can be switched on and off at run time, per vendor, through [`State`]. All of them are opt-in:
//! without them every fake answers as its vendor's documents say.

// Handlers answer errors with axum Responses; their size does not matter in a test server.
#![allow(clippy::result_large_err)]

mod airmap;
mod altitude_angel;
mod common;
mod dronetag;
mod json_login;
mod pix4d;

pub mod admin;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use common::{Fault, HANG_LIMIT, Vendor};

/// Credentials every fake accepts; the manifests in `examples/` carry the same placeholders.
pub const CLIENT_ID: &str = "example-client-id";
/// Holds characters that break a client that does not form-encode (`&`, `=`, `+`, `%`).
pub const CLIENT_SECRET: &str = "example-client-secret&=+%/";
pub const USERNAME: &str = "pilot@example.com";
pub const PASSWORD: &str = "example-password\"&=+";

/// Hosts of the real vendors, as the examples name them, and the fake's path prefix for each.
pub const VENDOR_HOSTS: &[(&str, &str)] = &[
    ("https://auth.altitudeangel.com", "/altitude-angel"),
    ("https://cloud.pix4d.com", "/pix4d"),
    ("https://auth.dronetag.app", "/dronetag-auth"),
    ("https://api.dronetag.app", "/dronetag-api"),
    ("https://sso.airmap.io", "/airmap"),
    ("https://platform.example.ru", "/json-login"),
];

/// Point a manifest's vendor URLs at the fakes served from `base` (e.g. `http://127.0.0.1:8080`).
pub fn rewrite_urls(manifest: &str, base: &str) -> String {
    VENDOR_HOSTS
        .iter()
        .fold(manifest.to_string(), |text, (host, prefix)| {
            text.replace(host, &format!("{base}{prefix}"))
        })
}

/// The state all fakes share.
pub struct State {
    inner: Mutex<Inner>,
    /// Set when the server stops: hung requests are let go.
    closed: AtomicBool,
    closing: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// Requests per route, e.g. `altitude-angel token client_credentials`.
    counters: BTreeMap<String, u64>,
    faults: BTreeMap<Vendor, Fault>,
    lifetimes: BTreeMap<Vendor, u64>,
    serial: u64,
    refresh_lifetimes: BTreeMap<Vendor, u64>,
    /// One-time authorization codes still unused, by vendor.
    codes: BTreeMap<Vendor, Vec<String>>,
    /// Live refresh tokens and their sessions, by vendor.
    refresh_tokens: BTreeMap<Vendor, Vec<(String, Session)>>,
    /// Every access token issued, by vendor, in order.
    issued: BTreeMap<Vendor, Vec<Issued>>,
    /// Values answered instead of the true `expires_in`, `refresh_expires_in` and absolute expiry.
    expires_in_overrides: BTreeMap<Vendor, Value>,
    refresh_expires_in_overrides: BTreeMap<Vendor, Value>,
    expires_at_overrides: BTreeMap<Vendor, Value>,
    /// The longest a login session lives (Keycloak's `ssoSessionMaxLifespan`), by vendor.
    session_max: BTreeMap<Vendor, u64>,
    /// The scopes granted to the session of each live refresh token (a refresh keeps them).
    refresh_scopes: BTreeMap<String, Vec<String>>,
    /// How the PAT mint answers `expires_at`.
    pat_expiry: PatExpiry,
    /// A userinfo endpoint (`http://127.0.0.1:PORT/...`) that vouches for the bearer token of a
    /// PAT mint instead of this fake's own Dronetag realm (a real Keycloak in the conformance
    /// tests).
    pat_userinfo: Option<String>,
}

/// A login session (password grant, authorization code, resource-owner login) that refresh
/// tokens carry on: when it started and when its current refresh token dies (epoch seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub start: u64,
    pub deadline: u64,
}

/// Why a refresh token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Unknown, used (rotated away), revoked or past its deadline.
    NotActive,
    /// Its session reached the session maximum ([`State::set_session_max`]).
    SessionEnded,
}

/// How the fake PAT mint writes `expires_at` in its answer (the vendor does not document it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PatExpiry {
    /// `2025-09-09T10:00:00Z`
    #[default]
    Rfc3339,
    /// `2025-09-09`, the date the request asked for
    Date,
    /// Unix milliseconds, as a number
    EpochMillis,
    /// Something no parser reads (`"in 30 days"`)
    Unreadable,
}

/// An access token a fake issued.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Issued {
    pub token: String,
    pub id: String,
    /// When the token really dies (epoch seconds), whatever the answer said
    /// ([`State::set_expires_in_override`] changes only the answer).
    pub expires_at: u64,
    pub scopes: Vec<String>,
    pub revoked: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            closed: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many requests reached `route` (`"<vendor> <endpoint> [<grant>]"`).
    pub fn count(&self, route: &str) -> u64 {
        self.lock().counters.get(route).copied().unwrap_or(0)
    }

    /// All counters, for debugging a failing test.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    fn hit(&self, route: String) {
        *self.lock().counters.entry(route).or_default() += 1;
    }

    /// Make every request to `vendor` fail this way until [`State::clear_fault`].
    pub fn set_fault(&self, vendor: Vendor, fault: Fault) {
        self.lock().faults.insert(vendor, fault);
    }

    pub fn clear_fault(&self, vendor: Vendor) {
        self.lock().faults.remove(&vendor);
    }

    fn fault(&self, vendor: Vendor) -> Option<Fault> {
        self.lock().faults.get(&vendor).cloned()
    }

    /// Set the lifetime of tokens `vendor` issues from now on.
    pub fn set_lifetime(&self, vendor: Vendor, seconds: u64) {
        self.lock().lifetimes.insert(vendor, seconds);
    }

    fn lifetime(&self, vendor: Vendor) -> u64 {
        self.lock()
            .lifetimes
            .get(&vendor)
            .copied()
            .unwrap_or(vendor.default_lifetime())
    }

    /// A fresh, unique token string.
    fn mint(&self, prefix: &str) -> String {
        let mut inner = self.lock();
        inner.serial += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{prefix}-{}-{nanos:08x}", inner.serial)
    }

    /// Issue a one-time authorization code, as the vendor's browser flow would.
    pub fn issue_code(&self, vendor: Vendor) -> String {
        let code = self.mint("code");
        self.lock()
            .codes
            .entry(vendor)
            .or_default()
            .push(code.clone());
        code
    }

    fn take_code(&self, vendor: Vendor, code: &str) -> bool {
        let mut inner = self.lock();
        let codes = inner.codes.entry(vendor).or_default();
        let before = codes.len();
        codes.retain(|c| c != code);
        codes.len() != before
    }

    /// Set how long refresh tokens (the login session) of `vendor` live from now on.
    pub fn set_refresh_lifetime(&self, vendor: Vendor, seconds: u64) {
        self.lock().refresh_lifetimes.insert(vendor, seconds);
    }

    fn refresh_lifetime(&self, vendor: Vendor) -> u64 {
        self.lock()
            .refresh_lifetimes
            .get(&vendor)
            .copied()
            .unwrap_or(vendor.default_refresh_lifetime())
    }

    /// A refresh token for a new session (a login), dying at the session's deadline.
    fn new_refresh_token(&self, vendor: Vendor) -> (String, Session) {
        let now = common::now_secs();
        let session = Session {
            start: now,
            deadline: now.saturating_add(self.refresh_lifetime(vendor)),
        };
        (self.rotate_refresh_token(vendor, session), session)
    }

    /// A new refresh token for `session`.
    fn rotate_refresh_token(&self, vendor: Vendor, session: Session) -> String {
        let rt = self.mint("rt");
        self.lock()
            .refresh_tokens
            .entry(vendor)
            .or_default()
            .push((rt.clone(), session));
        rt
    }

    /// Use a refresh token: its session if it was alive. With `rotate` it dies now.
    fn use_refresh_token(
        &self,
        vendor: Vendor,
        rt: &str,
        rotate: bool,
    ) -> Result<Session, Refused> {
        let now = common::now_secs();
        let mut inner = self.lock();
        let max = inner.session_max.get(&vendor).copied();
        let live = inner.refresh_tokens.entry(vendor).or_default();
        let session = live
            .iter()
            .find(|(t, _)| t == rt)
            .map(|(_, s)| *s)
            .ok_or(Refused::NotActive)?;
        if max.is_some_and(|max| session.start.saturating_add(max) <= now) {
            return Err(Refused::SessionEnded);
        }
        if session.deadline <= now {
            return Err(Refused::NotActive);
        }
        if rotate {
            live.retain(|(t, _)| t != rt);
        }
        Ok(session)
    }

    /// Cap the login sessions of `vendor` at `seconds` from their login, as Keycloak's
    /// `ssoSessionMaxLifespan` does: every access token and refresh token of a session lives at
    /// most until the session's end (`expires_in` and `refresh_expires_in` shrink to the time
    /// left), and after it a refresh answers `400 {"error": "invalid_grant",
    /// "error_description": "Session not active"}`. Applies to the vendors with refresh tokens
    /// (Dronetag OIDC, Altitude Angel, AirMap) and to sessions already running.
    pub fn set_session_max(&self, vendor: Vendor, seconds: u64) {
        self.lock().session_max.insert(vendor, seconds);
    }

    /// Sessions of `vendor` live as long as their refresh tokens again.
    pub fn clear_session_max(&self, vendor: Vendor) {
        self.lock().session_max.remove(&vendor);
    }

    /// The end of `session` (epoch seconds), if the vendor caps sessions.
    fn session_end(&self, vendor: Vendor, session: Session) -> Option<u64> {
        let max = self.lock().session_max.get(&vendor).copied()?;
        Some(session.start.saturating_add(max))
    }

    /// The lifetime of an access token issued now in `session` (or outside any session).
    fn session_lifetime(&self, vendor: Vendor, session: Option<Session>) -> u64 {
        let lifetime = self.lifetime(vendor);
        match session.and_then(|s| self.session_end(vendor, s)) {
            Some(end) => lifetime.min(end.saturating_sub(common::now_secs())),
            None => lifetime,
        }
    }

    /// Seconds left to `session`'s refresh token: its deadline or the session's end.
    fn refresh_left(&self, vendor: Vendor, session: Session) -> u64 {
        let end = self
            .session_end(vendor, session)
            .unwrap_or(u64::MAX)
            .min(session.deadline);
        end.saturating_sub(common::now_secs())
    }

    /// Answer `value` instead of the true `expires_in` of `vendor`'s tokens from now on (any
    /// JSON: `1e15`, `-30`, `0`, `"3600"`, `null`); `None` answers the truth again. Only the
    /// answer changes: the token still dies when [`Issued::expires_at`] says. Vendors that
    /// answer an `expires_in`: Altitude Angel, Pix4D, Dronetag OIDC, AirMap (`/delegation`).
    pub fn set_expires_in_override(&self, vendor: Vendor, value: Option<Value>) {
        set_override(&mut self.lock().expires_in_overrides, vendor, value);
    }

    /// As [`State::set_expires_in_override`], for `refresh_expires_in` (Dronetag OIDC).
    pub fn set_refresh_expires_in_override(&self, vendor: Vendor, value: Option<Value>) {
        set_override(&mut self.lock().refresh_expires_in_overrides, vendor, value);
    }

    /// As [`State::set_expires_in_override`], for the absolute expiry the vendor answers, in the
    /// vendor's own form: `expiresAt` of the JSON-login platform (epoch milliseconds),
    /// `expires_at` of Dronetag PATs (RFC 3339), and the `exp` claim (epoch seconds) of the JWTs
    /// of Dronetag OIDC, AirMap (`id_token`) and Pix4D (`token_format=jwt`).
    pub fn set_expires_at_override(&self, vendor: Vendor, value: Option<Value>) {
        set_override(&mut self.lock().expires_at_overrides, vendor, value);
    }

    /// `expires_in` to answer for a token living `lifetime` seconds.
    fn expires_in_value(&self, vendor: Vendor, lifetime: u64) -> Value {
        let value = self.lock().expires_in_overrides.get(&vendor).cloned();
        value.unwrap_or_else(|| lifetime.into())
    }

    /// `refresh_expires_in` to answer for a refresh token living `left` seconds.
    fn refresh_expires_in_value(&self, vendor: Vendor, left: u64) -> Value {
        let value = self
            .lock()
            .refresh_expires_in_overrides
            .get(&vendor)
            .cloned();
        value.unwrap_or_else(|| left.into())
    }

    /// The absolute expiry to answer instead of `truth`.
    fn expires_at_value(&self, vendor: Vendor, truth: Value) -> Value {
        let value = self.lock().expires_at_overrides.get(&vendor).cloned();
        value.unwrap_or(truth)
    }

    /// Hold a request until the server stops or [`HANG_LIMIT`] passes.
    async fn hang(&self) {
        let closing = self.closing.notified();
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        tokio::select! {
            _ = closing => {}
            _ = tokio::time::sleep(HANG_LIMIT) => {}
        }
    }

    /// Let every hung request go (the server is stopping).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
    }

    /// Record an access token as issued.
    fn issue(&self, vendor: Vendor, token: &str, lifetime: u64, scopes: Vec<String>) -> Issued {
        let id = format!("{:024x}", {
            let mut inner = self.lock();
            inner.serial += 1;
            inner.serial
        });
        let issued = Issued {
            token: token.to_string(),
            id,
            expires_at: common::now_secs().saturating_add(lifetime),
            scopes,
            revoked: false,
        };
        self.lock()
            .issued
            .entry(vendor)
            .or_default()
            .push(issued.clone());
        issued
    }

    /// Every access token `vendor` issued, oldest first.
    pub fn issued(&self, vendor: Vendor) -> Vec<Issued> {
        self.lock().issued.get(&vendor).cloned().unwrap_or_default()
    }

    /// The issued token `token` if it is alive (not expired, not revoked).
    fn live(&self, vendor: Vendor, token: &str) -> Option<Issued> {
        let now = common::now_secs();
        self.issued(vendor)
            .into_iter()
            .find(|i| i.token == token && !i.revoked && i.expires_at > now)
    }

    fn revoke_id(&self, vendor: Vendor, id: &str) -> bool {
        let mut inner = self.lock();
        let tokens = inner.issued.entry(vendor).or_default();
        match tokens.iter_mut().find(|i| i.id == id && !i.revoked) {
            Some(i) => {
                i.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Remember the scopes granted with refresh token `rt`.
    fn set_refresh_scopes(&self, rt: &str, scopes: Vec<String>) {
        self.lock().refresh_scopes.insert(rt.to_string(), scopes);
    }

    /// The scopes granted with refresh token `rt`.
    fn refresh_scopes(&self, rt: &str) -> Vec<String> {
        self.lock()
            .refresh_scopes
            .get(rt)
            .cloned()
            .unwrap_or_default()
    }

    /// Answer PAT mints with `expires_at` written this way.
    pub fn set_pat_expiry(&self, form: PatExpiry) {
        self.lock().pat_expiry = form;
    }

    fn pat_expiry(&self) -> PatExpiry {
        self.lock().pat_expiry
    }

    /// Accept a PAT mint's bearer token when `userinfo` (a plain-http loopback URL of an OIDC
    /// userinfo endpoint) answers 200 for it, instead of looking it up in the fake realm.
    pub fn set_pat_userinfo(&self, userinfo: Option<String>) {
        self.lock().pat_userinfo = userinfo;
    }

    fn pat_userinfo(&self) -> Option<String> {
        self.lock().pat_userinfo.clone()
    }

    /// Forget every refresh token `vendor` issued (a password change, an admin revoking sessions).
    pub fn revoke_refresh_tokens(&self, vendor: Vendor) {
        self.lock().refresh_tokens.remove(&vendor);
    }
}

/// A running fake server.
pub struct FakeProviders {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tls: bool,
}

impl FakeProviders {
    fn app(state: Arc<State>) -> axum::Router {
        axum::Router::new()
            .nest("/altitude-angel", altitude_angel::router())
            .nest("/pix4d", pix4d::router())
            .nest("/dronetag-auth", dronetag::auth_router())
            .nest("/dronetag-api", dronetag::api_router())
            .nest("/airmap", airmap::router())
            .nest("/json-login", json_login::router())
            .with_state(state)
    }

    /// Serve every vendor on `127.0.0.1:port` (0 for any free port).
    pub async fn start(port: u16) -> std::io::Result<Self> {
        Self::serve(port, false).await
    }

    /// As [`FakeProviders::start`], with the admin endpoints of [`admin`] under `/_admin/` too,
    /// so that a driver in another process can switch faults.
    pub async fn start_with_admin(port: u16) -> std::io::Result<Self> {
        Self::serve(port, true).await
    }

    async fn serve(port: u16, with_admin: bool) -> std::io::Result<Self> {
        let state = Arc::new(State::default());
        let mut app = Self::app(state.clone());
        if with_admin {
            app = app.merge(admin::router().with_state(state.clone()));
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            tls: false,
        })
    }

    /// Serve every vendor over HTTPS with this certificate chain and key (PEM).
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Self> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(&e))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(State::default());
        let app = Self::app(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut rx => break,
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // a client that refuses the certificate ends the handshake: nothing to serve
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            tls: true,
        })
    }

    /// `http://127.0.0.1:PORT` (or `https://` when serving TLS)
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        self.state.close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn set_override(map: &mut BTreeMap<Vendor, Value>, vendor: Vendor, value: Option<Value>) {
    match value {
        Some(v) => map.insert(vendor, v),
        None => map.remove(&vendor),
    };
}

/// Wait out a delay fault.
async fn delay(d: Duration) {
    tokio::time::sleep(d).await;
}
