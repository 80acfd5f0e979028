//! `tokensync check`: one fetch with the controller's code, without a cluster.

use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::crd::ProviderCredential;
use crate::providers::{self, Grant, Request, Upstream};
use crate::renewal::Policy;
use crate::token::{Inputs, Token};

/// What `check` prints: nothing secret unless `--show-token`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub provider: &'static str,
    pub token_type: String,
    pub expires_at: Option<String>,
    pub renew_at: String,
    pub refresh_token: bool,
    /// Whether the token shown is the answer to a refresh (with `--refresh`).
    pub refreshed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// What else to know (e.g. that `--refresh` had no refresh token to use).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// First 8 hex characters of the token's SHA-256.
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Default)]
pub struct Options {
    pub egress: providers::Egress,
    pub show_token: bool,
    /// Log in, then refresh once with the refresh token that came back.
    pub refresh: bool,
}

/// The ProviderCredential and the Secret among the documents of a YAML file.
pub fn parse_manifests(text: &str) -> Result<(Option<ProviderCredential>, Option<Secret>), String> {
    let mut pc = None;
    let mut secret = None;
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    for value in docs.into_iter().flatten() {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("ProviderCredential") => {
                pc = Some(
                    serde_json::from_value(value)
                        .map_err(|e| format!("not a ProviderCredential: {e}"))?,
                )
            }
            Some("Secret") => {
                secret =
                    Some(serde_json::from_value(value).map_err(|e| format!("not a Secret: {e}"))?)
            }
            _ => {}
        }
    }
    Ok((pc, secret))
}

async fn fetch(
    http: &reqwest::Client,
    pc: &ProviderCredential,
    inputs: &Inputs,
    grant: Grant,
    upstream: Option<Upstream>,
    egress: &providers::Egress,
    discovery: &providers::Discovery,
) -> Result<Token, String> {
    let request = Request {
        spec: &pc.spec,
        inputs,
        grant,
        now: crate::renewal::now(),
        egress,
        upstream,
        timeout: None,
    };
    let fetched = providers::fetch_with(http, &request, discovery)
        .await
        .map_err(|e| inputs.redact(&e.to_string()))?;
    for warning in &fetched.warnings {
        eprintln!("warning: {}", inputs.redact(warning));
    }
    if let Some(refused) = fetched.refused {
        return Err(inputs.redact(&refused));
    }
    let mut token = fetched.token;
    // the controller's own checks of what arrived: too short a life is an error, too long clamped
    for warning in crate::renewal::check_token(&mut token)? {
        eprintln!("warning: {warning}");
    }
    Ok(token)
}

/// The token of an upstream credential, fetched as the controller would.
pub async fn upstream(
    pc: &ProviderCredential,
    inputs: &Inputs,
    egress: &providers::Egress,
) -> Result<Upstream, String> {
    let http = client()?;
    let discovery = providers::Discovery::default();
    let token = fetch(&http, pc, inputs, Grant::Primary, None, egress, &discovery)
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    Ok(Upstream {
        value: token.value,
        token_type: token.token_type,
    })
}

/// The controller's HTTP client with its default 30 s timeout.
fn client() -> Result<reqwest::Client, String> {
    providers::http_client(std::time::Duration::from_secs(30), &[]).map_err(|e| e.to_string())
}

/// Run one fetch (and with `refresh`, one refresh) as the controller would. Error messages are
/// already redacted.
pub async fn run(
    pc: &ProviderCredential,
    inputs: &Inputs,
    upstream: Option<Upstream>,
    options: &Options,
) -> Result<Summary, String> {
    let policy = Policy::from_spec(pc.spec.refresh.as_ref())?;
    let http = client()?;
    let egress = &options.egress;
    // one discovery document for the login and the refresh, as the controller caches it
    let discovery = providers::Discovery::default();
    let mut token = fetch(
        &http,
        pc,
        inputs,
        Grant::Primary,
        upstream.clone(),
        egress,
        &discovery,
    )
    .await?;
    let mut refreshed = false;
    let mut notes = Vec::new();
    if options.refresh {
        match token.refresh_token.clone() {
            Some(refresh_token) => {
                let refresh = Grant::Refresh(refresh_token);
                token = fetch(&http, pc, inputs, refresh, upstream, egress, &discovery)
                    .await
                    .map_err(|e| format!("refresh: {e}"))?;
                refreshed = true;
            }
            // not a failure: client credentials (and many APIs) issue no refresh token, and the
            // controller then simply runs the primary grant again
            None => notes.push(
                "--refresh: the login issued no refresh token, so there was nothing to refresh; the controller renews this credential with the primary grant"
                    .to_string(),
            ),
        }
    }
    Ok(Summary {
        provider: providers::kind(&pc.spec),
        token_type: token.normalized_token_type(),
        expires_at: token.expires_at.map(|t| t.to_string()),
        renew_at: policy
            .renew_at(token.issued_at, token.expires_at)
            .to_string(),
        refresh_token: token.refresh_token.is_some(),
        refreshed,
        scope: token.scope.clone(),
        notes,
        fingerprint: token.value.fingerprint(),
        token: options.show_token.then(|| token.value.expose().to_string()),
    })
}
