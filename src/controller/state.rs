//! The operator's state Secret, `<name>-tokensync-state`: the refresh token and what later
//! requests need (the current token for credentials minted with it, kept response fields, tokens
//! waiting to be revoked, one-time inputs already used). Owned by the ProviderCredential, never
//! mounted by workloads, never copied into the output Secret.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::output::{MANAGED_BY_LABEL, MANAGER};
use crate::crd::ProviderCredential;
use crate::renewal::Source;
use crate::token::SecretValue;

pub const ROLE_LABEL: &str = "tokensync.dev/role";
const SUFFIX: &str = "-tokensync-state";

pub fn name(pc_name: &str) -> String {
    format!("{pc_name}{SUFFIX}")
}

/// The ProviderCredential a state Secret belongs to.
pub fn owner_name(secret_name: &str) -> Option<&str> {
    secret_name.strip_suffix(SUFFIX)
}

/// A replaced token still to be revoked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    #[serde(with = "secret_string")]
    pub token: SecretValue,
    #[serde(default)]
    pub kept: BTreeMap<String, String>,
    #[serde(default)]
    pub attempts: u32,
    pub next_at: Timestamp,
}

mod secret_string {
    use crate::token::SecretValue;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &SecretValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretValue, D::Error> {
        String::deserialize(d).map(SecretValue::new)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The newest token the provider issued; written here before the output Secret, so a token
    /// whose output write failed is written out later instead of being requested again.
    pub token: Option<SecretValue>,
    pub issued_at: Option<Timestamp>,
    /// What it was obtained with.
    pub source: Option<Source>,
    pub token_type: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub refresh_token: Option<SecretValue>,
    pub refresh_expires_at: Option<Timestamp>,
    pub kept: BTreeMap<String, String>,
    /// Fingerprints of one-time inputs (an authorization code, a bootstrap refresh token)
    /// already exchanged: they are not sent twice.
    pub used_inputs: Vec<String>,
    pub pending: Vec<Pending>,
}

impl State {
    pub fn read(secret: &Secret) -> Self {
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        let time = |k: &str| text(k).and_then(|t| t.parse().ok());
        fn json<T: serde::de::DeserializeOwned + Default>(t: Option<String>) -> T {
            t.and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        }
        Self {
            token: text("token").map(SecretValue::new),
            issued_at: time("issued_at"),
            source: text("source").and_then(|k| Source::from_key(&k)),
            token_type: text("token_type"),
            expires_at: time("expires_at"),
            refresh_token: text("refresh_token").map(SecretValue::new),
            refresh_expires_at: time("refresh_expires_at"),
            kept: json(text("kept")),
            used_inputs: json(text("used_inputs")),
            pending: json(text("pending_revocations")),
        }
    }

    /// The state Secret for `pc`.
    pub fn build(&self, pc: &ProviderCredential) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                data.insert(k.to_string(), ByteString(v.into_bytes()));
            }
        };
        put("token", self.token.as_ref().map(|t| t.expose().to_string()));
        put("issued_at", self.issued_at.map(|t| t.to_string()));
        put("source", self.source.as_ref().map(Source::key));
        put("token_type", self.token_type.clone());
        put("expires_at", self.expires_at.map(|t| t.to_string()));
        put(
            "refresh_token",
            self.refresh_token.as_ref().map(|t| t.expose().to_string()),
        );
        put(
            "refresh_expires_at",
            self.refresh_expires_at.map(|t| t.to_string()),
        );
        let json = |v: serde_json::Value| Some(v.to_string());
        put("kept", json(serde_json::json!(self.kept)));
        put("used_inputs", json(serde_json::json!(self.used_inputs)));
        put(
            "pending_revocations",
            json(serde_json::to_value(&self.pending).unwrap_or_default()),
        );
        Secret {
            metadata: ObjectMeta {
                name: Some(name(&pc.name_any())),
                namespace: pc.namespace(),
                labels: Some(
                    [
                        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
                        (ROLE_LABEL.to_string(), "state".to_string()),
                    ]
                    .into(),
                ),
                owner_references: pc.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_secret() {
        let mut pc = ProviderCredential::new("dronetag", serde_saphyr::from_str("inputs: {secretName: i}\noutput: {secretName: o}\noauth2: {tokenUrl: 'https://x/', grantType: password}").unwrap());
        pc.metadata.uid = Some("u".into());
        let state = State {
            token: Some("at".into()),
            issued_at: Some(Timestamp::from_second(40).unwrap()),
            source: Some(Source {
                generation: 3,
                inputs_hash: "abcd".into(),
                force_refresh: String::new(),
            }),
            token_type: Some("Bearer".into()),
            expires_at: Some(Timestamp::from_second(100).unwrap()),
            refresh_token: Some("rt".into()),
            refresh_expires_at: Some(Timestamp::from_second(200).unwrap()),
            kept: [("id".to_string(), "66a6".to_string())].into(),
            used_inputs: vec!["abcd1234".into()],
            pending: vec![Pending {
                token: "old".into(),
                kept: Default::default(),
                attempts: 2,
                next_at: Timestamp::from_second(50).unwrap(),
            }],
        };
        let secret = state.build(&pc);
        assert_eq!(secret.name_any(), "dronetag-tokensync-state");
        assert_eq!(owner_name(&secret.name_any()), Some("dronetag"));
        assert_eq!(State::read(&secret), state);
        // Debug of the state never shows the tokens
        assert!(!format!("{state:?}").contains("\"rt\""));
    }
}
