//! OAuth 2.0 token requests (RFC 6749 section 4 and 6) with OIDC discovery.
//!
//! A small hand-written form POST rather than the `oauth2` crate: that crate pins its own reqwest
//! major and brings chrono, and it has no place for the vendor quirks served here (Keycloak's
//! `refresh_expires_in`, `expires_in` sent as a string, Pix4D's extra `token_format` parameter).

use std::collections::BTreeMap;

use crate::renewal::add_secs;
use base64::Engine;
use serde::Deserialize;

use super::{
    ErrorDetail, Fetched, Grant, ProviderError, Request, check_url, jwt_exp, seconds_value,
};
use crate::crd::{ClientAuthentication, GrantType, InputKeys, InputRole, OAuth2Spec};
use crate::token::{Inputs, SecretValue, Token};

/// A form body and the HTTP Basic credentials of one token request. `Debug` is redacted.
pub struct TokenForm {
    pub params: Vec<(String, SecretValue)>,
    /// `Authorization: Basic ...` for `client_secret_basic` and `client_secret_basic_raw`.
    pub basic: Option<SecretValue>,
    /// What to suggest when the server refuses the Basic credentials.
    pub basic_hint: Option<&'static str>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenForm")
            .field("params", &names)
            .field("basic", &self.basic.is_some())
            .finish()
    }
}

#[cfg(test)]
impl TokenForm {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.expose())
    }
}

fn input<'a>(
    inputs: &'a Inputs,
    keys: &InputKeys,
    role: InputRole,
    purpose: &'static str,
) -> Result<&'a SecretValue, ProviderError> {
    super::require_input(inputs, keys.key(role), purpose)
}

/// The form for `grant` (pure: no I/O).
pub fn token_form(
    spec: &OAuth2Spec,
    keys: &InputKeys,
    inputs: &Inputs,
    grant: &Grant,
) -> Result<TokenForm, ProviderError> {
    let mut params: Vec<(String, SecretValue)> = Vec::new();
    let mut push = |k: &str, v: &SecretValue| params.push((k.to_string(), v.clone()));
    let purpose = spec.grant_type.as_str();
    match grant {
        Grant::Refresh(refresh_token) => {
            push("grant_type", &"refresh_token".into());
            push("refresh_token", refresh_token);
        }
        Grant::Primary => {
            push("grant_type", &spec.grant_type.as_str().into());
            match spec.grant_type {
                GrantType::ClientCredentials => {}
                GrantType::Password => {
                    push(
                        "username",
                        input(inputs, keys, InputRole::Username, purpose)?,
                    );
                    push(
                        "password",
                        input(inputs, keys, InputRole::Password, purpose)?,
                    );
                }
                GrantType::RefreshToken => {
                    let rt = input(inputs, keys, InputRole::RefreshToken, purpose)?;
                    push("refresh_token", rt);
                }
                GrantType::AuthorizationCode => {
                    push("code", input(inputs, keys, InputRole::Code, purpose)?);
                    let redirect = input(inputs, keys, InputRole::RedirectUri, purpose)?;
                    push("redirect_uri", redirect);
                }
            }
            if !spec.scopes.is_empty() {
                push("scope", &spec.scopes.join(" ").as_str().into());
            }
            if let Some(audience) = &spec.audience {
                push("audience", &audience.as_str().into());
            }
        }
    }
    for (k, v) in &spec.extra_params {
        push(k, &v.as_str().into());
    }
    let client_id = input(inputs, keys, InputRole::ClientId, "client authentication")?;
    let mut basic_hint = None;
    let basic = match spec.client_authentication {
        ClientAuthentication::ClientSecretPost => {
            let secret = input(inputs, keys, InputRole::ClientSecret, "client_secret_post")?;
            push("client_id", client_id);
            push("client_secret", secret);
            None
        }
        auth @ (ClientAuthentication::ClientSecretBasic
        | ClientAuthentication::ClientSecretBasicRaw) => {
            let raw = auth == ClientAuthentication::ClientSecretBasicRaw;
            let name = if raw {
                "client_secret_basic_raw"
            } else {
                "client_secret_basic"
            };
            let secret = input(inputs, keys, InputRole::ClientSecret, name)?;
            // RFC 6749 2.3.1: both parts are form-encoded before the Basic encoding; some
            // servers do not decode them and want the values as they are.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let (id, secret) = (client_id.expose(), secret.expose());
            let encodings_differ = enc(id) != id || enc(secret) != secret;
            let pair = if raw {
                format!("{id}:{secret}")
            } else {
                format!("{}:{}", enc(id), enc(secret))
            };
            basic_hint = Some(match (encodings_differ, raw) {
                (true, false) => {
                    "the server may want the client id and secret unencoded (clientAuthentication: client_secret_basic_raw), or client_secret_post"
                }
                (true, true) => {
                    "the server may want the client id and secret form-encoded as RFC 6749 2.3.1 says (clientAuthentication: client_secret_basic), or client_secret_post"
                }
                (false, _) => "the server may want clientAuthentication: client_secret_post",
            });
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
            Some(SecretValue::new(format!("Basic {b64}")))
        }
        ClientAuthentication::None => {
            push("client_id", client_id);
            None
        }
    };
    Ok(TokenForm {
        params,
        basic,
        basic_hint,
    })
}

