//! How to fetch a token: one module per flow, each a function from (HTTP client, spec, inputs,
//! clock) to a [`Token`]. Nothing here knows about Kubernetes.

pub mod declarative;
pub mod oauth2;

pub use oauth2::Discovery;

use base64::Engine;
use jiff::Timestamp;

use crate::crd::ProviderCredentialSpec;
use crate::reason::Reason;
use crate::token::{InputProblem, Inputs, SecretValue, Token};

/// Which grant to run.
#[derive(Clone, Debug)]
pub enum Grant {
    /// The grant the spec names, from the inputs (client credentials, password, ...).
    Primary,
    /// Renew with a refresh token obtained earlier.
    Refresh(SecretValue),
}

/// One token request.
#[derive(Debug)]
pub struct Request<'a> {
    pub spec: &'a ProviderCredentialSpec,
    pub inputs: &'a Inputs,
    pub grant: Grant,
    pub now: Timestamp,
    /// Where requests may go.
    pub egress: &'a Egress,
    /// The token of the ProviderCredential named in `spec.http.upstream`.
    pub upstream: Option<Upstream>,
    /// A per-request timeout shorter than the client's (after a timeout, the next attempt
    /// gives up sooner so it does not hold a slot for long).
    pub timeout: Option<std::time::Duration>,
}

/// Another credential's current token, for requests that are authorised by it.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub value: SecretValue,
    pub token_type: String,
}

/// Why a token could not be fetched. Messages name URLs, keys and statuses, never secret values;
/// the controller also passes them through [`Inputs::redact`] before they leave the process.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("key {key:?} is missing from the inputs Secret (needed for {purpose})")]
    MissingInput { key: String, purpose: &'static str },
    #[error("key {key:?} of the inputs Secret {problem} (needed for {purpose})")]
    BadInput {
        key: String,
        problem: &'static str,
        purpose: &'static str,
    },
    #[error(
        "{url} uses plain http; token URLs must be https unless the operator runs with --allow-insecure-http"
    )]
    InsecureUrl { url: String },
    #[error(
        "host {host:?} is not in the operator's --allowed-hosts; ask the platform team to allow it"
    )]
    HostNotAllowed { host: String },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered HTTP {status}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        url: String,
        status: u16,
        /// The provider's OAuth error code and description (RFC 6749 5.2), when it gave them, and
        /// a hint of ours. `Some("invalid_grant: Token is not active".into())` parses the code.
        detail: Option<ErrorDetail>,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<jiff::SignedDuration>,
    },
    #[error("response from {url} is not usable: {reason}")]
    BadResponse { url: String, reason: String },
}

/// What a provider said about a refused request: the OAuth 2.0 `error` code and
/// `error_description` (RFC 6749 5.2), or a vendor's own message, and a hint of ours. Shown as
/// `code: description (hint)`; never the raw body, which may echo what was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The `error` code (`invalid_grant`, `invalid_client`, ...), when the body had one.
    pub error: Option<String>,
    /// `error_description`, or a vendor's `message`, cut to 300 characters.
    pub description: Option<String>,
    /// What tokensync suggests (e.g. another client authentication method).
    pub hint: Option<String>,
}

/// The longest provider text kept in a message.
const MAX_DETAIL_CHARS: usize = 300;

impl ErrorDetail {
    /// From an error body: the OAuth `error`/`error_description`, or a `message` (or a non-code
    /// `error`) string. `None` when the body has none of them (empty, HTML, ...).
    pub fn from_body(bytes: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let pick = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(MAX_DETAIL_CHARS).collect::<String>())
        };
        let description = pick("error_description").or_else(|| pick("message"));
        let (error, description) = match pick("error") {
            Some(e) if is_error_code(&e) => (Some(e), description),
            // `{"error": "Unauthorized"}`: a message, not a code
            Some(e) => (None, description.or(Some(e))),
            None => (None, description),
        };
        (error.is_some() || description.is_some()).then_some(Self {
            error,
            description,
            hint: None,
        })
    }

    /// Only a hint of ours.
    pub fn hint(hint: impl Into<String>) -> Self {
        Self {
            hint: Some(hint.into()),
            ..Self::default()
        }
    }
}

