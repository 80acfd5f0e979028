//! The output Secret: built from a token with a pure function, and read back into the renewal
//! state it records (issue, expiry and renewal times, and what the token was obtained from).

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::crd::ProviderCredential;
use crate::renewal::{Current, Source};
use crate::token::{SecretValue, Token};

/// The field manager of every write.
pub const MANAGER: &str = "tokensync";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const ISSUED_AT: &str = "tokensync.dev/issued-at";
const EXPIRES_AT: &str = "tokensync.dev/expires-at";
const RENEW_AT: &str = "tokensync.dev/renew-at";
const SOURCE: &str = "tokensync.dev/source";
const FINGERPRINT: &str = "tokensync.dev/fingerprint";
const CREDENTIAL: &str = "tokensync.dev/provider-credential";

/// Whether `secret` is controlled by `pc` (its controller owner reference has pc's uid).
pub fn owned_by(secret: &Secret, pc: &ProviderCredential) -> bool {
    let uid = pc.uid();
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The renewal state recorded on a Secret this controller wrote; `None` when it has no token.
pub fn current(secret: &Secret) -> Option<Current> {
    let ann = secret.annotations();
    let time = |k: &str| ann.get(k).and_then(|v| v.parse::<Timestamp>().ok());
    Some(Current {
        issued_at: time(ISSUED_AT)?,
        expires_at: time(EXPIRES_AT),
        renew_at: time(RENEW_AT)?,
        source: Source::from_key(ann.get(SOURCE)?)?,
    })
}

/// The token fingerprint recorded on a Secret.
pub fn fingerprint(secret: &Secret) -> Option<String> {
    secret.annotations().get(FINGERPRINT).cloned()
}

/// The output Secret for `token`. Keys are the spec's templates over `token`, `token_type`,
/// `expires_at` and `issued_at` (and `refresh_token`, only where a template asks for it), or by
/// default `token`, `token_type` and `expires_at`.
pub fn build(
    pc: &ProviderCredential,
    token: &Token,
    refresh_token: Option<&SecretValue>,
    renew_at: Timestamp,
    source: &Source,
) -> Result<Secret, String> {
    let out = &pc.spec.output;
    let expires_at = token.expires_at.map(|t| t.to_string());
    let mut data = BTreeMap::new();
    if out.keys.is_empty() {
        data.insert("token".to_string(), token.value.expose().to_string());
        data.insert("token_type".to_string(), token.normalized_token_type());
        if let Some(e) = &expires_at {
            data.insert("expires_at".to_string(), e.clone());
        }
    } else {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let ctx = minijinja::context! {
            token => token.value.expose(),
            token_type => token.normalized_token_type(),
            expires_at => expires_at.clone().unwrap_or_default(),
            issued_at => token.issued_at.to_string(),
            refresh_token => refresh_token.map(SecretValue::expose).unwrap_or_default(),
        };
        for (key, template) in &out.keys {
            // the error names the key and the template problem; it never holds the values
            let value = env
                .render_str(template, &ctx)
                .map_err(|e| format!("spec.output.keys.{key}: {}", e.kind()))?;
            data.insert(key.clone(), value);
        }
    }

    let mut labels = out.labels.clone();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    let mut annotations = out.annotations.clone();
    annotations.insert(CREDENTIAL.into(), pc.name_any());
    annotations.insert(ISSUED_AT.into(), token.issued_at.to_string());
    if let Some(e) = expires_at {
        annotations.insert(EXPIRES_AT.into(), e);
    }
    annotations.insert(RENEW_AT.into(), renew_at.to_string());
    annotations.insert(SOURCE.into(), source.key());
    annotations.insert(FINGERPRINT.into(), token.value.fingerprint());

    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(out.secret_name.clone()),
            namespace: pc.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: pc.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    })
}

