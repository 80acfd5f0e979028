//! Status as a pure function of the previous status and what just happened.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LastFailure, ProviderCredentialStatus};
use crate::reason::Reason;
use crate::renewal::{self, Current, Failure, Source};

/// True while the output Secret holds a valid token, whatever the last renewal did.
pub const READY: &str = "Ready";
/// True while renewals fail; its reason and message say why.
pub const DEGRADED: &str = "Degraded";

/// Set a condition; `lastTransitionTime` moves only when the status flips.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    });
}

pub fn ready_condition(status: &ProviderCredentialStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

/// The status after a token is in place (`current`, fingerprint), with `reason`; the next
/// attempt is the renewal (`next_attempt_at`, which may be earlier to keep a session alive).
pub fn success(
    prev: &ProviderCredentialStatus,
    current: &Current,
    fingerprint: Option<String>,
    reason: Reason,
    next_attempt_at: Timestamp,
    refresh_expires_at: Option<Timestamp>,
    now: Timestamp,
) -> ProviderCredentialStatus {
    let mut conditions = prev.conditions.clone();
    let message = match current.expires_at {
        Some(e) => format!("token valid until {e}; renewal at {}", current.renew_at),
        None => format!("token has no known expiry; renewal at {}", current.renew_at),
    };
    let generation = Some(current.source.generation);
    set_condition(
        &mut conditions,
        READY,
        true,
        reason.as_str(),
        message,
        generation,
        now,
    );
    set_condition(
        &mut conditions,
        DEGRADED,
        false,
        reason.as_str(),
        "the last renewal succeeded".into(),
        generation,
        now,
    );
    ProviderCredentialStatus {
        conditions,
        observed_generation: generation,
        expires_at: current.expires_at.map(Time),
        renew_at: Some(Time(current.renew_at)),
        last_refresh_at: Some(Time(current.issued_at)),
        token_fingerprint: fingerprint,
        inputs_hash: Some(current.source.inputs_hash.clone()),
        next_attempt_at: Some(Time(next_attempt_at)),
        last_failure: None,
        refresh_token_expires_at: refresh_expires_at.map(Time),
    }
}

/// Whether the status says a token is in place that is still valid at `now`.
fn token_valid(status: &ProviderCredentialStatus, now: Timestamp) -> bool {
    status.token_fingerprint.is_some() && status.expires_at.as_ref().is_none_or(|e| now < e.0)
}

/// A status that says Ready while its token has expired since: Ready turns False with the
/// failing renewal's reason. `None` when nothing changes.
pub fn expire(prev: &ProviderCredentialStatus, now: Timestamp) -> Option<ProviderCredentialStatus> {
    let ready = ready_condition(prev).filter(|c| c.status == "True")?;
    let expired = prev.expires_at.as_ref().filter(|e| e.0 <= now)?;
    let (reason, why) = match prev.last_failure.as_ref() {
        Some(f) => (
            f.reason.clone(),
            prev.conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .map(|c| format!("; renewal failing: {}", c.message))
                .unwrap_or_default(),
        ),
        None => (Reason::TokenExpired.as_str().to_string(), String::new()),
    };
    let mut next = prev.clone();
    set_condition(
        &mut next.conditions,
        READY,
        false,
        &reason,
        format!("the token expired at {}{why}", expired.0),
        ready.observed_generation,
        now,
    );
    Some(next)
}

/// The last failure recorded in `status`, for the backoff gate.
pub fn last_failure(status: &ProviderCredentialStatus) -> Option<Failure> {
    let f = status.last_failure.as_ref()?;
    Some(Failure {
        at: f.at.0,
        count: f.count,
        source: Source {
            generation: f.generation.unwrap_or_default(),
            inputs_hash: f.inputs_hash.clone().unwrap_or_default(),
            force_refresh: f.force_refresh.clone().unwrap_or_default(),
        },
        next_attempt_at: status.next_attempt_at.as_ref().map_or(f.at.0, |t| t.0),
    })
}

/// The status after a failed attempt from `source`; what the previous token's fields said
/// stays, since that token stays in place. The next attempt waits out the backoff, or the
/// provider's `Retry-After` when longer.
pub fn failure(
    prev: &ProviderCredentialStatus,
    source: &Source,
    reason: Reason,
    message: String,
    retry_after: Option<SignedDuration>,
    now: Timestamp,
) -> ProviderCredentialStatus {
    let mut next = prev.clone();
    let generation = Some(source.generation);
    let count = match last_failure(prev) {
        Some(f) if &f.source == source => f.count.saturating_add(1),
        _ => 1,
    };
    let max_backoff = if !token_valid(prev, now) && reason.outage() {
        renewal::MAX_BACKOFF_WITHOUT_TOKEN
    } else {
        renewal::MAX_BACKOFF
    };
    let next_attempt = renewal::next_attempt_within(now, count, retry_after, max_backoff);
    set_condition(
        &mut next.conditions,
        DEGRADED,
        true,
        reason.as_str(),
        message.clone(),
        generation,
        now,
    );
    // a valid token in place keeps the credential Ready: workloads are fine until it expires
    if token_valid(prev, now) {
        let until = prev
            .expires_at
            .as_ref()
            .map_or("it is replaced".to_string(), |e| e.0.to_string());
        set_condition(
            &mut next.conditions,
            READY,
            true,
            Reason::RenewalFailing.as_str(),
            format!(
                "the token in place is valid until {until}; renewal is failing ({reason}, see the Degraded condition); next attempt at {next_attempt}"
            ),
            generation,
            now,
        );
    } else {
        set_condition(
            &mut next.conditions,
            READY,
            false,
            reason.as_str(),
            message,
            generation,
            now,
        );
    }
    next.last_failure = Some(LastFailure {
        at: Time(now),
        count,
        reason: reason.as_str().into(),
        generation,
        inputs_hash: Some(source.inputs_hash.clone()),
        force_refresh: Some(source.force_refresh.clone()).filter(|f| !f.is_empty()),
    });
    next.next_attempt_at = Some(Time(next_attempt));
    next.observed_generation = generation;
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn src(hash: &str) -> Source {
        Source {
            generation: 1,
            inputs_hash: hash.into(),
            force_refresh: String::new(),
        }
    }

    fn cur() -> Current {
        Current {
            issued_at: t(0),
            expires_at: Some(t(1200)),
            renew_at: t(800),
            source: src("h1"),
        }
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let s1 = success(
            &Default::default(),
            &cur(),
            None,
            Reason::TokenIssued,
            t(800),
            None,
            t(0),
        );
        let s2 = success(
            &s1,
            &cur(),
            None,
            Reason::TokenRenewed,
            t(800),
            None,
            t(800),
        );
        let c = ready_condition(&s2).unwrap();
        assert_eq!(c.last_transition_time, Time(t(0)));
        assert_eq!(c.reason, "TokenRenewed");
        let s3 = failure(
            &s2,
            &src("h1"),
            Reason::Unauthorized,
            "401".into(),
            None,
            t(900),
        );
        let c = ready_condition(&s3).unwrap();
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.clone()),
            ("False", Time(t(900)))
        );
        // the old token's times stay: it is still in place
        assert_eq!(s3.expires_at, Some(Time(t(1200))));
        assert_eq!(s3.last_failure.as_ref().unwrap().count, 1);
        assert_eq!(s3.next_attempt_at, Some(Time(t(905))));
    }

    #[test]
    fn failures_count_per_source() {
        let s = failure(
            &Default::default(),
            &src("h1"),
            Reason::Unauthorized,
            "m".into(),
            None,
            t(0),
        );
        let s = failure(&s, &src("h1"), Reason::Unauthorized, "m".into(), None, t(5));
        assert_eq!(s.last_failure.as_ref().unwrap().count, 2);
        assert_eq!(s.next_attempt_at, Some(Time(t(15))));
        assert_eq!(last_failure(&s).unwrap().source, src("h1"));
        let s = failure(&s, &src("h2"), Reason::Unauthorized, "m".into(), None, t(6));
        assert_eq!(s.last_failure.as_ref().unwrap().count, 1);
        // the status holds the hash and the reason, not a composite key
        let f = s.last_failure.as_ref().unwrap();
        assert_eq!(
            (f.inputs_hash.as_deref(), f.reason.as_str()),
            (Some("h2"), "Unauthorized")
        );
        let ok = success(&s, &cur(), None, Reason::TokenIssued, t(800), None, t(7));
        assert_eq!(ok.last_failure, None);
        assert_eq!(ok.inputs_hash.as_deref(), Some("h1"));
    }

    fn condition(s: &ProviderCredentialStatus, type_: &str) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    /// Issue 9: Ready means a valid token in place; a failing renewal is `Degraded`, and Ready
    /// turns False when the token expires.
    #[test]
    fn ready_means_a_valid_token() {
        let ok = success(
            &Default::default(),
            &cur(),
            Some("fp".into()),
            Reason::TokenIssued,
            t(800),
            None,
            t(0),
        );
        assert_eq!(
            condition(&ok, DEGRADED),
            ("False".into(), "TokenIssued".into())
        );
        // the vendor fails at the renewal: still Ready, Degraded says why
        let failing = failure(
            &ok,
            &src("h1"),
            Reason::TokenRequestFailed,
            "HTTP 503".into(),
            None,
            t(800),
        );
        assert_eq!(
            condition(&failing, READY),
            ("True".into(), "RenewalFailing".into())
        );
        assert_eq!(
            condition(&failing, DEGRADED),
            ("True".into(), "TokenRequestFailed".into())
        );
        let ready = ready_condition(&failing).unwrap();
        assert_eq!(ready.last_transition_time, Time(t(0)), "Ready did not flip");
        assert!(ready.message.contains("valid until"), "{}", ready.message);
        // before expiry nothing changes; at expiry Ready turns False with the failure's reason
        assert_eq!(expire(&failing, t(1199)), None);
        let expired = expire(&failing, t(1200)).unwrap();
        assert_eq!(
            condition(&expired, READY),
            ("False".into(), "TokenRequestFailed".into())
        );
        // a failure after expiry is not Ready either
        let later = failure(
            &expired,
            &src("h1"),
            Reason::TokenRequestFailed,
            "HTTP 503".into(),
            None,
            t(1300),
        );
        assert_eq!(
            condition(&later, READY),
            ("False".into(), "TokenRequestFailed".into())
        );
        // recovery
        let back = success(
            &later,
            &cur(),
            Some("fp2".into()),
            Reason::TokenRenewed,
            t(2000),
            None,
            t(1310),
        );
        assert_eq!(
            condition(&back, READY),
            ("True".into(), "TokenRenewed".into())
        );
        assert_eq!(condition(&back, DEGRADED).0, "False");
    }

    #[test]
    fn retry_after_sets_the_next_attempt() {
        let s = failure(
            &Default::default(),
            &src("h1"),
            Reason::RateLimited,
            "429".into(),
            Some(SignedDuration::from_secs(120)),
            t(0),
        );
        assert_eq!(s.next_attempt_at, Some(Time(t(120))));
    }
}
