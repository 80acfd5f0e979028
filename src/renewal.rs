//! When to renew: pure functions of (what is in place, policy, now). No I/O, no clock of its own.
//!
//! Modelled on cert-manager's renewal policy chain: the instant to renew at is derived from the
//! token's lifetime and truncated to whole seconds, so the scheduled recheck and the "is it due?"
//! check agree; failures back off exponentially, and a change of the spec or the inputs retries at once.

use jiff::{SignedDuration, Timestamp};

use crate::crd::RefreshPolicy;
use crate::token::Token;

/// Backoff after the first failure; doubles per failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: SignedDuration = SignedDuration::from_secs(5);
pub const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(300);
/// Renewal interval for a token without any expiry, unless the policy says otherwise.
pub const DEFAULT_FALLBACK: SignedDuration = SignedDuration::from_secs(3600);
/// The shortest fallback interval (the CRD refuses shorter at admission).
pub const MIN_FALLBACK: SignedDuration = SignedDuration::from_secs(60);
/// The longest duration a spec may name and the longest lifetime a provider's answer is
/// believed for (10 years): longer lifetimes are clamped, with a Warning event.
pub const MAX_DURATION: SignedDuration = SignedDuration::from_secs(3650 * 86400);
/// A token that expires sooner than this after it arrived is a bad answer, not a success.
pub const MIN_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_secs(10);
/// The floor between a successful token request and the next one, whatever the math says.
pub const MIN_RENEW_INTERVAL: SignedDuration = SignedDuration::from_secs(5);
/// The longest backoff while no valid token is in place and the failure may cure itself: a
/// provider that recovers is asked again soon, so workloads do not wait minutes for a token.
pub const MAX_BACKOFF_WITHOUT_TOKEN: SignedDuration = SignedDuration::from_secs(30);
/// The longest a provider's `Retry-After` is honoured for.
pub const MAX_RETRY_AFTER: SignedDuration = SignedDuration::from_secs(3600);

/// Now, truncated to whole seconds: expiry and renewal times then read well and compare exactly.
pub fn now() -> Timestamp {
    truncate(Timestamp::now())
}

/// `t + d`, saturating at the ends of time instead of panicking.
pub fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// `t + secs` seconds, saturating.
pub fn add_secs(t: Timestamp, secs: i64) -> Timestamp {
    add(t, SignedDuration::from_secs(secs))
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
            Some(d) => parse_duration(d)
                .map_err(|e| format!("spec.refresh.fallbackInterval: {e}"))?
                .max(MIN_FALLBACK),
            None => DEFAULT_FALLBACK,
        };
        Ok(Self {
            renew_before,
            fallback_interval,
        })
    }

    /// The instant to renew a token issued at `issued_at` that expires at `expires_at`: never
    /// sooner than [`MIN_RENEW_INTERVAL`] after it was issued.
    pub fn renew_at(&self, issued_at: Timestamp, expires_at: Option<Timestamp>) -> Timestamp {
        let floor = add(issued_at, MIN_RENEW_INTERVAL);
        let Some(expires_at) = expires_at else {
            return truncate(add(issued_at, self.fallback_interval)).max(floor);
        };
        let lifetime = expires_at
            .duration_since(issued_at)
            .clamp(SignedDuration::ZERO, MAX_DURATION);
        let share = |percent: i64| {
            SignedDuration::from_secs(lifetime.as_secs().saturating_mul(percent) / 100)
        };
        let at = match self.renew_before {
            RenewBefore::Duration(d) if d < lifetime => add(expires_at, -d),
            RenewBefore::Duration(_) | RenewBefore::Default => add(
                issued_at,
                SignedDuration::from_secs(lifetime.as_secs().saturating_mul(2) / 3),
            ),
            RenewBefore::Percentage(p) => add(expires_at, -share(i64::from(p))),
        };
        truncate(at).max(floor)
    }
}

/// The largest share of a token's renewal span (issue to renewal) that jitter takes off.
pub const JITTER_PERCENT: i64 = 20;
/// The same for the first token of a credential (none was in place): credentials created
/// together (a bulk apply, a new cluster) would otherwise renew in waves for many periods.
/// Once spread, equal periods keep them spread; this costs one early renewal per credential.
pub const FIRST_JITTER_PERCENT: i64 = 50;

