//! OAuth 2.0 token requests (RFC 6749 section 4 and 6) with OIDC discovery.
//!
//! A small hand-written form POST rather than the `oauth2` crate: that crate pins its own reqwest
//! major and brings chrono, and it has no place for the vendor quirks served here (Keycloak's
//! `refresh_expires_in`, `expires_in` sent as a string, Pix4D's extra `token_format` parameter).

use std::collections::BTreeMap;

use crate::renewal::add_secs;
use base64::Engine;
use serde::Deserialize;

use super::{Grant, ProviderError, Request, check_url, jwt_exp, seconds_value};
use crate::crd::{ClientAuthentication, GrantType, InputKeys, InputRole, OAuth2Spec};
use crate::token::{InputProblem, Inputs, SecretValue, Token};

/// A form body and the HTTP Basic credentials of one token request. `Debug` is redacted.
pub struct TokenForm {
    pub params: Vec<(String, SecretValue)>,
    /// `Authorization: Basic ...` for `client_secret_basic`.
    pub basic: Option<SecretValue>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.params.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenForm")
            .field("params", &names)
            .field("basic", &self.basic.is_some())
            .finish()
    }
}

#[cfg(test)]
impl TokenForm {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.expose())
    }
}

fn input<'a>(
    inputs: &'a Inputs,
    keys: &InputKeys,
    role: InputRole,
    purpose: &'static str,
) -> Result<&'a SecretValue, ProviderError> {
    let key = keys.key(role);
    let problem = match inputs.require(key) {
        Ok(v) => return Ok(v),
        Err(InputProblem::Missing) => {
            return Err(ProviderError::MissingInput {
                key: key.to_string(),
                purpose,
            });
        }
        Err(InputProblem::Empty) => "is empty",
        Err(InputProblem::NotText) => "is not UTF-8 text (binary values are not sent)",
    };
    Err(ProviderError::BadInput {
        key: key.to_string(),
        problem,
        purpose,
    })
}

/// The form for `grant` (pure: no I/O).
pub fn token_form(
    spec: &OAuth2Spec,
    keys: &InputKeys,
    inputs: &Inputs,
    grant: &Grant,
) -> Result<TokenForm, ProviderError> {
    let mut params: Vec<(String, SecretValue)> = Vec::new();
    let mut push = |k: &str, v: &SecretValue| params.push((k.to_string(), v.clone()));
    let purpose = spec.grant_type.as_str();
    match grant {
        Grant::Refresh(refresh_token) => {
            push("grant_type", &"refresh_token".into());
            push("refresh_token", refresh_token);
        }
        Grant::Primary => {
            push("grant_type", &spec.grant_type.as_str().into());
            match spec.grant_type {
                GrantType::ClientCredentials => {}
                GrantType::Password => {
                    push(
                        "username",
                        input(inputs, keys, InputRole::Username, purpose)?,
                    );
                    push(
                        "password",
                        input(inputs, keys, InputRole::Password, purpose)?,
                    );
                }
                GrantType::RefreshToken => {
                    let rt = input(inputs, keys, InputRole::RefreshToken, purpose)?;
                    push("refresh_token", rt);
                }
                GrantType::AuthorizationCode => {
                    push("code", input(inputs, keys, InputRole::Code, purpose)?);
                    let redirect = input(inputs, keys, InputRole::RedirectUri, purpose)?;
                    push("redirect_uri", redirect);
                }
            }
            if !spec.scopes.is_empty() {
                push("scope", &spec.scopes.join(" ").as_str().into());
            }
            if let Some(audience) = &spec.audience {
                push("audience", &audience.as_str().into());
            }
        }
    }
    for (k, v) in &spec.extra_params {
        push(k, &v.as_str().into());
    }
    let client_id = input(inputs, keys, InputRole::ClientId, "client authentication")?;
    let basic = match spec.client_authentication {
        ClientAuthentication::ClientSecretPost => {
            let secret = input(inputs, keys, InputRole::ClientSecret, "client_secret_post")?;
            push("client_id", client_id);
            push("client_secret", secret);
            None
        }
        ClientAuthentication::ClientSecretBasic => {
            let secret = input(inputs, keys, InputRole::ClientSecret, "client_secret_basic")?;
            // RFC 6749 2.3.1: both parts are form-encoded before the Basic encoding.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(client_id.expose()), enc(secret.expose()));
            let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
            Some(SecretValue::new(format!("Basic {b64}")))
        }
        ClientAuthentication::None => {
            push("client_id", client_id);
            None
        }
    };
    Ok(TokenForm { params, basic })
}

