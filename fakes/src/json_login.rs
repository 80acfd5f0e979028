//! The JSON-login platform (`json-login-platform-ru.txt`): JSON POST `/api/v1/auth/token` with
//! `username`, `password` and optional `expiresIn` ("30 minutes", "12 hours", "8 days",
//! "5 years"; default 1 day) and `scopes`; answers `_id`, `issuedAt` and `expiresAt` in epoch
//! milliseconds, `user`, `token`. `POST /api/v1/tokens` issues a token with an existing one,
//! `GET /api/v1/tokens` lists them, `DELETE /api/v1/tokens/:id` revokes one. A scoped token may
//! call only the methods in its scopes (`"DELETE /tokens/:id"`, with or without `/api/v1`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde_json::{Value, json};

use crate::common::{Vendor, bearer, enter, json_body, message, now_secs};
use crate::{Issued, PASSWORD, State, USERNAME};

const V: Vendor = Vendor::JsonLogin;

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/api/v1/auth/token", post(login))
        .route("/api/v1/tokens", post(issue_with_token).get(list))
        .route("/api/v1/tokens/{id}", delete(revoke))
}

/// "30 minutes" and friends, in seconds.
fn parse_expires_in(text: &str) -> Option<u64> {
    let (n, unit) = text.trim().split_once(' ')?;
    let n: u64 = n.parse().ok()?;
    let unit = unit.trim().trim_end_matches('s');
    let secs = match unit {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86400,
        "year" => 365 * 86400,
        _ => return None,
    };
    n.checked_mul(secs)
}

fn normalise(scope: &str) -> String {
    scope.replacen(" /api/v1/", " /", 1)
}

/// Whether a token may call `method` (e.g. `"DELETE /tokens/:id"`).
fn allowed(token: &Issued, method: &str) -> bool {
    token.scopes.is_empty() || token.scopes.iter().any(|s| normalise(s) == method)
}

fn new_token(state: &State, body: &Value) -> Result<Value, Response> {
    let requested = match body.get("expiresIn") {
        None | Some(Value::Null) => 86400,
        Some(v) => v.as_str().and_then(parse_expires_in).ok_or_else(|| {
            message(
                StatusCode::BAD_REQUEST,
                "expiresIn must look like \"30 minutes\", \"12 hours\", \"8 days\"",
            )
        })?,
    };
    let scopes: Vec<String> = match body.get("scopes") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(_) => {
            return Err(message(
                StatusCode::BAD_REQUEST,
                "scopes must be a list of strings",
            ));
        }
    };
    // the configured lifetime caps what is asked for (short in tests)
    let lifetime = requested.min(state.lifetime(V));
    let token = state.mint("jl");
    let issued = state.issue(V, &token, lifetime, scopes);
    let now_ms = now_secs() * 1000;
    Ok(json!({
        "_id": issued.id,
        "issuedAt": now_ms,
        "expiresAt": state.expires_at_value(V, json!(issued.expires_at.saturating_mul(1000))),
        "token": token,
    }))
}

async fn login(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let body = match json_body(&headers, &body) {
        Ok(b) => b,
        Err((code, text)) => return message(code, text),
    };
    if let Some(r) = enter(&state, V, "login".into()).await {
        return r;
    }
    if body["username"].as_str() != Some(USERNAME) || body["password"].as_str() != Some(PASSWORD) {
        return message(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match new_token(&state, &body) {
        Ok(mut answer) => {
            answer["user"] = json!({"name": USERNAME});
            axum::Json(answer).into_response()
        }
        Err(r) => r,
    }
}

fn authorised(state: &State, headers: &HeaderMap, method: &str) -> Result<Issued, Response> {
    let token = bearer(headers)
        .and_then(|t| state.live(V, &t))
        .ok_or_else(|| message(StatusCode::UNAUTHORIZED, "Unauthorized"))?;
    if allowed(&token, method) {
        Ok(token)
    } else {
        Err(message(
            StatusCode::FORBIDDEN,
            "the token's scopes do not allow this method",
        ))
    }
}

async fn issue_with_token(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = enter(&state, V, "tokens create".into()).await {
        return r;
    }
    if let Err(r) = authorised(&state, &headers, "POST /tokens") {
        return r;
    }
    let body = match json_body(&headers, &body) {
        Ok(b) => b,
        Err((code, text)) => return message(code, text),
    };
    match new_token(&state, &body) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(r) => r,
    }
}

async fn list(AxState(state): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorised(&state, &headers, "GET /tokens") {
        return r;
    }
    let now = now_secs();
    let tokens: Vec<Value> = state
        .issued(V)
        .into_iter()
        .filter(|i| !i.revoked && i.expires_at > now)
        .map(|i| json!({"_id": i.id, "expiresAt": i.expires_at.saturating_mul(1000), "scopes": i.scopes}))
        .collect();
    axum::Json(tokens).into_response()
}

async fn revoke(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = enter(&state, V, "tokens delete".into()).await {
        return r;
    }
    if let Err(r) = authorised(&state, &headers, "DELETE /tokens/:id") {
        return r;
    }
    if state.revoke_id(V, &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        message(StatusCode::NOT_FOUND, "no such token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_forms() {
        assert_eq!(parse_expires_in("30 minutes"), Some(1800));
        assert_eq!(parse_expires_in("12 hours"), Some(43200));
        assert_eq!(parse_expires_in("8 days"), Some(691200));
        assert_eq!(parse_expires_in("1 day"), Some(86400));
        assert_eq!(parse_expires_in("5 years"), Some(5 * 365 * 86400));
        assert_eq!(parse_expires_in("8d"), None);
        assert_eq!(parse_expires_in("18446744073709551615 years"), None);
    }
}
