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

/// The values of the inputs Secret, by key.
#[derive(Clone, Debug, Default)]
pub struct Inputs(BTreeMap<String, SecretValue>);

impl Inputs {
    pub fn new(values: BTreeMap<String, SecretValue>) -> Self {
        Self(values)
    }
    /// The values of a Secret (`data`, and `stringData` as a manifest may carry it).
    pub fn from_secret(secret: &k8s_openapi::api::core::v1::Secret) -> Self {
        let mut values = BTreeMap::new();
        for (k, v) in secret.data.iter().flatten() {
            values.insert(k.clone(), SecretValue::new(String::from_utf8_lossy(&v.0)));
        }
        for (k, v) in secret.string_data.iter().flatten() {
            values.insert(k.clone(), SecretValue::new(v.clone()));
        }
        Self(values)
    }
    pub fn get(&self, key: &str) -> Option<&SecretValue> {
        self.0.get(key)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SecretValue)> {
        self.0.iter()
    }
    /// Replaces every input value of four or more characters found in `text` by `[redacted]`.
    /// A provider's error text may echo what it was sent; this keeps it out of messages.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in self.0.values() {
            if value.expose().len() >= 4 {
                out = out.replace(value.expose(), "[redacted]");
            }
        }
        out
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Inputs {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        Self(
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

    #[test]
    fn fingerprint_is_sha256_prefix() {
        // sha256("abc") = ba7816bf...
        assert_eq!(SecretValue::new("abc").fingerprint(), "ba7816bf");
    }
}
