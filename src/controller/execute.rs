//! Execute: carry a [`Plan`] out, in a fixed order, and record the result.
//!
//! Write order, and why: (1) the state Secret, when what it must hold changed (a rotated refresh
//! token, a token to revoke later or one another credential reads, a used one-time input), as
//! soon as a provider answered, so that it is stored before anything else can fail; when the
//! state need not change, nothing is written there, and should (2) fail, the token is put into
//! the state Secret then, to be written out later; (2) the output Secret,
//! created when it does not exist (never taken over) and otherwise updated only at the
//! resourceVersion it was read at; (3) the status; (4) the events. A crash between (1) and (2)
//! leaves a newer token in the state than in the output: the next reconcile writes it out
//! without asking the provider again. The remaining window is a kill between the provider's
//! answer and (1): the chart's termination grace period exceeds the request timeout so a normal
//! shutdown always finishes it; only a SIGKILL inside that window loses a rotated refresh token.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::cache::Cached;
use super::plan::{self, AfterError, Attempt, Failed, Plan, Writes};
use super::reconcile::Reconcile;
use super::state::State;
use super::{Error, output, status};
use crate::crd::{ProviderCredential, ProviderCredentialStatus};
use crate::providers::{self, Fetched, Grant, ProviderError, Request};
use crate::reason::Reason;
use crate::renewal;

use super::gather::Snapshot;

/// After a timeout, the next attempt gives up after this long at most.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request holds its concurrency slot at most this long; a slower one (a hung provider)
/// goes on without it, so it never keeps healthy renewals waiting.
const SLOT_HOLD: Duration = Duration::from_secs(2);

