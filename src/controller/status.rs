//! Status as a pure function of the previous status and what just happened.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{LastFailure, ProviderCredentialStatus};
use crate::reason::Reason;
use crate::renewal::{self, Current, Failure, Source};

pub const READY: &str = "Ready";

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
    }
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
    set_condition(
        &mut next.conditions,
        READY,
        false,
        reason.as_str(),
        message,
        generation,
        now,
    );
    let count = match last_failure(prev) {
        Some(f) if &f.source == source => f.count.saturating_add(1),
        _ => 1,
    };
    next.last_failure = Some(LastFailure {
        at: Time(now),
        count,
        reason: reason.as_str().into(),
        generation,
        inputs_hash: Some(source.inputs_hash.clone()),
        force_refresh: Some(source.force_refresh.clone()).filter(|f| !f.is_empty()),
    });
    next.next_attempt_at = Some(Time(renewal::next_attempt(now, count, retry_after)));
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
            t(0),
        );
        let s2 = success(&s1, &cur(), None, Reason::TokenRenewed, t(800), t(800));
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
        let ok = success(&s, &cur(), None, Reason::TokenIssued, t(800), t(7));
        assert_eq!(ok.last_failure, None);
        assert_eq!(ok.inputs_hash.as_deref(), Some("h1"));
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
