//! When to renew: pure functions of (what is in place, policy, now). No I/O, no clock of its own.
//!
//! Modelled on cert-manager's renewal policy chain: the instant to renew at is derived from the
//! token's lifetime and truncated to whole seconds, so the scheduled recheck and the "is it due?"
//! check agree; failures back off exponentially, and a change of the spec or the inputs retries at once.

use jiff::{SignedDuration, Timestamp};

use crate::crd::RefreshPolicy;

/// Backoff after the first failure; doubles per failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: SignedDuration = SignedDuration::from_secs(5);
pub const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(300);
/// Renewal interval for a token without any expiry, unless the policy says otherwise.
pub const DEFAULT_FALLBACK: SignedDuration = SignedDuration::from_secs(3600);

/// Now, truncated to whole seconds: expiry and renewal times then read well and compare exactly.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// A parsed [`RefreshPolicy`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub renew_before: RenewBefore,
    pub fallback_interval: SignedDuration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RenewBefore {
    /// Renew this long before expiry.
    Duration(SignedDuration),
    /// Renew when this percentage of the lifetime is left.
    Percentage(u8),
    /// Renew when two thirds of the lifetime have passed.
    Default,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            renew_before: RenewBefore::Default,
            fallback_interval: DEFAULT_FALLBACK,
        }
    }
}

impl Policy {
    pub fn from_spec(spec: Option<&RefreshPolicy>) -> Result<Self, String> {
        let Some(spec) = spec else {
            return Ok(Self::default());
        };
        let renew_before = match (&spec.renew_before, spec.renew_before_percentage) {
            (Some(d), _) => RenewBefore::Duration(
                parse_duration(d).map_err(|e| format!("spec.refresh.renewBefore: {e}"))?,
            ),
            (None, Some(p)) => RenewBefore::Percentage(p.clamp(1, 99)),
            (None, None) => RenewBefore::Default,
        };
        let fallback_interval = match &spec.fallback_interval {
            Some(d) => {
                parse_duration(d).map_err(|e| format!("spec.refresh.fallbackInterval: {e}"))?
            }
            None => DEFAULT_FALLBACK,
        };
        Ok(Self {
            renew_before,
            fallback_interval,
        })
    }

    /// The instant to renew a token issued at `issued_at` that expires at `expires_at`.
    pub fn renew_at(&self, issued_at: Timestamp, expires_at: Option<Timestamp>) -> Timestamp {
        let Some(expires_at) = expires_at else {
            return truncate(issued_at + self.fallback_interval);
        };
        let lifetime = expires_at.duration_since(issued_at);
        if lifetime <= SignedDuration::ZERO {
            return truncate(issued_at);
        }
        let two_thirds = issued_at + lifetime * 2 / 3;
        let at = match self.renew_before {
            RenewBefore::Duration(d) if d < lifetime => expires_at - d,
            RenewBefore::Duration(_) | RenewBefore::Default => two_thirds,
            RenewBefore::Percentage(p) => expires_at - lifetime * i32::from(p) / 100,
        };
        truncate(at)
    }
}

/// Truncate to whole seconds, so a requeue at `t` and the check `now >= t` agree.
fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Parse `90s`, `10m`, `1h30m`, `8d` (the CRD's duration pattern).
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("invalid duration {text:?}: unknown unit {c:?}")),
        };
        let n: i64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: a number must precede {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: expected e.g. 90s, 10m, 1h30m, 8d"
        ));
    }
    Ok(SignedDuration::from_secs(total))
}

/// The token in place, as recorded on the output Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub renew_at: Timestamp,
    /// The spec generation and inputs version the token was obtained with.
    pub source: String,
    /// When the stored refresh token dies, if it has a deadline.
    pub refresh_expires_at: Option<Timestamp>,
}

impl Current {
    /// When to stop relying on the refresh token and do the primary grant: as long before its
    /// deadline as the access token is renewed before its expiry.
    pub fn refresh_renew_at(&self) -> Option<Timestamp> {
        let deadline = self.refresh_expires_at?;
        let margin = match self.expires_at {
            Some(e) => e.duration_since(self.renew_at).max(SignedDuration::ZERO),
            None => SignedDuration::ZERO,
        };
        Some(truncate(deadline - margin))
    }
}

/// The last failed attempt, as recorded in status.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub at: Timestamp,
    pub count: u32,
    pub source: String,
}

