//! The reconcile planner: pure functions from a [`Snapshot`] of every object read and the time
//! to what the executor does. No I/O and no clock: `now` (and a token's arrival time) are
//! arguments, so every case is a table test.
//!
//! - [`plan`]: wait until T, fail with a reason, write out a token the state already holds, or
//!   request a token with grant G. Everything that can fail after a token is issued (templates,
//!   labels, names) is checked here, before any request spends a one-time input.
//! - [`on_token`]: what to write for the token that arrived: the state first, then the output
//!   Secret, the status and the events.
//! - [`on_error`]: a rejected refresh token falls back to the primary grant once; anything else
//!   is a failure with a reason and a backoff.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use sha2::{Digest, Sha256};

use super::gather::Snapshot;
use super::state::{Pending, State};
use super::{output, status};
use crate::crd::{
    GrantType, InputRole, ProviderCredential, ProviderCredentialSpec, ProviderCredentialStatus,
};
use crate::providers::{Grant, ProviderError, RefreshVerdict};
use crate::reason::Reason;
use crate::renewal::{
    self, Current, Decision, GrantChoice, Observed, Policy, Refresh, Source, decide, retry_at,
};
use crate::token::{Inputs, Redactor, SecretValue, Token};

/// What one reconcile does.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to request until `until`; write `status` when it differs from the one in place.
    Wait {
        until: Timestamp,
        status: Option<Box<ProviderCredentialStatus>>,
    },
    /// Write out a token the provider issued earlier (kept in the state Secret): no request.
    Write(Box<Writes>),
    Fail(Failed),
    Fetch(Box<Attempt>),
}

/// A failure the user must see as `Ready=False`; the token in place stays.
#[derive(Debug)]
pub struct Failed {
    pub reason: Reason,
    pub message: String,
    pub retry_after: Option<SignedDuration>,
    /// A state to persist before anything else (what the provider issued, a dead refresh
    /// token dropped).
    pub state: Option<Box<State>>,
}

impl Failed {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_after: None,
            state: None,
        }
    }
}

/// A token request to make.
#[derive(Debug)]
pub struct Attempt {
    pub why: renewal::Reason,
    pub grant: Grant,
    /// The inputs allow the primary grant, should the refresh token be rejected.
    pub primary_possible: bool,
    /// The last attempt could not reach the provider: give up sooner this time.
    pub shorter_timeout: bool,
    pub state: State,
    pub policy: Policy,
}

/// What to write, in this order: the state Secret (when it changed), the output Secret, the
/// status, the events. The state comes first so that a token or refresh token the provider
/// issued is never lost to a later failure.
#[derive(Debug)]
pub struct Writes {
    pub state: Option<State>,
    /// The state to write should the output write fail (it then holds the token), when
    /// `state` does not hold it already.
    pub keep_on_failure: Option<State>,
    pub output: Secret,
    /// The resourceVersion of the output Secret in place: it is updated only if unchanged since;
    /// `None`: it is created, and an existing one is never taken over.
    pub output_version: Option<String>,
    pub status: ProviderCredentialStatus,
    pub events: Vec<(EventType, Reason, String)>,
    /// When to reconcile next.
    pub wake: Timestamp,
    pub fingerprint: String,
}

/// What follows a failed token request.
#[derive(Debug)]
pub enum AfterError {
    /// The refresh token was rejected: persist `state` (without it), publish the warning, then
    /// try this.
    Retry(Box<Attempt>, String),
    Fail(Failed),
}

/// Decide what this reconcile does.
pub fn plan(snap: &Snapshot, now: Timestamp) -> Plan {
    match try_plan(snap, now) {
        Ok(plan) => plan,
        Err(failed) => Plan::Fail(failed),
    }
}

