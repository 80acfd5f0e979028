//! The `ProviderCredential` API (`tokensync.dev/v1alpha1`): the one source of the CRD YAML.
//!
//! A ProviderCredential names a token API (a typed `oauth2` block or a declarative `http` block), a
//! Secret in its own namespace holding the inputs, and the output Secret the token is written to.
//! Validation that the apiserver can do on its own (shapes, patterns, CEL rules across fields) lives
//! here, so a bad manifest is refused at admission with a message that names the field.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A duration in days, hours, minutes and seconds, each unit at most once and in that order:
/// `90s`, `10m`, `1h30m`, `8d`. The digit bounds keep every sum far inside an `i64`; the CEL rules
/// of [`duration_rule`] bound the total to [`MAX_DURATION_SECONDS`].
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}d)?([0-9]{1,6}h)?([0-9]{1,8}m)?([0-9]{1,9}s)?$";
/// The longest duration the spec takes, in seconds: 10 years of 365 days (`3650d`).
pub const MAX_DURATION_SECONDS: i64 = 3650 * 86_400;
/// The shortest `spec.refresh.fallbackInterval`, in seconds (`1m`): a token without expiry is
/// renewed at most once a minute.
pub const MIN_FALLBACK_INTERVAL_SECONDS: i64 = 60;
/// A key of a Secret's `data`.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A DNS subdomain name (RFC 1123), as Secret names must be.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An absolute http(s) URL without userinfo (credentials belong in the inputs Secret); whether
/// plain http is allowed is the controller's `--allow-insecure-http`.
pub const URL_PATTERN: &str = r"^https?://[^/?#\s@]+([/?#]\S*)?$";
/// A templated http(s) URL: templates may fill the path and query, never the host, so the host a
/// request goes to is always visible in the manifest (and to an egress allowlist).
pub const TEMPLATE_URL_PATTERN: &str = r"^https?://[^/?#\s{}@]+([/?#].*)?$";
/// An RFC 6749 scope token: no spaces, quotes or backslashes.
pub const SCOPE_PATTERN: &str = r"^[!#-\[\]-~]+$";
/// A JSON pointer (RFC 6901) into a response body.
pub const JSON_POINTER_PATTERN: &str = r"^(/[^/]*)+$";
/// The suffix of the operator's state Secrets (`<metadata.name>-tokensync-state`), which hold
/// refresh tokens: no inputs or output Secret may be named with it.
pub const STATE_SECRET_SUFFIX: &str = "-tokensync-state";
/// The longest ProviderCredential name: its state Secret's name must fit in 253 characters.
pub const MAX_NAME_LENGTH: usize = 253 - STATE_SECRET_SUFFIX.len();
/// A label or annotation key (a qualified name): an optional DNS subdomain and `/`, then a name of
/// at most 63 characters. The prefix's 253-character bound is a separate check.
const QUALIFIED_NAME_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 characters.
const LABEL_VALUE_PATTERN: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// The most labels, and the most annotations, the output Secret takes from the spec: a bound
/// the apiserver's CEL cost estimate needs for the rules over their keys.
pub const MAX_OUTPUT_METADATA_ENTRIES: usize = 256;
/// The prefix of the labels and annotations the operator writes on the output Secret.
const OPERATOR_KEY_PREFIX: &str = "tokensync.dev/";
/// The label the operator sets on the output Secret (as `controller::output` writes it).
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

// CEL rules shared by several fields; `path` is the field's path in messages. Patterns are pasted
// into CEL single-quoted strings, so they hold no quote and no backslash.

/// The duration at `path` is at most [`MAX_DURATION_SECONDS`].
fn at_most_10_years(path: &str) -> Rule {
    duration_rule(
        format!("<= {MAX_DURATION_SECONDS}"),
        format!("{path}: at most 10 years (3650d)"),
    )
}

/// The duration at `path` is at least [`MIN_FALLBACK_INTERVAL_SECONDS`].
fn at_least_1m(path: &str) -> Rule {
    duration_rule(
        format!(">= {MIN_FALLBACK_INTERVAL_SECONDS}"),
        format!("{path}: at least 1m, so that a token without expiry is not renewed in a loop"),
    )
}

