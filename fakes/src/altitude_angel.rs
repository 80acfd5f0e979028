//! Altitude Angel OAuth 2.0 (`altitude-angel-oauth2.txt`): form POST `/oauth/v2/token` with
//! `client_credentials` (client_id, client_secret, scope), `authorization_code` (client_id, code,
//! redirect_uri) and `refresh_token` (client_id, client_secret, refresh_token). Every answer has
//! a refresh token; `token_type` is lower-case `bearer`; tokens live 1199 s; an undeclared scope
//! answers 401.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::common::{Vendor, enter, form, not_a_form, now_secs, oauth_error, session_not_active};
use crate::{CLIENT_ID, CLIENT_SECRET, Refused, Session, State};

const V: Vendor = Vendor::AltitudeAngel;
/// The scopes declared for the example client in the developer portal.
pub const DECLARED_SCOPES: &[&str] = &["query_mapdata", "query_mapairdata", "talk_tower"];
/// The redirect URI registered for the example client.
pub const REDIRECT_URI: &str = "https://tokensync.example/callback";

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/oauth/v2/token", post(token))
        .route("/oauth/v2/authorize", get(authorize))
}

/// The browser step, with the person's login and consent taken as given: redirects to the
/// registered redirect URI with a one-time code.
async fn authorize(
    AxState(state): AxState<Arc<State>>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let q = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    if q("response_type") != "code"
        || q("client_id") != CLIENT_ID
        || q("redirect_uri") != REDIRECT_URI
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "response_type=code, a known client_id and its registered redirect_uri are required",
        );
    }
    let code = state.issue_code(V);
    let mut location = format!("{REDIRECT_URI}?code={code}");
    if !q("state").is_empty() {
        location.push_str(&format!("&state={}", q("state")));
    }
    (
        StatusCode::FOUND,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response()
}

async fn token(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(params) = form(&headers, &body) else {
        return not_a_form();
    };
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let grant = p("grant_type").to_string();
    if let Some(r) = enter(&state, V, format!("token {grant}")).await {
        return r;
    }
    let unauthorized = |d: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", d);
    if p("client_id") != CLIENT_ID {
        return unauthorized("unknown client");
    }
    let refreshed = match grant.as_str() {
        "client_credentials" => {
            if p("client_secret") != CLIENT_SECRET {
                return unauthorized("bad client credentials");
            }
            let scope = p("scope");
            if scope
                .split(' ')
                .any(|s| !s.is_empty() && !DECLARED_SCOPES.contains(&s))
            {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_scope",
                    "scope not declared for this client",
                );
            }
            None
        }
        "authorization_code" => {
            if p("redirect_uri") != REDIRECT_URI || !state.take_code(V, p("code")) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "unknown or used authorization code",
                );
            }
            None
        }
        "refresh_token" => {
            if p("client_secret") != CLIENT_SECRET {
                return unauthorized("bad client credentials");
            }
            match state.use_refresh_token(V, p("refresh_token"), true) {
                Ok(session) => Some(session),
                Err(Refused::NotActive) => {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_grant",
                        "refresh token expired or revoked",
                    );
                }
                Err(Refused::SessionEnded) => return session_not_active(),
            }
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "unknown grant_type",
            );
        }
    };
    // a login starts a session; a refresh carries its session on with a fresh deadline
    let (refresh_token, session) = match refreshed {
        None => state.new_refresh_token(V),
        Some(session) => {
            let session = Session {
                deadline: now_secs().saturating_add(state.refresh_lifetime(V)),
                ..session
            };
            (state.rotate_refresh_token(V, session), session)
        }
    };
    let lifetime = state.session_lifetime(V, Some(session));
    let access_token = state.mint("aa-at");
    state.issue(V, &access_token, lifetime, vec![]);
    (
        StatusCode::OK,
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": state.expires_in_value(V, lifetime),
            "refresh_token": refresh_token,
        })),
    )
        .into_response()
}
