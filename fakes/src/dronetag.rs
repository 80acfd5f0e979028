//! Dronetag (`dronetag-auth.txt`).
//!
//! Keycloak realm `dcp` under the auth host: `/.well-known/openid-configuration` and a form POST
//! token endpoint with the `password` grant (client_id, client_secret, username, password) and
//! the `refresh_token` grant. Answers `access_token` (a JWT), `expires_in` 1200,
//! `refresh_expires_in` (the session's remaining time, 604800 at login), `refresh_token`
//! (rotated on every use), `token_type: Bearer`, `not-before-policy`, `session_state`, `scope`.
//! A dead refresh token answers 400 `invalid_grant` "Token is not active", as Keycloak does; one
//! of a session past its maximum ([`crate::State::set_session_max`]) "Session not active".
//! Scopes: Keycloak grants the client's default scopes (`profile email`) plus the requested
//! ones it knows, `openid` among them (then it also answers an `id_token`); an unknown scope is
//! 400 `invalid_scope`. The userinfo endpoint answers 403 without the `openid` scope, as
//! Keycloak does ("Missing openid scope").
//!
//! Personal access tokens under the API host: JSON POST `/v2/pats/tokens` authorised by a live
//! OIDC access token (`Authorization: Bearer`), body `{"password", "expires_at": "YYYY-MM-DD"}`,
//! at most 60 days ahead. The vendor does not document the answer; this fake answers
//! `{"id", "token", "expires_at": RFC 3339}` (the examples' mapping says so and can change).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::common::{
    Vendor, basic_credentials, bearer, enter, form, json_body, jwt, message, not_a_form, now_secs,
    oauth_error,
};
use crate::{CLIENT_ID, CLIENT_SECRET, PASSWORD, Refused, State, USERNAME};

const REALM: &str = "/realms/dcp";

pub fn auth_router() -> Router<Arc<State>> {
    Router::new()
        .route(
            &format!("{REALM}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(
            &format!("{REALM}/protocol/openid-connect/token"),
            post(token),
        )
        .route(
            &format!("{REALM}/protocol/openid-connect/userinfo"),
            get(userinfo),
        )
}

/// Scopes Keycloak's `dcp` realm knows; `profile` and `email` are granted by default.
const KNOWN_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

async fn userinfo(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    state.hit("dronetag userinfo".into());
    let Some(issued) = bearer(&headers).and_then(|t| state.live(Vendor::Dronetag, &t)) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Token verification failed",
        );
    };
    if !issued.scopes.iter().any(|s| s == "openid") {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Missing openid scope",
        );
    }
    axum::Json(json!({"sub": USERNAME, "preferred_username": USERNAME, "email": USERNAME}))
        .into_response()
}

pub fn api_router() -> Router<Arc<State>> {
    Router::new().route("/v2/pats/tokens", post(mint_pat))
}

async fn discovery(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    state.hit("dronetag discovery".into());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let issuer = format!("http://{host}/dronetag-auth{REALM}");
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "userinfo_endpoint": format!("{issuer}/protocol/openid-connect/userinfo"),
        "grant_types_supported": ["authorization_code", "password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
    }))
    .into_response()
}

