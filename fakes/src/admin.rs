//! Admin endpoints of `fake-providers serve`, for a driver in another process (tests in-process
//! call [`State`] directly):
//!
//!   POST   /_admin/fault/{vendor}   body: a [`Fault`] in JSON, e.g. `{"status": 503}`, `"hang"`
//!   DELETE /_admin/fault/{vendor}   clear the vendor's fault
//!   GET    /_admin/issued/{vendor}  every access token the vendor issued, oldest first
//!   GET    /_admin/counters         requests per route
//!
//! `{vendor}` is a [`Vendor::name`] (`altitude-angel`, `dronetag`, ...).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::common::message;
use crate::{Fault, State, Vendor};

pub fn router() -> Router<Arc<State>> {
    Router::new()
        .route(
            "/_admin/fault/{vendor}",
            post(set_fault).delete(clear_fault),
        )
        .route("/_admin/issued/{vendor}", get(issued))
        .route("/_admin/counters", get(counters))
}

fn vendor(name: &str) -> Result<Vendor, Response> {
    Vendor::from_name(name).ok_or_else(|| message(StatusCode::NOT_FOUND, "no such vendor"))
}

async fn set_fault(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let v = match vendor(&name) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match serde_json::from_slice::<Fault>(&body) {
        Ok(fault) => {
            state.set_fault(v, fault);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => message(StatusCode::BAD_REQUEST, &format!("not a fault: {e}")),
    }
}

async fn clear_fault(AxState(state): AxState<Arc<State>>, Path(name): Path<String>) -> Response {
    match vendor(&name) {
        Ok(v) => {
            state.clear_fault(v);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

async fn issued(AxState(state): AxState<Arc<State>>, Path(name): Path<String>) -> Response {
    match vendor(&name) {
        Ok(v) => axum::Json(state.issued(v)).into_response(),
        Err(r) => r,
    }
}

async fn counters(AxState(state): AxState<Arc<State>>) -> Response {
    axum::Json(state.counters()).into_response()
}
