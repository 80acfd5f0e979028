//! What a credential needs besides its inputs: the token of an upstream credential, and an HTTP
//! client that trusts its CA bundle.

use kube::{Api, ResourceExt};

use super::reconcile::{Failed, Reconcile};
use super::state::{self, State};
use super::{Error, status};
use crate::providers::Upstream;

impl Reconcile<'_> {
    /// The upstream credential's current token, when the spec names one.
    pub(super) async fn upstream(&self) -> Result<Result<Option<Upstream>, Failed>, Error> {
        let Some(up) = self.spec().http.as_ref().and_then(|h| h.upstream.as_ref()) else {
            return Ok(Ok(None));
        };
        let name = &up.provider_credential;
        let state = self
            .secrets
            .get_opt(&state::name(name))
            .await?
            .map(|s| State::read(&s));
        let live = state.and_then(|s| {
            let alive = s.expires_at.is_none_or(|e| e > self.now);
            Some(Upstream {
                value: s.token.filter(|_| alive)?,
                token_type: s.token_type.unwrap_or_else(|| "Bearer".into()),
            })
        });
        Ok(live.map(Some).ok_or_else(|| {
            Failed::new(
                status::REASON_UPSTREAM_NOT_READY,
                format!(
                    "ProviderCredential {name:?} named in spec.http.upstream has no valid token yet"
                ),
            )
        }))
    }

    /// The HTTP client for this credential: the shared one, or one that also trusts the CA
    /// bundle named in `spec.tls`.
    pub(super) async fn http_client(&self) -> Result<Result<reqwest::Client, Failed>, Error> {
        let Some(tls) = &self.spec().tls else {
            return Ok(Ok(self.ctx.http.clone()));
        };
        let ns = self.pc.namespace().unwrap_or_default();
        let (kind, pem) = match (&tls.ca_bundle_secret, &tls.ca_bundle_config_map) {
            (Some(r), _) => {
                let secret = self.secrets.get_opt(&r.name).await?;
                let pem = secret.and_then(|s| s.data?.remove(&r.key)).map(|b| b.0);
                (("Secret", &r.name, &r.key), pem)
            }
            (None, Some(r)) => {
                let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
                    Api::namespaced(self.ctx.client.clone(), &ns);
                let cm = api.get_opt(&r.name).await?;
                let pem = cm
                    .and_then(|c| c.data?.remove(&r.key))
                    .map(String::into_bytes);
                (("ConfigMap", &r.name, &r.key), pem)
            }
            (None, None) => return Ok(Ok(self.ctx.http.clone())),
        };
        let (what, name, key) = kind;
        let Some(pem) = pem else {
            return Ok(Err(Failed::new(
                status::REASON_CA_BUNDLE_NOT_FOUND,
                format!(
                    "{what} {name:?} with key {key:?} (spec.tls) not found in namespace {ns:?}"
                ),
            )));
        };
        Ok(self.ctx.http_with_ca(&pem).map_err(|e| {
            Failed::new(
                status::REASON_INVALID_SPEC,
                format!("spec.tls: {what} {name:?} key {key:?}: {e}"),
            )
        }))
    }
}
