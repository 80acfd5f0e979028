//! Status as a pure function of the previous status and what just happened.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::ProviderCredentialStatus;
use crate::renewal::Current;

pub const READY: &str = "Ready";
pub const REASON_ISSUED: &str = "TokenIssued";
pub const REASON_RENEWED: &str = "TokenRenewed";
pub const REASON_INPUTS_NOT_FOUND: &str = "InputsNotFound";
pub const REASON_OWNED_ELSEWHERE: &str = "SecretOwnedElsewhere";
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_NEEDS_NEW_INPUTS: &str = "NeedsNewInputs";
pub const REASON_REFRESH_REJECTED: &str = "RefreshTokenRejected";
pub const REASON_UPSTREAM_NOT_READY: &str = "UpstreamNotReady";
pub const REASON_REVOKED: &str = "TokenRevoked";
pub const REASON_REVOKE_FAILED: &str = "RevocationFailed";
pub const REASON_FORBIDDEN: &str = "Forbidden";
pub const REASON_CA_BUNDLE_NOT_FOUND: &str = "CABundleNotFound";

/// The event reason for a failure's condition reason: missing inputs are `InputsMissing`, a
/// failed or refused token request `TokenRequestFailed`; the rest keep their own reason.
pub fn event_reason(condition_reason: &str) -> &str {
    match condition_reason {
        REASON_INPUTS_NOT_FOUND | "InputKeyMissing" => "InputsMissing",
        "Unauthorized"
        | "TokenRequestFailed"
        | "ProviderUnreachable"
        | "InsecureURL"
        | "HostNotAllowed" => "TokenRequestFailed",
        other => other,
    }
}

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

/// The status after a token is in place (`current`, fingerprint), with `reason`.
pub fn success(
    prev: &ProviderCredentialStatus,
    generation: Option<i64>,
    current: &Current,
    fingerprint: Option<String>,
    reason: &str,
    now: Timestamp,
) -> ProviderCredentialStatus {
    let mut conditions = prev.conditions.clone();
    let message = match current.expires_at {
        Some(e) => format!("token valid until {e}; renewal at {}", current.renew_at),
        None => format!("token has no known expiry; renewal at {}", current.renew_at),
    };
    set_condition(
        &mut conditions,
        READY,
        true,
        reason,
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
        failures: None,
        last_failure_at: None,
        last_failure_source: None,
    }
}

/// The status after a failed attempt; what the previous token's fields said stays, since that
/// token stays in place.
pub fn failure(
    prev: &ProviderCredentialStatus,
    generation: Option<i64>,
    reason: &str,
    message: String,
    source: &str,
    now: Timestamp,
) -> ProviderCredentialStatus {
    let mut next = prev.clone();
    set_condition(
        &mut next.conditions,
        READY,
        false,
        reason,
        message,
        generation,
        now,
    );
    let same_source = prev.last_failure_source.as_deref() == Some(source);
    next.failures = Some(if same_source {
        prev.failures.unwrap_or(0).saturating_add(1)
    } else {
        1
    });
    next.last_failure_at = Some(Time(now));
    next.last_failure_source = Some(source.into());
    next.observed_generation = generation;
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn cur() -> Current {
        Current {
            issued_at: t(0),
            expires_at: Some(t(1200)),
            renew_at: t(800),
            source: "1/1".into(),
            refresh_expires_at: None,
        }
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let s1 = success(
            &Default::default(),
            Some(1),
            &cur(),
            None,
            REASON_ISSUED,
            t(0),
        );
        let s2 = success(&s1, Some(1), &cur(), None, REASON_RENEWED, t(800));
        let c = ready_condition(&s2).unwrap();
        assert_eq!(c.last_transition_time, Time(t(0)));
        assert_eq!(c.reason, REASON_RENEWED);
        let s3 = failure(&s2, Some(1), "Unauthorized", "401".into(), "1/1", t(900));
        let c = ready_condition(&s3).unwrap();
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.clone()),
            ("False", Time(t(900)))
        );
        // the old token's times stay: it is still in place
        assert_eq!(s3.expires_at, Some(Time(t(1200))));
        assert_eq!(s3.failures, Some(1));
    }

    #[test]
    fn failures_count_per_source() {
        let s = failure(&Default::default(), Some(1), "X", "m".into(), "1/1", t(0));
        let s = failure(&s, Some(1), "X", "m".into(), "1/1", t(5));
        assert_eq!(s.failures, Some(2));
        let s = failure(&s, Some(1), "X", "m".into(), "1/2", t(6));
        assert_eq!(s.failures, Some(1));
        let ok = success(&s, Some(1), &cur(), None, REASON_ISSUED, t(7));
        assert_eq!((ok.failures, ok.last_failure_at), (None, None));
    }
}