fn try_plan(snap: &Snapshot, now: Timestamp) -> Result<Plan, Failed> {
    let pc = &snap.pc;
    let spec = &pc.spec;
    let prev = pc.status.clone().unwrap_or_default();
    // a failure backs off before anything else is tried, so it never turns into a hot loop
    if let Some(until) = retry_at(status::last_failure(&prev).as_ref(), &snap.source, now) {
        return Ok(Plan::Wait {
            until: wake_failing(&prev, until, now),
            status: status::expire(&prev, now).map(Box::new),
        });
    }
    for secret in snap.output.iter().chain(snap.state_secret.iter()) {
        if !output::owned_by(secret, pc) {
            return Err(Failed::new(
                Reason::SecretOwnedElsewhere,
                format!(
                    "Secret {:?} exists and is not owned by this ProviderCredential; tokensync never overwrites it",
                    secret.name_any()
                ),
            ));
        }
    }
    let Some(inputs) = &snap.inputs else {
        return Err(Failed::new(
            Reason::InputsNotFound,
            format!(
                "inputs Secret {:?} not found in namespace {:?}",
                spec.inputs.secret_name,
                pc.namespace().unwrap_or_default()
            ),
        ));
    };
    if !snap.inputs_opted_in {
        return Err(Failed::new(
            Reason::InputsNotOptedIn,
            format!(
                "Secret {name:?} does not carry the label {label}=true: tokensync sends a Secret's values to a provider only when the Secret opts in (kubectl label secret {name} -n {ns} {label}=true)",
                name = spec.inputs.secret_name,
                label = super::gather::INPUTS_LABEL,
                ns = pc.namespace().unwrap_or_default(),
            ),
        ));
    }
    let invalid = |message: String| Failed::new(Reason::InvalidSpec, message);
    let policy = Policy::from_spec(spec.refresh.as_ref()).map_err(invalid)?;
    output::validate(pc).map_err(invalid)?;
    let state = snap
        .state_secret
        .as_ref()
        .map(State::read)
        .unwrap_or_default();
    if let Some(writes) = restore(snap, &state, &policy, now) {
        return Ok(Plan::Write(Box::new(writes)));
    }
    let mut observed = observe(snap, inputs, &state);
    // another credential just named this one its upstream: it reads the token from the state
    // Secret, and the token in place cannot be read back from the output Secret, so a new one
    // comes now (once: it goes to the state)
    let fingerprint = snap.output.as_ref().and_then(output::fingerprint);
    if keeps_token(snap)
        && state.token.as_ref().map(SecretValue::fingerprint) != fingerprint
        && let Some(c) = observed.current.as_mut()
    {
        let soonest = renewal::add(c.issued_at, renewal::MIN_RENEW_INTERVAL).max(now);
        c.renew_at = c.renew_at.min(soonest);
    }
    let (why, grant) = match decide(&observed, now) {
        Decision::Wait(until) => {
            return Ok(Plan::Wait {
                until: next_wake(until, &state),
                status: observed
                    .current
                    .filter(|_| prev.last_failure.is_none())
                    .map(|c| {
                        let next = next_wake(until, &state);
                        Box::new(still_ready(snap, &prev, &c, next, &state, now))
                    }),
            });
        }
        Decision::Renew { why, grant } => (why, grant),
    };
    attempt(
        snap,
        &prev,
        why,
        grant,
        state,
        policy,
        observed.primary_possible,
    )
}

/// A request with `grant`, once what it depends on is there.
fn attempt(
    snap: &Snapshot,
    prev: &ProviderCredentialStatus,
    why: renewal::Reason,
    grant: GrantChoice,
    state: State,
    policy: Policy,
    primary_possible: bool,
) -> Result<Plan, Failed> {
    if let Some(Err((reason, message))) = &snap.upstream {
        return Err(Failed::new(*reason, message.clone()));
    }
    if let Err((reason, message)) = &snap.http {
        return Err(Failed::new(*reason, message.clone()));
    }
    let grant = match (grant, &state.refresh_token) {
        (GrantChoice::Refresh, Some(rt)) => Grant::Refresh(rt.clone()),
        (GrantChoice::Primary, _) | (GrantChoice::Refresh, None) => Grant::Primary,
        (GrantChoice::NeedsNewInputs, _) => {
            return Err(Failed::new(
                Reason::NeedsNewInputs,
                format!(
                    "no usable refresh token and the one-time inputs were already used: a person must put new inputs (an authorization code or a refresh token) into Secret {:?}",
                    snap.pc.spec.inputs.secret_name
                ),
            ));
        }
    };
    Ok(Plan::Fetch(Box::new(Attempt {
        why,
        grant,
        primary_possible,
        shorter_timeout: prev
            .last_failure
            .as_ref()
            .is_some_and(|f| f.reason == Reason::ProviderUnreachable.as_str()),
        state,
        policy,
    })))
}