/// RFC 6749 5.1, with the common extensions seen at the vendors.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<serde_json::Value>,
    scope: Option<serde_json::Value>,
}

/// The discovery document's fields tokensync reads (OpenID Connect Discovery 1.0, 3).
#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: Option<String>,
    token_endpoint: Option<String>,
}

/// How long a discovery document is used before it is fetched again.
pub const DISCOVERY_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// OIDC discovery documents by issuer: each is fetched once per [`DISCOVERY_TTL`] (and again
/// after a token request to its endpoint failed in a way a moved endpoint would explain), instead
/// of before every token request. One per process is enough; the controller's `Context` holds one.
#[derive(Debug)]
pub struct Discovery {
    ttl: std::time::Duration,
    /// The token endpoint by issuer, and when it was read.
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self::with_ttl(DISCOVERY_TTL)
    }
}

impl Discovery {
    pub fn with_ttl(ttl: std::time::Duration) -> Self {
        Self {
            ttl,
            entries: Default::default(),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>>
    {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, issuer: &str) -> Option<String> {
        let entries = self.lock();
        let (endpoint, at) = entries.get(issuer)?;
        (at.elapsed() < self.ttl).then(|| endpoint.clone())
    }

    fn put(&self, issuer: &str, endpoint: String) {
        let mut entries = self.lock();
        let ttl = self.ttl;
        entries.retain(|_, (_, at)| at.elapsed() < ttl);
        entries.insert(issuer.to_string(), (endpoint, std::time::Instant::now()));
    }

    /// Forget `issuer`'s document: the next request fetches it again.
    pub fn invalidate(&self, issuer: &str) {
        self.lock().remove(issuer_key(issuer));
    }

    /// How many issuers are cached (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The issuer as the cache and the comparison with the document's `issuer` see it: without a
/// trailing slash (`https://a.example/realms/dcp/` is the issuer `https://a.example/realms/dcp`).
fn issuer_key(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

/// The token endpoint: the spec's `tokenUrl`, or the issuer's discovery document's (from
/// `discovery` when it holds a fresh one).
pub async fn token_endpoint(
    http: &reqwest::Client,
    spec: &OAuth2Spec,
    egress: &super::Egress,
    discovery: &Discovery,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Url, ProviderError> {
    if let Some(url) = &spec.token_url {
        return check_url(url, egress);
    }
    let issuer = spec.issuer_url.as_deref().ok_or_else(|| {
        ProviderError::InvalidSpec("spec.oauth2: set exactly one of tokenUrl or issuerUrl".into())
    })?;
    let key = issuer_key(issuer);
    if let Some(endpoint) = discovery.get(key) {
        return check_url(&endpoint, egress);
    }
    let url = format!("{key}/.well-known/openid-configuration");
    let checked = check_url(&url, egress)?;
    let mut request = http
        .get(checked)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let response = request.send().await.map_err(|e| transport(&url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProviderError::Rejected {
            url,
            status: status.as_u16(),
            detail: Some(ErrorDetail::hint(
                "OIDC discovery failed; check spec.oauth2.issuerUrl",
            )),
            retry_after: super::retry_after(response.headers(), crate::renewal::now()),
        });
    }
    let bytes = super::read_capped(response, &url).await?;
    let doc: DiscoveryDocument =
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::BadResponse {
            url: url.clone(),
            reason: format!("not an OIDC discovery document: {e}"),
        })?;
    // OpenID Connect Discovery 4.3: the document must name the issuer it was fetched for, or
    // tokens would be taken from an endpoint of another issuer
    match doc.issuer.as_deref() {
        Some(named) if issuer_key(named) == key => {}
        named => {
            let named = named.map_or_else(
                || "no issuer".to_string(),
                |n| format!("the issuer {:?}", n.chars().take(200).collect::<String>()),
            );
            return Err(ProviderError::InvalidSpec(format!(
                "spec.oauth2.issuerUrl: the discovery document at {url} names {named}, not {key:?}                  (OpenID Connect Discovery 4.3 requires them to be identical): set issuerUrl to the                  issuer the provider names, or fix the provider's configured hostname"
            )));
        }
    }
    let endpoint = doc
        .token_endpoint
        .ok_or_else(|| ProviderError::BadResponse {
            url: url.clone(),
            reason: "the discovery document has no token_endpoint".into(),
        })?;
    let checked = check_url(&endpoint, egress)?;
    discovery.put(key, endpoint);
    Ok(checked)
}

pub(crate) fn transport(url: &str, e: reqwest::Error) -> ProviderError {
    // reqwest's message names the whole URL, query included
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    ProviderError::Transport {
        url: url.into(),
        reason,
    }
}

/// One token request to an OAuth 2.0 token endpoint.
pub async fn fetch(
    http: &reqwest::Client,
    spec: &OAuth2Spec,
    keys: &InputKeys,
    req: &Request<'_>,
    discovery: &Discovery,
) -> Result<Fetched, ProviderError> {
    let result = request_token(http, spec, keys, req, discovery).await;
    if let (Err(e), Some(issuer)) = (&result, &spec.issuer_url) {
        // a token endpoint that moved fails without an OAuth answer: read the document again
        if e.is_unreachable()
            || (matches!(e, ProviderError::Rejected { .. }) && e.oauth_error().is_none())
        {
            discovery.invalidate(issuer);
        }
    }
    result
}

async fn request_token(
    http: &reqwest::Client,
    spec: &OAuth2Spec,
    keys: &InputKeys,
    req: &Request<'_>,
    discovery: &Discovery,
) -> Result<Fetched, ProviderError> {
    let form = token_form(spec, keys, req.inputs, &req.grant)?;
    let url = token_endpoint(http, spec, req.egress, discovery, req.timeout).await?;
    let url_text = super::shown_url(&url);
    let body: Vec<(&str, &str)> = form
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    let mut request = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&body);
    if let Some(basic) = &form.basic {
        request = request.header(reqwest::header::AUTHORIZATION, basic.expose());
    }
    if let Some(timeout) = req.timeout {
        request = request.timeout(timeout);
    }
    let response = request.send().await.map_err(|e| transport(&url_text, e))?;
    let status = response.status();
    let retry_after = super::retry_after(response.headers(), crate::renewal::now());
    let bytes = super::read_capped(response, &url_text).await?;
    if !status.is_success() {
        let mut detail = ErrorDetail::from_body(&bytes);
        let about_the_client = detail.as_ref().is_none_or(|d| {
            matches!(
                d.error.as_deref(),
                None | Some("invalid_client" | "unauthorized_client" | "invalid_request")
            )
        });
        if let Some(hint) = form.basic_hint
            && matches!(status.as_u16(), 400 | 401 | 403)
            && about_the_client
        {
            detail.get_or_insert_with(ErrorDetail::default).hint = Some(hint.into());
        }
        return Err(ProviderError::Rejected {
            url: url_text,
            status: status.as_u16(),
            detail,
            retry_after,
        });
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::BadResponse {
            url: url_text.clone(),
            reason: format!("not a JSON token response ({e})"),
        })?;
    let bad = |reason: &str| ProviderError::BadResponse {
        url: url_text.clone(),
        reason: reason.into(),
    };
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token in the response"))?;
    let refused =
        super::control_characters(&access_token, "access_token", &url_text).or_else(|| {
            parsed
                .token_type
                .as_deref()
                .and_then(|t| super::control_characters(t, "token_type", &url_text))
        });
    // lifetimes count from when the answer arrived, not from when the request started
    let now = crate::renewal::now();
    let mut warnings = Vec::new();
    // the token was issued: an expiry that cannot be read does not throw it away
    let expires_at = match parsed.expires_in.as_ref().filter(|v| !v.is_null()) {
        Some(v) => match seconds_value(v) {
            Some(s) => Some(add_secs(now, s)),
            None => {
                let fallback = jwt_exp(&access_token);
                warnings.push(format!(
                    "{url_text}: expires_in is not a number of seconds; {}",
                    if fallback.is_some() {
                        "using the token's JWT exp claim"
                    } else {
                        "renewing at the fallback interval"
                    }
                ));
                fallback
            }
        },
        None => jwt_exp(&access_token),
    };
    let refresh_expires_at = match parsed.refresh_expires_in.as_ref().and_then(seconds_value) {
        // Keycloak sends 0 for offline tokens that do not expire
        Some(0) | None => None,
        Some(s) => Some(add_secs(now, s)),
    };
    let refresh_token = parsed.refresh_token.filter(|t| !t.is_empty());
    let token = Token {
        value: SecretValue::new(access_token),
        token_type: parsed.token_type.unwrap_or_else(|| "Bearer".into()),
        issued_at: now,
        expires_at,
        refresh_expires_at: refresh_token.as_ref().and(refresh_expires_at),
        refresh_token: refresh_token.map(SecretValue::new),
        scope: parsed
            .scope
            .as_ref()
            .and_then(super::scope_value)
            .filter(|s| !s.is_empty()),
        kept: BTreeMap::new(),
    };
    Ok(Fetched {
        token,
        warnings,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(grant_type: GrantType, auth: ClientAuthentication) -> OAuth2Spec {
        OAuth2Spec {
            token_url: Some("https://auth.example/token".into()),
            issuer_url: None,
            grant_type,
            scopes: vec!["read".into(), "write".into()],
            audience: None,
            client_authentication: auth,
            extra_params: [("token_format".to_string(), "jwt".to_string())].into(),
        }
    }

    fn inputs() -> Inputs {
        [
            ("client_id", "my client"),
            ("client_secret", "p&ss=w/rd+"),
            ("username", "pilot"),
            ("password", "hunter2"),
            ("code", "abc"),
            ("redirect_uri", "https://app.example/cb"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn client_credentials_post() {
        let s = spec(
            GrantType::ClientCredentials,
            ClientAuthentication::ClientSecretPost,
        );
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("grant_type"), Some("client_credentials"));
        assert_eq!(form.param("scope"), Some("read write"));
        assert_eq!(form.param("token_format"), Some("jwt"));
        assert_eq!(form.param("client_secret"), Some("p&ss=w/rd+"));
        assert!(form.basic.is_none());
        assert!(!format!("{form:?}").contains("p&ss"));
    }

    #[test]
    fn client_secret_basic_form_encodes_before_base64() {
        let s = spec(
            GrantType::ClientCredentials,
            ClientAuthentication::ClientSecretBasic,
        );
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("client_secret"), None);
        let basic = form.basic.unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.expose().strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+client:p%26ss%3Dw%2Frd%2B"
        );
    }

    #[test]
    fn client_secret_basic_raw_sends_the_values_as_they_are() {
        let s = spec(
            GrantType::ClientCredentials,
            ClientAuthentication::ClientSecretBasicRaw,
        );
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("client_secret"), None);
        let basic = form.basic.unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.expose().strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "my client:p&ss=w/rd+");
        assert!(form.basic_hint.unwrap().contains("client_secret_basic)"));
        // the serde name the manifests use
        let parsed: ClientAuthentication =
            serde_json::from_value(serde_json::json!("client_secret_basic_raw")).unwrap();
        assert_eq!(parsed, ClientAuthentication::ClientSecretBasicRaw);
    }

    #[test]
    fn password_and_code_grants_take_their_inputs() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("username"), Some("pilot"));
        assert_eq!(form.param("password"), Some("hunter2"));
        // a public client with an audience
        let mut s = spec(GrantType::AuthorizationCode, ClientAuthentication::None);
        s.audience = Some("https://api.example".into());
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("code"), Some("abc"));
        assert_eq!(form.param("redirect_uri"), Some("https://app.example/cb"));
        assert_eq!(form.param("client_secret"), None);
        assert_eq!(form.param("client_id"), Some("my client"));
        assert_eq!(form.param("audience"), Some("https://api.example"));
    }

