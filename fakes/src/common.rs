//! What every fake shares: vendors, faults, form parsing, OAuth 2.0 error bodies, JWTs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
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

/// A fault a test can switch on for one vendor.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and an OAuth-style error body.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer 200 with a body that is not JSON.
    Malformed,
    /// Answer 200 with a JSON body of 2 MiB.
    Oversized,
    /// Answer refresh-token grants (routes ending in `refresh_token`) with this status and an
    /// empty body, no OAuth error code, as some servers refuse a dead refresh token; other
    /// requests are answered normally.
    BareOnRefresh(u16),
}

/// Count the request and apply the vendor's fault, if any; `Some` is the response to give instead.
pub async fn enter(state: &State, vendor: Vendor, route: String) -> Option<Response> {
    state.hit(format!("{} {route}", vendor.name()));
    match state.fault(vendor)? {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(oauth_error(status, "server_error", "injected fault"))
        }
        Fault::BareOnRefresh(code) if route.ends_with("refresh_token") => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(status.into_response())
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
