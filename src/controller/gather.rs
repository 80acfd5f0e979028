//! Gather: read everything a reconcile decides on into one [`Snapshot`] (the credential, its
//! inputs, output and state Secrets, the upstream credential's token, the CA bundle). The
//! planner then decides without I/O.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::cache::{self, IfAbsent, SecretCache};
use super::state::{self, State};
use super::{Context, Error, plan};
use crate::crd::ProviderCredential;
use crate::providers::Upstream;
use crate::reason::Reason;
use crate::renewal::{self, Source};
use crate::token::Inputs;

/// Everything one reconcile decides on, read at its start.
pub struct Snapshot {
    pub pc: Arc<ProviderCredential>,
    /// What a token would be obtained from now.
    pub source: Source,
    pub output: Option<Secret>,
    pub inputs: Option<Inputs>,
    /// The inputs Secret carries the opt-in label [`INPUTS_LABEL`]`=true`.
    pub inputs_opted_in: bool,
    pub state_secret: Option<Secret>,
    /// The upstream credential's live token, when the spec names one.
    pub upstream: Option<Result<Upstream, (Reason, String)>>,
    /// The HTTP client for this credential (trusting its CA bundle), or why there is none.
    pub http: Result<reqwest::Client, (Reason, String)>,
    /// Another credential names this one as its upstream (and reads its token from the state).
    pub upstream_of_others: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("credential", &self.pc.name_any())
            .field("source", &self.source)
            .field("output", &self.output.is_some())
            .field("inputs", &self.inputs.is_some())
            .field("state", &self.state_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Secrets whose values tokensync may send to a provider carry this label with the value
/// `true`: naming a Secret in a ProviderCredential is not enough, its owner opts in. Without it,
/// anyone allowed to create a ProviderCredential could send any Secret of the namespace to a
/// URL of their choosing.
pub const INPUTS_LABEL: &str = "tokensync.dev/inputs";

fn opted_in(secret: &Secret) -> bool {
    secret.labels().get(INPUTS_LABEL).map(String::as_str) == Some("true")
}

/// The SHA-256 prefix of a Secret's data (keys and values, not its metadata): label and
/// annotation edits by Argo CD or Reloader do not count as new inputs.
pub fn inputs_hash(secret: &Secret) -> String {
    let mut entries: Vec<(&String, &[u8])> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()))
        .chain(
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k, v.as_bytes())),
        )
        .collect();
    entries.sort();
    let mut hasher = Sha256::new();
    for (k, v) in entries {
        for part in [k.as_bytes(), v] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn gather(
    ctx: &Context,
    secrets: &Api<Secret>,
    pc: Arc<ProviderCredential>,
) -> Result<Snapshot, Error> {
    let spec = &pc.spec;
    // the Secrets come from the watch cache (cache.rs); what is not there is read, all at once
    let ns = pc.namespace().unwrap_or_default();
    let cache = ready_cache(ctx, &ns).await;
    // a grant that spends a one-time input reads its output and state Secrets from the
    // apiserver: a Secret in the way (not ours, so not watched) must be found before the input
    // is spent, not when what it bought is to be stored
    let verified = if plan::one_time_grant(spec) {
        None
    } else {
        cache.as_ref()
    };
    // A Secret the cache does not have may still be in the way (one that is not ours is not
    // watched), so it is looked for at the apiserver before any request: the output whenever
    // it is missing (a new credential, a renamed output), the state until this credential has
    // written a token and the first answer may have to be stored there (a refresh token, a
    // token to revoke or to hand to dependents; not a client-credentials token, which can be
    // asked for again), and whenever the last attempt failed (a vendor that sends a refresh
    // token with client credentials into a name someone else holds: one request wasted, not
    // one per retry).
    let written_before = pc
        .status
        .as_ref()
        .is_some_and(|s| s.token_fingerprint.is_some());
    let upstream_of_others = ctx.dependents.is_upstream(&ns, &pc.name_any());
    let failed_before = pc.status.as_ref().is_some_and(|s| s.last_failure.is_some());
    let ask = failed_before
        || (!written_before && plan::state_written_by_first_token(spec, upstream_of_others));
    let state_absent = if ask { IfAbsent::Ask } else { IfAbsent::Absent };
    let state_name = state::name(&pc.name_any());
    let (output, inputs_secret, state_secret, upstream, http) = tokio::try_join!(
        cache::read(
            verified,
            secrets,
            &ns,
            &spec.output.secret_name,
            IfAbsent::Ask
        ),
        cache::read(
            cache.as_ref(),
            secrets,
            &ns,
            &spec.inputs.secret_name,
            IfAbsent::Ask
        ),
        cache::read(verified, secrets, &ns, &state_name, state_absent),
        upstream(ctx, cache.as_ref(), secrets, &pc),
        http_client(ctx, secrets, &pc),
    )?;
    let opted_in = inputs_secret.as_ref().is_some_and(opted_in);
    // labelling the Secret counts as new inputs, so it is retried at once
    let hash = inputs_secret.as_ref().map(|s| {
        if opted_in {
            inputs_hash(s)
        } else {
            "not-opted-in".into()
        }
    });
    let source = super::plan::source(&pc, hash);
    Ok(Snapshot {
        source,
        output,
        inputs_opted_in: opted_in,
        inputs: inputs_secret
            .as_ref()
            .map(|s| Inputs::from_secret(s).with_public_roles(&pc.spec.inputs.keys)),
        state_secret,
        upstream,
        http,
        upstream_of_others,
        pc,
    })
}

/// How long a reconcile waits for the Secret watches to list before it reads from the
/// apiserver instead (a watch that cannot list, e.g. for want of RBAC, never stops reconciles).
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The Secret cache for `ns`, once it has listed.
async fn ready_cache(ctx: &Context, ns: &str) -> Option<SecretCache> {
    let cache = ctx.caches.of(ns)?;
    cache.ready_within(CACHE_WAIT).await.then_some(cache)
}

/// The upstream credential's current token, when the spec names one.
pub(super) async fn upstream(
    ctx: &Context,
    cache: Option<&SecretCache>,
    secrets: &Api<Secret>,
    pc: &ProviderCredential,
) -> Result<Option<Result<Upstream, (Reason, String)>>, Error> {
    let Some(up) = pc.spec.http.as_ref().and_then(|h| h.upstream.as_ref()) else {
        return Ok(None);
    };
    let name = &up.provider_credential;
    if let Some(problem) = chain_problem(&ctx.client, pc).await? {
        return Ok(Some(Err(problem)));
    }
    let now = renewal::now();
    let ns = pc.namespace().unwrap_or_default();
    let state = cache::read(cache, secrets, &ns, &state::name(name), IfAbsent::Absent)
        .await?
        .map(|s| State::read(&s));
    let live = state.and_then(|s| {
        let alive = s.expires_at.is_none_or(|e| e > now);
        Some(Upstream {
            value: s.token.filter(|_| alive)?,
            token_type: s.token_type.unwrap_or_else(|| "Bearer".into()),
        })
    });
    Ok(Some(live.ok_or_else(|| {
        (
            Reason::UpstreamNotReady,
            format!(
                "ProviderCredential {name:?} named in spec.http.upstream has no valid token yet"
            ),
        )
    })))
}

/// What is wrong with the chain of upstream credentials, if anything: the credential names
/// itself, names one that does not exist, or the chain comes back to it (a cycle).
async fn chain_problem(
    client: &kube::Client,
    pc: &ProviderCredential,
) -> Result<Option<(Reason, String)>, Error> {
    let ns = pc.namespace().unwrap_or_default();
    let api: Api<ProviderCredential> = Api::namespaced(client.clone(), &ns);
    let upstream_of = |p: &ProviderCredential| {
        p.spec
            .http
            .as_ref()
            .and_then(|h| h.upstream.as_ref())
            .map(|u| u.provider_credential.clone())
    };
    let me = pc.name_any();
    let mut chain = vec![me.clone()];
    let mut next = upstream_of(pc);
    while let Some(name) = next {
        if name == me {
            let message = if chain.len() == 1 {
                "spec.http.upstream names this ProviderCredential itself: a credential cannot vouch for its own requests".to_string()
            } else {
                chain.push(name);
                format!(
                    "spec.http.upstream: a cycle of upstream credentials: {}",
                    chain.join(" -> ")
                )
            };
            return Ok(Some((Reason::InvalidSpec, message)));
        }
        if chain.len() > 8 || chain.contains(&name) {
            return Ok(None); // a cycle further up is that credential's problem
        }
        let Some(up) = api.get_opt(&name).await? else {
            let message = format!(
                "ProviderCredential {name:?} (spec.http.upstream{}) not found in namespace {ns:?}",
                if chain.len() > 1 {
                    format!(" of {:?}", chain.last().unwrap_or(&me))
                } else {
                    String::new()
                }
            );
            return Ok(Some((Reason::UpstreamNotReady, message)));
        };
        chain.push(name);
        next = upstream_of(&up);
    }
    Ok(None)
}

/// The HTTP client for this credential: the shared one, or one that also trusts the CA bundle
/// named in `spec.tls`.
async fn http_client(
    ctx: &Context,
    secrets: &Api<Secret>,
    pc: &ProviderCredential,
) -> Result<Result<reqwest::Client, (Reason, String)>, Error> {
    let Some(tls) = &pc.spec.tls else {
        return Ok(Ok(ctx.http.clone()));
    };
    let ns = pc.namespace().unwrap_or_default();
    let (what, r, pem) = match (&tls.ca_bundle_secret, &tls.ca_bundle_config_map) {
        (Some(r), _) => {
            let secret = secrets.get_opt(&r.name).await?;
            let pem = secret.and_then(|s| s.data?.remove(&r.key)).map(|b| b.0);
            ("Secret", r, pem)
        }
        (None, Some(r)) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let cm = api.get_opt(&r.name).await?;
            let pem = cm
                .and_then(|c| c.data?.remove(&r.key))
                .map(String::into_bytes);
            ("ConfigMap", r, pem)
        }
        (None, None) => return Ok(Ok(ctx.http.clone())),
    };
    let (name, key) = (&r.name, &r.key);
    let Some(pem) = pem else {
        return Ok(Err((
            Reason::CABundleNotFound,
            format!("{what} {name:?} with key {key:?} (spec.tls) not found in namespace {ns:?}"),
        )));
    };
    Ok(ctx.http_with_ca(&pem).map_err(|e| {
        (
            Reason::InvalidSpec,
            format!("spec.tls: {what} {name:?} key {key:?}: {e}"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// Defect 13: only the data counts, not labels, annotations or the resourceVersion.
    #[test]
    fn inputs_hash_is_of_the_data_only() {
        let a = secret(&[("client_id", "x"), ("client_secret", "y")]);
        let mut b = a.clone();
        b.metadata.resource_version = Some("999".into());
        b.metadata.labels = Some([("argocd.argoproj.io/instance".into(), "x".into())].into());
        b.metadata.annotations = Some([("reloader".into(), "1".into())].into());
        assert_eq!(inputs_hash(&a), inputs_hash(&b));
        assert_ne!(
            inputs_hash(&a),
            inputs_hash(&secret(&[("client_id", "x"), ("client_secret", "z")]))
        );
        // no ambiguity between keys and values
        assert_ne!(
            inputs_hash(&secret(&[("ab", "c")])),
            inputs_hash(&secret(&[("a", "bc")]))
        );
        assert_eq!(inputs_hash(&a).len(), 16);
    }
}