/// RFC 6749 5.1, with the common extensions seen at the vendors.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    refresh_expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

/// RFC 6749 5.2.
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

/// The token endpoint: the spec's `tokenUrl`, or the issuer's discovery document's.
pub async fn token_endpoint(
    http: &reqwest::Client,
    spec: &OAuth2Spec,
    egress: &super::Egress,
) -> Result<reqwest::Url, ProviderError> {
    if let Some(url) = &spec.token_url {
        return check_url(url, egress);
    }
    let issuer = spec.issuer_url.as_deref().ok_or_else(|| {
        ProviderError::InvalidSpec("spec.oauth2: set exactly one of tokenUrl or issuerUrl".into())
    })?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let checked = check_url(&url, egress)?;
    let response = http
        .get(checked)
        .send()
        .await
        .map_err(|e| transport(&url, e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProviderError::Rejected {
            url,
            status: status.as_u16(),
            detail: Some("OIDC discovery failed".into()),
            retry_after: super::retry_after(response.headers(), crate::renewal::now()),
        });
    }
    let doc: Discovery = response
        .json()
        .await
        .map_err(|e| ProviderError::BadResponse {
            url: url.clone(),
            reason: format!("not an OIDC discovery document: {e}"),
        })?;
    check_url(&doc.token_endpoint, egress)
}

pub(crate) fn transport(url: &str, e: reqwest::Error) -> ProviderError {
    // reqwest's message names the whole URL, query included
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    ProviderError::Transport {
        url: url.into(),
        reason,
    }
}