/// A rule on a duration's total in seconds: `check` follows the sum (e.g. `<= 60`). A value off
/// [`DURATION_PATTERN`] passes, left to the pattern's own error (and never reaching `int()`).
fn duration_rule(check: String, message: String) -> Rule {
    let seconds = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)]
        .map(|(unit, factor)| {
            let digits = format!("self.find('[0-9]+{unit}')");
            format!("({digits} == '' ? 0 : int({digits}.replace('{unit}', '')) * {factor})")
        })
        .join(" + ");
    Rule::new(format!(
        "!self.matches('{DURATION_PATTERN}') || {seconds} {check}"
    ))
    .message(message.as_str())
}

/// The Secret name at `path` does not end in [`STATE_SECRET_SUFFIX`].
fn not_a_state_secret(path: &str) -> Rule {
    Rule::new(format!("!self.endsWith('{STATE_SECRET_SUFFIX}')")).message(
        format!("{path}: names ending in {STATE_SECRET_SUFFIX} are reserved for the operator's state Secrets, which hold refresh tokens").as_str(),
    )
}

/// Each key of the map at `path` is a valid label or annotation key.
fn keys_are_qualified_names(path: &str) -> Rule {
    Rule::new(format!(
        "self.all(k, k.matches('{QUALIFIED_NAME_PATTERN}') && k.find('^[^/]*/').size() <= 254)"
    ))
    .message(format!("{path}: each key must be a valid label or annotation key: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of at most 63 characters of [-A-Za-z0-9_.] that starts and ends with a letter or digit").as_str())
}

/// Each value of the map at `path` is a valid label value.
fn values_are_label_values(path: &str) -> Rule {
    Rule::new(format!(
        "self.all(k, self[k].matches('{LABEL_VALUE_PATTERN}'))"
    ))
    .message(format!("{path}: each value must be a valid label value: empty, or at most 63 characters of [-A-Za-z0-9_.] that start and end with a letter or digit").as_str())
}

/// No key of the map at `path` is one the operator writes: none under [`OPERATOR_KEY_PREFIX`],
/// and none of `also`.
fn not_the_operators_keys(path: &str, also: &[&str]) -> Rule {
    let others: String = also.iter().map(|k| format!(" && k != '{k}'")).collect();
    let named: String = also.iter().map(|k| format!(" or {k}")).collect();
    Rule::new(format!(
        "self.all(k, !k.startsWith('{OPERATOR_KEY_PREFIX}'){others})"
    ))
    .message(
        format!("{path}: keys under {OPERATOR_KEY_PREFIX}{named} are set by the operator").as_str(),
    )
}

/// Obtains a short-lived API token from a provider and keeps it fresh in a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tokensync.dev",
    version = "v1alpha1",
    kind = "ProviderCredential",
    namespaced,
    status = "ProviderCredentialStatus",
    shortname = "pcred",
    category = "tokensync",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Next","type":"string","jsonPath":".status.nextAttemptAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","priority":1,"jsonPath":".spec.output.secretName"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Degraded\")].reason"}"#,
    validation = Rule::new(format!("self.metadata.name.size() <= {MAX_NAME_LENGTH}")).message(format!("metadata.name: at most {MAX_NAME_LENGTH} characters, so that the state Secret <name>{STATE_SECRET_SUFFIX} fits in 253").as_str())
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.oauth2) != has(self.http)").message("spec: exactly one provider block must be set: spec.oauth2 or spec.http").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.output.secretName != self.inputs.secretName").message("spec.output.secretName must differ from spec.inputs.secretName: the inputs are never overwritten").field_path(".output.secretName"))]
pub struct ProviderCredentialSpec {
    /// The Secret in this namespace that holds the provider's inputs (client id/secret,
    /// username/password, a refresh token or a one-time authorization code).
    pub inputs: InputsRef,
    /// A standard OAuth 2.0 / OpenID Connect token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
    /// A declarative HTTP token API, for vendor logins that are not OAuth 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// The Secret the token is written to; workloads mount it.
    pub output: OutputSpec,
    /// When to renew the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshPolicy>,
    /// Trust for the provider's TLS certificate, on top of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Where the inputs are: a Secret in the ProviderCredential's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InputsRef {
    /// Name of the Secret.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    #[x_kube(validation = not_a_state_secret("spec.inputs.secretName"))]
    pub secret_name: String,
    /// Key names in that Secret, when they differ from the defaults.
    #[serde(default, skip_serializing_if = "InputKeys::is_default")]
    pub keys: InputKeys,
}

