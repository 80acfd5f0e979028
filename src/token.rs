//! Tokens and inputs: values that must never reach a log, an event, a status or `Debug` output.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// A secret string. `Debug` prints `[redacted]`; there is no `Display`, so it cannot be formatted
/// into a message by accident. Read it with [`SecretValue::expose`] where it goes on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The first 8 hex characters of the value's SHA-256: safe to log, enough to tell tokens apart.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The values of the inputs Secret, by key. Values that are not UTF-8 text are left out (and
/// named by [`Inputs::not_text`]): sent mangled, they would fail in ways no one can debug.
///
/// Every value is secret (redacted from every message) unless its key holds a role that is not:
/// the client id, the username and the redirect URI, by [`Inputs::with_public_roles`].
/// Masking those would make messages useless (`https://[redacted].example`).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    values: BTreeMap<String, SecretValue>,
    not_text: std::collections::BTreeSet<String>,
    public: std::collections::BTreeSet<String>,
}

/// What is wrong with an input a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputProblem {
    Missing,
    Empty,
    NotText,
}

impl Inputs {
    pub fn new(values: BTreeMap<String, SecretValue>) -> Self {
        Self {
            values,
            ..Default::default()
        }
    }
    /// Marks the keys that hold the client id, the username and the redirect URI (as `keys`
    /// names them) as not secret: they are left in messages. Every other key stays secret.
    pub fn with_public_roles(mut self, keys: &crate::crd::InputKeys) -> Self {
        use crate::crd::InputRole;
        let key = |role| keys.key(role).to_string();
        // a key that also holds a secret role (`keys.clientId: password`) stays secret
        let secret: std::collections::BTreeSet<String> = [
            InputRole::ClientSecret,
            InputRole::Password,
            InputRole::RefreshToken,
            InputRole::Code,
        ]
        .into_iter()
        .map(key)
        .collect();
        self.public = [
            InputRole::ClientId,
            InputRole::Username,
            InputRole::RedirectUri,
        ]
        .into_iter()
        .map(key)
        .filter(|k| !secret.contains(k))
        .collect();
        self
    }
    /// The values of keys that are secret (all but the public roles).
    pub fn secrets(&self) -> impl Iterator<Item = &SecretValue> {
        self.values
            .iter()
            .filter(|(k, _)| !self.public.contains(k.as_str()))
            .map(|(_, v)| v)
    }
    /// The values of a Secret (`data`, and `stringData` as a manifest may carry it).
    pub fn from_secret(secret: &k8s_openapi::api::core::v1::Secret) -> Self {
        let mut values = BTreeMap::new();
        let mut not_text = std::collections::BTreeSet::new();
        for (k, v) in secret.data.iter().flatten() {
            match String::from_utf8(v.0.clone()) {
                Ok(text) => {
                    values.insert(k.clone(), SecretValue::new(text));
                }
                Err(_) => {
                    not_text.insert(k.clone());
                }
            }
        }
        for (k, v) in secret.string_data.iter().flatten() {
            values.insert(k.clone(), SecretValue::new(v.clone()));
            not_text.remove(k);
        }
        Self {
            values,
            not_text,
            public: Default::default(),
        }
    }
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.values.get(key)
    }
    /// The value of `key` when it is present, text and not empty.
    pub fn require(&self, key: &str) -> Result<&SecretValue, InputProblem> {
        if self.not_text.contains(key) {
            return Err(InputProblem::NotText);
        }
        match self.values.get(key) {
            None => Err(InputProblem::Missing),
            Some(v) if v.expose().is_empty() => Err(InputProblem::Empty),
            Some(v) => Ok(v),
        }
    }
    /// Keys whose values are not UTF-8 text.
    pub fn not_text(&self) -> impl Iterator<Item = &String> {
        self.not_text.iter()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SecretValue)> {
        self.values.iter()
    }
    /// Replaces every secret input value of four or more characters found in `text`, in every
    /// encoding it may travel in, by `[redacted]`. A provider's error text may echo what it was
    /// sent; this keeps it out of messages.
    pub fn redact(&self, text: &str) -> String {
        let mut r = Redactor::default();
        r.add_all(self.secrets());
        r.redact(text)
    }
}

/// Removes known secret values from text in every form they travel in: raw, base64,
/// base64url, percent-encoded, form-encoded and JSON-escaped. Values shorter than four
/// characters are left alone (they would match everywhere).
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms)", self.needles.len())
    }
}

impl Redactor {
    pub fn add(&mut self, value: &SecretValue) {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let raw = value.expose();
        if raw.len() < 4 {
            return;
        }
        let percent = crate::providers::declarative::encode_url_part(raw);
        let json = serde_json::to_string(raw).unwrap_or_default();
        let forms = [
            raw.to_string(),
            STANDARD.encode(raw),
            STANDARD_NO_PAD.encode(raw),
            URL_SAFE_NO_PAD.encode(raw),
            form_urlencoded::byte_serialize(raw.as_bytes()).collect(),
            percent.clone(),
            percent.to_ascii_lowercase(),
            json.trim_matches('"').to_string(),
        ];
        for form in forms {
            if form.len() >= 4 && !self.needles.contains(&form) {
                self.needles.push(form);
            }
        }
        // longest first, so a value inside another's encoding never leaves a tail behind
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    pub fn add_all<'a>(&mut self, values: impl IntoIterator<Item = &'a SecretValue>) {
        for v in values {
            self.add(v);
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), "[redacted]");
            }
        }
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Inputs {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), SecretValue::new(v)))
                .collect(),
        )
    }
}