/// One token request to an OAuth 2.0 token endpoint.
pub async fn fetch(
    http: &reqwest::Client,
    spec: &OAuth2Spec,
    keys: &InputKeys,
    req: &Request<'_>,
) -> Result<Token, ProviderError> {
    let form = token_form(spec, keys, req.inputs, &req.grant)?;
    let url = token_endpoint(http, spec, req.egress).await?;
    let url_text = super::shown_url(&url);
    let body: Vec<(&str, &str)> = form
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose()))
        .collect();
    let mut request = http
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&body);
    if let Some(basic) = &form.basic {
        request = request.header(reqwest::header::AUTHORIZATION, basic.expose());
    }
    if let Some(timeout) = req.timeout {
        request = request.timeout(timeout);
    }
    let response = request.send().await.map_err(|e| transport(&url_text, e))?;
    let status = response.status();
    let retry_after = super::retry_after(response.headers(), crate::renewal::now());
    let bytes = super::read_capped(response, &url_text).await?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<ErrorResponse>(&bytes)
            .ok()
            .map(|e| {
                let description = e.error_description.unwrap_or_default();
                let text = if description.is_empty() {
                    e.error
                } else {
                    format!("{}: {description}", e.error)
                };
                text.chars().take(300).collect()
            });
        return Err(ProviderError::Rejected {
            url: url_text,
            status: status.as_u16(),
            detail,
            retry_after,
        });
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::BadResponse {
            url: url_text.clone(),
            reason: format!("not a JSON token response ({e})"),
        })?;
    let bad = |reason: &str| ProviderError::BadResponse {
        url: url_text.clone(),
        reason: reason.into(),
    };
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token in the response"))?;
    // lifetimes count from when the answer arrived, not from when the request started
    let now = crate::renewal::now();
    let expires_at = match &parsed.expires_in {
        Some(v) => Some(
            seconds_value(v)
                .map(|s| add_secs(now, s))
                .ok_or_else(|| bad("expires_in is not a number of seconds"))?,
        ),
        None => jwt_exp(&access_token),
    };
    let refresh_expires_at = match parsed.refresh_expires_in.as_ref().and_then(seconds_value) {
        // Keycloak sends 0 for offline tokens that do not expire
        Some(0) | None => None,
        Some(s) => Some(add_secs(now, s)),
    };
    let refresh_token = parsed.refresh_token.filter(|t| !t.is_empty());
    Ok(Token {
        value: SecretValue::new(access_token),
        token_type: parsed.token_type.unwrap_or_else(|| "Bearer".into()),
        issued_at: now,
        expires_at,
        refresh_expires_at: refresh_token.as_ref().and(refresh_expires_at),
        refresh_token: refresh_token.map(SecretValue::new),
        scope: parsed.scope,
        kept: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(grant_type: GrantType, auth: ClientAuthentication) -> OAuth2Spec {
        OAuth2Spec {
            token_url: Some("https://auth.example/token".into()),
            issuer_url: None,
            grant_type,
            scopes: vec!["read".into(), "write".into()],
            audience: None,
            client_authentication: auth,
            extra_params: [("token_format".to_string(), "jwt".to_string())].into(),
        }
    }

    fn inputs() -> Inputs {
        [
            ("client_id", "my client"),
            ("client_secret", "p&ss=w/rd+"),
            ("username", "pilot"),
            ("password", "hunter2"),
            ("code", "abc"),
            ("redirect_uri", "https://app.example/cb"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn client_credentials_post() {
        let s = spec(
            GrantType::ClientCredentials,
            ClientAuthentication::ClientSecretPost,
        );
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("grant_type"), Some("client_credentials"));
        assert_eq!(form.param("scope"), Some("read write"));
        assert_eq!(form.param("token_format"), Some("jwt"));
        assert_eq!(form.param("client_secret"), Some("p&ss=w/rd+"));
        assert!(form.basic.is_none());
        assert!(!format!("{form:?}").contains("p&ss"));
    }

    #[test]
    fn client_secret_basic_form_encodes_before_base64() {
        let s = spec(
            GrantType::ClientCredentials,
            ClientAuthentication::ClientSecretBasic,
        );
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("client_secret"), None);
        let basic = form.basic.unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.expose().strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+client:p%26ss%3Dw%2Frd%2B"
        );
    }

    #[test]
    fn password_and_code_grants_take_their_inputs() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("username"), Some("pilot"));
        assert_eq!(form.param("password"), Some("hunter2"));
        // a public client with an audience
        let mut s = spec(GrantType::AuthorizationCode, ClientAuthentication::None);
        s.audience = Some("https://api.example".into());
        let form = token_form(&s, &InputKeys::default(), &inputs(), &Grant::Primary).unwrap();
        assert_eq!(form.param("code"), Some("abc"));
        assert_eq!(form.param("redirect_uri"), Some("https://app.example/cb"));
        assert_eq!(form.param("client_secret"), None);
        assert_eq!(form.param("client_id"), Some("my client"));
        assert_eq!(form.param("audience"), Some("https://api.example"));
    }

    #[test]
    fn refresh_grant_uses_the_stored_refresh_token() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let grant = Grant::Refresh("rt-1".into());
        let form = token_form(&s, &InputKeys::default(), &inputs(), &grant).unwrap();
        assert_eq!(form.param("grant_type"), Some("refresh_token"));
        assert_eq!(form.param("refresh_token"), Some("rt-1"));
        assert_eq!(form.param("password"), None);
    }

    /// Issue 8: an empty client secret or a binary value is refused naming the key, never sent.
    #[test]
    fn empty_and_binary_inputs_are_refused() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let mut secret = k8s_openapi::api::core::v1::Secret {
            data: Some(
                [
                    ("client_id", b"id".to_vec()),
                    ("client_secret", b"".to_vec()),
                    ("username", b"u".to_vec()),
                    ("password", vec![0xff, 0xfe, 0x41]),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v)))
                .collect(),
            ),
            ..Default::default()
        };
        let inputs = Inputs::from_secret(&secret);
        let err = token_form(&s, &InputKeys::default(), &inputs, &Grant::Primary).unwrap_err();
        assert_eq!(err.reason(), crate::reason::Reason::InvalidInputs);
        assert!(
            err.to_string().contains("\"password\"") && err.to_string().contains("UTF-8"),
            "{err}"
        );
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), k8s_openapi::ByteString(b"pw".to_vec()));
        let inputs = Inputs::from_secret(&secret);
        let err = token_form(&s, &InputKeys::default(), &inputs, &Grant::Primary).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"client_secret\" of the inputs Secret is empty"),
            "{err}"
        );
    }

    #[test]
    fn missing_input_names_the_key() {
        let s = spec(GrantType::Password, ClientAuthentication::ClientSecretPost);
        let keys = InputKeys {
            password: Some("pw".into()),
            ..Default::default()
        };
        let err = token_form(&s, &keys, &inputs(), &Grant::Primary).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"pw\" is missing from the inputs Secret (needed for password)"
        );
    }
}
