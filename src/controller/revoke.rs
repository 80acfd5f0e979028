//! Revocation: replaced tokens after each rotation, and the last one when the
//! ProviderCredential is deleted (behind the `tokensync.dev/revoke` finalizer). A failing
//! revocation is retried with backoff and given up after `max_revoke_attempts`, with a Warning
//! event, so deletion never hangs.

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::Error;
use super::reconcile::Reconcile;
use super::state::{self, Pending, State};
use crate::providers::{Grant, Request, Upstream, declarative};
use crate::reason::Reason;
use crate::renewal;
use crate::token::Inputs;

impl Reconcile<'_> {
    /// Run the revocations that are due; `true` when the state changed. A failed revocation is
    /// retried with backoff and given up after `max_revoke_attempts`, with a Warning event.
    pub(super) async fn revoke_due(
        &self,
        state: &mut State,
        inputs: &Inputs,
        upstream: Option<Upstream>,
    ) -> bool {
        let Some(http) = self.pc.spec.http.as_ref().filter(|h| h.revoke.is_some()) else {
            return false;
        };
        let now = renewal::now();
        let due: Vec<Pending> = state
            .pending
            .iter()
            .filter(|p| p.next_at <= now)
            .cloned()
            .collect();
        if due.is_empty() {
            return false;
        }
        let request = Request {
            spec: &self.pc.spec,
            inputs,
            grant: Grant::Primary,
            now,
            egress: &self.ctx.egress,
            upstream,
            timeout: None,
        };
        for p in due {
            let vars = declarative::Vars {
                token: Some(&p.token),
                kept: Some(&p.kept),
                current: state.token.as_ref(),
                refresh_token: None,
            };
            let fp = p.token.fingerprint();
            let outcome = declarative::revoke(&self.ctx.http, http, &request, &vars).await;
            state.pending.retain(|q| q.token != p.token);
            match outcome {
                Ok(_) => {
                    info!(fingerprint = %fp, "token revoked");
                    self.event(
                        EventType::Normal,
                        Reason::TokenRevoked,
                        format!("revoked token {fp}"),
                    )
                    .await;
                }
                Err(e) if p.attempts + 1 >= self.ctx.config.max_revoke_attempts => {
                    let message = format!(
                        "gave up revoking token {fp} after {} attempts: {}",
                        p.attempts + 1,
                        inputs.redact(&e.to_string())
                    );
                    warn!(%message);
                    self.event(EventType::Warning, Reason::RevocationFailed, message)
                        .await;
                }
                Err(e) => {
                    let attempts = p.attempts + 1;
                    warn!(fingerprint = %fp, attempts, error = %inputs.redact(&e.to_string()), "revocation failed; will retry");
                    state.pending.push(Pending {
                        attempts,
                        next_at: renewal::add(now, renewal::backoff(attempts)),
                        ..p
                    });
                }
            }
        }
        true
    }

    /// Deletion: revoke the current token and any still pending, then let the object go. When
    /// the spec no longer has a revoke request, nothing can be revoked: the object goes at once.
    pub(super) async fn cleanup(&self) -> Result<Action, Error> {
        if self
            .pc
            .spec
            .http
            .as_ref()
            .is_none_or(|h| h.revoke.is_none())
        {
            self.event(
                EventType::Warning,
                Reason::RevocationFailed,
                "the spec has no revoke request any more: tokens issued earlier are not revoked"
                    .into(),
            )
            .await;
            return Ok(Action::await_change());
        }
        let now = renewal::now();
        let Some(secret) = self
            .secrets
            .get_opt(&state::name(&self.pc.name_any()))
            .await?
        else {
            return Ok(Action::await_change());
        };
        let mut state = State::read(&secret);
        if let Some(token) = state.token.take() {
            state.pending.push(Pending {
                token,
                kept: std::mem::take(&mut state.kept),
                attempts: 0,
                next_at: now,
            });
        }
        // on deletion every pending revocation is due now
        for p in &mut state.pending {
            p.next_at = p.next_at.min(now);
        }
        let inputs = match self
            .secrets
            .get_opt(&self.pc.spec.inputs.secret_name)
            .await?
        {
            Some(s) => Inputs::from_secret(&s).with_public_roles(&self.pc.spec.inputs.keys),
            None => Inputs::default(),
        };
        let upstream = super::gather::upstream(self.ctx, None, &self.secrets, &self.pc)
            .await?
            .and_then(Result::ok);
        self.revoke_due(&mut state, &inputs, upstream).await;
        if state.pending.is_empty() {
            return Ok(Action::await_change());
        }
        let attempts = state.pending.iter().map(|p| p.attempts).max().unwrap_or(1);
        self.apply_state(&state).await?;
        Err(Error::RevocationPending { attempts })
    }
}