/// A token as a provider returned it.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub value: SecretValue,
    /// As the provider spelled it; compare with [`Token::is_bearer`].
    pub token_type: String,
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub refresh_token: Option<SecretValue>,
    pub refresh_expires_at: Option<Timestamp>,
    /// Scopes the provider says it granted, when it says.
    pub scope: Option<String>,
    /// Response fields kept for later requests (e.g. a token id for revocation); not secret.
    pub kept: BTreeMap<String, String>,
}

impl Token {
    pub fn is_bearer(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("bearer")
    }

    /// The token type as the output Secret gets it: `Bearer` for any spelling of it (RFC 6750
    /// names it so; many servers answer `bearer`), otherwise as the provider said.
    pub fn normalized_token_type(&self) -> String {
        if self.is_bearer() {
            "Bearer".into()
        } else {
            self.token_type.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret_values() {
        let inputs: Inputs = [("client_secret", "s3cr3t-planted")].into_iter().collect();
        let token = Token {
            value: SecretValue::new("tok-planted"),
            token_type: "bearer".into(),
            issued_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            refresh_token: Some(SecretValue::new("refresh-planted")),
            refresh_expires_at: None,
            scope: None,
            kept: BTreeMap::new(),
        };
        let printed = format!("{inputs:?} {token:?} {token:#?}");
        for planted in ["s3cr3t-planted", "tok-planted", "refresh-planted"] {
            assert!(!printed.contains(planted), "{printed}");
        }
        assert!(token.is_bearer());
        assert_eq!(token.normalized_token_type(), "Bearer");
        let mac = Token {
            token_type: "MAC".into(),
            ..token
        };
        assert_eq!(mac.normalized_token_type(), "MAC");
    }

    #[test]
    fn redact_removes_input_values_from_text() {
        let inputs: Inputs = [("password", "hunter22"), ("short", "ab")]
            .into_iter()
            .collect();
        assert_eq!(
            inputs.redact("bad password hunter22 for ab"),
            "bad password [redacted] for ab"
        );
    }

    /// Issue 8: redaction is per role. The client id, username and redirect URI (by the spec's
    /// key names) stay readable; every other key, known or not, is secret.
    #[test]
    fn redaction_is_per_input_role() {
        let inputs: Inputs = [
            ("app", "client-echo-id"),
            ("client_id", "not-the-client-id"),
            ("username", "bob@example.com"),
            ("redirect_uri", "https://cb.example/x"),
            ("client_secret", "s3cret-value"),
            ("extra", "custom-key-value"),
        ]
        .into_iter()
        .collect();
        let text = "client-echo-id not-the-client-id bob@example.com https://cb.example/x s3cret-value custom-key-value";
        // no roles known: everything is secret
        assert_eq!(inputs.redact(text).matches("[redacted]").count(), 6);
        let keys = crate::crd::InputKeys {
            client_id: Some("app".into()),
            ..Default::default()
        };
        let inputs = inputs.with_public_roles(&keys);
        assert_eq!(
            inputs.redact(text),
            "client-echo-id [redacted] bob@example.com https://cb.example/x [redacted] [redacted]"
        );
        // a secret's key named as a public role stays secret
        let aliased = crate::crd::InputKeys {
            client_id: Some("client_secret".into()),
            ..Default::default()
        };
        let inputs: Inputs = [("client_secret", "s3cret-value")].into_iter().collect();
        let inputs = inputs.with_public_roles(&aliased);
        assert_eq!(inputs.redact("s3cret-value"), "[redacted]");
    }

    /// Issue 8: a secret is found in every encoding it travels in.
    #[test]
    fn redacts_every_encoding() {
        use base64::Engine;
        let secret = "Leak Pw/9&x=y\"é";
        let mut r = Redactor::default();
        r.add(&SecretValue::new(secret));
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let json = serde_json::to_string(secret).unwrap();
        let percent = "Leak%20Pw%2F9%26x%3Dy%22%C3%A9";
        for (what, text) in [
            ("raw", format!("x {secret} y")),
            ("base64", format!("Basic {b64}")),
            ("base64url", format!("jwt.{b64url}.sig")),
            ("form", format!("a=1&pw={form}&b=2")),
            ("percent", format!("/login?pw={percent}")),
            (
                "percent lower",
                format!("/login?pw={}", percent.to_lowercase()),
            ),
            ("json", format!("{{\"password\":{json}}}")),
        ] {
            let out = r.redact(&text);
            assert!(out.contains("[redacted]"), "{what}: {out}");
            for leaked in [secret, &b64, &b64url, &form, percent] {
                assert!(!out.contains(leaked), "{what}: {out}");
            }
        }
        // short values are not redacted (they would match everywhere)
        let mut r = Redactor::default();
        r.add(&SecretValue::new("ab"));
        assert_eq!(r.redact("abc"), "abc");
    }

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // sha256("abc") = ba7816bf...
        assert_eq!(SecretValue::new("abc").fingerprint(), "ba7816bf");
    }
}