/// Move `renew_at` earlier by a pseudo-random share (up to `percent`) of the span from
/// `issued_at`, chosen by `seed`: credentials issued together (a cold start, a restore) then
/// spread their renewals instead of renewing in one burst. Never later than the policy says,
/// never sooner than [`MIN_RENEW_INTERVAL`] after the issue.
pub fn jitter(renew_at: Timestamp, issued_at: Timestamp, seed: u64, percent: i64) -> Timestamp {
    let span = renew_at.duration_since(issued_at).as_secs().max(0);
    let most = span.saturating_mul(percent.clamp(0, 100)) / 100;
    if most <= 0 {
        return renew_at;
    }
    // SplitMix64's finaliser: every bit of the seed moves the share
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let off = i64::try_from(z % (most as u64 + 1)).unwrap_or(0);
    let floor = add(issued_at, MIN_RENEW_INTERVAL);
    add(renew_at, SignedDuration::from_secs(-off))
        .max(floor)
        .min(renew_at)
}

/// Truncate to whole seconds, so a requeue at `t` and the check `now >= t` agree.
fn truncate(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Parse `90s`, `10m`, `1h30m`, `8d` (the CRD's duration pattern), at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    const EXAMPLES: &str = "expected e.g. 90s, 10m, 1h30m, 8d";
    let too_large = || format!("duration {text:?} is too large: at most 3650d (10 years)");
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
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {c:?}; {EXAMPLES}"
                ));
            }
        };
        if number.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: a number must precede {c:?}"
            ));
        }
        // only digits are left, so a failed parse is an overflow
        let n: i64 = number.parse().map_err(|_| too_large())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(too_large)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format!("invalid duration {text:?}: {EXAMPLES}"));
    }
    let d = SignedDuration::from_secs(total);
    if d > MAX_DURATION {
        return Err(too_large());
    }
    Ok(d)
}

/// What a token is obtained from: the spec generation, a hash of the inputs Secret's data and
/// a forced renewal's request. A change of any renews at once, and failures back off per source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub generation: i64,
    pub inputs_hash: String,
    pub force_refresh: String,
}

impl Source {
    /// The form recorded on the output Secret: `generation/inputs-hash/force-refresh`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.generation, self.inputs_hash, self.force_refresh
        )
    }

    pub fn from_key(key: &str) -> Option<Self> {
        let mut parts = key.splitn(3, '/');
        Some(Self {
            generation: parts.next()?.parse().ok()?,
            inputs_hash: parts.next()?.into(),
            force_refresh: parts.next()?.into(),
        })
    }
}

/// The token in place, as recorded on the output Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub issued_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub renew_at: Timestamp,
    /// What the token was obtained with.
    pub source: Source,
}

/// The last failed attempts, as recorded in status.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub at: Timestamp,
    pub count: u32,
    pub source: Source,
    /// When the next attempt may be made (backoff, or the provider's Retry-After).
    pub next_attempt_at: Timestamp,
}

/// The stored refresh token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refresh {
    /// When it dies, if the provider said.
    pub deadline: Option<Timestamp>,
}

/// Everything the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub current: Option<Current>,
    /// What a token would be obtained from now.
    pub source: Source,
    pub refresh: Option<Refresh>,
    /// The inputs allow the primary grant (it is not an already-used one-time code).
    pub primary_possible: bool,
}

impl Observed {
    /// When to refresh so that the refresh token does not die, for credentials that cannot log
    /// in again by themselves (an authorization code already exchanged): as long before its
    /// deadline as the access token is renewed before its expiry, at most a third of its life.
    pub fn keepalive_at(&self) -> Option<Timestamp> {
        let current = self.current.as_ref()?;
        let deadline = self.refresh?.deadline?;
        if self.primary_possible {
            return None;
        }
        let before_expiry = current
            .expires_at
            .map_or(SignedDuration::ZERO, |e| e.duration_since(current.renew_at))
            .max(SignedDuration::ZERO);
        let third =
            SignedDuration::from_secs(deadline.duration_since(current.issued_at).as_secs() / 3)
                .max(SignedDuration::ZERO);
        let at = add(deadline, -before_expiry.min(third));
        Some(truncate(at).max(add(current.issued_at, MIN_RENEW_INTERVAL)))
    }
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
    /// The refresh token dies before the next renewal: time for the primary grant (or, when the
    /// inputs allow none, for a refresh that keeps the session alive).
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
    Renew {
        why: Reason,
        grant: GrantChoice,
    },
    /// Nothing to do until then.
    Wait(Timestamp),
}

