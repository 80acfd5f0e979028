//! How to fetch a token: one module per flow, each a function from (HTTP client, spec, inputs,
//! clock) to a [`Token`]. Nothing here knows about Kubernetes.

pub mod declarative;
pub mod oauth2;

use base64::Engine;
use jiff::Timestamp;

use crate::crd::ProviderCredentialSpec;
use crate::reason::Reason;
use crate::token::{Inputs, SecretValue, Token};

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
        /// The provider's error code and description, when it gave them (e.g. `invalid_client`).
        detail: Option<String>,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<jiff::SignedDuration>,
    },
    #[error("response from {url} is not usable: {reason}")]
    BadResponse { url: String, reason: String },
}

impl ProviderError {
    /// The condition reason this error is reported with.
    pub fn reason(&self) -> Reason {
        match self {
            ProviderError::MissingInput { .. } => Reason::InputKeyMissing,
            ProviderError::BadInput { .. } => Reason::InvalidInputs,
            ProviderError::InsecureUrl { .. } => Reason::InsecureURL,
            ProviderError::HostNotAllowed { .. } => Reason::HostNotAllowed,
            ProviderError::InvalidSpec(_) => Reason::InvalidSpec,
            ProviderError::Transport { .. } => Reason::ProviderUnreachable,
            ProviderError::Rejected { .. }
                if matches!(
                    self.oauth_error(),
                    Some("invalid_client" | "unauthorized_client" | "invalid_scope")
                ) =>
            {
                Reason::Unauthorized
            }
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

    /// The OAuth 2.0 `error` code of the answer (RFC 6749 5.2), when it gave one.
    pub fn oauth_error(&self) -> Option<&str> {
        let ProviderError::Rejected {
            detail: Some(d), ..
        } = self
        else {
            return None;
        };
        let code = d.split(':').next().unwrap_or_default().trim();
        (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then_some(code)
    }

    /// What a failed refresh means, by the OAuth `error` code rather than the HTTP status:
    /// `invalid_grant` (and any other 4xx, a bare 400 included) means the refresh token is
    /// dead; `invalid_client`, `unauthorized_client` and `invalid_scope` are configuration
    /// problems that leave the refresh token good; the rest may pass.
    pub fn refresh_verdict(&self) -> RefreshVerdict {
        match (self, self.oauth_error()) {
            (_, Some("invalid_client" | "unauthorized_client" | "invalid_scope")) => {
                RefreshVerdict::Configuration
            }
            (_, Some("invalid_grant")) => RefreshVerdict::GrantDead,
            (ProviderError::Rejected { status, .. }, _)
                if (400..500).contains(status) && !matches!(status, 408 | 429) =>
            {
                RefreshVerdict::GrantDead
            }
            (ProviderError::Rejected { .. } | ProviderError::Transport { .. }, _) => {
                RefreshVerdict::Transient
            }
            _ => RefreshVerdict::Configuration,
        }
    }

    /// Whether the refresh token is dead, so a fresh primary grant is the cure.
    pub fn is_rejected_grant(&self) -> bool {
        self.refresh_verdict() == RefreshVerdict::GrantDead
    }
}

/// What a failed refresh request says about the refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// It is dead (`invalid_grant`, an unknown 4xx): drop it, log in again if the inputs allow.
    GrantDead,
    /// The request was wrong, not the token (`invalid_client`, ...): keep it, fix the spec.
    Configuration,
    /// The provider may recover: keep it, retry with backoff.
    Transient,
}

/// Fetch one token as the spec says.
pub async fn fetch(http: &reqwest::Client, req: &Request<'_>) -> Result<Token, ProviderError> {
    match (&req.spec.oauth2, &req.spec.http) {
        (Some(oauth2), None) => oauth2::fetch(http, oauth2, &req.spec.inputs.keys, req).await,
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

    /// Issue 10: a failed refresh is judged by its OAuth error code, not its HTTP status.
    #[test]
    fn refresh_failures_by_error_code() {
        use RefreshVerdict::*;
        let e = |status, detail: Option<&str>| ProviderError::Rejected {
            url: "u".into(),
            status,
            detail: detail.map(String::from),
            retry_after: None,
        };
        let cases = [
            (
                400,
                Some("invalid_grant: Token is not active"),
                GrantDead,
                Reason::TokenRequestFailed,
            ),
            (400, None, GrantDead, Reason::TokenRequestFailed),
            (401, None, GrantDead, Reason::Unauthorized),
            (404, None, GrantDead, Reason::TokenRequestFailed),
            (
                401,
                Some("invalid_client: Invalid client credentials"),
                Configuration,
                Reason::Unauthorized,
            ),
            (
                400,
                Some("unauthorized_client: Client not allowed"),
                Configuration,
                Reason::Unauthorized,
            ),
            (
                401,
                Some("unauthorized_client"),
                Configuration,
                Reason::Unauthorized,
            ),
            (
                400,
                Some("invalid_scope: nope"),
                Configuration,
                Reason::Unauthorized,
            ),
            (429, None, Transient, Reason::RateLimited),
            (503, None, Transient, Reason::TokenRequestFailed),
            (
                400,
                Some("Some Message: with a colon"),
                GrantDead,
                Reason::TokenRequestFailed,
            ),
        ];
        for (status, detail, verdict, reason) in cases {
            let err = e(status, detail);
            assert_eq!(err.refresh_verdict(), verdict, "{status} {detail:?}");
            assert_eq!(err.reason(), reason, "{status} {detail:?}");
        }
        let down = ProviderError::Transport {
            url: "u".into(),
            reason: "timed out".into(),
        };
        assert_eq!(down.refresh_verdict(), Transient);
    }

    #[test]
    fn rejected_grant_is_401_or_invalid_grant() {
        let e = |status, detail: Option<&str>| ProviderError::Rejected {
            url: "u".into(),
            status,
            detail: detail.map(String::from),
            retry_after: None,
        };
        assert!(e(401, None).is_rejected_grant());
        assert!(e(400, Some("invalid_grant: Token is not active")).is_rejected_grant());
        assert!(e(400, Some("invalid_request")).is_rejected_grant());
        assert!(!e(500, None).is_rejected_grant());
        assert_eq!(e(401, None).reason(), Reason::Unauthorized);
        assert_eq!(e(429, None).reason(), Reason::RateLimited);
    }
}
