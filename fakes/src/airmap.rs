//! AirMap (`airmap-auth0.txt`): Auth0's legacy resource-owner endpoint. JSON POST `/oauth/ro`
//! with `grant_type=password`, `client_id`, `connection=Username-Password-Authentication`,
//! `username`, `password`, `scope` ("openid offline_access") and `device`; answers `id_token`
//! (a JWT living 36000 s), `access_token`, `refresh_token` (with `offline_access`) and
//! `token_type`, with no `expires_in`. JSON POST `/delegation` with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, `client_id` and `refresh_token`
//! answers `token_type`, `expires_in` and a new `id_token`; the refresh token is not rotated.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::common::{
    Vendor, enter, json_body, jwt, message, now_secs, oauth_error, session_not_active,
};
use crate::{CLIENT_ID, PASSWORD, Refused, Session, State, USERNAME};

const V: Vendor = Vendor::AirMap;
pub const CONNECTION: &str = "Username-Password-Authentication";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/oauth/ro", post(resource_owner))
        .route("/delegation", post(delegation))
}

/// A new `id_token` of `session` (or of no session: a login without `offline_access`).
fn id_token(state: &State, session: Option<Session>) -> (String, u64) {
    let lifetime = state.session_lifetime(V, session);
    let now = now_secs();
    let exp = state.expires_at_value(V, json!(now.saturating_add(lifetime)));
    let token = jwt(json!({
        "iss": "https://sso.airmap.io/", "sub": format!("auth0|{USERNAME}"), "aud": CLIENT_ID,
        "iat": now, "exp": exp, "jti": state.mint("jti"),
    }));
    state.issue(V, &token, lifetime, vec![]);
    (token, lifetime)
}

async fn resource_owner(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match json_body(&headers, &body) {
        Ok(b) => b,
        Err((code, text)) => return message(code, text),
    };
    let f = |k: &str| body[k].as_str().unwrap_or("");
    if let Some(r) = enter(&state, V, "ro".into()).await {
        return r;
    }
    if f("grant_type") != "password" || f("connection") != CONNECTION || f("device").is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type, connection and device are required",
        );
    }
    if f("client_id") != CLIENT_ID {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    if f("username") != USERNAME || f("password") != PASSWORD {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_user_password",
            "Wrong email or password.",
        );
    }
    let scopes: Vec<&str> = f("scope").split(' ').collect();
    let mut answer = json!({"access_token": state.mint("am-at"), "token_type": "bearer"});
    let session = if scopes.contains(&"offline_access") {
        let (refresh_token, session) = state.new_refresh_token(V);
        answer["refresh_token"] = refresh_token.into();
        Some(session)
    } else {
        None
    };
    if scopes.contains(&"openid") {
        answer["id_token"] = id_token(&state, session).0.into();
    }
    axum::Json(answer).into_response()
}

async fn delegation(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match json_body(&headers, &body) {
        Ok(b) => b,
        Err((code, text)) => return message(code, text),
    };
    let f = |k: &str| body[k].as_str().unwrap_or("");
    if let Some(r) = enter(&state, V, "delegation".into()).await {
        return r;
    }
    if f("grant_type") != JWT_BEARER || f("client_id") != CLIENT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type must be the jwt-bearer URN",
        );
    }
    let session = match state.use_refresh_token(V, f("refresh_token"), false) {
        Ok(session) => session,
        Err(Refused::NotActive) => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_refresh_token",
                "invalid refresh token",
            );
        }
        Err(Refused::SessionEnded) => return session_not_active(),
    };
    let (token, lifetime) = id_token(&state, Some(session));
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": state.expires_in_value(V, lifetime),
        "id_token": token,
    }))
    .into_response()
}
