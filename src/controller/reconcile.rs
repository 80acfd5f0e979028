//! One reconcile, as named steps: gather -> decide -> fetch -> build -> apply -> status, and the
//! cleanup that revokes tokens when a ProviderCredential with a revoke request is deleted.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use tracing::{Instrument, info, warn};

use super::state::{self, Pending, State};
use super::{Context, Error, output, status};
use crate::crd::{GrantType, InputRole, ProviderCredential, ProviderCredentialSpec};
use crate::providers::{self, Grant, Request, Upstream};
use crate::renewal::{self, Decision, Failure, GrantChoice, Observed, Policy, Reason};
use crate::token::{Inputs, SecretValue, Token};

/// Held while a ProviderCredential with a revoke request exists, so its tokens are revoked.
pub const FINALIZER: &str = "tokensync.dev/revoke";
/// A new value of this annotation renews the token at once (`tokensync refresh NAME`).
pub const FORCE_REFRESH_ANNOTATION: &str = "tokensync.dev/force-refresh";

pub async fn reconcile(pc: Arc<ProviderCredential>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pc.namespace().ok_or(Error::NoNamespace)?;
    let span = tracing::info_span!("reconcile", namespace = %ns, name = %pc.name_any());
    ctx.metrics.reconciled();
    let result = async {
        let needs_finalizer = pc.spec.http.as_ref().is_some_and(|h| h.revoke.is_some())
            || pc.finalizers().iter().any(|f| f == FINALIZER);
        if !needs_finalizer {
            return Reconcile::new(&pc, &ctx, &ns).run().await;
        }
        let api: Api<ProviderCredential> = Api::namespaced(ctx.client.clone(), &ns);
        finalizer(&api, FINALIZER, pc.clone(), |event| async {
            match event {
                FinalizerEvent::Apply(pc) => Reconcile::new(&pc, &ctx, &ns).run().await,
                FinalizerEvent::Cleanup(pc) => Reconcile::new(&pc, &ctx, &ns).cleanup().await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span.clone())
    .await;
    match result {
        // missing RBAC is the operator's misconfiguration, not a crash: say so on the object
        Err(e) if forbidden(&e).is_some() => {
            let message = forbidden(&e).unwrap_or_default();
            let r = Reconcile::new(&pc, &ctx, &ns);
            r.fail(
                Failed::new(status::REASON_FORBIDDEN, message),
                &forbidden_source(&pc),
            )
            .instrument(span)
            .await
        }
        other => other,
    }
}

/// The source a Forbidden failure is recorded under: retried after its backoff, or at once
/// when the spec changes.
fn forbidden_source(pc: &ProviderCredential) -> String {
    format!("forbidden/{}", pc.metadata.generation.unwrap_or_default())
}

/// The apiserver's message when `error` is a 403.
fn forbidden(error: &Error) -> Option<String> {
    use kube::runtime::finalizer::Error as F;
    match error {
        Error::Kube(kube::Error::Api(s)) if s.code == 403 => Some(s.message.clone()),
        Error::Finalizer(f) => match f.as_ref() {
            F::ApplyFailed(e) | F::CleanupFailed(e) => forbidden(e),
            F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                if s.code == 403 =>
            {
                Some(s.message.clone())
            }
            _ => None,
        },
        _ => None,
    }
}

pub(super) struct Reconcile<'a> {
    pub(super) pc: &'a ProviderCredential,
    pub(super) ctx: &'a Context,
    pub(super) secrets: Api<Secret>,
    pub(super) now: Timestamp,
}

/// A failure the user must see as `Ready=False`.
pub(super) struct Failed {
    reason: &'static str,
    message: String,
}

impl Failed {
    pub(super) fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

impl<'a> Reconcile<'a> {
    fn new(pc: &'a ProviderCredential, ctx: &'a Context, ns: &str) -> Self {
        Self {
            pc,
            ctx,
            secrets: Api::namespaced(ctx.client.clone(), ns),
            now: renewal::now(),
        }
    }

    pub(super) fn spec(&self) -> &ProviderCredentialSpec {
        &self.pc.spec
    }

    fn status(&self) -> crate::crd::ProviderCredentialStatus {
        self.pc.status.clone().unwrap_or_default()
    }

    /// The last failed attempt, from status.
    fn failure(&self) -> Option<Failure> {
        let s = self.pc.status.as_ref()?;
        Some(Failure {
            at: s.last_failure_at.as_ref()?.0,
            count: s.failures?,
            source: s.last_failure_source.clone()?,
        })
    }

    async fn run(&self) -> Result<Action, Error> {
        let spec = self.spec();
        let generation = self.pc.metadata.generation.unwrap_or_default();
        let failure = self.failure();
        // a Forbidden failure backs off before any request is tried again
        if let Some(at) = renewal::retry_at(failure.as_ref(), &forbidden_source(self.pc), self.now)
        {
            return Ok(requeue_at(at, self.now));
        }

        // gather
        let output = self.secrets.get_opt(&spec.output.secret_name).await?;
        let inputs_secret = self.secrets.get_opt(&spec.inputs.secret_name).await?;
        let state_secret = self
            .secrets
            .get_opt(&state::name(&self.pc.name_any()))
            .await?;
        // what a token is obtained from: the spec, the inputs, and a forced renewal's request;
        // a change of any renews at once, and failures back off per source
        let source = format!(
            "{generation}/{}/{}",
            inputs_secret
                .as_ref()
                .and_then(|s| s.resource_version())
                .unwrap_or_else(|| "none".into()),
            self.pc
                .annotations()
                .get(FORCE_REFRESH_ANNOTATION)
                .map(String::as_str)
                .unwrap_or_default()
        );
        if let Some(at) = renewal::retry_at(failure.as_ref(), &source, self.now) {
            return Ok(requeue_at(at, self.now));
        }
        for secret in output.iter().chain(state_secret.iter()) {
            if !output::owned_by(secret, self.pc) {
                let message = format!(
                    "Secret {:?} exists and is not owned by this ProviderCredential; tokensync never overwrites it",
                    secret.name_any()
                );
                return self
                    .fail(
                        Failed::new(status::REASON_OWNED_ELSEWHERE, message),
                        &source,
                    )
                    .await;
            }
        }
        let Some(inputs_secret) = inputs_secret else {
            let message = format!(
                "inputs Secret {:?} not found in namespace {:?}",
                spec.inputs.secret_name,
                self.pc.namespace().unwrap_or_default()
            );
            return self
                .fail(
                    Failed::new(status::REASON_INPUTS_NOT_FOUND, message),
                    &source,
                )
                .await;
        };
        let policy = match Policy::from_spec(spec.refresh.as_ref()) {
            Ok(p) => p,
            Err(message) => {
                return self
                    .fail(Failed::new(status::REASON_INVALID_SPEC, message), &source)
                    .await;
            }
        };
        let mut state = state_secret.as_ref().map(State::read).unwrap_or_default();
        let inputs = Inputs::from_secret(&inputs_secret);

        // decide
        let prev = self.status();
        let current = output.as_ref().and_then(output::current).map(|mut c| {
            c.refresh_expires_at = state.refresh_expires_at;
            c
        });
        let observed = Observed {
            current: current.clone(),
            source: source.clone(),
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
                if self.revoke_due(&mut state, &inputs).await {
                    self.apply_state(&state).await?;
                }
                return Ok(requeue_at(next_wake(until, &state), self.now));
            }
            Decision::Renew(reason) => reason,
        };

        // fetch
        let upstream = match self.upstream().await? {
            Ok(up) => up,
            Err(failed) => return self.fail(failed, &source).await,
        };
        let http = match self.http_client().await? {
            Ok(client) => client,
            Err(failed) => return self.fail(failed, &source).await,
        };
        let primary_possible = primary_possible(spec, &inputs, &state);
        let refresh_usable = state.refresh_usable(self.now) && has_refresh_request(spec);
        let mut grant = match renewal::choose_grant(reason, refresh_usable, primary_possible) {
            GrantChoice::Primary => Grant::Primary,
            GrantChoice::Refresh => Grant::Refresh(state.refresh_token.clone().expect("usable")),
            GrantChoice::NeedsNewInputs => {
                let message = format!(
                    "no usable refresh token and the one-time inputs were already used: a person must put new inputs (an authorization code or a refresh token) into Secret {:?}",
                    spec.inputs.secret_name
                );
                return self
                    .fail(
                        Failed::new(status::REASON_NEEDS_NEW_INPUTS, message),
                        &source,
                    )
                    .await;
            }
        };
        let mut result = self.fetch(&http, &inputs, &grant, upstream.clone()).await;
        if matches!(grant, Grant::Refresh(_))
            && let Err(e) = &result
            && e.is_rejected_grant()
        {
            // a dead refresh token is cured by the primary grant, once, if the inputs allow it
            state.refresh_token = None;
            state.refresh_expires_at = None;
            self.apply_state(&state).await?;
            if !primary_possible {
                let message = format!(
                    "the provider rejected the refresh token ({}) and the inputs allow no new login: a person must put new inputs into Secret {:?}",
                    inputs.redact(&e.to_string()),
                    spec.inputs.secret_name
                );
                return self
                    .fail(
                        Failed::new(status::REASON_REFRESH_REJECTED, message),
                        &source,
                    )
                    .await;
            }
            warn!("refresh token rejected; falling back to the primary grant");
            grant = Grant::Primary;
            result = self.fetch(&http, &inputs, &grant, upstream).await;
        }
        let token = match result {
            Ok(token) => token,
            Err(e) => {
                let message = inputs.redact(&e.to_string());
                return self.fail(Failed::new(e.reason(), message), &source).await;
            }
        };

        // build + apply: the state first, so a rotated refresh token is never lost
        let renew_at = policy.renew_at(token.issued_at, token.expires_at);
        self.record(&mut state, &token, &grant, &inputs);
        let secret = match output::build(
            self.pc,
            &token,
            state.refresh_token.as_ref(),
            renew_at,
            &source,
        ) {
            Ok(s) => s,
            Err(message) => {
                return self
                    .fail(Failed::new(status::REASON_INVALID_SPEC, message), &source)
                    .await;
            }
        };
        self.apply_state(&state).await?;
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
            grant = if matches!(grant, Grant::Primary) { "primary" } else { "refresh" },
            "token {verb}"
        );
        if self.revoke_due(&mut state, &inputs).await {
            self.apply_state(&state).await?;
        }

        // status
        let current = renewal::Current {
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            renew_at,
            source,
            refresh_expires_at: state.refresh_expires_at,
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
        let wake = current
            .refresh_renew_at()
            .map_or(renew_at, |r| r.min(renew_at));
        Ok(requeue_at(next_wake(wake, &state), self.now))
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        inputs: &Inputs,
        grant: &Grant,
        upstream: Option<Upstream>,
    ) -> Result<Token, providers::ProviderError> {
        let request = Request {
            spec: self.spec(),
            inputs,
            grant: grant.clone(),
            now: self.now,
            egress: &self.ctx.egress,
            upstream,
        };
        let started = std::time::Instant::now();
        let result = providers::fetch(http, &request).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.reason(),
        };
        self.ctx.metrics.token_request(
            providers::kind(self.spec()),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// Fold a new token into the state: rotate the refresh token, remember used one-time
    /// inputs, queue the replaced token for revocation.
    fn record(&self, state: &mut State, token: &Token, grant: &Grant, inputs: &Inputs) {
        let revocable = self
            .spec()
            .http
            .as_ref()
            .is_some_and(|h| h.revoke.is_some());
        let old_kept = std::mem::take(&mut state.kept);
        if let Some(old) = state.token.take()
            && revocable
            && old != token.value
        {
            state.pending.push(Pending {
                token: old,
                kept: old_kept,
                attempts: 0,
                next_at: self.now,
            });
        }
        state.token = Some(token.value.clone());
        state.token_type = Some(token.token_type.clone());
        state.expires_at = token.expires_at;
        state.kept = token.kept.clone();
        match (&token.refresh_token, grant) {
            (Some(rt), _) => {
                state.refresh_token = Some(rt.clone());
                state.refresh_expires_at = token.refresh_expires_at;
            }
            // a refresh answer without a new refresh token: the old one stays good
            (None, Grant::Refresh(_)) => {}
            (None, Grant::Primary) => {
                state.refresh_token = None;
                state.refresh_expires_at = None;
            }
        }
        if matches!(grant, Grant::Primary)
            && let Some(fp) = one_time_input(self.spec(), inputs).map(|v| v.fingerprint())
            && !state.used_inputs.contains(&fp)
        {
            state.used_inputs.push(fp);
        }
    }

    pub(super) async fn apply_state(&self, state: &State) -> Result<(), Error> {
        let secret = state.build(self.pc);
        self.secrets
            .patch(
                &secret.name_any(),
                &PatchParams::apply(output::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        Ok(())
    }

    /// Record a failure: `Ready=False` with the reason, an event, and a retry after the backoff.
    /// The token in place, if any, stays.
    async fn fail(&self, failed: Failed, source: &str) -> Result<Action, Error> {
        let Failed { reason, message } = failed;
        warn!(reason, %message, "token not refreshed");
        self.ctx.metrics.reconcile_error(reason);
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
        self.event(EventType::Warning, status::event_reason(reason), message)
            .await;
        Ok(Action::requeue(
            Duration::try_from(delay).unwrap_or(Duration::from_secs(5)),
        ))
    }

    async fn write_status(
        &self,
        prev: &crate::crd::ProviderCredentialStatus,
        next: crate::crd::ProviderCredentialStatus,
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

    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: match reason {
                status::REASON_REVOKED | status::REASON_REVOKE_FAILED => "Revoke",
                _ if type_ == EventType::Normal => "Refresh",
                _ => "RefreshFailed",
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

fn has_refresh_request(spec: &ProviderCredentialSpec) -> bool {
    spec.oauth2.is_some() || spec.http.as_ref().is_some_and(|h| h.refresh.is_some())
}

/// The one-time input the primary grant consumes (an authorization code, a bootstrap refresh
/// token), if the grant has one.
fn one_time_input<'i>(
    spec: &ProviderCredentialSpec,
    inputs: &'i Inputs,
) -> Option<&'i SecretValue> {
    let oauth2 = spec.oauth2.as_ref()?;
    let role = match oauth2.grant_type {
        GrantType::AuthorizationCode => InputRole::Code,
        GrantType::RefreshToken => InputRole::RefreshToken,
        GrantType::ClientCredentials | GrantType::Password => return None,
    };
    inputs.get(spec.inputs.keys.key(role))
}

/// Whether the inputs allow the primary grant: always, unless it consumes a one-time input that
/// is absent or already used.
fn primary_possible(spec: &ProviderCredentialSpec, inputs: &Inputs, state: &State) -> bool {
    let one_time = spec.oauth2.as_ref().is_some_and(|o| {
        matches!(
            o.grant_type,
            GrantType::AuthorizationCode | GrantType::RefreshToken
        )
    });
    if !one_time {
        return true;
    }
    one_time_input(spec, inputs).is_some_and(|v| !state.used_inputs.contains(&v.fingerprint()))
}

/// The earlier of `at` and the next pending revocation.
fn next_wake(at: Timestamp, state: &State) -> Timestamp {
    state
        .pending
        .iter()
        .map(|p| p.next_at)
        .fold(at, Timestamp::min)
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = at.duration_since(now);
    let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
    Action::requeue(wait.max(Duration::from_secs(1)))
}