impl Reconcile<'_> {
    /// Gather, plan, execute.
    pub(super) async fn run(&self) -> Result<Action, Error> {
        let snap = super::gather::gather(self.ctx, &self.secrets, self.pc.clone()).await?;
        let now = renewal::now();
        match plan::plan(&snap, now) {
            Plan::Wait { until, status } => {
                if let Some(status) = status {
                    self.write_status(*status).await?;
                }
                let mut state = snap
                    .state_secret
                    .as_ref()
                    .map(State::read)
                    .unwrap_or_default();
                let inputs = snap.inputs.clone().unwrap_or_default();
                let upstream = snap.upstream.clone().and_then(Result::ok);
                if self.revoke_due(&mut state, &inputs, upstream).await {
                    self.apply_state(&state).await?;
                }
                Ok(requeue_at(plan::next_wake(until, &state), now))
            }
            Plan::Write(writes) => self.write(&snap, *writes).await,
            Plan::Fail(failed) => self.fail(&snap, failed).await,
            Plan::Fetch(attempt) => self.fetch_and_write(&snap, *attempt).await,
        }
    }

    async fn fetch_and_write(
        &self,
        snap: &Snapshot,
        mut attempt: Attempt,
    ) -> Result<Action, Error> {
        loop {
            let error = match self.fetch(snap, &attempt).await {
                Ok(fetched) => {
                    if let Some(message) = fetched.refused {
                        let message = plan::redact(snap, &attempt.state, &message);
                        let failed = plan::on_refused(&attempt, &fetched.token, message);
                        return self.fail(snap, failed).await;
                    }
                    return match plan::on_token(snap, &attempt, fetched.token) {
                        Ok(mut writes) => {
                            // what the provider answered that could not be read, the token kept
                            for warning in &fetched.warnings {
                                let note = plan::redact(snap, &attempt.state, warning);
                                writes.events.push((
                                    EventType::Warning,
                                    Reason::ExpiryUnreadable,
                                    note,
                                ));
                            }
                            info!(
                                fingerprint = %writes.fingerprint,
                                why = ?attempt.why,
                                grant = grant_name(&attempt.grant),
                                next = %writes.wake,
                                "token received"
                            );
                            self.write(snap, writes).await
                        }
                        Err(failed) => self.fail(snap, failed).await,
                    };
                }
                Err(e) => e,
            };
            match plan::on_error(snap, attempt, &error) {
                AfterError::Retry(next, warning) => {
                    // the dead refresh token is dropped for good before the primary grant runs
                    self.apply_state(&next.state).await?;
                    warn!(detail = %warning, "refresh token rejected; falling back to the primary grant");
                    self.event(EventType::Warning, Reason::RefreshTokenRejected, warning)
                        .await;
                    attempt = *next;
                }
                AfterError::Fail(failed) => return self.fail(snap, failed).await,
            }
        }
    }

    /// One token request, holding a concurrency slot while it is quick: renewals of a token in
    /// place that last succeeded have the slots to themselves; new and failing credentials
    /// share a budget of their own, and a slow request gives its slot up.
    async fn fetch(&self, snap: &Snapshot, attempt: &Attempt) -> Result<Fetched, ProviderError> {
        let Ok(http) = &snap.http else {
            // the planner only plans a request when the client is there
            return Err(ProviderError::InvalidSpec(
                "no HTTP client for this credential".into(),
            ));
        };
        let renewing = snap
            .pc
            .status
            .as_ref()
            .is_some_and(|s| s.last_failure.is_none() && s.token_fingerprint.is_some());
        let slots = if renewing {
            &self.ctx.slots.renewals
        } else {
            &self.ctx.slots.others
        };
        let permit = slots.acquire().await.ok();
        let inputs = snap.inputs.clone().unwrap_or_default();
        let request = Request {
            spec: &snap.pc.spec,
            inputs: &inputs,
            grant: attempt.grant.clone(),
            now: renewal::now(),
            egress: &self.ctx.egress,
            upstream: snap.upstream.clone().and_then(Result::ok),
            timeout: attempt
                .shorter_timeout
                .then(|| self.ctx.config.request_timeout.min(SHORT_TIMEOUT)),
        };
        let started = std::time::Instant::now();
        let request_done = providers::fetch_with(http, &request, &self.ctx.discovery);
        tokio::pin!(request_done);
        let result = tokio::select! {
            r = &mut request_done => r,
            _ = tokio::time::sleep(SLOT_HOLD) => {
                drop(permit);
                request_done.await
            }
        };
        let outcome = match &result {
            Ok(_) => "success",
            Err(e) => e.reason().as_str(),
        };
        self.ctx.metrics.token_request(
            providers::kind(&snap.pc.spec),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// Carry out `writes` in their order: state, output, status, events.
    async fn write(&self, snap: &Snapshot, writes: Writes) -> Result<Action, Error> {
        if let Some(state) = &writes.state
            && let Err(e) = self.apply_state(state).await
        {
            // a state Secret the apiserver refuses (e.g. made immutable by someone) is a
            // failure with backoff, never a quick retry that asks the provider again
            return match refused(&e) {
                Some(why) => {
                    let name = super::state::name(&self.pc.name_any());
                    let reason = match e {
                        Error::NotOurs(_) => Reason::SecretOwnedElsewhere,
                        _ => Reason::SecretWriteFailed,
                    };
                    let failed = Failed::new(
                        reason,
                        format!(
                            "the apiserver refused the state Secret {name:?}: {why}; what the provider issued could not be kept"
                        ),
                    );
                    self.fail(snap, failed).await
                }
                None => Err(e),
            };
        }
        let written = match self.write_output(&writes).await {
            Ok(written) => written,
            Err(e) => {
                // the apiserver is unreachable or failing: the token goes to the state Secret
                // if that can still be written, so that it is written out later, not lost
                if let Some(kept) = &writes.keep_on_failure
                    && let Err(error) = self.apply_state(kept).await
                {
                    warn!(%error, "could not keep the token in the state Secret either");
                }
                return Err(e);
            }
        };
        if let Err(mut failed) = written {
            // the token the provider issued is kept, to be written out once the Secret can be
            failed.state = failed
                .state
                .or_else(|| writes.keep_on_failure.clone().map(Box::new));
            return self.fail(snap, failed).await;
        }
        // the events go out even when the status must wait for a fresher view (a 409)
        let status = self.write_status(writes.status).await;
        for (type_, reason, note) in writes.events {
            self.event(type_, reason, note).await;
        }
        status?;
        let mut state = match writes.state {
            Some(state) => state,
            None => snap
                .state_secret
                .as_ref()
                .map(State::read)
                .unwrap_or_default(),
        };
        let inputs = snap.inputs.clone().unwrap_or_default();
        if self
            .revoke_due(
                &mut state,
                &inputs,
                snap.upstream.clone().and_then(Result::ok),
            )
            .await
        {
            self.apply_state(&state).await?;
        }
        let now = renewal::now();
        Ok(requeue_at(plan::next_wake(writes.wake, &state), now))
    }

    /// Create the output Secret, or update it at the version it was read at. A Secret that
    /// appeared in the meantime is never taken over; one the apiserver refuses is a failure.
    async fn write_output(&self, writes: &Writes) -> Result<Result<(), Failed>, Error> {
        let name = writes.output.name_any();
        let mut result = match &writes.output_version {
            None => self.create(&writes.output).await,
            Some(version) => self.apply_at(&writes.output, version).await,
        };
        if writes.output_version.is_none()
            && let Err(kube::Error::Api(s)) = &result
            && s.code == 409
        {
            // it exists after all: the cache did not show it because someone removed our
            // label; ours (by owner reference) is updated at the version read now
            if let Some(current) = self.secrets.get_opt(&name).await?
                && output::owned_by(&current, &self.pc)
                && let Some(version) = current.resource_version()
            {
                result = self.apply_at(&writes.output, &version).await;
            }
        }
        if let Err(kube::Error::Api(s)) = &result
            && s.code == 409
        {
            self.forget(&name);
        }
        match result {
            Ok(()) => Ok(Ok(())),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(Failed::new(
                Reason::SecretOwnedElsewhere,
                format!(
                    "Secret {name:?} was created or changed by another writer meanwhile, or exists and is not owned by this ProviderCredential; the token is kept in the state Secret and written once the Secret is this credential's"
                ),
            ))),
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 413 | 422) => Ok(Err(Failed::new(
                Reason::SecretWriteFailed,
                format!(
                    "the apiserver refused Secret {name:?}: {}; the token is kept in the state Secret",
                    s.message
                ),
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Create `secret` (an error 409 when it exists).
    async fn create(&self, secret: &k8s_openapi::api::core::v1::Secret) -> kube::Result<()> {
        let written = self.secrets.create(&PostParams::default(), secret).await?;
        self.wrote(&written);
        Ok(())
    }

    /// Apply `secret` at `version` (an error 409 when it changed since).
    async fn apply_at(
        &self,
        secret: &k8s_openapi::api::core::v1::Secret,
        version: &str,
    ) -> kube::Result<()> {
        let mut secret = secret.clone();
        secret.metadata.resource_version = Some(version.to_string());
        let written = self
            .secrets
            .patch(
                &secret.name_any(),
                &PatchParams::apply(output::MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        self.wrote(&written);
        Ok(())
    }

    /// Forget our last write of the Secret `name`: a conflict said the apiserver has a newer
    /// version, which the next read takes from the watch.
    fn forget(&self, name: &str) {
        let ns = self.pc.namespace().unwrap_or_default();
        if let Some(cache) = self.ctx.caches.of(&ns) {
            cache.forget(&ns, name);
        }
    }

    /// Remember our own write: its watch event triggers nothing, and reads see it at once.
    fn wrote(&self, written: &k8s_openapi::api::core::v1::Secret) {
        self.ctx.own_writes.wrote(written);
        if let Some(cache) = self.ctx.caches.of(&written.namespace().unwrap_or_default()) {
            cache.wrote(written);
        }
    }

    /// Record a failure: `Ready=False` with the reason, an event, and a retry after the backoff
    /// (or the provider's Retry-After). The token in place, if any, stays.
    pub(super) async fn fail(&self, snap: &Snapshot, failed: Failed) -> Result<Action, Error> {
        let Failed {
            reason,
            message,
            retry_after,
            state,
        } = failed;
        if let Some(state) = &state
            && let Err(error) = self.apply_state(state).await
        {
            // the failure and its backoff are recorded all the same: no quick retry
            warn!(%error, "could not write the state Secret");
        }
        warn!(reason = %reason, detail = %message, "token not refreshed");
        self.ctx.metrics.reconcile_error(reason.as_str());
        let now = renewal::now();
        let failure = |pc: &ProviderCredential| {
            let prev = pc.status.clone().unwrap_or_default();
            status::failure(
                &prev,
                &snap.source,
                reason,
                message.clone(),
                retry_after,
                now,
            )
        };
        let next = failure(&self.pc);
        let next = match self.write_status(next.clone()).await {
            Err(Error::Stale) => {
                // our view is older than the apiserver's: the failure and its backoff are
                // recorded on the fresh status, never dropped (a dropped backoff is a hot loop)
                let fresh = self.credentials().get(&self.pc.name_any()).await?;
                let next = failure(&fresh);
                self.write_status_of(&fresh, next.clone()).await?;
                next
            }
            other => other.map(|()| next)?,
        };
        let at = plan::wake_failing(
            &next,
            next.next_attempt_at.as_ref().map_or(now, |t| t.0),
            now,
        );
        self.event(EventType::Warning, reason, message).await;
        Ok(requeue_at(at, now))
    }

    fn credentials(&self) -> kube::Api<ProviderCredential> {
        kube::Api::namespaced(
            self.ctx.client.clone(),
            &self.pc.namespace().unwrap_or_default(),
        )
    }

    /// Write the state Secret: created when missing, otherwise replaced whole at the version
    /// last seen (the state is always written complete; a replace drops what it no longer
    /// holds, whoever created the Secret). A Secret of that name that is not ours is refused,
    /// never written over; one created, changed or deleted meanwhile (409, 404) is read again,
    /// up to three attempts in all.
    pub(super) async fn apply_state(&self, state: &State) -> Result<(), Error> {
        let mut secret = state.build(&self.pc);
        let name = secret.name_any();
        let ns = self.pc.namespace().unwrap_or_default();
        let mut version = match self.ctx.caches.of(&ns).map(|c| c.get(&ns, &name)) {
            Some(Cached::Present(current)) => {
                keep_foreign_metadata(&mut secret, &current);
                current.resource_version()
            }
            Some(Cached::Absent) => None,
            Some(Cached::Unknown) | None => self.current_state_version(&name).await?,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match &version {
                None => self.secrets.create(&PostParams::default(), &secret).await,
                Some(rv) => {
                    secret.metadata.resource_version = Some(rv.clone());
                    self.secrets
                        .replace(&name, &PostParams::default(), &secret)
                        .await
                }
            };
            match result {
                Ok(written) => {
                    self.wrote(&written);
                    return Ok(());
                }
                // created, changed or deleted meanwhile: as the apiserver has it now
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) && attempts < 3 => {
                    self.forget(&name);
                    version = self.current_state_version(&name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The resourceVersion of the state Secret `name` as the apiserver has it now: `None` when
    /// it does not exist, an error when it is not this credential's.
    async fn current_state_version(&self, name: &str) -> Result<Option<String>, Error> {
        match self.secrets.get_opt(name).await? {
            Some(c) if !output::owned_by(&c, &self.pc) => Err(Error::NotOurs(name.to_string())),
            found => Ok(found.and_then(|c| c.resource_version())),
        }
    }

    /// Write the status when it differs from the one in place.
    pub(super) async fn write_status(&self, next: ProviderCredentialStatus) -> Result<(), Error> {
        self.write_status_of(&self.pc, next).await
    }

    /// Write the status of `pc` (as read) when it differs from the one it holds.
    async fn write_status_of(
        &self,
        pc: &ProviderCredential,
        next: ProviderCredentialStatus,
    ) -> Result<(), Error> {
        if pc.status.as_ref() == Some(&next) {
            return Ok(());
        }
        let api = self.credentials();
        // at the resourceVersion this reconcile read: a status computed from a view older than
        // the apiserver's (the reconcile our own last write triggered, run before the watch
        // delivered that write) is refused instead of overwriting a newer one
        let patch = serde_json::json!({
            "apiVersion": ProviderCredential::api_version(&()),
            "kind": ProviderCredential::kind(&()),
            "metadata": {"resourceVersion": pc.resource_version()},
            "status": next,
        });
        match api
            .patch_status(
                &pc.name_any(),
                &PatchParams::apply(output::MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Stale),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn event(&self, type_: EventType, reason: Reason, note: String) {
        let event = Event {
            type_,
            reason: reason.as_str().into(),
            note: Some(note),
            action: reason.action().into(),
            secondary: None,
        };
        self.ctx.events.queue(event, self.pc.object_ref(&()));
    }
}

/// Labels, annotations and finalizers others put on the state Secret survive its replacement.
fn keep_foreign_metadata(
    secret: &mut k8s_openapi::api::core::v1::Secret,
    current: &k8s_openapi::api::core::v1::Secret,
) {
    for (k, v) in current.labels() {
        secret.labels_mut().entry(k.clone()).or_insert(v.clone());
    }
    for (k, v) in current.annotations() {
        secret
            .annotations_mut()
            .entry(k.clone())
            .or_insert(v.clone());
    }
    if !current.finalizers().is_empty() {
        secret.metadata.finalizers = current.metadata.finalizers.clone();
    }
}

/// The apiserver's message when it refused a write as invalid or conflicting (not when it is
/// unreachable or failing: those are retried).
fn refused(error: &Error) -> Option<String> {
    match error {
        Error::NotOurs(name) => Some(format!(
            "Secret {name:?} exists and is not owned by this ProviderCredential; tokensync never overwrites it"
        )),
        Error::Kube(kube::Error::Api(s)) if matches!(s.code, 400 | 409 | 413 | 422) => {
            Some(s.message.clone())
        }
        _ => None,
    }
}

fn grant_name(grant: &Grant) -> &'static str {
    match grant {
        Grant::Primary => "primary",
        Grant::Refresh(_) => "refresh",
    }
}

/// Requeue at `at`, at least a second from now.
pub(super) fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
    Action::requeue(wait.max(Duration::from_secs(1)))
}
