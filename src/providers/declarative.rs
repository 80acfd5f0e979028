//! The declarative HTTP provider: templated login, refresh and revoke requests and a JSON-pointer
//! response mapping, so a vendor's own token API is a manifest rather than code.
//!
//! Templates (minijinja) see `inputs.KEY`, `refresh_token`, `token`, `kept.NAME`, `current.token`,
//! `upstream.token`, `upstream.token_type`, `requested.*` and `now`, and have minijinja's builtin
//! filters plus `b64encode` (standard, padded base64 of the text). Values are escaped by the
//! encoder of the place they go: JSON strings by the JSON encoder, form values by the form
//! encoder, URL parts by percent-encoding; a template never builds a body by pasting text.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{
    ErrorDetail, Fetched, Grant, ProviderError, Request, check_url, jwt_exp, seconds_value,
};
use crate::crd::{
    ExpiryFormat, ExpiryMapping, HttpMethod, HttpRequestSpec, HttpSpec, ResponseMapping,
};
use crate::renewal::parse_duration;
use crate::token::{Inputs, SecretValue, Token};

/// The largest response body read; a bigger one is refused.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What a request's templates can use, besides the inputs.
#[derive(Debug, Default)]
pub struct Vars<'a> {
    pub refresh_token: Option<&'a SecretValue>,
    /// The token a revoke is for, with its kept fields.
    pub token: Option<&'a SecretValue>,
    pub kept: Option<&'a BTreeMap<String, String>>,
    /// The newest token (for a revoke authorised by the token that replaced the old one).
    pub current: Option<&'a SecretValue>,
}

fn context(req: &Request<'_>, spec: &HttpSpec, vars: &Vars<'_>) -> Result<Value, ProviderError> {
    let inputs: serde_json::Map<String, Value> = req
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.expose().to_string())))
        .collect();
    let expose = |v: Option<&SecretValue>| v.map(|s| s.expose().to_string());
    let mut ctx = json!({
        "inputs": inputs,
        "now": req.now.to_string(),
        "refresh_token": expose(vars.refresh_token),
        "token": expose(vars.token),
        "kept": vars.kept.cloned().unwrap_or_default(),
        "current": {"token": expose(vars.current.or(vars.token))},
    });
    if let Some(up) = &req.upstream {
        ctx["upstream"] = json!({"token": up.value.expose(), "token_type": up.token_type});
    }
    if let Some(lifetime) = &spec.requested_lifetime {
        let d = parse_duration(lifetime)
            .map_err(|e| ProviderError::InvalidSpec(format!("spec.http.requestedLifetime: {e}")))?;
        let at = crate::renewal::add(req.now, d);
        ctx["requested"] = json!({
            "seconds": d.as_secs(),
            "human": human(d),
            "expires_at": at.to_string(),
            "date": at.to_zoned(jiff::tz::TimeZone::UTC).date().to_string(),
        });
    }
    Ok(ctx)
}

/// `8 days`, `12 hours`, `30 minutes`: the largest unit that divides the duration.
fn human(d: SignedDuration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s % 86400 == 0 {
        (s / 86400, "day")
    } else if s % 3600 == 0 {
        (s / 3600, "hour")
    } else if s % 60 == 0 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Keep `[A-Za-z0-9-._~]`, percent-encode the rest (RFC 3986 unreserved).
pub(crate) fn encode_url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `b64encode` filter: standard base64 (RFC 4648 4, padded) of the UTF-8 text, e.g. for an
/// `Authorization: Basic {{ (inputs.client_id ~ ":" ~ inputs.client_secret) | b64encode }}` header.
fn b64encode(value: String) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value)
}

fn env(url: bool) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("b64encode", b64encode);
    if url {
        env.set_formatter(|out, _state, value| {
            let text = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            out.write_str(&encode_url_part(&text)).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())
            })
        });
    }
    env
}

fn render(
    env: &minijinja::Environment<'_>,
    field: &str,
    template: &str,
    ctx: &Value,
) -> Result<String, ProviderError> {
    // the error names the field and what is wrong with the template, never a value
    env.render_str(template, ctx).map_err(|e| {
        let detail = e.detail().map(|d| format!(" ({d})")).unwrap_or_default();
        ProviderError::InvalidSpec(format!("{field}: template error: {}{detail}", e.kind()))
    })
}