/// An OAuth 2.0 error code as RFC 6749 5.2 spells them: lowercase ASCII words joined by `_`
/// (`invalid_grant`, `slow_down`). Free text (`Unauthorized`, `Token expired`) is not one.
fn is_error_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.contains('_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl std::fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match (&self.error, &self.description) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (Some(e), None) => e.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => String::new(),
        };
        match (&self.hint, text.is_empty()) {
            (Some(h), true) => f.write_str(h),
            (Some(h), false) => write!(f, "{text} ({h})"),
            (None, _) => f.write_str(&text),
        }
    }
}

/// `"invalid_grant: Token is not active"` is the code and its description; text that does not
/// start with a code is a description.
impl From<&str> for ErrorDetail {
    fn from(text: &str) -> Self {
        let (code, rest) = match text.split_once(':') {
            Some((c, rest)) => (c.trim(), Some(rest.trim())),
            None => (text.trim(), None),
        };
        if is_error_code(code) {
            Self {
                error: Some(code.to_string()),
                description: rest.filter(|r| !r.is_empty()).map(str::to_string),
                hint: None,
            }
        } else {
            Self {
                description: Some(text.to_string()),
                ..Self::default()
            }
        }
    }
}

impl From<String> for ErrorDetail {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

/// What a failed refresh means for the refresh token (RFC 6749 5.2, by the `error` code rather
/// than the HTTP status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// The refresh token is dead (`invalid_grant`, or a 4xx the provider did not explain, such as
    /// a bare 400 or 401): drop it and run the primary grant, when the inputs allow it.
    GrantDead,
    /// The request is wrong, not the refresh token (`invalid_client`, `unauthorized_client`,
    /// `invalid_scope`, or a spec or inputs problem found before sending): keep the refresh token;
    /// a person fixes the configuration and the next refresh works.
    Configuration,
    /// Waiting may cure it (5xx, 429, 408, a network failure, an unusable 2xx answer): keep the
    /// refresh token and retry with backoff.
    Transient,
}

impl ProviderError {
    /// The condition reason this error is reported with: by the OAuth error code first (Keycloak
    /// answers `unauthorized_client` with 401 or 400 for the same wrong secret), then by status.
    pub fn reason(&self) -> Reason {
        match self.oauth_error() {
            Some("invalid_client" | "unauthorized_client") => return Reason::Unauthorized,
            Some("invalid_scope") => return Reason::InvalidScope,
            _ => {}
        }
        match self {
            ProviderError::MissingInput { .. } => Reason::InputKeyMissing,
            ProviderError::BadInput { .. } => Reason::InvalidInputs,
            ProviderError::InsecureUrl { .. } => Reason::InsecureURL,
            ProviderError::HostNotAllowed { .. } => Reason::HostNotAllowed,
            ProviderError::InvalidSpec(_) => Reason::InvalidSpec,
            ProviderError::Transport { .. } => Reason::ProviderUnreachable,
            ProviderError::Rejected { status: 401, .. }
            | ProviderError::Rejected { status: 403, .. } => Reason::Unauthorized,
            ProviderError::Rejected { status: 429, .. } => Reason::RateLimited,
            ProviderError::Rejected { .. } => Reason::TokenRequestFailed,
            ProviderError::BadResponse { .. } => Reason::InvalidTokenResponse,
        }
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<jiff::SignedDuration> {
        match self {
            ProviderError::Rejected { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the request timed out (or could not connect): the next attempt uses a shorter
    /// timeout.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ProviderError::Transport { .. })
    }

    /// The OAuth 2.0 `error` code the provider answered (RFC 6749 5.2), e.g. `invalid_grant`.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            ProviderError::Rejected {
                detail: Some(detail),
                ..
            } => detail.error.as_deref(),
            _ => None,
        }
    }

    /// The provider's `error_description` (or message), when it gave one. Provider text: pass
    /// it through [`Inputs::redact`](crate::token::Inputs::redact) before it leaves the process.
    pub fn oauth_error_description(&self) -> Option<&str> {
        match self {
            ProviderError::Rejected {
                detail: Some(detail),
                ..
            } => detail.description.as_deref(),
            _ => None,
        }
    }