/// When a failing credential wakes: at its next attempt, or when the token in place expires
/// if sooner, so that Ready turns False on time.
pub fn wake_failing(
    status: &ProviderCredentialStatus,
    next_attempt: Timestamp,
    now: Timestamp,
) -> Timestamp {
    let expiry = status.expires_at.as_ref().map(|e| e.0).filter(|e| *e > now);
    expiry.map_or(next_attempt, |e| e.min(next_attempt))
}

/// What the decision needs, from the snapshot and the state.
fn observe(snap: &Snapshot, inputs: &Inputs, state: &State) -> Observed {
    let spec = &snap.pc.spec;
    Observed {
        current: snap.output.as_ref().and_then(output::current),
        source: snap.source.clone(),
        refresh: state
            .refresh_token
            .as_ref()
            .filter(|_| has_refresh_request(spec))
            .map(|_| Refresh {
                deadline: state.refresh_expires_at,
            }),
        primary_possible: primary_possible(spec, inputs, state),
    }
}

/// The status of a credential whose token in place is good (written only when it differs).
fn still_ready(
    snap: &Snapshot,
    prev: &ProviderCredentialStatus,
    current: &Current,
    next: Timestamp,
    state: &State,
    now: Timestamp,
) -> ProviderCredentialStatus {
    let reason = status::ready_condition(prev)
        .filter(|c| c.status == "True")
        .and_then(|c| reason_named(&c.reason))
        .unwrap_or(Reason::TokenIssued);
    let fp = snap.output.as_ref().and_then(output::fingerprint);
    let deadline = state.refresh_token.as_ref().and(state.refresh_expires_at);
    status::success(prev, current, fp, reason, next, deadline, now)
}