fn render_json(
    env: &minijinja::Environment<'_>,
    field: &str,
    v: &Value,
    ctx: &Value,
) -> Result<Value, ProviderError> {
    Ok(match v {
        Value::String(t) => Value::String(render(env, field, t, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| render_json(env, &format!("{field}[{i}]"), x, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| {
                    Ok((
                        k.clone(),
                        render_json(env, &format!("{field}.{k}"), x, ctx)?,
                    ))
                })
                .collect::<Result<_, ProviderError>>()?,
        ),
        other => other.clone(),
    })
}

/// A rendered request, ready to send. `Debug` shows only the method and URL.
pub struct Rendered {
    pub method: HttpMethod,
    pub url: reqwest::Url,
    pub headers: Vec<(String, SecretValue)>,
    pub body: Option<Body>,
}

pub enum Body {
    Json(Value),
    Form(Vec<(String, String)>),
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.method, super::shown_url(&self.url))
    }
}

/// Every template string of a request: the URL, header values, form values and JSON strings.
fn templates(spec: &HttpRequestSpec) -> Vec<&str> {
    fn json<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(t) => out.push(t),
            Value::Array(items) => items.iter().for_each(|x| json(x, out)),
            Value::Object(map) => map.values().for_each(|x| json(x, out)),
            _ => {}
        }
    }
    let mut out = vec![spec.url.as_str()];
    out.extend(spec.headers.values().map(String::as_str));
    out.extend(spec.form.iter().flatten().map(|(_, t)| t.as_str()));
    if let Some(j) = &spec.json {
        json(j, &mut out);
    }
    out
}

/// The inputs a request's templates use (`inputs.KEY`) must be present, text and not empty:
/// an empty or binary value would be sent as-is or mangled. Checked before anything is sent,
/// naming the key (never the value).
pub fn check_inputs(
    field: &'static str,
    spec: &HttpRequestSpec,
    inputs: &Inputs,
) -> Result<(), ProviderError> {
    let env = env(false);
    let mut keys = std::collections::BTreeSet::new();
    for t in templates(spec) {
        // a template that does not parse is answered when it is rendered
        let Ok(tmpl) = env.template_from_str(t) else {
            continue;
        };
        for var in tmpl.undeclared_variables(true) {
            if let Some(key) = var.strip_prefix("inputs.") {
                keys.insert(key.split('.').next().unwrap_or(key).to_string());
            }
        }
    }
    for key in keys {
        super::require_input(inputs, &key, field)?;
    }
    Ok(())
}

/// Render one request spec (pure: no I/O).
pub fn render_request(
    field: &str,
    spec: &HttpRequestSpec,
    ctx: &Value,
    egress: &super::Egress,
) -> Result<Rendered, ProviderError> {
    let plain = env(false);
    let url = render(&env(true), &format!("{field}.url"), &spec.url, ctx)?;
    let url = check_url(&url, egress)?;
    let headers = spec
        .headers
        .iter()
        .map(|(k, t)| {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(ProviderError::InvalidSpec(format!(
                    "{field}.headers: {k:?} is not a valid HTTP header name"
                )));
            }
            let value = render(&plain, &format!("{field}.headers.{k}"), t, ctx)?;
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                // never show the value: it may hold a secret
                return Err(ProviderError::InvalidSpec(format!(
                    "{field}.headers.{k}: the rendered value is not a valid HTTP header value (control characters or non-ASCII)"
                )));
            }
            Ok((k.clone(), SecretValue::new(value)))
        })
        .collect::<Result<_, ProviderError>>()?;
    let body = match (&spec.json, &spec.form) {
        (Some(j), _) => Some(Body::Json(render_json(
            &plain,
            &format!("{field}.json"),
            j,
            ctx,
        )?)),
        (None, Some(form)) => Some(Body::Form(
            form.iter()
                .map(|(k, t)| {
                    Ok((
                        k.clone(),
                        render(&plain, &format!("{field}.form.{k}"), t, ctx)?,
                    ))
                })
                .collect::<Result<_, ProviderError>>()?,
        )),
        (None, None) => None,
    };
    Ok(Rendered {
        method: spec.method,
        url,
        headers,
        body,
    })
}