    /// What this error, as the answer to a refresh request, means for the refresh token.
    pub fn refresh_verdict(&self) -> RefreshVerdict {
        match self {
            // a server error, a timeout or a rate limit says nothing about the grant, whatever
            // the body claims
            ProviderError::Rejected { status, .. }
                if *status == 408 || *status == 429 || !(400..500).contains(status) =>
            {
                RefreshVerdict::Transient
            }
            ProviderError::Rejected { .. } => match self.oauth_error() {
                Some("invalid_grant") => RefreshVerdict::GrantDead,
                Some("invalid_client" | "unauthorized_client" | "invalid_scope") => {
                    RefreshVerdict::Configuration
                }
                Some("temporarily_unavailable" | "server_error" | "slow_down") => {
                    RefreshVerdict::Transient
                }
                // any other 4xx: an unknown code, or none at all (a bare 400 with an empty body)
                _ => RefreshVerdict::GrantDead,
            },
            ProviderError::Transport { .. } | ProviderError::BadResponse { .. } => {
                RefreshVerdict::Transient
            }
            ProviderError::MissingInput { .. }
            | ProviderError::BadInput { .. }
            | ProviderError::InsecureUrl { .. }
            | ProviderError::HostNotAllowed { .. }
            | ProviderError::InvalidSpec(_) => RefreshVerdict::Configuration,
        }
    }

    /// Whether the provider answered that the refresh token is no longer good, so a fresh
    /// primary grant is the cure: [`RefreshVerdict::GrantDead`].
    pub fn is_rejected_grant(&self) -> bool {
        self.refresh_verdict() == RefreshVerdict::GrantDead
    }
}

/// A token and what was odd about the answer that brought it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched {
    pub token: Token,
    /// Problems that did not stop the token from being used, e.g. an expiry that could not be
    /// read (the token is kept with the requested lifetime or the fallback interval). The
    /// controller emits each as a Warning event ([`Reason::ExpiryUnreadable`]). Never secret.
    pub warnings: Vec<String>,
    /// Why the token cannot be used although the answer was read (e.g. control characters in
    /// it, naming the response field): the token is not written, but what else the provider
    /// issued (a rotated refresh token) is kept.
    pub refused: Option<String>,
}

/// The value of input `key` when it is present, text and not empty; otherwise the error that
/// names the key and what it is `purpose`d for (never the value).
pub(crate) fn require_input<'a>(
    inputs: &'a Inputs,
    key: &str,
    purpose: &'static str,
) -> Result<&'a SecretValue, ProviderError> {
    let problem = match inputs.require(key) {
        Ok(v) => return Ok(v),
        Err(InputProblem::Missing) => {
            return Err(ProviderError::MissingInput {
                key: key.to_string(),
                purpose,
            });
        }
        Err(InputProblem::Empty) => "is empty",
        Err(InputProblem::NotText) => "is not UTF-8 text (binary values are not sent)",
    };
    Err(ProviderError::BadInput {
        key: key.to_string(),
        problem,
        purpose,
    })
}

/// A token or token type holding control characters would put a header-injection line into
/// every templated key: why it is refused, naming the response field (never the value).
pub(crate) fn control_characters(value: &str, field: &str, url: &str) -> Option<String> {
    value.chars().any(char::is_control).then(|| {
        format!(
            "response from {url} is not usable: {field} holds control characters (a header injection); the token is not written"
        )
    })
}

/// Fetch one token as the spec says, reading OIDC discovery documents through `discovery`.
pub async fn fetch_with(
    http: &reqwest::Client,
    req: &Request<'_>,
    discovery: &Discovery,
) -> Result<Fetched, ProviderError> {
    match (&req.spec.oauth2, &req.spec.http) {
        (Some(oauth2), None) => {
            oauth2::fetch(http, oauth2, &req.spec.inputs.keys, req, discovery).await
        }
        (None, Some(spec)) => declarative::fetch(http, spec, req).await,
        _ => Err(ProviderError::InvalidSpec(
            "spec: exactly one provider block must be set: spec.oauth2 or spec.http".into(),
        )),
    }
}

/// The HTTP client every token request uses, in the controller and in `tokensync check`:
/// per-request and connect timeouts, a user agent, the system roots plus `extra_roots`, and no
/// redirects (a token endpoint that redirects is misconfigured, and following would carry
/// credentials to another host).
pub fn http_client(
    timeout: std::time::Duration,
    extra_roots: &[reqwest::Certificate],
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokensync/", env!("CARGO_PKG_VERSION")));
    for cert in extra_roots {
        builder = builder.add_root_certificate(cert.clone());
    }
    builder.build()
}

