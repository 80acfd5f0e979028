//! `tokensync check`: one fetch with the controller's code, without a cluster.

use jiff::Timestamp;
use serde::Serialize;

use crate::crd::ProviderCredential;
use crate::providers::{self, Grant, Request};
use crate::renewal::Policy;
use crate::token::Inputs;

/// What `check` prints: nothing secret unless `--show-token`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub provider: &'static str,
    pub token_type: String,
    pub expires_at: Option<String>,
    pub renew_at: String,
    pub refresh_token: bool,
    pub scope: Option<String>,
    /// First 8 hex characters of the token's SHA-256.
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Run one fetch as the controller would. The error message is already redacted.
pub async fn run(
    pc: &ProviderCredential,
    inputs: &Inputs,
    allow_insecure_http: bool,
    show_token: bool,
) -> Result<Summary, String> {
    let policy = Policy::from_spec(pc.spec.refresh.as_ref())?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let request = Request {
        spec: &pc.spec,
        inputs,
        grant: Grant::Primary,
        now: Timestamp::now(),
        allow_insecure_http,
        upstream: None,
    };
    let token = providers::fetch(&http, &request)
        .await
        .map_err(|e| inputs.redact(&e.to_string()))?;
    Ok(Summary {
        provider: providers::kind(&pc.spec),
        token_type: token.token_type.clone(),
        expires_at: token.expires_at.map(|t| t.to_string()),
        renew_at: policy
            .renew_at(token.issued_at, token.expires_at)
            .to_string(),
        refresh_token: token.refresh_token.is_some(),
        scope: token.scope.clone(),
        fingerprint: token.value.fingerprint(),
        token: show_token.then(|| token.value.expose().to_string()),
    })
}
