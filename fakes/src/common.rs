//! What every fake shares: vendors, faults, form parsing, OAuth 2.0 error bodies, JWTs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vendor {
    AltitudeAngel,
    Pix4d,
    /// Dronetag's Keycloak realm (OIDC).
    Dronetag,
    /// Dronetag personal access tokens.
    DronetagPat,
    AirMap,
    JsonLogin,
}

impl Vendor {
    /// Every vendor the fakes serve.
    pub const ALL: [Vendor; 6] = [
        Vendor::AltitudeAngel,
        Vendor::Pix4d,
        Vendor::Dronetag,
        Vendor::DronetagPat,
        Vendor::AirMap,
        Vendor::JsonLogin,
    ];

    /// The vendor whose [`Vendor::name`] is `name`.
    pub fn from_name(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Vendor::AltitudeAngel => "altitude-angel",
            Vendor::Pix4d => "pix4d",
            Vendor::Dronetag => "dronetag",
            Vendor::DronetagPat => "dronetag-pat",
            Vendor::AirMap => "airmap",
            Vendor::JsonLogin => "json-login",
        }
    }

    /// How long a login session (its refresh tokens) lives, in seconds.
    pub fn default_refresh_lifetime(self) -> u64 {
        match self {
            Vendor::Dronetag => 604800,
            _ => 30 * 86400,
        }
    }

    /// The lifetime the vendor documents, in seconds.
    pub fn default_lifetime(self) -> u64 {
        match self {
            Vendor::AltitudeAngel => 1199,
            Vendor::Pix4d => 36000,
            Vendor::Dronetag => 1200,
            Vendor::DronetagPat => 60 * 86400,
            Vendor::AirMap => 36000,
            Vendor::JsonLogin => 86400,
        }
    }
}

/// How long a [`Fault::Hang`] holds a request at most, so that the server task ends.
pub const HANG_LIMIT: Duration = Duration::from_secs(600);

/// A fault a test can switch on for one vendor.
///
/// In JSON (the `fake-providers serve` admin endpoint): `{"status": 503}`, `{"delay": 1500}`
/// (milliseconds), `"malformed"`, `"oversized"`, `"hang"`,
/// `{"rate_limited": {"retry_after_secs": 30}}`, `{"empty_status": 400}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status and an OAuth-style error body.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(#[serde(with = "millis")] Duration),
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer 200 with a JSON body of 2 MiB.
    Oversized,
    /// Accept the request and never answer: the connection stays open until the client gives
    /// up, the server stops, or [`HANG_LIMIT`] passes (then 504).
    Hang,
    /// Answer 429 with `Retry-After: <retry_after_secs>` and an OAuth-style error body.
    RateLimited { retry_after_secs: u64 },
    /// Answer this status with an empty body (as real servers answer a dead refresh token with
    /// a bare 400).
    EmptyStatus(u16),
    /// Answer refresh-token grants (routes ending in `refresh_token`) with this status and an
    /// empty body, no OAuth error code, as some servers refuse a dead refresh token; other
    /// requests are answered normally.
    BareOnRefresh(u16),
}

/// `Duration` as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The status of a fault: a final status (200-599) as given, anything else 500.
fn final_status(code: u16) -> StatusCode {
    match StatusCode::from_u16(code) {
        Ok(status) if (200..600).contains(&code) => status,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Count the request and apply the vendor's fault, if any; `Some` is the response to give instead.
pub async fn enter(state: &State, vendor: Vendor, route: String) -> Option<Response> {
    state.hit(format!("{} {route}", vendor.name()));
    match state.fault(vendor)? {
        Fault::Status(code) => Some(oauth_error(
            final_status(code),
            "server_error",
            "injected fault",
        )),
        Fault::BareOnRefresh(code) if route.ends_with("refresh_token") => {
            Some(final_status(code).into_response())
        }
        Fault::BareOnRefresh(_) => None,
        Fault::Delay(d) => {
            crate::delay(d).await;
            None
        }
        Fault::Oversized => {
            let padding = "x".repeat(2 << 20);
            Some(axum::Json(json!({"access_token": "t", "padding": padding})).into_response())
        }
        Fault::Malformed => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response(),
        ),
        Fault::Hang => {
            state.hang().await;
            Some(oauth_error(
                StatusCode::GATEWAY_TIMEOUT,
                "temporarily_unavailable",
                "the request hung",
            ))
        }
        Fault::RateLimited { retry_after_secs } => {
            let mut response = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                &format!("rate limit exceeded; retry after {retry_after_secs} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            Some(response)
        }
        Fault::EmptyStatus(code) => Some(final_status(code).into_response()),
    }
}

/// RFC 6749 5.2 error body.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Keycloak's answer to a refresh in a session past `ssoSessionMaxLifespan`.
pub fn session_not_active() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Session not active",
    )
}

/// A form body; `None` unless sent as `application/x-www-form-urlencoded` (answer [`not_a_form`]).
pub fn form(headers: &HeaderMap, body: &[u8]) -> Option<BTreeMap<String, String>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.starts_with("application/x-www-form-urlencoded")
        .then(|| form_urlencoded::parse(body).into_owned().collect())
}

pub fn not_a_form() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the body must be application/x-www-form-urlencoded",
    )
}

/// A JSON body, refused unless sent as `application/json` (answer the error with [`message`]).
pub fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, (StatusCode, &'static str)> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|_| (StatusCode::BAD_REQUEST, "the body is not valid JSON"))
}

/// `{"message": ...}` with a status: the error shape of the JSON APIs.
pub fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({"message": text}))).into_response()
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// HTTP Basic client credentials (RFC 6749 2.3.1: form-decoded after base64).
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let dec = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

/// An unsigned-looking JWT (signature is a placeholder; tokensync never verifies it).
pub fn jwt(claims: Value) -> String {
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        enc(br#"{"alg":"RS256","typ":"JWT"}"#),
        enc(claims.to_string().as_bytes()),
        enc(b"fake-signature")
    )
}

/// The status of `GET url` with `Authorization: Bearer token`, for a plain-http loopback URL
/// (`http://127.0.0.1:PORT/path`); `None` when it cannot be asked. Enough HTTP/1.1 for a fake
/// to ask a real server whether it vouches for a token.
pub async fn bearer_get_status(url: &str, token: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.split(':').next()?;
    if !(host == "127.0.0.1" || host == "localhost") || token.contains(['\r', '\n']) {
        return None;
    }
    let path = if path.is_empty() { "/" } else { path };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