fn reason_named(name: &str) -> Option<Reason> {
    [
        Reason::TokenIssued,
        Reason::TokenRenewed,
        Reason::TokenRestored,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
}

/// A token the provider issued that never reached the output Secret (its write failed, or the
/// operator was killed between the two writes): write it out instead of requesting another.
fn restore(snap: &Snapshot, state: &State, policy: &Policy, now: Timestamp) -> Option<Writes> {
    let value = state.token.clone()?;
    let issued_at = state.issued_at?;
    if state.source.as_ref() != Some(&snap.source)
        || state
            .expires_at
            .is_some_and(|e| e <= renewal::add(now, renewal::MIN_TOKEN_LIFETIME))
        || snap.output.as_ref().and_then(output::fingerprint) == Some(value.fingerprint())
        // a token older than the one in place (kept from a failed write) is never written back
        || snap
            .output
            .as_ref()
            .and_then(output::current)
            .is_some_and(|c| c.issued_at >= issued_at)
    {
        return None;
    }
    let token = Token {
        value,
        token_type: state.token_type.clone().unwrap_or_else(|| "Bearer".into()),
        issued_at,
        expires_at: state.expires_at,
        refresh_token: None,
        refresh_expires_at: None,
        scope: None,
        kept: state.kept.clone(),
    };
    writes(
        snap,
        policy,
        &token,
        state,
        None,
        Reason::TokenRestored,
        Vec::new(),
        now,
    )
    .ok()
}

/// What to write for a token that arrived at `token.issued_at` (taken when it arrived, so a
/// slow request never schedules from a stale clock).
pub fn on_token(snap: &Snapshot, attempt: &Attempt, mut token: Token) -> Result<Writes, Failed> {
    let inputs = snap.inputs.clone().unwrap_or_default();
    let mut state = attempt.state.clone();
    let warnings = match renewal::check_token(&mut token) {
        Ok(w) => w,
        Err(message) => return Err(on_refused(attempt, &token, message)),
    };
    record(snap, &mut state, &token, &attempt.grant, &inputs);
    let reason = if snap.output.is_none() && attempt.why == renewal::Reason::Missing {
        Reason::TokenIssued
    } else {
        Reason::TokenRenewed
    };
    let arrived = token.issued_at;
    // the attempt's state is the one stored (read by the planner, or written before a retry)
    let write_state = (state != attempt.state).then(|| state.clone());
    // should writing the token out fail, it goes to the state Secret instead of to waste
    let keep_on_failure = state.token.is_none().then(|| {
        let mut kept = state.clone();
        hold_token(&mut kept, snap, &token);
        kept
    });
    match writes(
        snap,
        &attempt.policy,
        &token,
        &state,
        write_state,
        reason,
        warnings,
        arrived,
    ) {
        Ok(writes) => Ok(Writes {
            keep_on_failure,
            ..writes
        }),
        Err(failed) => Err(Failed {
            state: keep_on_failure.map(Box::new).or(failed.state),
            ..failed
        }),
    }
}

/// A seed for [`renewal::jitter`]: the same for one token of one credential, different across
/// credentials and renewals.
fn jitter_seed(pc: &ProviderCredential, issued_at: Timestamp) -> u64 {
    let mut h = Sha256::new();
    h.update(pc.uid().unwrap_or_default().as_bytes());
    h.update(pc.name_any().as_bytes());
    h.update(issued_at.as_second().to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// A token the provider issued that cannot be used (`message` says why): it is not written, and
/// what the provider issued with it (a rotated refresh token) is kept.
pub fn on_refused(attempt: &Attempt, token: &Token, message: String) -> Failed {
    let state = token.refresh_token.clone().map(|rt| {
        let mut s = attempt.state.clone();
        s.refresh_token = Some(rt);
        s.refresh_expires_at = token.refresh_expires_at;
        Box::new(s)
    });
    Failed {
        reason: Reason::InvalidTokenResponse,
        message: format!("the provider's answer is not usable: {message}"),
        retry_after: None,
        state,
    }
}

/// Whether the state Secret holds the current token: when a replaced token must be revoked, or
/// another credential reads it as its upstream token. Otherwise it is not written there: a
/// renewal that changes nothing else in the state writes no state at all (the output Secret
/// and the status: two writes), and the state holds only what cannot be asked for again.
fn keeps_token(snap: &Snapshot) -> bool {
    let revocable = snap
        .pc
        .spec
        .http
        .as_ref()
        .is_some_and(|h| h.revoke.is_some());
    revocable || snap.upstream_of_others
}

/// Whether a credential's first token may have to be stored in its state Secret: anything but
/// an OAuth 2.0 client-credentials grant may come with a refresh token, a grant that spends a
/// one-time input stores its token with the input's use, a revocable token is kept to be
/// revoked, and an upstream's token is read by its dependents. A client-credentials token
/// (which RFC 6749 says comes without a refresh token) can always be asked for again.
pub fn state_written_by_first_token(
    spec: &ProviderCredentialSpec,
    upstream_of_others: bool,
) -> bool {
    let client_credentials = spec
        .oauth2
        .as_ref()
        .is_some_and(|o| o.grant_type == GrantType::ClientCredentials);
    !client_credentials || upstream_of_others || one_time_grant(spec)
}

/// Put `token` into `state` (to be written out later, or read as an upstream token).
fn hold_token(state: &mut State, snap: &Snapshot, token: &Token) {
    state.token = Some(token.value.clone());
    state.issued_at = Some(token.issued_at);
    state.source = Some(snap.source.clone());
    state.token_type = Some(token.token_type.clone());
    state.expires_at = token.expires_at;
}

#[allow(clippy::too_many_arguments)]
fn writes(
    snap: &Snapshot,
    policy: &Policy,
    token: &Token,
    state: &State,
    write_state: Option<State>,
    reason: Reason,
    warnings: Vec<String>,
    now: Timestamp,
) -> Result<Writes, Failed> {
    let pc = &snap.pc;
    let share = if reason == Reason::TokenIssued {
        renewal::FIRST_JITTER_PERCENT
    } else {
        renewal::JITTER_PERCENT
    };
    let renew_at = renewal::jitter(
        policy.renew_at(token.issued_at, token.expires_at),
        token.issued_at,
        jitter_seed(pc, token.issued_at),
        share,
    );
    let current = Current {
        issued_at: token.issued_at,
        expires_at: token.expires_at,
        renew_at,
        source: snap.source.clone(),
    };
    let inputs = snap.inputs.clone().unwrap_or_default();
    let observed = Observed {
        current: Some(current.clone()),
        ..observe(snap, &inputs, state)
    };
    let wake = next_wake(
        observed
            .keepalive_at()
            .map_or(renew_at, |k| k.min(renew_at)),
        state,
    );
    let output = output::build(
        pc,
        token,
        state.refresh_token.as_ref(),
        renew_at,
        &snap.source,
    )
    .map_err(|message| Failed {
        state: write_state.clone().map(Box::new),
        ..Failed::new(Reason::InvalidSpec, message)
    })?;
    let fingerprint = token.value.fingerprint();
    let prev = pc.status.clone().unwrap_or_default();
    let deadline = state.refresh_token.as_ref().and(state.refresh_expires_at);
    let status = status::success(
        &prev,
        &current,
        Some(fingerprint.clone()),
        reason,
        wake,
        deadline,
        now,
    );
    let expiry = token
        .expires_at
        .map(|e| format!("expires at {e}"))
        .unwrap_or_else(|| "no known expiry".into());
    let verb = match reason {
        Reason::TokenIssued => "issued",
        Reason::TokenRestored => "restored from the state Secret",
        _ => "renewed",
    };
    let mut events: Vec<_> = warnings
        .into_iter()
        .map(|w| (EventType::Warning, Reason::LifetimeClamped, w))
        .collect();
    events.push((
        EventType::Normal,
        reason,
        format!(
            "token {verb} (fingerprint {fingerprint}, {expiry}) into Secret {:?}",
            pc.spec.output.secret_name
        ),
    ));
    if let Some(warning) =
        person_must_act(&observed, &prev, deadline, &pc.spec.inputs.secret_name, now)
    {
        events.push((EventType::Warning, Reason::RefreshTokenExpiring, warning));
    }
    Ok(Writes {
        state: write_state,
        keep_on_failure: None,
        output,
        output_version: snap
            .output
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone()),
        status,
        events,
        wake,
        fingerprint,
    })
}

/// How long before a refresh token's deadline a person is warned, when only a person can renew
/// the credential (its one-time inputs were spent): at least a day.
pub const WARN_BEFORE_REFRESH_DEADLINE: SignedDuration = SignedDuration::from_hours(24);

/// A warning, once per deadline, that the refresh token of a credential only a person can renew
/// (an exchanged authorization code) dies soon.
fn person_must_act(
    observed: &Observed,
    prev: &ProviderCredentialStatus,
    deadline: Option<Timestamp>,
    inputs_secret: &str,
    now: Timestamp,
) -> Option<String> {
    let deadline = deadline?;
    let window = |at: Timestamp| deadline <= renewal::add(at, WARN_BEFORE_REFRESH_DEADLINE);
    if observed.primary_possible || !window(now) {
        return None;
    }
    let warned = prev.refresh_token_expires_at.as_ref().map(|t| t.0) == Some(deadline)
        && prev.last_refresh_at.as_ref().is_some_and(|t| window(t.0));
    (!warned).then(|| {
        format!(
            "the refresh token dies at {deadline} and the one-time inputs were already used: before then a person must put a new authorization code (or refresh token) into Secret {:?}",
            inputs_secret
        )
    })
}

/// What follows a failed request. A failed refresh is judged by the provider's OAuth error
/// code: a dead refresh token (`invalid_grant`, or any other 4xx) is dropped and the primary
/// grant tried once when the inputs allow it, with a Warning that carries the provider's
/// reason; a configuration error (`invalid_client`, ...) or an outage keeps the refresh token.
pub fn on_error(snap: &Snapshot, attempt: Attempt, error: &ProviderError) -> AfterError {
    let message = redact(snap, &attempt.state, &error.to_string());
    if !matches!(attempt.grant, Grant::Refresh(_)) {
        return AfterError::Fail(Failed {
            retry_after: error.retry_after(),
            ..Failed::new(error.reason(), message)
        });
    }
    if error.refresh_verdict() != RefreshVerdict::GrantDead {
        return AfterError::Fail(Failed {
            retry_after: error.retry_after(),
            ..Failed::new(
                error.reason(),
                format!("the refresh grant failed (the refresh token is kept): {message}"),
            )
        });
    }
    let mut state = attempt.state;
    state.refresh_token = None;
    state.refresh_expires_at = None;
    if attempt.primary_possible {
        let warning = format!(
            "the provider rejected the refresh token ({message}); logging in again with the primary grant"
        );
        return AfterError::Retry(
            Box::new(Attempt {
                grant: Grant::Primary,
                state,
                ..attempt
            }),
            warning,
        );
    }
    AfterError::Fail(Failed {
        state: Some(Box::new(state)),
        ..Failed::new(
            Reason::RefreshTokenRejected,
            format!(
                "the provider rejected the refresh token ({message}) and the inputs allow no new login: a person must put new inputs into Secret {:?}",
                snap.pc.spec.inputs.secret_name
            ),
        )
    })
}

/// Remove every secret value this credential knows of from `text`, in every encoding: the
/// inputs, the stored token (the one in place), the refresh token, tokens waiting to be
/// revoked and the upstream credential's token.
pub fn redact(snap: &Snapshot, state: &State, text: &str) -> String {
    let mut r = Redactor::default();
    if let Some(inputs) = &snap.inputs {
        r.add_all(inputs.secrets());
    }
    r.add_all(state.token.iter().chain(state.refresh_token.iter()));
    r.add_all(state.pending.iter().map(|p| &p.token));
    if let Some(Ok(up)) = &snap.upstream {
        r.add(&up.value);
    }
    r.redact(text)
}

/// Fold a new token into the state: rotate the refresh token, remember used one-time inputs,
/// queue the replaced token for revocation.
fn record(snap: &Snapshot, state: &mut State, token: &Token, grant: &Grant, inputs: &Inputs) {
    let spec = &snap.pc.spec;
    let revocable = spec.http.as_ref().is_some_and(|h| h.revoke.is_some());
    let old_kept = std::mem::take(&mut state.kept);
    if let Some(old) = state.token.take()
        && revocable
        && old != token.value
    {
        state.pending.push(Pending {
            token: old,
            kept: old_kept,
            attempts: 0,
            next_at: token.issued_at,
        });
    }
    // a token bought with a one-time input is stored with the input's use (that write happens
    // anyway): lost between the two writes, it could not be asked for again
    let spent_one_time = matches!(grant, Grant::Primary) && one_time_input(spec, inputs).is_some();
    if keeps_token(snap) || spent_one_time {
        hold_token(state, snap, token);
    } else {
        state.token = None;
        state.issued_at = None;
        state.source = None;
        state.token_type = None;
        state.expires_at = None;
    }
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
        && let Some(fp) = one_time_input(spec, inputs).map(SecretValue::fingerprint)
        && !state.used_inputs.contains(&fp)
    {
        state.used_inputs.push(fp);
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

/// Whether the primary grant consumes a one-time input (an authorization code, a bootstrap
/// refresh token).
pub fn one_time_grant(spec: &ProviderCredentialSpec) -> bool {
    spec.oauth2.as_ref().is_some_and(|o| {
        matches!(
            o.grant_type,
            GrantType::AuthorizationCode | GrantType::RefreshToken
        )
    })
}

/// Whether the inputs allow the primary grant: always, unless it consumes a one-time input that
/// is absent or already used.
fn primary_possible(spec: &ProviderCredentialSpec, inputs: &Inputs, state: &State) -> bool {
    if !one_time_grant(spec) {
        return true;
    }
    one_time_input(spec, inputs).is_some_and(|v| !state.used_inputs.contains(&v.fingerprint()))
}

/// The earlier of `at` and the next pending revocation.
pub fn next_wake(at: Timestamp, state: &State) -> Timestamp {
    state
        .pending
        .iter()
        .map(|p| p.next_at)
        .fold(at, Timestamp::min)
}

/// Every source of a credential's token: the spec generation, the inputs hash, the forced
/// renewal's annotation.
pub fn source(pc: &crate::crd::ProviderCredential, inputs_hash: Option<String>) -> Source {
    Source {
        generation: pc.metadata.generation.unwrap_or_default(),
        inputs_hash: inputs_hash.unwrap_or_else(|| "none".into()),
        force_refresh: pc
            .annotations()
            .get(super::reconcile::FORCE_REFRESH_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
