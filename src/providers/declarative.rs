//! The declarative HTTP provider: templated login, refresh and revoke requests and a JSON-pointer
//! response mapping, so a vendor's own token API is a manifest rather than code.
//!
//! Templates (minijinja) see `inputs.KEY`, `refresh_token`, `token`, `kept.NAME`, `current.token`,
//! `upstream.token`, `upstream.token_type`, `requested.*` and `now`. Values are escaped by the
//! encoder of the place they go: JSON strings by the JSON encoder, form values by the form
//! encoder, URL parts by percent-encoding; a template never builds a body by pasting text.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{Grant, ProviderError, Request, check_url, jwt_exp, seconds_value};
use crate::crd::{
    ExpiryFormat, ExpiryMapping, HttpMethod, HttpRequestSpec, HttpSpec, ResponseMapping,
};
use crate::renewal::parse_duration;
use crate::token::{SecretValue, Token};

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
fn encode_url_part(s: &str) -> String {
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

fn env(url: bool) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
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
            Ok((
                k.clone(),
                SecretValue::new(render(&plain, &format!("{field}.headers.{k}"), t, ctx)?),
            ))
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
            detail: error_detail(&bytes),
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

/// A short, structured reason from an error body: OAuth `error`/`error_description`, or a
/// `message`/`error` string; never the raw body, which may echo what was sent.
fn error_detail(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let pick = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let text = match (
        pick("error"),
        pick("error_description").or_else(|| pick("message")),
    ) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e,
        (None, Some(d)) => d,
        (None, None) => return None,
    };
    Some(text.chars().take(300).collect())
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
    let value = match &mapping.pointer {
        Some(p) => lookup(body, p, url)?.clone(),
        None => Value::String(token.to_string()),
    };
    let ts = match mapping.format {
        ExpiryFormat::Seconds => seconds_value(&value)
            .map(|s| crate::renewal::add_secs(now, s))
            .ok_or_else(|| bad("a number of seconds"))?,
        ExpiryFormat::EpochSeconds => seconds_value(&value)
            .and_then(|s| Timestamp::from_second(s).ok())
            .ok_or_else(|| bad("epoch seconds"))?,
        ExpiryFormat::EpochMillis => seconds_value(&value)
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or_else(|| bad("epoch milliseconds"))?,
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
/// JWT `exp`, the requested lifetime.
pub fn map_response(
    body: &Value,
    mapping: &ResponseMapping,
    requested: Option<SignedDuration>,
    now: Timestamp,
    url: &str,
) -> Result<Token, ProviderError> {
    let value = lookup(body, &mapping.token, url)?;
    let token =
        text(value)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProviderError::BadResponse {
                url: url.into(),
                reason: format!("{} is not a non-empty string", mapping.token),
            })?;
    let expires_at = match &mapping.expiry {
        Some(m) => Some(expiry(body, &token, m, now, url)?),
        None => jwt_exp(&token).or_else(|| requested.map(|d| crate::renewal::add(now, d))),
    };
    let refresh_token = match &mapping.refresh_token {
        // a refresh response may leave the refresh token out: the old one stays good
        Some(p) => body.pointer(p).and_then(text).filter(|t| !t.is_empty()),
        None => None,
    };
    let refresh_expires_at = match (&mapping.refresh_expiry, &refresh_token) {
        (Some(m), Some(rt)) => Some(expiry(body, rt, m, now, url)?),
        _ => None,
    };
    let token_type = match &mapping.token_type {
        Some(p) => body
            .pointer(p)
            .and_then(text)
            .unwrap_or_else(|| "Bearer".into()),
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
    Ok(Token {
        value: SecretValue::new(token),
        token_type,
        issued_at: now,
        expires_at,
        refresh_token: refresh_token.map(SecretValue::new),
        refresh_expires_at,
        scope: None,
        kept,
    })
}

/// Log in (primary) or refresh.
pub async fn fetch(
    http: &reqwest::Client,
    spec: &HttpSpec,
    req: &Request<'_>,
) -> Result<Token, ProviderError> {
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
    }

    #[test]
    fn mapping_finds_token_refresh_and_kept_fields() {
        let body = json!({"_id": "66a6", "expiresAt": 1_700_000_600_000i64, "token": "tok", "user": {"name": "x"}});
        let mapping: ResponseMapping = serde_saphyr::from_str(
            "{token: /token, expiry: {pointer: /expiresAt, format: epochMillis}, keep: {id: /_id}}",
        )
        .unwrap();
        let token = map_response(&body, &mapping, None, t(0), "u").unwrap();
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
        .unwrap();
        assert_eq!(token.expires_at, Some(t(60)));
    }

    #[test]
    fn error_detail_is_structured_never_raw() {
        assert_eq!(
            error_detail(br#"{"error":"invalid_grant","error_description":"bad"}"#).as_deref(),
            Some("invalid_grant: bad")
        );
        assert_eq!(
            error_detail(br#"{"message":"Unauthorized"}"#).as_deref(),
            Some("Unauthorized")
        );
        assert_eq!(error_detail(b"<html>password=hunter2</html>"), None);
    }
}
