//! One reconcile, as named steps: gather -> decide -> fetch -> build -> apply -> status.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info, warn};

use super::status;
use super::{Context, Error, output};
use crate::crd::{ProviderCredential, ProviderCredentialStatus};
use crate::providers::{self, Grant, Request};
use crate::renewal::{self, Decision, Failure, Observed, Policy, Reason};
use crate::token::Inputs;

pub async fn reconcile(pc: Arc<ProviderCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pc.namespace().ok_or(Error::NoNamespace)?;
    let span = tracing::info_span!("reconcile", namespace = %ns, name = %pc.name_any());
    Reconcile {
        pc: &pc,
        ctx: &ctx,
        secrets: Api::namespaced(ctx.client.clone(), &ns),
        // whole seconds: expiry and renewal times then read well and compare exactly
        now: Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range"),
    }
    .run()
    .instrument(span)
    .await
}

struct Reconcile<'a> {
    pc: &'a ProviderCredential,
    ctx: &'a Context,
    secrets: Api<Secret>,
    now: Timestamp,
}

impl Reconcile<'_> {
    fn status(&self) -> ProviderCredentialStatus {
        self.pc.status.clone().unwrap_or_default()
    }

    async fn run(&self) -> Result<Action, Error> {
        let spec = &self.pc.spec;
        let generation = self.pc.metadata.generation.unwrap_or_default();

        // gather
        let output = self.secrets.get_opt(&spec.output.secret_name).await?;
        let inputs_secret = self.secrets.get_opt(&spec.inputs.secret_name).await?;
        let source = format!(
            "{generation}/{}",
            inputs_secret
                .as_ref()
                .and_then(|s| s.resource_version())
                .unwrap_or_else(|| "none".into())
        );
        if let Some(secret) = &output
            && !output::owned_by(secret, self.pc)
        {
            let message = format!(
                "Secret {:?} exists and is not owned by this ProviderCredential; tokensync never overwrites it",
                spec.output.secret_name
            );
            return self
                .fail(status::REASON_OWNED_ELSEWHERE, message, &source)
                .await;
        }
        let Some(inputs_secret) = inputs_secret else {
            let message = format!(
                "inputs Secret {:?} not found in namespace {:?}",
                spec.inputs.secret_name,
                self.pc.namespace().unwrap_or_default()
            );
            return self
                .fail(status::REASON_INPUTS_NOT_FOUND, message, &source)
                .await;
        };
        let policy = match Policy::from_spec(spec.refresh.as_ref()) {
            Ok(p) => p,
            Err(message) => {
                return self
                    .fail(status::REASON_INVALID_SPEC, message, &source)
                    .await;
            }
        };

        // decide
        let prev = self.status();
        let current = output.as_ref().and_then(output::current);
        let observed = Observed {
            current: current.clone(),
            source: source.clone(),
            failure: match (
                prev.failures,
                &prev.last_failure_at,
                &prev.last_failure_source,
            ) {
                (Some(count), Some(at), Some(src)) => Some(Failure {
                    at: at.0,
                    count,
                    source: src.clone(),
                }),
                _ => None,
            },
        };
        let reason = match renewal::decide(&observed, self.now) {
            Decision::Wait(until) => {
                if let Some(current) = &current
                    && prev.failures.is_none()
                {
                    // the token in place is good: make sure status says so (writes only on change)
                    let fp = output.as_ref().and_then(output::fingerprint);
                    let reason = status::ready_condition(&prev)
                        .filter(|c| c.status == "True")
                        .map(|c| c.reason.clone())
                        .unwrap_or_else(|| status::REASON_ISSUED.into());
                    let next =
                        status::success(&prev, Some(generation), current, fp, &reason, self.now);
                    self.write_status(&prev, next).await?;
                }
                return Ok(requeue_at(until, self.now));
            }
            Decision::Renew(reason) => reason,
        };

        // fetch
        let inputs = Inputs::from_secret(&inputs_secret);
        let request = Request {
            spec,
            inputs: &inputs,
            grant: Grant::Primary,
            now: self.now,
            allow_insecure_http: self.ctx.config.allow_insecure_http,
        };
        let token = match providers::fetch(&self.ctx.http, &request).await {
            Ok(token) => token,
            Err(e) => {
                let message = inputs.redact(&e.to_string());
                return self.fail(e.reason(), message, &source).await;
            }
        };

        // build + apply
        let renew_at = policy.renew_at(token.issued_at, token.expires_at);
        let secret = match output::build(self.pc, &token, renew_at, &source) {
            Ok(s) => s,
            Err(message) => {
                return self
                    .fail(status::REASON_INVALID_SPEC, message, &source)
                    .await;
            }
        };
        self.secrets
            .patch(
                &spec.output.secret_name,
                &PatchParams::apply(output::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let issued = reason == Reason::Missing && current.is_none();
        let (event_reason, verb) = if issued {
            (status::REASON_ISSUED, "issued")
        } else {
            (status::REASON_RENEWED, "renewed")
        };
        let fp = token.value.fingerprint();
        info!(
            fingerprint = %fp,
            expires_at = ?token.expires_at.map(|t| t.to_string()),
            renew_at = %renew_at,
            why = ?reason,
            "token {verb}"
        );

        // status
        let current = renewal::Current {
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            renew_at,
            source,
        };
        let next = status::success(
            &prev,
            Some(generation),
            &current,
            Some(fp.clone()),
            event_reason,
            self.now,
        );
        self.write_status(&prev, next).await?;
        let expiry = token
            .expires_at
            .map(|e| format!("expires at {e}"))
            .unwrap_or_else(|| "no known expiry".into());
        self.event(
            EventType::Normal,
            event_reason,
            format!(
                "token {verb} (fingerprint {fp}, {expiry}) into Secret {:?}",
                spec.output.secret_name
            ),
        )
        .await;
        Ok(requeue_at(renew_at, self.now))
    }

    /// Record a failure: `Ready=False` with the reason, an event, and a retry after the backoff.
    /// The token in place, if any, stays.
    async fn fail(
        &self,
        reason: &'static str,
        message: String,
        source: &str,
    ) -> Result<Action, Error> {
        warn!(reason, %message, "token not refreshed");
        let prev = self.status();
        let next = status::failure(
            &prev,
            self.pc.metadata.generation,
            reason,
            message.clone(),
            source,
            self.now,
        );
        let delay = renewal::backoff(next.failures.unwrap_or(1));
        self.write_status(&prev, next).await?;
        self.event(EventType::Warning, reason, message).await;
        Ok(Action::requeue(
            Duration::try_from(delay).unwrap_or(Duration::from_secs(5)),
        ))
    }

    async fn write_status(
        &self,
        prev: &ProviderCredentialStatus,
        next: ProviderCredentialStatus,
    ) -> Result<(), Error> {
        if self.pc.status.is_some() && prev == &next {
            return Ok(());
        }
        let api: Api<ProviderCredential> = Api::namespaced(
            self.ctx.client.clone(),
            &self.pc.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": ProviderCredential::api_version(&()),
            "kind": ProviderCredential::kind(&()),
            "status": next,
        });
        api.patch_status(
            &self.pc.name_any(),
            &PatchParams::apply(output::MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: if type_ == EventType::Normal {
                "Refresh"
            } else {
                "RefreshFailed"
            }
            .into(),
            secondary: None,
        };
        if let Err(error) = self
            .ctx
            .recorder
            .publish(&event, &self.pc.object_ref(&()))
            .await
        {
            warn!(%error, "could not publish event");
        }
    }
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = at.duration_since(now);
    let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
    Action::requeue(wait.max(Duration::from_secs(1)))
}
