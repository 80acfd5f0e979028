//! Pix4D Cloud (`pix4d-cloud-auth.txt`): form POST `/oauth2/token/` with
//! `grant_type=client_credentials`, `client_id`, `client_secret` and `token_format=jwt`; answers
//! `access_token` (a JWT when asked for one), `token_type: Bearer`, `expires_in: 36000`,
//! `scope: "read write"`, and no refresh token: the grant is simply repeated.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::common::{
    Vendor, basic_credentials, enter, form, jwt, not_a_form, now_secs, oauth_error,
};
use crate::{CLIENT_ID, CLIENT_SECRET, State};

const V: Vendor = Vendor::Pix4d;

pub fn router() -> Router<Arc<State>> {
    Router::new().route("/oauth2/token/", post(token))
}

async fn token(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(params) = form(&headers, &body) else {
        return not_a_form();
    };
    let p = |k: &str| params.get(k).cloned().unwrap_or_default();
    let grant = p("grant_type");
    if let Some(r) = enter(&state, V, format!("token {grant}")).await {
        return r;
    }
    if grant != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials",
        );
    }
    // Django OAuth Toolkit takes client credentials in the body or as HTTP Basic
    let (id, secret) = basic_credentials(&headers).unwrap_or((p("client_id"), p("client_secret")));
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client credentials",
        );
    }
    let lifetime = state.lifetime(V);
    let opaque = state.mint("p4d");
    let access_token = if p("token_format") == "jwt" {
        let exp = state.expires_at_value(V, json!(now_secs().saturating_add(lifetime)));
        jwt(json!({"sub": CLIENT_ID, "jti": opaque, "exp": exp, "scope": "read write"}))
    } else {
        opaque
    };
    state.issue(V, &access_token, lifetime, vec![]);
    (
        StatusCode::OK,
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": state.expires_in_value(V, lifetime),
            "scope": "read write",
        })),
    )
        .into_response()
}