/// A `Retry-After` header (RFC 9110 10.2.3): seconds, or an HTTP date, relative to `now`.
pub(crate) fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: Timestamp,
) -> Option<jiff::SignedDuration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(jiff::SignedDuration::from_secs(
            i64::try_from(secs).unwrap_or(i64::MAX),
        ));
    }
    let at = jiff::fmt::rfc2822::parse(text).ok()?.timestamp();
    Some(at.duration_since(now))
}

/// Read a response body, refusing one larger than [`declarative::MAX_RESPONSE_BYTES`].
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    url: &str,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| oauth2::transport(url, e))?
    {
        if body.len() + chunk.len() > declarative::MAX_RESPONSE_BYTES {
            return Err(ProviderError::BadResponse {
                url: url.into(),
                reason: format!(
                    "the response is larger than {} bytes",
                    declarative::MAX_RESPONSE_BYTES
                ),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The provider kind, for metrics and summaries.
pub fn kind(spec: &ProviderCredentialSpec) -> &'static str {
    match (&spec.oauth2, &spec.http) {
        (Some(_), _) => "oauth2",
        (None, Some(_)) => "http",
        _ => "none",
    }
}

/// Where token requests may go: the operator's `--allow-insecure-http` and `--allowed-hosts`.
#[derive(Clone, Debug, Default)]
pub struct Egress {
    pub allow_insecure_http: bool,
    /// Hosts requests may go to: exact names, or `*.example.com` for any subdomain. Empty: any.
    pub allowed_hosts: Vec<String>,
}

impl Egress {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed_hosts.is_empty()
            || self.allowed_hosts.iter().any(|allowed| {
                let allowed = allowed.to_ascii_lowercase();
                match allowed.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => host == allowed,
                }
            })
    }
}

/// A URL as messages show it: scheme, host, port and path; never the query (templates may put
/// secrets there) or userinfo.
pub fn shown_url(url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.path()
    )
}

/// Refuse plain http unless allowed, anything that is not http(s), userinfo, and hosts outside
/// the allowlist. Errors never show the URL's query or userinfo.
pub fn check_url(url: &str, egress: &Egress) -> Result<reqwest::Url, ProviderError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ProviderError::InvalidSpec(format!("a request URL is not valid: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ProviderError::InvalidSpec(format!(
            "{}: credentials in a URL (userinfo) are refused; put them in the inputs Secret",
            shown_url(&parsed)
        )));
    }
    match parsed.scheme() {
        "https" => {}
        "http" if egress.allow_insecure_http => {}
        "http" => {
            return Err(ProviderError::InsecureUrl {
                url: shown_url(&parsed),
            });
        }
        other => {
            return Err(ProviderError::InvalidSpec(format!(
                "{}: scheme {other:?} is not http(s)",
                shown_url(&parsed)
            )));
        }
    }
    let host = parsed.host_str().unwrap_or_default();
    if !egress.host_allowed(host) {
        return Err(ProviderError::HostNotAllowed { host: host.into() });
    }
    Ok(parsed)
}

/// The `exp` claim of a JWT, read without verifying the signature: tokensync only needs to know
/// when the token stops working, and the workload's peer is the one that verifies it.
pub fn jwt_exp(jwt: &str) -> Option<Timestamp> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    let secs = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))?;
    Timestamp::from_second(secs)
        .ok()
        .or_else(|| (secs > 0).then_some(Timestamp::MAX))
}