/// Check before any request to a provider what would make writing the output fail after a
/// token was issued: the key templates (rendered against a placeholder token), label and
/// annotation keys and values, and the names of the Secrets.
pub fn validate(pc: &ProviderCredential) -> Result<(), String> {
    let placeholder = Token {
        value: SecretValue::new("placeholder-token"),
        token_type: "Bearer".into(),
        issued_at: Timestamp::UNIX_EPOCH,
        expires_at: Some(Timestamp::UNIX_EPOCH),
        refresh_token: None,
        refresh_expires_at: None,
        scope: None,
        kept: Default::default(),
    };
    let refresh = SecretValue::new("placeholder-refresh-token");
    build(
        pc,
        &placeholder,
        Some(&refresh),
        Timestamp::UNIX_EPOCH,
        &Source::default(),
    )?;
    let out = &pc.spec.output;
    for (key, value) in &out.labels {
        if !qualified_name(key) {
            return Err(format!(
                "spec.output.labels: {key:?} is not a valid label key (an optional DNS prefix and '/', then up to 63 of [A-Za-z0-9-_.])"
            ));
        }
        if !(value.is_empty() || (value.len() <= 63 && name_part(value))) {
            return Err(format!(
                "spec.output.labels.{key}: the value is not a valid label value (up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
            ));
        }
    }
    if let Some(key) = out.annotations.keys().find(|k| !qualified_name(k)) {
        return Err(format!(
            "spec.output.annotations: {key:?} is not a valid annotation key"
        ));
    }
    let state = super::state::name(&pc.name_any());
    if state.len() > 253 {
        return Err(format!(
            "metadata.name is too long: the state Secret's name {:?}... would pass 253 characters",
            &state[..40]
        ));
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn name_part(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    !s.is_empty()
        && s.chars().all(ok)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A Kubernetes qualified name: `[prefix/]name`, the prefix a DNS subdomain.
fn qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    prefix_ok && name.len() <= 63 && name_part(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{InputsRef, OAuth2Spec, OutputSpec, ProviderCredentialSpec};

    pub(crate) fn pcred(keys: BTreeMap<String, String>) -> ProviderCredential {
        let mut pc = ProviderCredential::new(
            "vendor",
            ProviderCredentialSpec {
                inputs: InputsRef {
                    secret_name: "vendor-inputs".into(),
                    keys: Default::default(),
                },
                oauth2: Some(OAuth2Spec {
                    token_url: Some("https://auth.example/token".into()),
                    issuer_url: None,
                    grant_type: crate::crd::GrantType::ClientCredentials,
                    scopes: vec![],
                    audience: None,
                    client_authentication: Default::default(),
                    extra_params: Default::default(),
                }),
                http: None,
                output: OutputSpec {
                    secret_name: "vendor-token".into(),
                    labels: [("team".to_string(), "drones".to_string())].into(),
                    annotations: Default::default(),
                    keys,
                },
                refresh: None,
                tls: None,
            },
        );
        pc.metadata.namespace = Some("ns".into());
        pc.metadata.uid = Some("uid-1".into());
        pc
    }

    fn token() -> Token {
        Token {
            value: SecretValue::new("tok-123"),
            token_type: "bearer".into(),
            issued_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: Some("2026-01-01T00:20:00Z".parse().unwrap()),
            refresh_token: None,
            refresh_expires_at: None,
            scope: None,
            kept: Default::default(),
        }
    }

    fn src() -> Source {
        Source {
            generation: 1,
            inputs_hash: "h7".into(),
            force_refresh: String::new(),
        }
    }

    /// Defect 5 and 6: what would fail after a token was issued is found before any request.
    #[test]
    fn validate_finds_what_would_fail_after_the_request() {
        assert_eq!(validate(&pcred(Default::default())), Ok(()));
        let typo = [(
            "auth".to_string(),
            "{{ token_typ }} {{ token }}".to_string(),
        )]
        .into();
        let err = validate(&pcred(typo)).unwrap_err();
        assert!(err.starts_with("spec.output.keys.auth:"), "{err}");
        let rt = [("rt".to_string(), "{{ refresh_token }}".to_string())].into();
        assert_eq!(validate(&pcred(rt)), Ok(()));
        for (key, value, ok) in [
            ("team", "drones", true),
            ("example.com/team", "", true),
            ("bad label!", "x", false),
            ("team", "not ok!", false),
            ("-team", "x", false),
            ("Example.com/team", "x", false),
            (&"x".repeat(64)[..], "x", false),
        ] {
            let mut pc = pcred(Default::default());
            pc.spec.output.labels = [(key.to_string(), value.to_string())].into();
            assert_eq!(validate(&pc).is_ok(), ok, "{key:?}={value:?}");
        }
        let mut pc = pcred(Default::default());
        pc.metadata.name = Some("a".repeat(238));
        assert!(validate(&pc).unwrap_err().starts_with("metadata.name"));
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn default_keys_owner_and_labels() {
        let pc = pcred(Default::default());
        let renew: Timestamp = "2026-01-01T00:13:20Z".parse().unwrap();
        let s = build(&pc, &token(), None, renew, &src()).unwrap();
        assert_eq!(text(&s, "token"), "tok-123");
        assert_eq!(text(&s, "token_type"), "Bearer");
        assert_eq!(text(&s, "expires_at"), "2026-01-01T00:20:00Z");
        assert_eq!(s.labels()[MANAGED_BY_LABEL], "tokensync");
        assert_eq!(s.labels()["team"], "drones");
        let owner = &s.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        assert!(owned_by(&s, &pc));
        // the recorded state reads back
        let cur = current(&s).unwrap();
        assert_eq!(cur.renew_at, renew);
        assert_eq!(cur.source, src());
        assert_eq!(
            fingerprint(&s).unwrap(),
            SecretValue::new("tok-123").fingerprint()
        );
        // nothing secret in annotations
        assert!(!format!("{:?}", s.annotations()).contains("tok-123"));
    }

    #[test]
    fn templated_keys() {
        let keys = [(
            "headers".to_string(),
            "X-Personal-Access-Token: {{ token }}".to_string(),
        )]
        .into();
        let s = build(&pcred(keys), &token(), None, Timestamp::UNIX_EPOCH, &src()).unwrap();
        assert_eq!(text(&s, "headers"), "X-Personal-Access-Token: tok-123");
        assert!(!s.data.as_ref().unwrap().contains_key("token"));
        // the refresh token only where a template asks for it
        assert!(!format!("{:?}", s.data).contains("rt-9"));
        let keys = [("rt".to_string(), "{{ refresh_token }}".to_string())].into();
        let rt = SecretValue::new("rt-9");
        let s = build(
            &pcred(keys),
            &token(),
            Some(&rt),
            Timestamp::UNIX_EPOCH,
            &src(),
        )
        .unwrap();
        assert_eq!(text(&s, "rt"), "rt-9");
        let bad = [("k".to_string(), "{{ nope }}".to_string())].into();
        let err = build(&pcred(bad), &token(), None, Timestamp::UNIX_EPOCH, &src()).unwrap_err();
        assert!(err.starts_with("spec.output.keys.k:"), "{err}");
    }

    #[test]
    fn foreign_secret_is_not_owned() {
        let pc = pcred(Default::default());
        let mut s = build(&pc, &token(), None, Timestamp::UNIX_EPOCH, &src()).unwrap();
        s.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        assert!(!owned_by(&s, &pc));
        s.metadata.owner_references = None;
        assert!(!owned_by(&s, &pc));
    }
}