/// The delay before retry number `failures + 1`.
pub fn backoff(failures: u32) -> SignedDuration {
    let exp = failures.saturating_sub(1).min(16);
    SignedDuration::from_secs(BASE_BACKOFF.as_secs().saturating_mul(1 << exp)).min(MAX_BACKOFF)
}

/// When to try again after failure number `count` at `now`: the backoff, or the provider's
/// `Retry-After` when it asks for longer (capped at [`MAX_RETRY_AFTER`]).
pub fn next_attempt(now: Timestamp, count: u32, retry_after: Option<SignedDuration>) -> Timestamp {
    next_attempt_within(now, count, retry_after, MAX_BACKOFF)
}

/// [`next_attempt`] with the backoff capped at `max_backoff` (the provider's `Retry-After` still
/// wins when longer).
pub fn next_attempt_within(
    now: Timestamp,
    count: u32,
    retry_after: Option<SignedDuration>,
    max_backoff: SignedDuration,
) -> Timestamp {
    let asked = retry_after
        .unwrap_or(SignedDuration::ZERO)
        .clamp(SignedDuration::ZERO, MAX_RETRY_AFTER);
    truncate(add(now, backoff(count).min(max_backoff).max(asked)))
}

/// While the last attempt from the same `source` failed and its backoff runs: when to retry.
/// Checked before anything else is tried, so a failure never turns into a hot loop; a change of
/// the source (spec, inputs, a forced renewal) retries at once.
pub fn retry_at(failure: Option<&Failure>, source: &Source, now: Timestamp) -> Option<Timestamp> {
    let failure = failure.filter(|f| &f.source == source)?;
    (now < failure.next_attempt_at).then_some(failure.next_attempt_at)
}

/// Check what a provider just issued: a token that holds control characters or expires within
/// [`MIN_TOKEN_LIFETIME`] of its arrival (`token.issued_at`) is a bad answer; lifetimes beyond
/// [`MAX_DURATION`] are clamped, and a refresh token already dead is dropped, each with a
/// warning for an event.
pub fn check_token(token: &mut Token) -> Result<Vec<String>, String> {
    if token.value.expose().chars().any(char::is_control) {
        return Err("the token holds control characters; it is not written".into());
    }
    if token.token_type.chars().any(char::is_control) {
        return Err(
            "the token type holds control characters (a header injection); it is not written"
                .into(),
        );
    }
    let issued = token.issued_at;
    let cap = add(issued, MAX_DURATION);
    let mut warnings = Vec::new();
    if let Some(e) = token.expires_at {
        if e < add(issued, MIN_TOKEN_LIFETIME) {
            return Err(format!(
                "the token expires at {e}, {} s after it arrived; a token must live at least {} s",
                e.duration_since(issued).as_secs(),
                MIN_TOKEN_LIFETIME.as_secs()
            ));
        }
        if e > cap {
            token.expires_at = Some(cap);
            warnings.push(format!(
                "the provider said the token expires at {e}; tokensync believes at most 10 years and renews it as expiring at {cap}"
            ));
        }
    }
    if let Some(d) = token.refresh_expires_at {
        if d > cap {
            token.refresh_expires_at = Some(cap);
            warnings.push(format!(
                "the provider said the refresh token lives until {d}; tokensync believes at most 10 years ({cap})"
            ));
        } else if token.refresh_token.is_some() && d <= issued {
            token.refresh_token = None;
            token.refresh_expires_at = None;
            warnings.push(format!(
                "the refresh token arrived already expired ({d}); it is not used"
            ));
        }
    }
    Ok(warnings)
}