    #[test]
    fn refresh_grant_uses_the_stored_refresh_token() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let grant = Grant::Refresh("rt-1".into());
        let form = token_form(&s, &InputKeys::default(), &inputs(), &grant).unwrap();
        assert_eq!(form.param("grant_type"), Some("refresh_token"));
        assert_eq!(form.param("refresh_token"), Some("rt-1"));
        assert_eq!(form.param("password"), None);
    }

    /// Issue 8: an empty client secret or a binary value is refused naming the key, never sent.
    #[test]
    fn empty_and_binary_inputs_are_refused() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let mut secret = k8s_openapi::api::core::v1::Secret {
            data: Some(
                [
                    ("client_id", b"id".to_vec()),
                    ("client_secret", b"".to_vec()),
                    ("username", b"u".to_vec()),
                    ("password", vec![0xff, 0xfe, 0x41]),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v)))
                .collect(),
            ),
            ..Default::default()
        };
        let inputs = Inputs::from_secret(&secret);
        let err = token_form(&s, &InputKeys::default(), &inputs, &Grant::Primary).unwrap_err();
        assert_eq!(err.reason(), crate::reason::Reason::InvalidInputs);
        assert!(
            err.to_string().contains("\"password\"") && err.to_string().contains("UTF-8"),
            "{err}"
        );
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), k8s_openapi::ByteString(b"pw".to_vec()));
        let inputs = Inputs::from_secret(&secret);
        let err = token_form(&s, &InputKeys::default(), &inputs, &Grant::Primary).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"client_secret\" of the inputs Secret is empty"),
            "{err}"
        );
    }

    #[test]
    fn missing_input_names_the_key() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let keys = InputKeys {
            password: Some("pw".into()),
            ..Default::default()
        };
        let err = token_form(&s, &keys, &inputs(), &Grant::Primary).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"pw\" is missing from the inputs Secret (needed for password)"
        );
    }

    /// A provider on loopback: discovery documents and a token endpoint, counting requests.
    mod served {
        use super::*;
        use crate::providers::{Egress, Fetched, Request};
        use crate::reason::Reason;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        #[derive(Default)]
        struct Hits {
            discovery: AtomicUsize,
            token: AtomicUsize,
        }

        /// Serve `/{name}/.well-known/openid-configuration` for the issuers `good` (its own
        /// issuer), `other` (names another issuer), `none` (no issuer), `big` (2 MiB), and a
        /// token endpoint `/token` that answers as `token_status` says (`401`: a bare 401).
        async fn serve(token_status: u16) -> (String, Arc<Hits>) {
            use axum::extract::{Path, State};
            use axum::http::StatusCode;
            use axum::response::IntoResponse;
            let hits = Arc::new(Hits::default());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let b = base.clone();
            let app = axum::Router::new()
                .route(
                    "/{name}/.well-known/openid-configuration",
                    axum::routing::get(
                        move |State(h): State<Arc<Hits>>, Path(name): Path<String>| {
                            let base = b.clone();
                            async move {
                                h.discovery.fetch_add(1, Ordering::SeqCst);
                                let token = format!("{base}/token");
                                let doc = match name.as_str() {
                                    "good" => serde_json::json!({"issuer": format!("{base}/good"), "token_endpoint": token}),
                                    "other" => serde_json::json!({"issuer": "https://evil.example/realms/dcp", "token_endpoint": token}),
                                    "none" => serde_json::json!({"token_endpoint": token}),
                                    _ => serde_json::json!({"issuer": format!("{base}/big"), "token_endpoint": token, "pad": "x".repeat(2 << 20)}),
                                };
                                axum::Json(doc)
                            }
                        },
                    ),
                )
                .route(
                    "/token",
                    axum::routing::post(move |State(h): State<Arc<Hits>>| async move {
                        h.token.fetch_add(1, Ordering::SeqCst);
                        match token_status {
                            200 => axum::Json(serde_json::json!({"access_token": "at", "expires_in": "soon", "token_type": "bearer"})).into_response(),
                            401 => StatusCode::UNAUTHORIZED.into_response(),
                            s => (StatusCode::from_u16(s).unwrap(), axum::Json(serde_json::json!({"error": "invalid_client"}))).into_response(),
                        }
                    }),
                )
                .with_state(hits.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (base, hits)
        }

        fn pc(issuer: &str, auth: &str) -> crate::crd::ProviderCredentialSpec {
            serde_json::from_value(serde_json::json!({
                "inputs": {"secretName": "in"},
                "output": {"secretName": "out"},
                "oauth2": {"issuerUrl": issuer, "grantType": "client_credentials", "clientAuthentication": auth},
            }))
            .unwrap()
        }

        async fn fetch_once(
            spec: &crate::crd::ProviderCredentialSpec,
            discovery: &Discovery,
        ) -> Result<Fetched, ProviderError> {
            let egress = Egress {
                allow_insecure_http: true,
                allowed_hosts: vec![],
            };
            let inputs = inputs();
            let req = Request {
                spec,
                inputs: &inputs,
                grant: Grant::Primary,
                now: crate::renewal::now(),
                egress: &egress,
                upstream: None,
                timeout: None,
            };
            crate::providers::fetch_with(&reqwest::Client::new(), &req, discovery).await
        }

        #[tokio::test]
        async fn discovery_is_cached_per_issuer_and_refetched_after_a_failure() {
            let (base, hits) = serve(200).await;
            let spec = pc(&format!("{base}/good/"), "client_secret_post");
            let discovery = Discovery::default();
            for _ in 0..5 {
                let fetched = fetch_once(&spec, &discovery).await.unwrap();
                // an expires_in that is not a number keeps the token, with a warning
                assert_eq!(fetched.token.expires_at, None);
                assert_eq!(fetched.warnings.len(), 1, "{:?}", fetched.warnings);
                assert!(fetched.warnings[0].contains("expires_in is not a number"));
            }
            assert_eq!(hits.token.load(Ordering::SeqCst), 5);
            assert_eq!(hits.discovery.load(Ordering::SeqCst), 1);
            // an expired entry is fetched again
            let short = Discovery::with_ttl(std::time::Duration::ZERO);
            fetch_once(&spec, &short).await.unwrap();
            fetch_once(&spec, &short).await.unwrap();
            assert_eq!(hits.discovery.load(Ordering::SeqCst), 3);

            // a token endpoint that fails without an OAuth answer: the document is read again
            let (base, hits) = serve(401).await;
            let spec = pc(&format!("{base}/good"), "client_secret_post");
            for _ in 0..2 {
                let err = fetch_once(&spec, &discovery).await.unwrap_err();
                assert_eq!(err.reason(), Reason::Unauthorized);
            }
            assert_eq!(hits.discovery.load(Ordering::SeqCst), 2);
            // one with an OAuth error code is the right endpoint: the document stays
            let (base, hits) = serve(400).await;
            let spec = pc(&format!("{base}/good"), "client_secret_post");
            for _ in 0..3 {
                let err = fetch_once(&spec, &discovery).await.unwrap_err();
                assert_eq!(err.oauth_error(), Some("invalid_client"));
            }
            assert_eq!(hits.discovery.load(Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn discovery_refuses_another_issuer_and_a_huge_document() {
            let (base, hits) = serve(200).await;
            let discovery = Discovery::default();
            let err = fetch_once(
                &pc(&format!("{base}/other"), "client_secret_post"),
                &discovery,
            )
            .await
            .unwrap_err();
            assert_eq!(err.reason(), Reason::InvalidSpec);
            let text = err.to_string();
            assert!(
                text.contains("names the issuer \"https://evil.example/realms/dcp\"")
                    && text.contains("OpenID Connect Discovery 4.3"),
                "{text}"
            );
            let err = fetch_once(
                &pc(&format!("{base}/none"), "client_secret_post"),
                &discovery,
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("names no issuer"), "{err}");
            let err = fetch_once(
                &pc(&format!("{base}/big"), "client_secret_post"),
                &discovery,
            )
            .await
            .unwrap_err();
            assert!(
                err.to_string().contains("larger than 1048576 bytes"),
                "{err}"
            );
            // no token request went to an endpoint of a refused document, and none was cached
            assert_eq!(hits.token.load(Ordering::SeqCst), 0);
            assert!(discovery.is_empty());
        }

        #[tokio::test]
        async fn a_refused_basic_request_suggests_the_other_encodings() {
            for status in [401, 403, 400] {
                let (base, _) = serve(status).await;
                for (auth, other) in [
                    ("client_secret_basic", "client_secret_basic_raw"),
                    ("client_secret_basic_raw", "client_secret_basic)"),
                ] {
                    let err = fetch_once(&pc(&format!("{base}/good"), auth), &Discovery::default())
                        .await
                        .unwrap_err();
                    let text = err.to_string();
                    assert!(
                        text.contains(other) && text.contains("client_secret_post"),
                        "{status} {auth}: {text}"
                    );
                    assert!(!text.contains("p&ss"), "{text}");
                }
                // client_secret_post gets no such hint
                let err = fetch_once(
                    &pc(&format!("{base}/good"), "client_secret_post"),
                    &Discovery::default(),
                )
                .await
                .unwrap_err();
                assert!(!err.to_string().contains("may want"), "{err}");
            }
        }
    }
}