/// Everything the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub current: Option<Current>,
    /// The spec generation and inputs version now.
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No token is in place (first issue, or the Secret was deleted).
    Missing,
    /// The spec or the inputs changed since the token was obtained.
    SourceChanged,
    /// The renewal time has come.
    Due,
    /// The token has expired (e.g. the controller was down).
    Expired,
    /// The refresh token's own deadline is near: time for the primary grant.
    RefreshTokenExpiring,
}

/// Which grant a renewal runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantChoice {
    Primary,
    Refresh,
    /// Neither works: the refresh token is gone and the inputs were one-time (an authorization
    /// code already exchanged). A person must provide new inputs.
    NeedsNewInputs,
}

/// Choose the grant for a renewal. `refresh_usable`: a refresh token is stored and alive;
/// `primary_possible`: the inputs allow the primary grant (not an already-used one-time code).
pub fn choose_grant(reason: Reason, refresh_usable: bool, primary_possible: bool) -> GrantChoice {
    let prefer_primary = matches!(reason, Reason::RefreshTokenExpiring | Reason::SourceChanged);
    match (prefer_primary, refresh_usable, primary_possible) {
        (true, _, true) => GrantChoice::Primary,
        (_, true, _) => GrantChoice::Refresh,
        (false, false, true) => GrantChoice::Primary,
        (_, false, false) => GrantChoice::NeedsNewInputs,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Renew(Reason),
    /// Nothing to do until then.
    Wait(Timestamp),
}

/// The delay before retry number `failures + 1`.
pub fn backoff(failures: u32) -> SignedDuration {
    let exp = failures.saturating_sub(1).min(16);
    (BASE_BACKOFF * (1i32 << exp)).min(MAX_BACKOFF)
}

/// While the last attempt from the same `source` failed and its backoff runs: when to retry.
/// Checked before anything else is tried, so a failure never turns into a hot loop; a change of
/// the source (spec, inputs, a forced renewal) retries at once.
pub fn retry_at(failure: Option<&Failure>, source: &str, now: Timestamp) -> Option<Timestamp> {
    let failure = failure.filter(|f| f.source == source)?;
    let at = truncate(failure.at + backoff(failure.count));
    (now < at).then_some(at)
}

/// What to do about the token in place.
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let Some(current) = &observed.current else {
        return Decision::Renew(Reason::Missing);
    };
    if current.source != observed.source {
        return Decision::Renew(Reason::SourceChanged);
    }
    if current.expires_at.is_some_and(|e| now >= e) {
        return Decision::Renew(Reason::Expired);
    }
    if now >= current.renew_at {
        return Decision::Renew(Reason::Due);
    }
    match current.refresh_renew_at() {
        Some(at) if now >= at => Decision::Renew(Reason::RefreshTokenExpiring),
        Some(at) => Decision::Wait(at.min(current.renew_at)),
        None => Decision::Wait(current.renew_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn current(issued: i64, expires: Option<i64>) -> Current {
        let expires_at = expires.map(t);
        Current {
            issued_at: t(issued),
            expires_at,
            renew_at: Policy::default().renew_at(t(issued), expires_at),
            source: "1/100".into(),
            refresh_expires_at: None,
        }
    }

    fn observed(current: Option<Current>) -> Observed {
        Observed {
            current,
            source: "1/100".into(),
        }
    }

    #[test]
    fn default_renews_after_two_thirds_of_the_lifetime() {
        assert_eq!(Policy::default().renew_at(t(0), Some(t(1200))), t(800));
    }

    #[test]
    fn renew_before_duration_and_percentage() {
        let p = Policy::from_spec(Some(&RefreshPolicy {
            renew_before: Some("5m".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(p.renew_at(t(0), Some(t(3600))), t(3300));
        // a renewBefore longer than the lifetime falls back to two thirds
        assert_eq!(p.renew_at(t(0), Some(t(120))), t(80));
        let p = Policy::from_spec(Some(&RefreshPolicy {
            renew_before_percentage: Some(10),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(p.renew_at(t(0), Some(t(1000))), t(900));
    }

    #[test]
    fn no_expiry_uses_fallback_interval() {
        let p = Policy::from_spec(Some(&RefreshPolicy {
            fallback_interval: Some("30m".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(p.renew_at(t(10), None), t(1810));
        assert_eq!(Policy::default().renew_at(t(0), None), t(3600));
    }

    #[test]
    fn renew_at_is_truncated_to_seconds() {
        let issued = Timestamp::from_millisecond(1_700_000_000_500).unwrap();
        let at = Policy::default().renew_at(issued, Some(issued + SignedDuration::from_secs(10)));
        assert_eq!(at.subsec_nanosecond(), 0);
        // issued at .5 s, two thirds of 10 s later is 7.17 s: truncated to 7
        assert_eq!(at, t(7));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            parse_duration("90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert_eq!(
            parse_duration("1h30m").unwrap(),
            SignedDuration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("8d").unwrap(),
            SignedDuration::from_secs(8 * 86400)
        );
        for bad in ["", "10", "m", "5x", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decides_over_a_fake_clock() {
        // nothing in place
        assert_eq!(
            decide(&observed(None), t(0)),
            Decision::Renew(Reason::Missing)
        );
        let obs = observed(Some(current(0, Some(1200))));
        // before renewAt: wait until it
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(800)));
        assert_eq!(decide(&obs, t(799)), Decision::Wait(t(800)));
        // at and after renewAt: renew
        assert_eq!(decide(&obs, t(800)), Decision::Renew(Reason::Due));
        assert_eq!(decide(&obs, t(1200)), Decision::Renew(Reason::Expired));
        // a new spec generation or inputs version renews at once
        let mut changed = obs.clone();
        changed.source = "2/100".into();
        assert_eq!(
            decide(&changed, t(1)),
            Decision::Renew(Reason::SourceChanged)
        );
    }

    #[test]
    fn failures_back_off_exponentially_unless_the_source_changes() {
        assert_eq!(backoff(1), SignedDuration::from_secs(5));
        assert_eq!(backoff(2), SignedDuration::from_secs(10));
        assert_eq!(backoff(4), SignedDuration::from_secs(40));
        assert_eq!(backoff(30), MAX_BACKOFF);
        let failure = Failure {
            at: t(100),
            count: 3,
            source: "1/100".into(),
        };
        assert_eq!(retry_at(Some(&failure), "1/100", t(101)), Some(t(120)));
        assert_eq!(retry_at(Some(&failure), "1/100", t(120)), None);
        // the inputs changed since the failure: retry now
        assert_eq!(retry_at(Some(&failure), "1/101", t(101)), None);
        assert_eq!(retry_at(None, "1/100", t(101)), None);
    }

    #[test]
    fn the_primary_grant_runs_before_the_refresh_token_dies() {
        // access token 0..1200 renewed at 800; refresh token dies at 2000: primary grant at 1600
        let mut cur = current(0, Some(1200));
        cur.refresh_expires_at = Some(t(2000));
        assert_eq!(cur.refresh_renew_at(), Some(t(1600)));
        let obs = observed(Some(cur.clone()));
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(800)));
        // a refresh token dying before the access token's renewal pulls the renewal earlier
        cur.refresh_expires_at = Some(t(1000));
        let obs = observed(Some(cur));
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(600)));
        assert_eq!(
            decide(&obs, t(600)),
            Decision::Renew(Reason::RefreshTokenExpiring)
        );
    }

    #[test]
    fn grant_choice() {
        use GrantChoice::*;
        // routine renewals live on the refresh token while it lives
        assert_eq!(choose_grant(Reason::Due, true, true), Refresh);
        assert_eq!(choose_grant(Reason::Expired, true, false), Refresh);
        assert_eq!(choose_grant(Reason::Due, false, true), Primary);
        // its deadline near, or new inputs: the primary grant, if the inputs allow one
        assert_eq!(
            choose_grant(Reason::RefreshTokenExpiring, true, true),
            Primary
        );
        assert_eq!(
            choose_grant(Reason::RefreshTokenExpiring, true, false),
            Refresh
        );
        assert_eq!(choose_grant(Reason::SourceChanged, true, true), Primary);
        // a used authorization code and no refresh token: a person must act
        assert_eq!(choose_grant(Reason::Due, false, false), NeedsNewInputs);
        assert_eq!(choose_grant(Reason::Missing, false, false), NeedsNewInputs);
    }

    #[test]
    fn a_due_token_still_waits_out_the_backoff() {
        // renewal was due at 800 and failed at 900: the next try is at 905, not before
        let obs = observed(Some(current(0, Some(1200))));
        let failure = Failure {
            at: t(900),
            count: 1,
            source: "1/100".into(),
        };
        assert_eq!(retry_at(Some(&failure), &obs.source, t(901)), Some(t(905)));
        assert_eq!(retry_at(Some(&failure), &obs.source, t(905)), None);
        assert_eq!(decide(&obs, t(905)), Decision::Renew(Reason::Due));
    }
}