/// Send a rendered request; the JSON body of a 2xx answer (or `Null` for an empty one).
pub async fn send(
    http: &reqwest::Client,
    r: Rendered,
    timeout: Option<std::time::Duration>,
) -> Result<Value, ProviderError> {
    let url_text = super::shown_url(&r.url);
    let method = match r.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut builder = http
        .request(method, r.url)
        .header(reqwest::header::ACCEPT, "application/json");
    for (k, v) in &r.headers {
        builder = builder.header(k.as_str(), v.expose());
    }
    builder = match r.body {
        Some(Body::Json(v)) => builder.json(&v),
        Some(Body::Form(f)) => builder.form(&f),
        None => builder,
    };
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| super::oauth2::transport(&url_text, e))?;
    let status = response.status();
    let retry_after = super::retry_after(response.headers(), crate::renewal::now());
    let bytes = super::read_capped(response, &url_text).await?;
    if !status.is_success() {
        return Err(ProviderError::Rejected {
            url: url_text,
            status: status.as_u16(),
            detail: ErrorDetail::from_body(&bytes),
            retry_after,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|_| ProviderError::BadResponse {
        url: url_text,
        reason: "the response is not JSON".into(),
    })
}

fn lookup<'v>(body: &'v Value, pointer: &str, url: &str) -> Result<&'v Value, ProviderError> {
    body.pointer(pointer)
        .ok_or_else(|| ProviderError::BadResponse {
            url: url.into(),
            reason: format!("the response has no field at {pointer}"),
        })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Numbers below this are seconds from now under [`ExpiryFormat::Auto`] (about 3 years; as a
/// Unix time it would be 1973).
const AUTO_RELATIVE_BELOW: i64 = 100_000_000;
/// Numbers from this on are Unix milliseconds under [`ExpiryFormat::Auto`] (as seconds it
/// would be the year 5138; as milliseconds it is 1973).
const AUTO_MILLIS_FROM: i64 = 100_000_000_000;

/// A number under [`ExpiryFormat::Auto`], by magnitude.
fn auto_number(n: i64, now: Timestamp) -> Option<Timestamp> {
    match n {
        ..0 => None,
        0..AUTO_RELATIVE_BELOW => Some(crate::renewal::add_secs(now, n)),
        AUTO_RELATIVE_BELOW..AUTO_MILLIS_FROM => Timestamp::from_second(n).ok(),
        _ => Timestamp::from_millisecond(n).ok(),
    }
}

/// A JSON number as whole seconds (a fraction is dropped); `None` for a non-finite or huge one.
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 9.0e18)
            .map(|f| f as i64)
    })
}