/// Key names in the inputs Secret. Each defaults to the OAuth 2.0 parameter name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InputKeys {
    /// Default `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub client_id: Option<String>,
    /// Default `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub client_secret: Option<String>,
    /// Default `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub username: Option<String>,
    /// Default `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub password: Option<String>,
    /// Default `refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub refresh_token: Option<String>,
    /// Default `code`: a one-time authorization code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub code: Option<String>,
    /// Default `redirect_uri`: the redirect URI the authorization code was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub redirect_uri: Option<String>,
}

impl InputKeys {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A role an input plays; each maps to a key in the inputs Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRole {
    ClientId,
    ClientSecret,
    Username,
    Password,
    RefreshToken,
    Code,
    RedirectUri,
}

impl InputKeys {
    /// The Secret key that holds `role`.
    pub fn key(&self, role: InputRole) -> &str {
        let (custom, default) = match role {
            InputRole::ClientId => (&self.client_id, "client_id"),
            InputRole::ClientSecret => (&self.client_secret, "client_secret"),
            InputRole::Username => (&self.username, "username"),
            InputRole::Password => (&self.password, "password"),
            InputRole::RefreshToken => (&self.refresh_token, "refresh_token"),
            InputRole::Code => (&self.code, "code"),
            InputRole::RedirectUri => (&self.redirect_uri, "redirect_uri"),
        };
        custom.as_deref().unwrap_or(default)
    }
}

/// A standard OAuth 2.0 token endpoint (RFC 6749), found directly or by OIDC discovery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.tokenUrl) != has(self.issuerUrl)").message("spec.oauth2: set exactly one of tokenUrl or issuerUrl").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.grantType != 'client_credentials' || self.clientAuthentication != 'none'").message("spec.oauth2.clientAuthentication: grantType client_credentials needs a client secret, so it cannot be none").field_path(".clientAuthentication"))]
pub struct OAuth2Spec {
    /// The token endpoint, e.g. `https://auth.example.com/oauth/v2/token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub token_url: Option<String>,
    /// An OpenID Connect issuer; the token endpoint is read from its
    /// `/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub issuer_url: Option<String>,
    /// The primary grant. `refresh_token` lives on a refresh token from the inputs;
    /// `authorization_code` exchanges a one-time code from the inputs and then lives on the
    /// refresh token it returns.
    pub grant_type: GrantType,
    /// Scopes to request, sent space-separated; each a non-empty RFC 6749 scope token (no spaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = SCOPE_PATTERN), length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// The `audience` parameter, for providers that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub client_authentication: ClientAuthentication,
    /// Extra form parameters sent with every token request (e.g. `token_format: jwt`); the
    /// grant's own parameters (`grant_type`, `client_secret`, `scope`, ...) cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "x-kubernetes-validations" = [{"rule": "self.all(k, !(k in ['grant_type', 'client_id', 'client_secret', 'scope', 'audience', 'username', 'password', 'refresh_token', 'code', 'redirect_uri', 'code_verifier', 'assertion', 'client_assertion', 'client_assertion_type']))", "message": "spec.oauth2.extraParams: grant parameters (grant_type, client_id, client_secret, scope, audience, username, password, refresh_token, code, redirect_uri, code_verifier, assertion, client_assertion, client_assertion_type) are set by tokensync and cannot be overridden"}]))]
    pub extra_params: BTreeMap<String, String>,
}

/// An OAuth 2.0 grant type.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
    Password,
    RefreshToken,
    AuthorizationCode,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::Password => "password",
            GrantType::RefreshToken => "refresh_token",
            GrantType::AuthorizationCode => "authorization_code",
        }
    }
}