/// Granted scopes as a provider writes them: a space-separated string (RFC 6749 5.1) or, at
/// some vendors, an array of strings.
pub fn scope_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.trim().to_string()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// A number of seconds that may arrive as a JSON number or a string (`"1200"`).
pub fn seconds_value(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A JWT whose payload has `exp`.
    pub(crate) fn jwt_with_exp(exp: i64) -> String {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"x","exp":{exp}}}"#));
        format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")
    }

    #[test]
    fn jwt_exp_is_read_without_verification() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"x","exp":1700000000}"#);
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        assert_eq!(jwt_exp(&jwt), Timestamp::from_second(1_700_000_000).ok());
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.b.c"), None);
    }

    #[test]
    fn retry_after_in_seconds_or_a_date() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(
            retry_after(&h, now),
            Some(jiff::SignedDuration::from_secs(120))
        );
        h.insert(
            "retry-after",
            "Tue, 14 Nov 2023 22:15:20 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h, now),
            Some(jiff::SignedDuration::from_secs(120))
        );
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn seconds_from_number_or_string() {
        assert_eq!(seconds_value(&serde_json::json!(1200)), Some(1200));
        assert_eq!(seconds_value(&serde_json::json!("1199")), Some(1199));
        assert_eq!(seconds_value(&serde_json::json!(true)), None);
    }

    /// Issue 8: messages about a request never show its query or userinfo.
    #[test]
    fn urls_in_messages_hide_query_and_userinfo() {
        let url =
            reqwest::Url::parse("https://user:pw@auth.example:8443/login?pw=Leak%20Pw").unwrap();
        assert_eq!(shown_url(&url), "https://auth.example:8443/login");
        let err = check_url("https://user:pw@auth.example/token", &Egress::default()).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        let err =
            check_url("http://auth.example/login?pw=Secret1", &Egress::default()).unwrap_err();
        assert!(!err.to_string().contains("Secret1"), "{err}");
    }

    #[test]
    fn urls_must_be_https_unless_allowed() {
        let strict = Egress::default();
        let insecure = Egress {
            allow_insecure_http: true,
            ..Default::default()
        };
        assert!(check_url("https://a.example/token", &strict).is_ok());
        assert!(matches!(
            check_url("http://a.example/token", &strict),
            Err(ProviderError::InsecureUrl { .. })
        ));
        assert!(check_url("http://127.0.0.1:8080/token", &insecure).is_ok());
        assert!(check_url("ftp://a.example/", &insecure).is_err());
    }

    #[test]
    fn allowed_hosts_are_exact_or_subdomain_wildcards() {
        let egress = Egress {
            allow_insecure_http: false,
            allowed_hosts: vec!["auth.dronetag.app".into(), "*.airmap.io".into()],
        };
        assert!(check_url("https://auth.dronetag.app/realms/dcp", &egress).is_ok());
        assert!(check_url("https://AUTH.dronetag.app:8443/x", &egress).is_ok());
        assert!(check_url("https://sso.airmap.io/oauth/ro", &egress).is_ok());
        for refused in [
            "https://airmap.io/",
            "https://evil-airmap.io/",
            "https://169.254.169.254/latest/meta-data",
            "https://auth.dronetag.app.evil.example/",
        ] {
            let err = check_url(refused, &egress).unwrap_err();
            assert_eq!(err.reason(), Reason::HostNotAllowed, "{refused}");
        }
    }

    fn rejected(status: u16, body: &str) -> ProviderError {
        ProviderError::Rejected {
            url: "u".into(),
            status,
            detail: ErrorDetail::from_body(body.as_bytes()),
            retry_after: None,
        }
    }

    #[test]
    fn the_oauth_error_code_is_its_own_field() {
        let e = rejected(
            400,
            r#"{"error":"invalid_grant","error_description":"Maximum allowed refresh token reuse exceeded"}"#,
        );
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert_eq!(
            e.oauth_error_description(),
            Some("Maximum allowed refresh token reuse exceeded")
        );
        assert_eq!(
            e.to_string(),
            "u answered HTTP 400: invalid_grant: Maximum allowed refresh token reuse exceeded"
        );
        // a vendor's message is a description, not a code
        let e = rejected(401, r#"{"error":"Unauthorized","message":"bad key"}"#);
        assert_eq!(e.oauth_error(), None);
        assert_eq!(e.to_string(), "u answered HTTP 401: bad key");
        let e = rejected(403, r#"{"error":"Token expired"}"#);
        assert_eq!(e.oauth_error(), None);
        assert_eq!(e.oauth_error_description(), Some("Token expired"));
        // an empty body, HTML, or JSON without the fields: no detail, never the raw body
        for body in [
            "",
            "<html>password=hunter2</html>",
            r#"{"x":1}"#,
            r#"{"error":""}"#,
        ] {
            let e = rejected(400, body);
            assert_eq!(e.oauth_error(), None, "{body}");
            assert_eq!(e.to_string(), "u answered HTTP 400", "{body}");
        }
        // the tests' shorthand parses the code
        let d: ErrorDetail = "invalid_grant: Token is not active".into();
        assert_eq!(d.error.as_deref(), Some("invalid_grant"));
        assert_eq!(d.description.as_deref(), Some("Token is not active"));
        let d: ErrorDetail = "OIDC discovery failed".into();
        assert_eq!(d.error, None);
        // long provider text is cut
        let long = format!(
            r#"{{"error":"invalid_grant","error_description":"{}"}}"#,
            "x".repeat(5000)
        );
        assert!(rejected(400, &long).to_string().len() < 400);
    }

    #[test]
    fn refresh_verdict_follows_the_error_code_not_the_status() {
        use RefreshVerdict::*;
        let cases = [
            // the grant is dead
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Token is not active"}"#,
                GrantDead,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Session not active"}"#,
                GrantDead,
            ),
            (401, r#"{"error":"invalid_grant"}"#, GrantDead),
            // an unknown 4xx, or one without any explanation (item 1 of issue 10)
            (400, "", GrantDead),
            (401, "", GrantDead),
            (403, "", GrantDead),
            (400, r#"{"error":"invalid_request"}"#, GrantDead),
            (400, r#"{"error":"unsupported_grant_type"}"#, GrantDead),
            (404, "<html></html>", GrantDead),
            // configuration: the refresh token was never consumed (item 2)
            (401, r#"{"error":"invalid_client"}"#, Configuration),
            (400, r#"{"error":"invalid_client"}"#, Configuration),
            (
                401,
                r#"{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}"#,
                Configuration,
            ),
            (400, r#"{"error":"unauthorized_client"}"#, Configuration),
            (400, r#"{"error":"invalid_scope"}"#, Configuration),
            // waiting may cure it
            (429, "", Transient),
            (408, "", Transient),
            (500, "", Transient),
            (503, r#"{"error":"temporarily_unavailable"}"#, Transient),
            (400, r#"{"error":"temporarily_unavailable"}"#, Transient),
            (502, r#"{"error":"invalid_grant"}"#, Transient),
        ];
        for (status, body, want) in cases {
            let e = rejected(status, body);
            assert_eq!(e.refresh_verdict(), want, "{status} {body}");
            assert_eq!(e.is_rejected_grant(), want == GrantDead, "{status} {body}");
        }
        let unreachable = ProviderError::Transport {
            url: "u".into(),
            reason: "timed out".into(),
        };
        assert_eq!(unreachable.refresh_verdict(), Transient);
        let unusable = ProviderError::BadResponse {
            url: "u".into(),
            reason: "no access_token".into(),
        };
        assert_eq!(unusable.refresh_verdict(), Transient);
        let missing = ProviderError::MissingInput {
            key: "client_secret".into(),
            purpose: "client_secret_post",
        };
        assert_eq!(missing.refresh_verdict(), Configuration);
        assert_eq!(
            ProviderError::InvalidSpec("x".into()).refresh_verdict(),
            Configuration
        );
    }

    #[test]
    fn the_ready_reason_follows_the_error_code_then_the_status() {
        // Keycloak answers a wrong client secret with 401 or 400 unauthorized_client
        for status in [400, 401] {
            let e = rejected(status, r#"{"error":"unauthorized_client"}"#);
            assert_eq!(e.reason(), Reason::Unauthorized, "{status}");
            let e = rejected(status, r#"{"error":"invalid_client"}"#);
            assert_eq!(e.reason(), Reason::Unauthorized, "{status}");
        }
        assert_eq!(
            rejected(400, r#"{"error":"invalid_scope"}"#).reason(),
            Reason::InvalidScope
        );
        assert_eq!(rejected(401, "").reason(), Reason::Unauthorized);
        assert_eq!(rejected(403, "").reason(), Reason::Unauthorized);
        assert_eq!(rejected(429, "").reason(), Reason::RateLimited);
        assert_eq!(rejected(400, "").reason(), Reason::TokenRequestFailed);
        assert_eq!(
            rejected(400, r#"{"error":"invalid_grant"}"#).reason(),
            Reason::TokenRequestFailed
        );
        assert_eq!(rejected(503, "").reason(), Reason::TokenRequestFailed);
    }

    #[test]
    fn scopes_as_a_string_or_an_array() {
        assert_eq!(
            scope_value(&serde_json::json!("openid email")).as_deref(),
            Some("openid email")
        );
        assert_eq!(
            scope_value(&serde_json::json!(["openid", "email", 3])).as_deref(),
            Some("openid email")
        );
        assert_eq!(scope_value(&serde_json::json!(null)), None);
    }
}