/// A time in any of the forms [`ExpiryFormat::Auto`] takes.
fn auto(value: &Value, now: Timestamp) -> Option<Timestamp> {
    let text = match value {
        Value::Number(n) => return auto_number(whole(n)?, now),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    if text.is_empty() || text.len() > 100 {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return auto_number(text.parse().ok()?, now);
    }
    if let Ok(f) = text.parse::<f64>() {
        // `1.7e9`, `1699999999.5`; also `inf` and `NaN`, which are no time
        return (f.is_finite() && f.abs() < 9.0e18)
            .then_some(f as i64)
            .and_then(|n| auto_number(n, now));
    }
    let utc = jiff::tz::TimeZone::UTC;
    if let Ok(t) = text.parse::<Timestamp>() {
        return Some(t);
    }
    if let Ok(dt) = text.parse::<jiff::civil::DateTime>() {
        // no offset: UTC, the only reading that does not depend on where the operator runs
        return dt.to_zoned(utc).ok().map(|z| z.timestamp());
    }
    if let Ok(d) = text.parse::<jiff::civil::Date>() {
        return d.to_zoned(utc).ok().map(|z| z.timestamp());
    }
    if let Ok(z) = jiff::fmt::rfc2822::parse(text) {
        return Some(z.timestamp());
    }
    if text.split('.').count() == 3 {
        return jwt_exp(text);
    }
    None
}

/// Read an expiry as `mapping` says.
pub fn expiry(
    body: &Value,
    token: &str,
    mapping: &ExpiryMapping,
    now: Timestamp,
    url: &str,
) -> Result<Timestamp, ProviderError> {
    let bad = |what: &str| ProviderError::BadResponse {
        url: url.into(),
        reason: format!(
            "{} is not {what}",
            mapping.pointer.as_deref().unwrap_or("the token")
        ),
    };
    let out_of_range = |what: &str, hint: &str| ProviderError::BadResponse {
        url: url.into(),
        reason: format!(
            "{}: {what} is outside the years -9999..9999{hint}",
            mapping.pointer.as_deref().unwrap_or("the token")
        ),
    };
    let value = match &mapping.pointer {
        Some(p) => lookup(body, p, url)?.clone(),
        None => Value::String(token.to_string()),
    };
    let ts = match mapping.format {
        ExpiryFormat::Auto => auto(&value, now)
            .ok_or_else(|| bad("a time in a known form (RFC 3339, a date, an HTTP date, epoch seconds or milliseconds, seconds from now)"))?,
        ExpiryFormat::Seconds => seconds_value(&value)
            .map(|s| crate::renewal::add_secs(now, s))
            .ok_or_else(|| bad("a number of seconds"))?,
        ExpiryFormat::EpochSeconds => {
            let s = seconds_value(&value).ok_or_else(|| bad("epoch seconds"))?;
            Timestamp::from_second(s).map_err(|_| {
                let hint = if Timestamp::from_millisecond(s).is_ok() {
                    "; if it counts milliseconds, set format: epochMillis"
                } else {
                    ""
                };
                out_of_range(&format!("{s} epoch seconds"), hint)
            })?
        }
        ExpiryFormat::EpochMillis => {
            let ms = seconds_value(&value).ok_or_else(|| bad("epoch milliseconds"))?;
            Timestamp::from_millisecond(ms)
                .map_err(|_| out_of_range(&format!("{ms} epoch milliseconds"), ""))?
        }
        ExpiryFormat::Rfc3339 => value
            .as_str()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .ok_or_else(|| bad("an RFC 3339 time"))?,
        ExpiryFormat::Date => value
            .as_str()
            .and_then(|s| s.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
            .ok_or_else(|| bad("a date (YYYY-MM-DD)"))?,
        ExpiryFormat::JwtExp => value
            .as_str()
            .and_then(jwt_exp)
            .ok_or_else(|| bad("a JWT with an exp claim"))?,
    };
    Ok(ts)
}

/// Map a response body to a token. Expiry, in order of trust: the mapped expiry, the token's
/// JWT `exp`, the requested lifetime. A token whose mapped expiry cannot be read is kept, with
/// the requested lifetime (or none: the fallback interval) and a warning: the provider issued
/// it, and throwing it away would only make the next attempt issue another.
pub fn map_response(
    body: &Value,
    mapping: &ResponseMapping,
    requested: Option<SignedDuration>,
    now: Timestamp,
    url: &str,
) -> Result<Fetched, ProviderError> {
    let value = lookup(body, &mapping.token, url)?;
    let token =
        text(value)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProviderError::BadResponse {
                url: url.into(),
                reason: format!("{} is not a non-empty string", mapping.token),
            })?;
    let mut refused = super::control_characters(&token, &mapping.token, url);
    let mut warnings = Vec::new();
    let unmapped = || jwt_exp(&token).or_else(|| requested.map(|d| crate::renewal::add(now, d)));
    let expires_at = match &mapping.expiry {
        Some(m) => match expiry(body, &token, m, now, url) {
            Ok(at) => Some(at),
            Err(e) => {
                let at = unmapped();
                warnings.push(format!(
                    "the token's expiry could not be read ({e}); {}",
                    match at {
                        Some(at) => format!("taking it to expire at {at}"),
                        None => "renewing it at the fallback interval".into(),
                    }
                ));
                at
            }
        },
        None => unmapped(),
    };
    let refresh_token = match &mapping.refresh_token {
        // a refresh response may leave the refresh token out: the old one stays good
        Some(p) => body.pointer(p).and_then(text).filter(|t| !t.is_empty()),
        None => None,
    };
    let refresh_expires_at = match (&mapping.refresh_expiry, &refresh_token) {
        (Some(m), Some(rt)) => match expiry(body, rt, m, now, url) {
            Ok(at) => Some(at),
            Err(e) => {
                warnings.push(format!(
                    "the refresh token's deadline could not be read ({e}); it is used until refused"
                ));
                None
            }
        },
        _ => None,
    };
    let token_type = match &mapping.token_type {
        Some(p) => match body.pointer(p).and_then(text) {
            Some(t) => {
                refused = refused.or_else(|| super::control_characters(&t, p, url));
                t
            }
            None => "Bearer".into(),
        },
        None => "Bearer".into(),
    };
    let kept = mapping
        .keep
        .iter()
        .map(|(name, p)| {
            let v = lookup(body, p, url)?;
            Ok((name.clone(), text(v).unwrap_or_else(|| v.to_string())))
        })
        .collect::<Result<_, ProviderError>>()?;
    // OAuth-style answers carry the granted scopes; shown by `tokensync check`
    let scope = body
        .get("scope")
        .and_then(super::scope_value)
        .filter(|s| !s.is_empty());
    let token = Token {
        value: SecretValue::new(token),
        token_type,
        issued_at: now,
        expires_at,
        refresh_token: refresh_token.map(SecretValue::new),
        refresh_expires_at,
        scope,
        kept,
    };
    Ok(Fetched {
        token,
        warnings,
        refused,
    })
}

/// Log in (primary) or refresh.
pub async fn fetch(
    http: &reqwest::Client,
    spec: &HttpSpec,
    req: &Request<'_>,
) -> Result<Fetched, ProviderError> {
    let (field, request, mapping, vars) = match &req.grant {
        Grant::Primary => (
            "spec.http.login",
            &spec.login,
            &spec.response,
            Vars::default(),
        ),
        Grant::Refresh(rt) => {
            let refresh = spec
                .refresh
                .as_ref()
                .ok_or_else(|| ProviderError::InvalidSpec("spec.http.refresh is not set".into()))?;
            let mapping = spec.refresh_response.as_ref().unwrap_or(&spec.response);
            let vars = Vars {
                refresh_token: Some(rt),
                ..Default::default()
            };
            ("spec.http.refresh", refresh, mapping, vars)
        }
    };
    check_inputs(field, request, req.inputs)?;
    let ctx = context(req, spec, &vars)?;
    let rendered = render_request(field, request, &ctx, req.egress)?;
    let url = super::shown_url(&rendered.url);
    let body = send(http, rendered, req.timeout).await?;
    let requested = match &spec.requested_lifetime {
        Some(l) => Some(parse_duration(l).map_err(ProviderError::InvalidSpec)?),
        None => None,
    };
    // lifetimes count from when the answer arrived, not from when the request started
    map_response(&body, mapping, requested, crate::renewal::now(), &url)
}

/// Revoke `token` (with its kept fields) by the spec's revoke request. `Ok(false)` when the spec
/// has none.
pub async fn revoke(
    http: &reqwest::Client,
    spec: &HttpSpec,
    req: &Request<'_>,
    vars: &Vars<'_>,
) -> Result<bool, ProviderError> {
    let Some(revoke) = &spec.revoke else {
        return Ok(false);
    };
    check_inputs("spec.http.revoke", revoke, req.inputs)?;
    let ctx = context(req, spec, vars)?;
    let rendered = render_request("spec.http.revoke", revoke, &ctx, req.egress)?;
    match send(http, rendered, req.timeout).await {
        Ok(_) => Ok(true),
        // already gone counts as revoked
        Err(ProviderError::Rejected { status: 404, .. }) => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Inputs;

    static EGRESS: crate::providers::Egress = crate::providers::Egress {
        allow_insecure_http: false,
        allowed_hosts: Vec::new(),
    };

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn spec(yaml: &str) -> HttpSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn req<'a>(spec: &'a crate::crd::ProviderCredentialSpec, inputs: &'a Inputs) -> Request<'a> {
        Request {
            spec,
            inputs,
            grant: Grant::Primary,
            now: t(0),
            egress: &EGRESS,
            upstream: None,
            timeout: None,
        }
    }

    fn full(http: HttpSpec) -> crate::crd::ProviderCredentialSpec {
        serde_saphyr::from_str::<crate::crd::ProviderCredentialSpec>(
            "inputs: {secretName: in}\noutput: {secretName: out}",
        )
        .map(|mut s| {
            s.http = Some(http);
            s
        })
        .unwrap()
    }

    #[test]
    fn json_body_values_are_json_escaped_and_urls_percent_encoded() {
        let http = spec(
            r#"
login:
  url: "https://p.example/api/v1/tokens/{{ inputs.username }}"
  headers: {X-Pass: "{{ inputs.password }}"}
  json:
    username: "{{ inputs.username }}"
    password: "{{ inputs.password }}"
    expiresIn: "{{ requested.human }}"
    scopes: ["GET /objects", "DELETE /tokens/:id"]
    n: 3
requestedLifetime: 8d
"#,
        );
        let pc = full(http.clone());
        let inputs: Inputs = [("username", "a b/c@x"), ("password", "p\"w\\{{x}}")]
            .into_iter()
            .collect();
        let ctx = context(&req(&pc, &inputs), &http, &Vars::default()).unwrap();
        let r = render_request("spec.http.login", &http.login, &ctx, &EGRESS).unwrap();
        assert_eq!(r.url.path(), "/api/v1/tokens/a%20b%2Fc%40x");
        let Some(Body::Json(body)) = &r.body else {
            panic!()
        };
        // the template's output is the raw value; the JSON encoder escapes it on the wire
        assert_eq!(body["password"], "p\"w\\{{x}}");
        assert_eq!(body["expiresIn"], "8 days");
        assert_eq!(body["scopes"][1], "DELETE /tokens/:id");
        assert_eq!(body["n"], 3);
        assert_eq!(r.headers[0].1.expose(), "p\"w\\{{x}}");
        assert!(!format!("{r:?}").contains("p\\\"w"));
    }

    #[test]
    fn requested_lifetime_gives_date_and_time() {
        let http = spec(
            "login: {url: 'https://x.example/', json: {d: '{{ requested.date }}', t: '{{ requested.expires_at }}'}}\nrequestedLifetime: 60d",
        );
        let pc = full(http.clone());
        let inputs = Inputs::default();
        let ctx = context(&req(&pc, &inputs), &http, &Vars::default()).unwrap();
        assert_eq!(ctx["requested"]["date"], "2024-01-13");
        assert_eq!(
            ctx["requested"]["expires_at"],
            (t(0) + SignedDuration::from_hours(24 * 60)).to_string()
        );
        assert_eq!(human(SignedDuration::from_secs(1800)), "30 minutes");
        assert_eq!(human(SignedDuration::from_secs(3600)), "1 hour");
    }

    #[test]
    fn inputs_used_by_templates_must_be_text_and_not_empty() {
        let http = spec(
            r#"login: {url: 'https://x.example/{{ inputs.user }}', headers: {X-A: '{{ inputs["odd key"] }}'},
                       json: {nested: [{pw: '{{ inputs.pw | b64encode }}'}]}}"#,
        );
        let secret = |pw: &[u8]| k8s_openapi::api::core::v1::Secret {
            data: Some(
                [
                    ("user", b"bob".to_vec()),
                    ("pw", pw.to_vec()),
                    ("unused", vec![]),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v)))
                .collect(),
            ),
            ..Default::default()
        };
        let check = |pw: &[u8]| {
            check_inputs(
                "spec.http.login",
                &http.login,
                &Inputs::from_secret(&secret(pw)),
            )
            .map_err(|e| e.to_string())
        };
        // an unused empty key is no problem; a used one is, named with the request
        assert_eq!(check(b"hunter22"), Ok(()));
        assert_eq!(
            check(b""),
            Err(r#"key "pw" of the inputs Secret is empty (needed for spec.http.login)"#.into())
        );
        let err = check(&[0xff, 0xfe, b'x']).unwrap_err();
        assert!(
            err.contains(r#"key "pw""#) && err.contains("UTF-8"),
            "{err}"
        );
        let no_pw = Inputs::from_iter([("user", "bob")]);
        assert!(matches!(
            check_inputs("spec.http.login", &http.login, &no_pw),
            Err(ProviderError::MissingInput { ref key, .. }) if key == "pw"
        ));
    }

    #[test]
    fn unknown_template_variable_names_the_field() {
        let http = spec("login: {url: 'https://x.example/', form: {user: '{{ inputs.nope }}'}}");
        let pc = full(http.clone());
        let inputs = Inputs::default();
        let ctx = context(&req(&pc, &inputs), &http, &Vars::default()).unwrap();
        let err = render_request("spec.http.login", &http.login, &ctx, &EGRESS).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.http.login.form.user: template error"),
            "{err}"
        );
    }

    #[test]
    fn expiry_formats() {
        let body = json!({"s": 1200, "ss": "1199", "es": 1_700_000_100, "ms": 1_700_000_200_000i64,
                          "r": "2023-11-14T22:15:00Z", "d": "2023-11-15", "jwt": crate::providers::tests::jwt_with_exp(1_700_000_300)});
        let m = |p: &str, format| ExpiryMapping {
            pointer: Some(p.into()),
            format,
        };
        let e = |p, f| expiry(&body, "tok", &m(p, f), t(0), "u").unwrap();
        assert_eq!(e("/s", ExpiryFormat::Seconds), t(1200));
        assert_eq!(e("/ss", ExpiryFormat::Seconds), t(1199));
        assert_eq!(e("/es", ExpiryFormat::EpochSeconds), t(100));
        assert_eq!(e("/ms", ExpiryFormat::EpochMillis), t(200));
        assert_eq!(
            e("/r", ExpiryFormat::Rfc3339),
            "2023-11-14T22:15:00Z".parse().unwrap()
        );
        assert_eq!(
            e("/d", ExpiryFormat::Date),
            "2023-11-15T00:00:00Z".parse().unwrap()
        );
        assert_eq!(e("/jwt", ExpiryFormat::JwtExp), t(300));
        let err = expiry(&body, "tok", &m("/r", ExpiryFormat::EpochMillis), t(0), "u").unwrap_err();
        assert!(
            err.to_string().contains("/r is not epoch milliseconds"),
            "{err}"
        );
        // issue 8: a number beyond the calendar is named as such, not "not epoch seconds"
        let big = json!({"e": 999_999_999_999u64, "m": i64::MAX});
        let err = expiry(&big, "tok", &m("/e", ExpiryFormat::EpochSeconds), t(0), "u")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/e: 999999999999 epoch seconds is outside the years")
                && err.contains("set format: epochMillis")
                && !err.contains("is not epoch seconds"),
            "{err}"
        );
        let err = expiry(&big, "tok", &m("/m", ExpiryFormat::EpochMillis), t(0), "u")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("epoch milliseconds is outside the years"),
            "{err}"
        );
    }

    #[test]
    fn auto_reads_every_common_form() {
        let cases = [
            // RFC 3339 with offset, fraction, or neither (UTC)
            (json!("2023-11-14T22:15:00Z"), "2023-11-14T22:15:00Z"),
            (json!("2023-11-14T23:15:00+01:00"), "2023-11-14T22:15:00Z"),
            (
                json!("2023-11-14T22:15:00.123456Z"),
                "2023-11-14T22:15:00.123456Z",
            ),
            (json!("2023-11-14T22:15:00"), "2023-11-14T22:15:00Z"),
            (json!("2023-11-14 22:15:00"), "2023-11-14T22:15:00Z"),
            (json!(" 2023-11-14T22:15:00.5 "), "2023-11-14T22:15:00.5Z"),
            // a date: its start in UTC
            (json!("2023-11-15"), "2023-11-15T00:00:00Z"),
            // RFC 2822 and HTTP dates
            (
                json!("Tue, 14 Nov 2023 22:15:00 GMT"),
                "2023-11-14T22:15:00Z",
            ),
            (
                json!("Tue, 14 Nov 2023 23:15:00 +0100"),
                "2023-11-14T22:15:00Z",
            ),
            // numbers by magnitude: seconds from now, epoch seconds, epoch milliseconds
            (json!(1200), "2023-11-14T22:33:20Z"),
            (json!("1200"), "2023-11-14T22:33:20Z"),
            (json!(1_700_000_100), "2023-11-14T22:15:00Z"),
            (json!("1700000100"), "2023-11-14T22:15:00Z"),
            (json!(1_700_000_100.75), "2023-11-14T22:15:00Z"),
            (json!("1.7000001e9"), "2023-11-14T22:15:00Z"),
            (json!(1_700_000_100_000i64), "2023-11-14T22:15:00Z"),
            (json!("1700000100000"), "2023-11-14T22:15:00Z"),
            (json!(0), "2023-11-14T22:13:20Z"),
            // a JWT: its exp
            (
                json!(crate::providers::tests::jwt_with_exp(1_700_000_100)),
                "2023-11-14T22:15:00Z",
            ),
        ];
        let m = ExpiryMapping {
            pointer: Some("/v".into()),
            format: ExpiryFormat::Auto,
        };
        for (v, want) in cases {
            let body = json!({ "v": v });
            let got = expiry(&body, "tok", &m, t(0), "u");
            assert_eq!(got.ok(), Some(want.parse::<Timestamp>().unwrap()), "{v}");
        }
        // hostile or meaningless values are errors, never panics
        for v in [
            json!(-5),
            json!("-5"),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e300),
            json!("1e300"),
            json!("NaN"),
            json!("inf"),
            json!(""),
            json!("soon"),
            json!("9999999-01-01"),
            json!("2023-13-45"),
            json!("a.b.c"),
            json!(true),
            json!(null),
            json!({"at": 1}),
            json!("x".repeat(10_000)),
        ] {
            let body = json!({ "v": v });
            let err = expiry(&body, "tok", &m, t(0), "u").unwrap_err();
            assert!(err.to_string().contains("/v is not a time"), "{v}: {err}");
        }
        // the default format is auto
        let parsed: ExpiryMapping = serde_saphyr::from_str("{pointer: /v}").unwrap();
        assert_eq!(parsed.format, ExpiryFormat::Auto);
    }

    #[test]
    fn an_unreadable_expiry_keeps_the_token_with_a_warning() {
        // the vendor answered a date where the mapping says RFC 3339 (issue 10, item 4)
        let body = json!({"token": "pat-1", "expires_at": "2023-12-14"});
        let strict: ResponseMapping = serde_saphyr::from_str(
            "{token: /token, expiry: {pointer: /expires_at, format: rfc3339}}",
        )
        .unwrap();
        let requested = Some(SignedDuration::from_hours(24 * 30));
        let fetched = map_response(&body, &strict, requested, t(0), "u").unwrap();
        assert_eq!(fetched.token.value.expose(), "pat-1");
        assert_eq!(
            fetched.token.expires_at,
            Some(t(0) + SignedDuration::from_hours(24 * 30))
        );
        assert_eq!(fetched.warnings.len(), 1, "{:?}", fetched.warnings);
        assert!(
            fetched.warnings[0].contains("/expires_at is not an RFC 3339 time"),
            "{:?}",
            fetched.warnings
        );
        assert!(!fetched.warnings[0].contains("pat-1"));
        // without a requested lifetime: no expiry, so the fallback interval renews it
        let fetched = map_response(&body, &strict, None, t(0), "u").unwrap();
        assert_eq!(fetched.token.expires_at, None);
        assert!(fetched.warnings[0].contains("fallback interval"));
        // a missing field is unreadable too
        let gone = json!({"token": "pat-1"});
        let fetched = map_response(&gone, &strict, requested, t(0), "u").unwrap();
        assert_eq!(fetched.warnings.len(), 1);
        // auto reads the date itself, without a warning
        let auto: ResponseMapping =
            serde_saphyr::from_str("{token: /token, expiry: {pointer: /expires_at}}").unwrap();
        let fetched = map_response(&body, &auto, requested, t(0), "u").unwrap();
        assert_eq!(
            fetched.token.expires_at,
            Some("2023-12-14T00:00:00Z".parse().unwrap())
        );
        assert!(fetched.warnings.is_empty());
        // but no token is still an error
        let err = map_response(&json!({"expires_at": 5}), &auto, requested, t(0), "u").unwrap_err();
        assert!(err.to_string().contains("no field at /token"), "{err}");
    }

    /// Issue 8: a token or token type with control characters is refused, naming the field.
    #[test]
    fn control_characters_are_refused_naming_the_field() {
        let mapping: ResponseMapping =
            serde_saphyr::from_str("{token: /data/tok, tokenType: /kind, refreshToken: /rt}")
                .unwrap();
        let refused = |body: Value| {
            let fetched = map_response(&body, &mapping, None, t(0), "u").unwrap();
            // what else the provider issued is still there, to be kept
            assert_eq!(fetched.token.refresh_token.unwrap().expose(), "rt-1");
            fetched.refused.expect("refused")
        };
        let e = refused(
            json!({"data": {"tok": "abc\r\nX-Injected: evil"}, "kind": "Bearer", "rt": "rt-1"}),
        );
        assert!(e.contains("/data/tok holds control characters"), "{e}");
        assert!(!e.contains("X-Injected"), "{e}");
        let e = refused(json!({"data": {"tok": "abc"}, "kind": "Bearer\nX: y", "rt": "rt-1"}));
        assert!(e.contains("/kind holds control characters"), "{e}");
        let fine = map_response(
            &json!({"data": {"tok": "abc"}, "rt": "rt-1"}),
            &mapping,
            None,
            t(0),
            "u",
        );
        assert!(fine.unwrap().refused.is_none());
    }

    #[test]
    fn the_scope_of_an_oauth_style_answer_is_kept() {
        let plain: ResponseMapping = serde_saphyr::from_str("{token: /access_token}").unwrap();
        let body = json!({"access_token": "a", "scope": "openid email"});
        let fetched = map_response(&body, &plain, None, t(0), "u").unwrap();
        assert_eq!(fetched.token.scope.as_deref(), Some("openid email"));
        let body = json!({"access_token": "a"});
        let fetched = map_response(&body, &plain, None, t(0), "u").unwrap();
        assert_eq!(fetched.token.scope, None);
    }

    #[test]
    fn mapping_finds_token_refresh_and_kept_fields() {
        let body = json!({"_id": "66a6", "expiresAt": 1_700_000_600_000i64, "token": "tok", "user": {"name": "x"}});
        let mapping: ResponseMapping = serde_saphyr::from_str(
            "{token: /token, expiry: {pointer: /expiresAt, format: epochMillis}, keep: {id: /_id}}",
        )
        .unwrap();
        let token = map_response(&body, &mapping, None, t(0), "u")
            .unwrap()
            .token;
        assert_eq!(token.value.expose(), "tok");
        assert_eq!(token.expires_at, Some(t(600)));
        assert_eq!(token.kept["id"], "66a6");
        assert!(token.is_bearer());
        let missing: ResponseMapping = serde_saphyr::from_str("{token: /access_tokn}").unwrap();
        let err = map_response(&body, &missing, None, t(0), "u").unwrap_err();
        assert_eq!(
            err.to_string(),
            "response from u is not usable: the response has no field at /access_tokn"
        );
        // no expiry in the response and not a JWT: the requested lifetime
        let plain: ResponseMapping = serde_saphyr::from_str("{token: /token}").unwrap();
        let token = map_response(
            &body,
            &plain,
            Some(SignedDuration::from_secs(60)),
            t(0),
            "u",
        )
        .unwrap()
        .token;
        assert_eq!(token.expires_at, Some(t(60)));
    }

    #[test]
    fn b64encode_builds_basic_headers() {
        let http = spec(
            r#"login: {url: 'https://x.example/', headers: {Authorization: "Basic {{ (inputs.id ~ ':' ~ inputs.secret) | b64encode }}"}}"#,
        );
        let pc = full(http.clone());
        let inputs: Inputs = [("id", "my client"), ("secret", "p&ss=w/rd+é")]
            .into_iter()
            .collect();
        let ctx = context(&req(&pc, &inputs), &http, &Vars::default()).unwrap();
        let r = render_request("spec.http.login", &http.login, &ctx, &EGRESS).unwrap();
        use base64::Engine;
        let want = base64::engine::general_purpose::STANDARD.encode("my client:p&ss=w/rd+é");
        assert_eq!(r.headers[0].1.expose(), format!("Basic {want}"));
    }
}