/// Client authentication at the token endpoint (RFC 6749 section 2.3).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthentication {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the client id and secret form-encoded first, as RFC 6749 2.3.1 says
    /// (Keycloak, oidc-provider and most servers decode them).
    ClientSecretBasic,
    /// HTTP Basic with the client id and secret as they are, not form-encoded: for servers that
    /// do not decode them (they refuse `client_secret_basic` when the secret holds characters
    /// such as `+`, `&`, `%` or `/`).
    ClientSecretBasicRaw,
    /// A public client: only `client_id` is sent.
    None,
}

/// A declarative HTTP token API: how to log in, refresh and revoke, and where the token is in
/// the response. Strings in URLs, headers and bodies are templates (`{{ inputs.username }}`);
/// values are escaped by the body's encoder, never pasted into text.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// The request that obtains a token from the inputs.
    pub login: HttpRequestSpec,
    /// The request that renews a token with the stored refresh token (`{{ refresh_token }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<HttpRequestSpec>,
    /// The request that revokes a replaced token (`{{ token }}`, `{{ kept.NAME }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<HttpRequestSpec>,
    /// Where the token is in the login (and refresh) response.
    #[serde(default)]
    pub response: ResponseMapping,
    /// Where the token is in the refresh response, when it differs from `response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_response: Option<ResponseMapping>,
    /// A lifetime to ask for, e.g. `8d`; templates see `requested.seconds`,
    /// `requested.expires_at` (RFC 3339) and `requested.date` (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 1, max = 32))]
    #[x_kube(validation = at_most_10_years("spec.http.requestedLifetime"))]
    pub requested_lifetime: Option<String>,
    /// Another ProviderCredential in this namespace whose token the requests may use, as
    /// `{{ upstream.token }}` (e.g. a personal access token minted with an OIDC token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRef>,
}

/// A reference to another ProviderCredential in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub provider_credential: String,
}

/// One templated HTTP request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.json) && has(self.form))").message("set at most one body: json or form"))]
pub struct HttpRequestSpec {
    #[serde(default)]
    pub method: HttpMethod,
    /// The URL: http(s), with a literal host; the path and query may hold templates.
    #[schemars(regex(pattern = TEMPLATE_URL_PATTERN), length(max = 2048))]
    pub url: String,
    /// Request headers; values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A JSON object body; every string in it is a template, rendered then JSON-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub json: Option<serde_json::Value>,
    /// A form body (`application/x-www-form-urlencoded`); values are templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<BTreeMap<String, String>>,
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
    Put,
    Delete,
}

/// Where the token and its expiry are in a JSON response (JSON pointers, RFC 6901).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMapping {
    /// The token. Default `/access_token`.
    #[serde(default = "default_token_pointer")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub token: String,
    /// The token type; when absent the type is `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub token_type: Option<String>,
    /// A refresh token, kept in the operator's state Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub refresh_token: Option<String>,
    /// The token's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<ExpiryMapping>,
    /// The refresh token's own deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expiry: Option<ExpiryMapping>,
    /// Other response fields to keep for later requests (`{{ kept.NAME }}`), e.g. a token id
    /// for the revoke URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keep: BTreeMap<String, String>,
}

impl Default for ResponseMapping {
    fn default() -> Self {
        Self {
            token: default_token_pointer(),
            token_type: None,
            refresh_token: None,
            expiry: None,
            refresh_expiry: None,
            keep: BTreeMap::new(),
        }
    }
}

fn default_token_pointer() -> String {
    "/access_token".into()
}

/// Where an expiry is and how it is written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.format) && self.format == 'jwtExp') || has(self.pointer)").message("pointer is required unless format is jwtExp"))]
pub struct ExpiryMapping {
    /// JSON pointer to the value (for `jwtExp`: to the JWT; default the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = JSON_POINTER_PATTERN))]
    pub pointer: Option<String>,
    /// How the value is written. Default `auto`. When a token arrives with an expiry that cannot
    /// be read, the token is kept with `spec.http.requestedLifetime` (or renewed at the fallback
    /// interval) and a Warning event says so.
    #[serde(default)]
    pub format: ExpiryFormat,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "camelCase")]