/// What to do about the token in place, and with which grant.
pub fn decide(observed: &Observed, now: Timestamp) -> Decision {
    let why = match &observed.current {
        None => Reason::Missing,
        Some(c) if c.source != observed.source => Reason::SourceChanged,
        Some(c) if c.expires_at.is_some_and(|e| now >= e) => Reason::Expired,
        Some(c) if now >= c.renew_at => Reason::Due,
        Some(c) => match observed.keepalive_at() {
            Some(at) if now >= at => Reason::RefreshTokenExpiring,
            Some(at) => return Decision::Wait(at.min(c.renew_at)),
            None => return Decision::Wait(c.renew_at),
        },
    };
    let refresh_deadline = observed.refresh.and_then(|r| r.deadline);
    let refresh_usable = observed.refresh.is_some()
        && refresh_deadline.is_none_or(|d| add(now, MIN_TOKEN_LIFETIME) < d);
    // a refresh token that dies before the next renewal would come due (a session's end caps
    // both tokens): log in again now instead of refreshing into a shrinking session
    let interval = observed.current.as_ref().map_or(MIN_RENEW_INTERVAL, |c| {
        c.renew_at
            .duration_since(c.issued_at)
            .max(MIN_RENEW_INTERVAL)
    });
    let why = match why {
        Reason::Due | Reason::Expired
            if refresh_deadline.is_some_and(|d| d <= add(now, interval)) =>
        {
            Reason::RefreshTokenExpiring
        }
        other => other,
    };
    Decision::Renew {
        why,
        grant: choose_grant(why, refresh_usable, observed.primary_possible),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn src() -> Source {
        Source {
            generation: 1,
            inputs_hash: "h100".into(),
            force_refresh: String::new(),
        }
    }

    fn current(issued: i64, expires: Option<i64>) -> Current {
        let expires_at = expires.map(t);
        Current {
            issued_at: t(issued),
            expires_at,
            renew_at: Policy::default().renew_at(t(issued), expires_at),
            source: src(),
        }
    }

    fn observed(current: Option<Current>) -> Observed {
        Observed {
            current,
            source: src(),
            refresh: None,
            primary_possible: true,
        }
    }

    fn renew(why: Reason, grant: GrantChoice) -> Decision {
        Decision::Renew { why, grant }
    }

    /// Issue 11: jitter spreads renewals of tokens issued together, only ever earlier, by at
    /// most a fifth of the span, never under the floor.
    #[test]
    fn jitter_spreads_renewals_earlier_only() {
        let renew = t(800);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..1000u64 {
            let at = jitter(renew, t(0), seed, JITTER_PERCENT);
            assert!(at <= renew && at >= t(640), "{seed}: {at}");
            seen.insert(at);
        }
        // 161 possible seconds, nearly all used
        assert!(seen.len() > 140, "{}", seen.len());
        // deterministic
        assert_eq!(
            jitter(renew, t(0), 42, JITTER_PERCENT),
            jitter(renew, t(0), 42, JITTER_PERCENT)
        );
        // a first token: anywhere in the second half of its span
        let firsts: Vec<_> = (0..1000u64)
            .map(|seed| jitter(renew, t(0), seed, FIRST_JITTER_PERCENT))
            .collect();
        assert!(firsts.iter().all(|at| *at <= renew && *at >= t(400)));
        assert!(firsts.iter().any(|at| *at < t(450)));
        // a short span: the floor holds; absurd instants and shares do not panic
        assert_eq!(jitter(t(5), t(0), 7, JITTER_PERCENT), t(5));
        assert!(jitter(Timestamp::MAX, t(0), 7, JITTER_PERCENT) <= Timestamp::MAX);
        assert_eq!(jitter(t(0), t(100), 7, JITTER_PERCENT), t(0));
        assert!(jitter(renew, t(0), 7, i64::MAX) >= t(5));
        assert_eq!(jitter(renew, t(0), 7, -5), renew);
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
        let at = Policy::default().renew_at(issued, Some(issued + SignedDuration::from_secs(30)));
        assert_eq!(at.subsec_nanosecond(), 0);
        // issued at .5 s, two thirds of 30 s later is 20.5 s: truncated to 20
        assert_eq!(at, t(20));
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
        assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
        for bad in ["", "10", "m", "5x", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Defect 1: absurd durations are refused with a message that says so, never a panic.
    #[test]
    fn absurd_durations_are_too_large_not_a_panic() {
        for absurd in [
            "3651d",
            "200000000d",
            "99999999999999999999d",
            "9223372036854775807s",
        ] {
            let err = parse_duration(absurd).unwrap_err();
            assert!(
                err.contains("too large") && err.contains("3650d"),
                "{absurd}: {err}"
            );
        }
        let spec = RefreshPolicy {
            fallback_interval: Some("200000000d".into()),
            ..Default::default()
        };
        let err = Policy::from_spec(Some(&spec)).unwrap_err();
        assert!(err.starts_with("spec.refresh.fallbackInterval:"), "{err}");
    }

    /// Defect 1: arithmetic at the ends of time saturates.
    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(add_secs(t(0), i64::MAX), Timestamp::MAX);
        assert_eq!(add_secs(t(0), i64::MIN), Timestamp::MIN);
        assert_eq!(add(Timestamp::MAX, MAX_DURATION), Timestamp::MAX);
        // a token "expiring" at the end of time renews after at most two thirds of the cap
        let at = Policy::default().renew_at(t(0), Some(Timestamp::MAX));
        assert!(at <= add(t(0), MAX_DURATION), "{at}");
        // a policy on the largest durations
        let p = Policy {
            renew_before: RenewBefore::Duration(MAX_DURATION),
            fallback_interval: MAX_DURATION,
        };
        assert_eq!(p.renew_at(Timestamp::MAX, None), Timestamp::MAX);
        assert!(p.renew_at(t(0), Some(Timestamp::MAX)) > t(0));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// Defect 3: no renewal time comes sooner than the floor after a success.
    #[test]
    fn renewal_never_sooner_than_the_floor() {
        let floor = add(t(0), MIN_RENEW_INTERVAL);
        let zero_fallback = Policy {
            renew_before: RenewBefore::Default,
            fallback_interval: SignedDuration::ZERO,
        };
        let cases = [
            ("expires at issue", Policy::default(), Some(t(0))),
            ("expired before issue", Policy::default(), Some(t(-30))),
            ("no expiry, 0s fallback", zero_fallback, None),
            (
                "renewBefore longer than a short life",
                Policy {
                    renew_before: RenewBefore::Duration(SignedDuration::from_secs(9)),
                    ..Default::default()
                },
                Some(t(10)),
            ),
            (
                "99% before expiry",
                Policy {
                    renew_before: RenewBefore::Percentage(99),
                    ..Default::default()
                },
                Some(t(12)),
            ),
        ];
        for (what, policy, expires) in cases {
            assert!(policy.renew_at(t(0), expires) >= floor, "{what}");
        }
        // and the spec's own fallback is raised to the minimum
        let p = Policy::from_spec(Some(&RefreshPolicy {
            fallback_interval: Some("0s".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(p.fallback_interval, MIN_FALLBACK);
    }

    #[test]
    fn decides_over_a_fake_clock() {
        use GrantChoice::Primary;
        // nothing in place
        assert_eq!(
            decide(&observed(None), t(0)),
            renew(Reason::Missing, Primary)
        );
        let obs = observed(Some(current(0, Some(1200))));
        // before renewAt: wait until it
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(800)));
        assert_eq!(decide(&obs, t(799)), Decision::Wait(t(800)));
        // at and after renewAt: renew
        assert_eq!(decide(&obs, t(800)), renew(Reason::Due, Primary));
        assert_eq!(decide(&obs, t(1200)), renew(Reason::Expired, Primary));
        // a new spec generation or inputs hash renews at once
        let mut changed = obs.clone();
        changed.source.inputs_hash = "h101".into();
        assert_eq!(
            decide(&changed, t(1)),
            renew(Reason::SourceChanged, Primary)
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
            source: src(),
            next_attempt_at: next_attempt(t(100), 3, None),
        };
        assert_eq!(retry_at(Some(&failure), &src(), t(101)), Some(t(120)));
        assert_eq!(retry_at(Some(&failure), &src(), t(120)), None);
        // the inputs changed since the failure: retry now
        let mut other = src();
        other.inputs_hash = "h101".into();
        assert_eq!(retry_at(Some(&failure), &other, t(101)), None);
        assert_eq!(retry_at(None, &src(), t(101)), None);
    }

    /// Defect 10: a provider's Retry-After is the next attempt when longer than the backoff,
    /// capped at an hour.
    #[test]
    fn retry_after_is_honoured_and_capped() {
        let cases = [
            (1, None, 5),
            (1, Some(120), 120),
            (4, Some(120), 120),
            (6, Some(120), 160),
            (1, Some(-30), 5),
            (1, Some(10 * 86400), 3600),
            (1, Some(i64::MAX), 3600),
        ];
        for (count, retry_after, expected) in cases {
            let at = next_attempt(t(0), count, retry_after.map(SignedDuration::from_secs));
            assert_eq!(
                at,
                t(expected),
                "count {count}, Retry-After {retry_after:?}"
            );
        }
        // without a valid token in place the backoff stops at 30 s; Retry-After still wins
        let within = |count, retry_after: Option<i64>| {
            next_attempt_within(
                t(0),
                count,
                retry_after.map(SignedDuration::from_secs),
                MAX_BACKOFF_WITHOUT_TOKEN,
            )
        };
        assert_eq!(within(3, None), t(20));
        assert_eq!(within(6, None), t(30));
        assert_eq!(within(6, Some(120)), t(120));
        let failure = Failure {
            at: t(0),
            count: 1,
            source: src(),
            next_attempt_at: next_attempt(t(0), 1, Some(SignedDuration::from_secs(120))),
        };
        for probe in [5, 15, 35, 75, 119] {
            assert_eq!(retry_at(Some(&failure), &src(), t(probe)), Some(t(120)));
        }
        assert_eq!(retry_at(Some(&failure), &src(), t(120)), None);
    }

    #[test]
    fn an_exchanged_code_keeps_its_session_alive() {
        // authorization code flow: access token 0..1200 renewed at 800; the refresh token dies
        // at 2000: routine renewals refresh it
        let mut obs = observed(Some(current(0, Some(1200))));
        obs.primary_possible = false;
        obs.refresh = Some(Refresh {
            deadline: Some(t(2000)),
        });
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(800)));
        assert_eq!(
            decide(&obs, t(800)),
            renew(Reason::Due, GrantChoice::Refresh)
        );
        // a refresh token dying before the access token's renewal pulls the renewal earlier
        obs.refresh = Some(Refresh {
            deadline: Some(t(600)),
        });
        assert_eq!(decide(&obs, t(1)), Decision::Wait(t(400)));
        assert_eq!(
            decide(&obs, t(400)),
            renew(Reason::RefreshTokenExpiring, GrantChoice::Refresh)
        );
        // it died: a person must act
        assert_eq!(
            decide(&obs, t(800)),
            renew(Reason::RefreshTokenExpiring, GrantChoice::NeedsNewInputs)
        );
    }

    /// Defect 3: a refresh token that lives shorter than the access token (300 s vs 60 s) must
    /// not make a credential that can log in again renew at once, over and over.
    #[test]
    fn a_short_refresh_token_does_not_loop() {
        let mut obs = observed(Some(current(0, Some(300))));
        obs.refresh = Some(Refresh {
            deadline: Some(t(60)),
        });
        assert_eq!(decide(&obs, t(0)), Decision::Wait(t(200)));
        assert_eq!(decide(&obs, t(61)), Decision::Wait(t(200)));
        // at the renewal the refresh token is dead: the primary grant
        assert_eq!(
            decide(&obs, t(200)),
            renew(Reason::RefreshTokenExpiring, GrantChoice::Primary)
        );
    }

    /// Defect 4: near a Keycloak session's end both tokens are capped at the session end: the
    /// renewal logs in again instead of refreshing into an ever shorter session.
    #[test]
    fn a_capped_session_logs_in_again() {
        use GrantChoice::*;
        let cases = [
            // (access expiry, refresh deadline, now, expected)
            (300, 1800, 200, renew(Reason::Due, Refresh)),
            (300, 500, 200, renew(Reason::Due, Refresh)),
            (300, 400, 200, renew(Reason::RefreshTokenExpiring, Primary)),
            (60, 60, 40, renew(Reason::RefreshTokenExpiring, Primary)),
            (30, 30, 20, renew(Reason::RefreshTokenExpiring, Primary)),
            (60, 60, 60, renew(Reason::RefreshTokenExpiring, Primary)),
        ];
        for (expires, deadline, now, expected) in cases {
            let mut obs = observed(Some(current(0, Some(expires))));
            obs.refresh = Some(super::Refresh {
                deadline: Some(t(deadline)),
            });
            assert_eq!(
                decide(&obs, t(now)),
                expected,
                "access {expires}, refresh {deadline}, at {now}"
            );
        }
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

    /// Issue 8: a token or token type with CR/LF would inject header lines into templated keys.
    #[test]
    fn control_characters_are_refused() {
        let token = |value: &str, token_type: &str| Token {
            value: crate::token::SecretValue::new(value),
            token_type: token_type.into(),
            issued_at: t(0),
            expires_at: Some(t(600)),
            refresh_token: None,
            refresh_expires_at: None,
            scope: None,
            kept: Default::default(),
        };
        assert!(check_token(&mut token("ok", "Bearer")).is_ok());
        assert!(check_token(&mut token("a\r\nX-Evil: 1", "Bearer")).is_err());
        let err = check_token(&mut token("ok", "Bearer\r\nX-Evil: 1")).unwrap_err();
        assert!(err.contains("token type"), "{err}");
    }

    #[test]
    fn source_key_round_trips() {
        let s = Source {
            generation: 7,
            inputs_hash: "abcd".into(),
            force_refresh: "2026-01-01T00:00:00Z/x".into(),
        };
        assert_eq!(Source::from_key(&s.key()), Some(s));
        assert_eq!(Source::from_key("x/y"), None);
    }
}