async fn token(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(params) = form(&headers, &body) else {
        return not_a_form();
    };
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    let grant = p("grant_type");
    if let Some(r) = enter(&state, Vendor::Dronetag, format!("token {grant}")).await {
        return r;
    }
    let (id, secret) = basic_credentials(&headers).unwrap_or((p("client_id"), p("client_secret")));
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let mut scopes = vec!["profile".to_string(), "email".to_string()];
    for scope in p("scope").split_whitespace() {
        if !KNOWN_SCOPES.contains(&scope) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                &format!("Invalid scopes: {}", p("scope")),
            );
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.insert(0, scope.to_string());
        }
    }
    let (refresh_token, session) = match grant.as_str() {
        "password" => {
            if p("username") != USERNAME || p("password") != PASSWORD {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "Invalid user credentials",
                );
            }
            state.new_refresh_token(Vendor::Dronetag)
        }
        "refresh_token" => {
            match state.use_refresh_token(Vendor::Dronetag, &p("refresh_token"), true) {
                // rotated: a new refresh token for the same session, same deadline and scopes
                Ok(session) => {
                    scopes = state.refresh_scopes(&p("refresh_token"));
                    (
                        state.rotate_refresh_token(Vendor::Dronetag, session),
                        session,
                    )
                }
                Err(refused) => {
                    state.hit("dronetag token refresh_token rejected".into());
                    let description = match refused {
                        Refused::NotActive => "Token is not active",
                        Refused::SessionEnded => "Session not active",
                    };
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);
                }
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant_type",
            );
        }
    };
    state.set_refresh_scopes(&refresh_token, scopes.clone());
    let lifetime = state.session_lifetime(Vendor::Dronetag, Some(session));
    let now = now_secs();
    let exp = state.expires_at_value(Vendor::Dronetag, json!(now.saturating_add(lifetime)));
    let scope = scopes.join(" ");
    let access_token = jwt(json!({
        "iss": "dronetag-auth/realms/dcp", "sub": USERNAME, "typ": "Bearer",
        "exp": exp, "iat": now, "jti": state.mint("jti"), "scope": scope,
    }));
    state.issue(Vendor::Dronetag, &access_token, lifetime, scopes.clone());
    let mut answer = json!({
        "access_token": access_token,
        "expires_in": state.expires_in_value(Vendor::Dronetag, lifetime),
        "refresh_expires_in": state.refresh_expires_in_value(
            Vendor::Dronetag,
            state.refresh_left(Vendor::Dronetag, session),
        ),
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "session_state": "35d764ee-c27c-4763-bc05-5ffa2e2b822e",
        "scope": scope,
    });
    if scopes.iter().any(|s| s == "openid") {
        answer["id_token"] = json!(jwt(json!({
            "iss": "dronetag-auth/realms/dcp", "sub": USERNAME, "typ": "ID",
            "exp": now + lifetime, "iat": now, "azp": CLIENT_ID,
        })));
    }
    axum::Json(answer).into_response()
}

async fn mint_pat(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = enter(&state, Vendor::DronetagPat, "pats".into()).await {
        return r;
    }
    let authorised = match (bearer(&headers), state.pat_userinfo()) {
        (Some(t), Some(userinfo)) => {
            crate::common::bearer_get_status(&userinfo, &t).await == Some(200)
        }
        (Some(t), None) => state.live(Vendor::Dronetag, &t).is_some(),
        (None, _) => false,
    };
    if !authorised {
        return message(
            StatusCode::UNAUTHORIZED,
            "a valid OpenID Connect access token is required",
        );
    }
    let body = match json_body(&headers, &body) {
        Ok(b) => b,
        Err((code, text)) => return message(code, text),
    };
    if body["password"].as_str() != Some(PASSWORD) {
        return message(StatusCode::FORBIDDEN, "wrong password");
    }
    let today = now_secs() / 86400;
    let Some(day) = body["expires_at"].as_str().and_then(days_since_epoch) else {
        return message(
            StatusCode::BAD_REQUEST,
            "expires_at must be a date YYYY-MM-DD",
        );
    };
    if day <= today || day > today + 60 {
        return message(
            StatusCode::BAD_REQUEST,
            "expires_at must be within the next 60 days",
        );
    }
    // valid until the requested date, or the configured lifetime when that is shorter
    let lifetime = (day * 86400 - now_secs()).min(state.lifetime(Vendor::DronetagPat));
    let token = format!("{}.{}", state.mint("pat"), now_secs());
    let issued = state.issue(Vendor::DronetagPat, &token, lifetime, vec![]);
    let expires_at = match state.pat_expiry() {
        crate::PatExpiry::Rfc3339 => json!(rfc3339(issued.expires_at)),
        crate::PatExpiry::Date => body["expires_at"].clone(),
        crate::PatExpiry::EpochMillis => json!(issued.expires_at * 1000),
        crate::PatExpiry::Unreadable => json!("in 30 days"),
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "id": issued.id,
            "token": token,
            "expires_at": state.expires_at_value(Vendor::DronetagPat, expires_at),
        })),
    )
        .into_response()
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
fn days_since_epoch(date: &str) -> Option<u64> {
    let mut parts = date.split('-');
    let (y, m, d): (i64, i64, i64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    if parts.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    // Howard Hinnant's days_from_civil
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146097 + doe - 719468).ok()
}

/// RFC 3339 in UTC for epoch seconds.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil_from_days
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(days_since_epoch("1970-01-02"), Some(1));
        assert_eq!(days_since_epoch("2025-09-09"), Some(20340));
        assert_eq!(days_since_epoch("2025-13-01"), None);
        assert_eq!(days_since_epoch("9223372036854775807-01-01"), None);
        assert_eq!(rfc3339(20340 * 86400 + 3661), "2025-09-09T01:01:01Z");
    }
}