pub enum ExpiryFormat {
    /// Any of: an RFC 3339 time with or without offset (UTC when absent) or fraction
    /// (`2025-09-09T10:00:00Z`, `2025-09-09T10:00:00.5+02:00`, `2025-09-09 10:00:00`), a date
    /// (`2025-09-09`, its start in UTC), an RFC 2822 / HTTP date (`Tue, 09 Sep 2025 10:00:00
    /// GMT`), a JWT (its `exp`), or a number (or numeric string) read by magnitude: below 10^8
    /// seconds from now, below 10^11 Unix seconds, else Unix milliseconds.
    #[default]
    Auto,
    /// Seconds from now, as a number or a string (`expires_in`).
    Seconds,
    /// Absolute Unix time in seconds.
    EpochSeconds,
    /// Absolute Unix time in milliseconds.
    EpochMillis,
    /// An RFC 3339 timestamp.
    Rfc3339,
    /// A calendar date (YYYY-MM-DD), taken as its start in UTC.
    Date,
    /// The `exp` claim of a JWT (decoded without verifying the signature).
    JwtExp,
}

/// The Secret that workloads mount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutputSpec {
    /// Name of the Secret; tokensync creates and owns it.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    #[x_kube(validation = not_a_state_secret("spec.output.secretName"))]
    pub secret_name: String,
    /// Labels of the Secret, besides `app.kubernetes.io/managed-by`, which the operator sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_OUTPUT_METADATA_ENTRIES,
        "additionalProperties" = {"type": "string", "maxLength": 63}
    ))]
    #[x_kube(
        validation = keys_are_qualified_names("spec.output.labels"),
        validation = values_are_label_values("spec.output.labels"),
        validation = not_the_operators_keys("spec.output.labels", &[MANAGED_BY])
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the Secret, besides the operator's own under `tokensync.dev/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_OUTPUT_METADATA_ENTRIES))]
    #[x_kube(
        validation = keys_are_qualified_names("spec.output.annotations"),
        validation = not_the_operators_keys("spec.output.annotations", &[])
    )]
    pub annotations: BTreeMap<String, String>,
    /// Keys of the Secret and their templated values over `token`, `token_type`,
    /// `expires_at` and `issued_at`. Default: `token`, `token_type`, `expires_at`. The refresh
    /// token stays in the operator's state Secret unless a key asks for `{{ refresh_token }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(k, k.matches('^[-._a-zA-Z0-9]+$'))", "message": "spec.output.keys: each key must be a valid Secret key ([-._a-zA-Z0-9]+)"}]))]
    pub keys: BTreeMap<String, String>,
}

/// When to renew. Default: when two thirds of the lifetime have passed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("spec.refresh: set at most one of renewBefore or renewBeforePercentage"))]
pub struct RefreshPolicy {
    /// Renew this long before expiry, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 1, max = 32))]
    #[x_kube(validation = at_most_10_years("spec.refresh.renewBefore"))]
    pub renew_before: Option<String>,
    /// Renew when this share of the lifetime is left (1-99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<u8>,
    /// How often to renew a token that has no known expiry, at least `1m`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 1, max = 32))]
    #[x_kube(
        validation = at_most_10_years("spec.refresh.fallbackInterval"),
        validation = at_least_1m("spec.refresh.fallbackInterval")
    )]
    pub fallback_interval: Option<String>,
}

/// TLS trust for the provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caBundleSecret) && has(self.caBundleConfigMap))").message("spec.tls: set at most one of caBundleSecret or caBundleConfigMap"))]
pub struct TlsSpec {
    /// PEM CA certificates in a Secret key, trusted besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret: Option<KeyRef>,
    /// PEM CA certificates in a ConfigMap key, trusted besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_config_map: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

/// What the controller last saw and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCredentialStatus {
    /// `Ready` and friends, with a reason and a message that never holds a secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the current token expires (absent when the provider gives no expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the controller will renew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
    /// When the current token was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_at: Option<Time>,
    /// The first 8 hex characters of the current token's SHA-256, to tell tokens apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// The SHA-256 prefix of the inputs Secret's data the current token was obtained with: a
    /// change of the data (not of its labels or annotations) renews the token at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// When the controller will next ask the provider: the renewal time, or the retry after a
    /// failure (backoff, or the provider's Retry-After).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// The failed attempts since the last success; absent after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
    /// When the stored refresh token dies, when the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<Time>,
}

/// Failed attempts since the last success, and what they were made from: a change of the spec,
/// the inputs or a forced renewal retries at once instead of waiting out the backoff.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    /// When the last attempt failed.
    pub at: Time,
    /// Failed attempts in a row from the same spec and inputs; drives the backoff.
    pub count: u32,
    /// The condition reason of the last failure.
    pub reason: String,
    /// The spec generation the attempts used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The inputs hash the attempts used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_hash: Option<String>,
    /// The force-refresh annotation value the attempts used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_refresh: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_carries_cel_rules_and_printer_columns() {
        let crd = serde_json::to_string(&ProviderCredential::crd()).unwrap();
        assert!(crd.contains("has(self.oauth2) != has(self.http)"));
        assert!(crd.contains("has(self.tokenUrl) != has(self.issuerUrl)"));
        assert!(crd.contains(r#""shortNames":["pcred"]"#));
        for col in [
            "Ready", "Reason", "Expires", "Next", "Age", "Secret", "Degraded",
        ] {
            assert!(crd.contains(&format!(r#""name":"{col}""#)), "{col}");
        }
    }

    /// Each property under `schema`, with its path (`spec.refresh.renewBefore`).
    fn properties(
        schema: &serde_json::Value,
        path: &str,
        out: &mut Vec<(String, serde_json::Value)>,
    ) {
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            let path = format!("{path}.{name}");
            properties(prop, &path, out);
            out.push((path, prop.clone()));
        }
    }

    fn rules(schema: &serde_json::Value) -> Vec<(String, String)> {
        let rules = schema["x-kubernetes-validations"].as_array();
        rules
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap().into(),
                    r["message"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    /// Every field of the duration pattern carries the 10-year rule, whose message names that
    /// field; a duration field added without it fails here.
    #[test]
    fn every_duration_field_is_bounded_naming_itself() {
        let crd = serde_json::to_value(ProviderCredential::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut all = vec![];
        properties(&root["properties"]["spec"], "spec", &mut all);
        let durations: Vec<_> = all
            .iter()
            .filter(|(_, p)| p["pattern"] == DURATION_PATTERN)
            .collect();
        let paths: Vec<&str> = durations.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.http.requestedLifetime",
                "spec.refresh.fallbackInterval",
                "spec.refresh.renewBefore"
            ]
        );
        for (path, prop) in durations {
            let rules = rules(prop);
            let bound = format!("<= {MAX_DURATION_SECONDS}");
            assert!(
                rules.iter().any(|(rule, message)| rule.ends_with(&bound)
                    && *message == format!("{path}: at most 10 years (3650d)")),
                "{path}: {rules:?}"
            );
        }
        let fallback = &all
            .iter()
            .find(|(p, _)| p == "spec.refresh.fallbackInterval")
            .unwrap()
            .1;
        assert!(
            rules(fallback)
                .iter()
                .any(|(rule, _)| rule.ends_with(">= 60"))
        );
        // the bounds are the runtime parser's reading of 3650d and 1m
        let seconds = |d: &str| crate::renewal::parse_duration(d).unwrap().as_secs();
        assert_eq!(seconds("3650d"), MAX_DURATION_SECONDS);
        assert_eq!(seconds("1m"), MIN_FALLBACK_INTERVAL_SECONDS);
    }

    #[test]
    fn the_root_bounds_the_name_for_the_state_secret() {
        let crd = serde_json::to_value(ProviderCredential::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(MAX_NAME_LENGTH + STATE_SECRET_SUFFIX.len(), 253);
        assert!(
            rules(root)
                .iter()
                .any(|(rule, _)| rule == "self.metadata.name.size() <= 237"),
            "{:?}",
            rules(root)
        );
    }

    #[test]
    fn input_keys_default_to_oauth_names() {
        let keys = InputKeys {
            client_secret: Some("secret".into()),
            ..Default::default()
        };
        assert_eq!(keys.key(InputRole::ClientId), "client_id");
        assert_eq!(keys.key(InputRole::ClientSecret), "secret");
    }
}
