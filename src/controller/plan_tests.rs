//! Table tests of the planner over a fake clock: a simulated vendor answers every request the
//! plan makes, the writes are folded back into the snapshot as the apiserver would hold them,
//! and the clock jumps to the next wake-up. No apiserver, no sleeping.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::{
    GrantType, InputsRef, OAuth2Spec, OutputSpec, ProviderCredential, ProviderCredentialSpec,
    RefreshPolicy,
};
use crate::providers::ProviderError;
use crate::renewal::{MAX_DURATION, MIN_RENEW_INTERVAL, add_secs};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

fn credential(grant_type: GrantType) -> ProviderCredential {
    let mut pc = ProviderCredential::new(
        "vendor",
        ProviderCredentialSpec {
            inputs: InputsRef {
                secret_name: "vendor-inputs".into(),
                keys: Default::default(),
            },
            oauth2: Some(OAuth2Spec {
                token_url: Some("https://auth.example/token".into()),
                issuer_url: None,
                grant_type,
                scopes: vec![],
                audience: None,
                client_authentication: Default::default(),
                extra_params: Default::default(),
            }),
            http: None,
            output: OutputSpec {
                secret_name: "vendor-token".into(),
                labels: Default::default(),
                annotations: Default::default(),
                keys: Default::default(),
            },
            refresh: None,
            tls: None,
        },
    );
    pc.metadata.namespace = Some("ns".into());
    pc.metadata.uid = Some("uid-1".into());
    pc.metadata.generation = Some(1);
    pc
}

fn inputs() -> Inputs {
    [
        ("client_id", "id"),
        ("client_secret", "secret-value"),
        ("username", "pilot"),
        ("password", "password-value"),
        ("code", "one-time-code"),
        ("redirect_uri", "https://app.example/cb"),
    ]
    .into_iter()
    .collect()
}

fn snapshot(pc: ProviderCredential) -> Snapshot {
    Snapshot {
        source: source(&pc, Some("h1".into())),
        pc: Arc::new(pc),
        output: None,
        inputs: Some(inputs()),
        inputs_opted_in: true,
        state_secret: None,
        upstream: None,
        http: Ok(client()),
        upstream_of_others: false,
    }
}

/// A token as a provider answers it at `arrived`.
fn token(
    arrived: Timestamp,
    expires: Option<Timestamp>,
    refresh: Option<(&str, Timestamp)>,
) -> Token {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Token {
        value: SecretValue::new(format!("token-{n}")),
        token_type: "Bearer".into(),
        issued_at: arrived,
        expires_at: expires,
        refresh_token: refresh.map(|(v, _)| SecretValue::new(format!("{v}-{n}"))),
        refresh_expires_at: refresh.map(|(_, d)| d),
        scope: None,
        kept: BTreeMap::new(),
    }
}

/// Fold what the executor would write back into the snapshot, as the apiserver would hold it.
fn apply(snap: &mut Snapshot, writes: &Writes) {
    let mut pc = (*snap.pc).clone();
    if let Some(state) = &writes.state {
        let mut secret = state.build(&pc);
        secret.metadata.owner_references = pc.controller_owner_ref(&()).map(|o| vec![o]);
        snap.state_secret = Some(secret);
    }
    let mut out = writes.output.clone();
    out.metadata.resource_version = Some("2".into());
    snap.output = Some(out);
    pc.status = Some(writes.status.clone());
    snap.pc = Arc::new(pc);
}

fn apply_failure(snap: &mut Snapshot, failed: &Failed, now: Timestamp) {
    let mut pc = (*snap.pc).clone();
    if let Some(state) = &failed.state {
        snap.state_secret = Some(state.build(&pc));
    }
    let prev = pc.status.clone().unwrap_or_default();
    pc.status = Some(status::failure(
        &prev,
        &snap.source,
        failed.reason,
        failed.message.clone(),
        failed.retry_after,
        now,
    ));
    snap.pc = Arc::new(pc);
}

use kube::Resource;

/// What a simulated run saw.
#[derive(Debug, Default)]
struct Run {
    /// When each token request was made, and with which grant.
    requests: Vec<(Timestamp, &'static str, renewal::Reason)>,
    failures: Vec<(Timestamp, Reason)>,
    /// Output Secret samples (at every step) holding an expired token.
    expired_samples: usize,
}

/// Run the planner from `start` for `seconds`, answering each request with `vendor(now, grant)`.
fn simulate(
    snap: &mut Snapshot,
    start: Timestamp,
    seconds: i64,
    mut vendor: impl FnMut(Timestamp, &Grant) -> Result<Token, ProviderError>,
) -> Run {
    let mut run = Run::default();
    let mut now = start;
    let end = add_secs(start, seconds);
    let mut steps = 0;
    while now < end {
        steps += 1;
        assert!(steps < 100_000, "the planner did not advance the clock");
        if let Some(out) = snap.output.as_ref().and_then(output::current)
            && out.expires_at.is_some_and(|e| e <= now)
        {
            run.expired_samples += 1;
        }
        let next = match plan(snap, now) {
            Plan::Wait { until, status } => {
                if let Some(status) = status {
                    let mut pc = (*snap.pc).clone();
                    pc.status = Some(*status);
                    snap.pc = Arc::new(pc);
                }
                until
            }
            Plan::Write(writes) => {
                apply(snap, &writes);
                writes.wake
            }
            Plan::Fail(failed) => {
                run.failures.push((now, failed.reason));
                apply_failure(snap, &failed, now);
                failure_wake(snap, now)
            }
            Plan::Fetch(mut attempt) => loop {
                let grant = match attempt.grant {
                    Grant::Primary => "primary",
                    Grant::Refresh(_) => "refresh",
                };
                run.requests.push((now, grant, attempt.why));
                match vendor(now, &attempt.grant) {
                    Ok(token) => match on_token(snap, &attempt, token) {
                        Ok(writes) => {
                            apply(snap, &writes);
                            break writes.wake;
                        }
                        Err(failed) => {
                            run.failures.push((now, failed.reason));
                            apply_failure(snap, &failed, now);
                            break failure_wake(snap, now);
                        }
                    },
                    Err(e) => match on_error(snap, *attempt, &e) {
                        AfterError::Retry(next, _) => attempt = next,
                        AfterError::Fail(failed) => {
                            run.failures.push((now, failed.reason));
                            apply_failure(snap, &failed, now);
                            break failure_wake(snap, now);
                        }
                    },
                }
            },
        };
        // the executor requeues at least a second later; the controller's own writes wake it
        // too, which is a plan at the same instant
        now = next.max(add_secs(now, 1));
    }
    run
}

/// Where the executor requeues after a failure.
fn failure_wake(snap: &Snapshot, now: Timestamp) -> Timestamp {
    let status = snap.pc.status.as_ref().unwrap();
    wake_failing(status, status.next_attempt_at.clone().unwrap().0, now)
}

/// The most requests inside any window of `window` seconds.
fn peak(requests: &[(Timestamp, &'static str, renewal::Reason)], window: i64) -> usize {
    requests
        .iter()
        .map(|(at, ..)| {
            requests
                .iter()
                .filter(|(b, ..)| *b >= *at && *b < add_secs(*at, window))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Defects 1 and 3: absurd, negative, zero and past lifetimes never panic and never make a
/// credential renew in a hot loop while it reports Ready.
#[test]
fn hostile_lifetimes_never_crash_or_loop() {
    type Vendor = fn(Timestamp) -> Option<Timestamp>;
    let cases: [(&str, Vendor, usize); 6] = [
        ("expires_in 1e15", |now| Some(add_secs(now, 1e15 as i64)), 1),
        ("expires_in i64::MAX", |_| Some(Timestamp::MAX), 1),
        ("expires_in 0", |now| Some(now), 0),
        ("expires_in -30", |now| Some(add_secs(now, -30)), 0),
        ("epochSeconds in the past", |_| Some(t(-86400)), 0),
        ("expires in 3 s", |now| Some(add_secs(now, 3)), 0),
    ];
    for (what, expiry, successes) in cases {
        let mut snap = snapshot(credential(GrantType::ClientCredentials));
        let run = simulate(&mut snap, t(0), 600, |now, _| {
            Ok(token(now, expiry(now), None))
        });
        // failing answers back off 5, 10, 20 s, then every 30 s while no valid token is in
        // place (a provider that recovers is asked again soon): at most 2 a minute
        assert!(
            run.requests.len() <= 24,
            "{what}: {} requests in 10 minutes",
            run.requests.len()
        );
        assert!(
            peak(&run.requests, 60) <= 4,
            "{what}: peak {}",
            peak(&run.requests, 60)
        );
        let ready = status::ready_condition(snap.pc.status.as_ref().unwrap()).unwrap();
        if successes == 0 {
            assert_eq!(ready.status, "False", "{what}");
            assert_eq!(ready.reason, "InvalidTokenResponse", "{what}");
            assert!(snap.output.is_none(), "{what}: a bad token was written");
        } else {
            assert_eq!(ready.status, "True", "{what}");
            assert_eq!(run.requests.len(), 1, "{what}");
            // clamped to the cap
            let expires = snap
                .pc
                .status
                .as_ref()
                .unwrap()
                .expires_at
                .clone()
                .unwrap()
                .0;
            assert!(
                expires <= renewal::add(t(0), MAX_DURATION),
                "{what}: {expires}"
            );
        }
    }
}

/// Defect 1: a clamped lifetime says so with a Warning event.
#[test]
fn a_clamped_lifetime_warns() {
    let snap = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let writes = on_token(&snap, &attempt, token(t(0), Some(Timestamp::MAX), None)).unwrap();
    assert!(
        writes
            .events
            .iter()
            .any(|(ty, r, _)| *ty == EventType::Warning && *r == Reason::LifetimeClamped),
        "{:?}",
        writes.events
    );
}

/// Defect 3: the other hot loops seen while Ready: a refresh token shorter than the access token,
/// a 0 s fallback interval for a token without expiry.
#[test]
fn healthy_credentials_renew_once_per_lifetime() {
    // (what, grant type, policy, access lifetime, refresh lifetime, max requests in 10 minutes;
    // jitter takes up to a fifth off each renewal period)
    let zero_fallback = RefreshPolicy {
        fallback_interval: Some("0s".into()),
        ..Default::default()
    };
    let cases = [
        (
            "refresh 60 s, access 300 s",
            GrantType::Password,
            None,
            Some(300),
            Some(60),
            4,
        ),
        (
            "no expiry, fallback 0s",
            GrantType::ClientCredentials,
            Some(zero_fallback),
            None,
            None,
            11,
        ),
        (
            "access 20 s",
            GrantType::ClientCredentials,
            None,
            Some(20),
            None,
            51,
        ),
        (
            "password, rotating refresh",
            GrantType::Password,
            None,
            Some(60),
            Some(1800),
            19,
        ),
    ];
    for (what, grant, policy, access, refresh, max) in cases {
        let mut pc = credential(grant);
        pc.spec.refresh = policy;
        let mut snap = snapshot(pc);
        let run = simulate(&mut snap, t(0), 600, |now, _| {
            Ok(token(
                now,
                access.map(|a| add_secs(now, a)),
                refresh.map(|r| ("rt", add_secs(now, r))),
            ))
        });
        assert!(run.failures.is_empty(), "{what}: {:?}", run.failures);
        assert!(
            run.requests.len() <= max,
            "{what}: {} requests in 10 minutes: {:?}",
            run.requests.len(),
            run.requests
        );
        for pair in run.requests.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(
                gap >= MIN_RENEW_INTERVAL,
                "{what}: two requests {gap} apart"
            );
        }
        assert_eq!(
            run.expired_samples, 0,
            "{what}: an expired token was served"
        );
    }
}

/// Defect 4: near a Keycloak session's end both tokens are capped at the session end. The
/// credential logs in again (RefreshTokenExpiring) instead of refreshing again and again.
#[test]
fn a_session_end_logs_in_again_without_a_burst() {
    let session_max = 600;
    let mut session_end = t(0);
    let mut snap = snapshot(credential(GrantType::Password));
    let run = simulate(&mut snap, t(0), 3600, |now, grant| {
        if matches!(grant, Grant::Primary) {
            session_end = add_secs(now, session_max);
        }
        let left = session_end.duration_since(now).as_secs();
        if left <= 0 {
            return Err(ProviderError::Rejected {
                url: "https://auth.example/token".into(),
                status: 400,
                detail: Some("invalid_grant: Session not active".into()),
                retry_after: None,
            });
        }
        Ok(token(
            now,
            Some(add_secs(now, left.min(60))),
            Some(("rt", add_secs(now, left.min(1800)))),
        ))
    });
    assert!(run.failures.is_empty(), "{:?}", run.failures);
    assert_eq!(run.expired_samples, 0);
    let logins: Vec<_> = run.requests.iter().filter(|r| r.1 == "primary").collect();
    // one login per 10-minute session, each when the refresh token was about to die
    assert_eq!(logins.len(), 7, "{logins:?}");
    assert!(
        logins[1..]
            .iter()
            .all(|r| r.2 == renewal::Reason::RefreshTokenExpiring),
        "{logins:?}"
    );
    assert!(peak(&run.requests, 10) <= 2, "a burst: {:?}", run.requests);
}

/// Defect 8: a request that took 43 s (etcd outage) schedules from when the token arrived.
#[test]
fn a_slow_request_schedules_from_the_arrival() {
    let snap = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let arrived = t(43);
    let writes = on_token(
        &snap,
        &attempt,
        token(arrived, Some(add_secs(arrived, 60)), None),
    )
    .unwrap();
    // 2/3 of 60 s after the arrival, less up to half that span of jitter (a first token)
    let renew_at = writes.status.renew_at.clone().unwrap().0;
    assert!(renew_at <= t(83) && renew_at >= t(63), "{renew_at}");
    assert_eq!(writes.wake, renew_at);
    let mut snap = snap;
    apply(&mut snap, &writes);
    // the reconcile the controller's own writes trigger finds nothing to do
    assert!(matches!(plan(&snap, arrived), Plan::Wait { until, .. } if until == renew_at));
}

/// Defect 10: a 429 with Retry-After: 120 is retried after 120 s, not after 5, 15, 35, 75.
#[test]
fn retry_after_is_the_next_attempt() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let run = simulate(&mut snap, t(0), 600, |_, _| {
        Err(ProviderError::Rejected {
            url: "https://auth.example/token".into(),
            status: 429,
            detail: None,
            retry_after: Some(SignedDuration::from_secs(120)),
        })
    });
    let times: Vec<i64> = run
        .requests
        .iter()
        .map(|(at, ..)| at.duration_since(t(0)).as_secs())
        .collect();
    assert_eq!(times, [0, 120, 240, 360, 480], "{times:?}");
    assert!(run.failures.iter().all(|(_, r)| *r == Reason::RateLimited));
    assert_eq!(
        snap.pc.status.as_ref().unwrap().next_attempt_at,
        Some(Time(t(600)))
    );
}

/// Defect 5: a typo in an output template is found before the authorization code is spent.
#[test]
fn a_bad_template_fails_before_any_request() {
    let mut pc = credential(GrantType::AuthorizationCode);
    pc.spec.output.keys = [(
        "auth".to_string(),
        "{{ token_typ }} {{ token }}".to_string(),
    )]
    .into();
    let snap = snapshot(pc);
    match plan(&snap, t(0)) {
        Plan::Fail(f) => {
            assert_eq!(f.reason, Reason::InvalidSpec);
            assert!(
                f.message.starts_with("spec.output.keys.auth"),
                "{}",
                f.message
            );
        }
        other => panic!("{other:?}"),
    }
    let mut pc = credential(GrantType::AuthorizationCode);
    pc.spec.output.labels = [("bad label!".to_string(), "x".to_string())].into();
    assert!(matches!(plan(&snapshot(pc), t(0)), Plan::Fail(f) if f.reason == Reason::InvalidSpec));
}

/// Defect 5 and 6: a token the provider issued is stored in the state first; when the output
/// write failed, the next reconcile writes that token out instead of requesting another (so
/// the exchanged code is never needed again).
#[test]
fn an_issued_token_is_written_out_not_requested_again() {
    let mut snap = snapshot(credential(GrantType::AuthorizationCode));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let tok = token(t(0), Some(t(600)), Some(("rt", t(3600))));
    let writes = on_token(&snap, &attempt, tok.clone()).unwrap();
    let state = writes.state.clone().expect("the state is written first");
    assert_eq!(state.token.as_ref(), Some(&tok.value));
    assert_eq!(state.refresh_token, tok.refresh_token);
    // the output write fails (e.g. the apiserver refused it): only the state was stored
    snap.state_secret = Some(state.build(&snap.pc));
    apply_failure(
        &mut snap,
        &Failed::new(Reason::SecretWriteFailed, "too large"),
        t(1),
    );
    // after the backoff: the stored token is written, nothing is requested
    match plan(&snap, t(10)) {
        Plan::Write(w) => {
            assert!(w.state.is_none());
            assert_eq!(w.fingerprint, tok.value.fingerprint());
            assert_eq!(w.output_version, None, "a missing output Secret is created");
        }
        other => panic!("{other:?}"),
    }
}

/// Defect 7: a Secret that exists and is not this credential's is never taken over; one that
/// does not exist is created, never force-applied.
#[test]
fn output_ownership() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let mut foreign = Secret::default();
    foreign.metadata.name = Some("vendor-token".into());
    snap.output = Some(foreign);
    assert!(matches!(plan(&snap, t(0)), Plan::Fail(f) if f.reason == Reason::SecretOwnedElsewhere));
    let snap = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let writes = on_token(&snap, &attempt, token(t(0), Some(t(600)), None)).unwrap();
    assert_eq!(writes.output_version, None);
}

/// A rejected refresh token falls back to the primary grant once, or, for a spent code, fails
/// with the state that forgets it.
#[test]
fn a_rejected_refresh_token() {
    let rejected = ProviderError::Rejected {
        url: "https://auth.example/token".into(),
        status: 400,
        detail: Some("invalid_grant: Token is not active".into()),
        retry_after: None,
    };
    for (grant, fallback) in [
        (GrantType::Password, true),
        (GrantType::AuthorizationCode, false),
    ] {
        let snap = snapshot(credential(grant));
        let state = State {
            refresh_token: Some("rt-1".into()),
            ..Default::default()
        };
        let attempt = Attempt {
            why: renewal::Reason::Due,
            grant: Grant::Refresh("rt-1".into()),
            primary_possible: fallback,
            shorter_timeout: false,
            state,
            policy: Policy::default(),
        };
        match on_error(&snap, attempt, &rejected) {
            AfterError::Retry(next, warning) => {
                assert!(fallback);
                assert!(warning.contains("invalid_grant"), "{warning}");
                assert!(matches!(next.grant, Grant::Primary));
                assert_eq!(next.state.refresh_token, None);
            }
            AfterError::Fail(f) => {
                assert!(!fallback);
                assert_eq!(f.reason, Reason::RefreshTokenRejected);
                assert_eq!(f.state.unwrap().refresh_token, None);
            }
        }
    }
}

/// Defect 13: a new inputs hash renews at once; the same data does not.
#[test]
fn only_new_input_data_renews() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let run = simulate(&mut snap, t(0), 30, |now, _| {
        Ok(token(now, Some(add_secs(now, 600)), None))
    });
    assert_eq!(run.requests.len(), 1);
    assert!(matches!(plan(&snap, t(31)), Plan::Wait { .. }));
    snap.source.inputs_hash = "h2".into();
    assert!(
        matches!(plan(&snap, t(31)), Plan::Fetch(a) if a.why == renewal::Reason::SourceChanged)
    );
}

/// Defect 9: after a timeout the next attempt uses a shorter timeout.
#[test]
fn after_a_timeout_the_next_attempt_gives_up_sooner() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let unreachable = ProviderError::Transport {
        url: "https://auth.example/token".into(),
        reason: "operation timed out".into(),
    };
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!()
    };
    assert!(!attempt.shorter_timeout);
    let AfterError::Fail(failed) = on_error(&snap, *attempt, &unreachable) else {
        panic!()
    };
    apply_failure(&mut snap, &failed, t(0));
    let Plan::Fetch(attempt) = plan(&snap, t(5)) else {
        panic!()
    };
    assert!(attempt.shorter_timeout);
}

/// Issue 9: through a vendor outage the credential stays Ready while its token is valid,
/// `Degraded` says why, `nextAttemptAt` is the next request, and Ready turns False at expiry.
#[test]
fn ready_through_an_outage_until_the_token_expires() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    // from before the renewal is due (at 400, moved up to 80 s earlier by jitter)
    let outage_from = t(300);
    let requests = std::cell::RefCell::new(Vec::new());
    let run_until = |snap: &mut Snapshot, from: i64, to: i64| {
        simulate(snap, t(from), to - from, |now, _| {
            requests.borrow_mut().push(now);
            if now >= outage_from {
                Err(ProviderError::Rejected {
                    url: "https://auth.example/token".into(),
                    status: 503,
                    detail: None,
                    retry_after: None,
                })
            } else {
                Ok(token(now, Some(add_secs(now, 600)), None))
            }
        })
    };
    // issued at 0 (expires 600), renewal due at 320..400 fails
    run_until(&mut snap, 0, 450);
    let conditions = |snap: &Snapshot| {
        let s = snap.pc.status.clone().unwrap();
        let get = |ty: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ty)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .unwrap()
        };
        (get("Ready"), get("Degraded"), s.next_attempt_at.unwrap().0)
    };
    let (ready, degraded, next) = conditions(&snap);
    assert_eq!(ready, ("True".into(), "RenewalFailing".into()));
    assert_eq!(degraded, ("True".into(), "TokenRequestFailed".into()));
    // nextAttemptAt is when the planner next asks the provider
    let asked_before = requests.borrow().len();
    run_until(&mut snap, 450, next.duration_since(t(0)).as_secs() + 1);
    assert_eq!(requests.borrow().len(), asked_before + 1);
    assert_eq!(*requests.borrow().last().unwrap(), next);
    // past expiry (600): not Ready, with the failing renewal's reason
    run_until(&mut snap, next.duration_since(t(0)).as_secs() + 1, 601);
    let (ready, ..) = conditions(&snap);
    assert_eq!(ready, ("False".into(), "TokenRequestFailed".into()));
}

/// Issue 9: a credential only a person can renew warns once per deadline, a day before its
/// refresh token dies.
#[test]
fn a_person_is_warned_before_the_refresh_deadline() {
    let snap = snapshot(credential(GrantType::AuthorizationCode));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let far = token(t(0), Some(t(3600)), Some(("rt", t(30 * 86400))));
    let writes = on_token(&snap, &attempt, far).unwrap();
    assert!(
        !writes
            .events
            .iter()
            .any(|e| e.1 == Reason::RefreshTokenExpiring)
    );
    let near = token(t(0), Some(t(3600)), Some(("rt", t(20 * 3600))));
    let writes = on_token(&snap, &attempt, near).unwrap();
    let warning = writes
        .events
        .iter()
        .find(|e| e.1 == Reason::RefreshTokenExpiring)
        .expect("a warning");
    assert_eq!(warning.0, EventType::Warning);
    assert!(warning.2.contains("a person must"), "{}", warning.2);
    assert_eq!(
        writes.status.refresh_token_expires_at,
        Some(Time(t(20 * 3600)))
    );
    // a password credential logs in again by itself: no warning
    let snap = snapshot(credential(GrantType::Password));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!()
    };
    let writes = on_token(
        &snap,
        &attempt,
        token(t(0), Some(t(3600)), Some(("rt", t(3600)))),
    )
    .unwrap();
    assert!(
        !writes
            .events
            .iter()
            .any(|e| e.1 == Reason::RefreshTokenExpiring)
    );
}

/// Issue 8: a Secret that did not opt in is never sent anywhere.
#[test]
fn inputs_must_opt_in() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    snap.inputs_opted_in = false;
    match plan(&snap, t(0)) {
        Plan::Fail(f) => {
            assert_eq!(f.reason, Reason::InputsNotOptedIn);
            assert!(
                f.message.contains("tokensync.dev/inputs=true"),
                "{}",
                f.message
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 10: a bare 400 to a refresh falls back to the primary grant; `invalid_client` keeps
/// the refresh token and says the refresh grant failed.
#[test]
fn failed_refreshes_by_error_code() {
    let reject = |status, detail: Option<&str>| ProviderError::Rejected {
        url: "https://auth.example/token".into(),
        status,
        detail: detail.map(Into::into),
        retry_after: None,
    };
    let attempt = || Attempt {
        why: renewal::Reason::Due,
        grant: Grant::Refresh("rt-1".into()),
        primary_possible: false,
        shorter_timeout: false,
        state: State {
            refresh_token: Some("rt-1".into()),
            ..Default::default()
        },
        policy: Policy::default(),
    };
    let snap = snapshot(credential(GrantType::AuthorizationCode));
    // a bare 400: the refresh token is dead, a person must act (the code was spent)
    match on_error(&snap, attempt(), &reject(400, None)) {
        AfterError::Fail(f) => {
            assert_eq!(f.reason, Reason::RefreshTokenRejected);
            assert_eq!(f.state.unwrap().refresh_token, None);
        }
        other => panic!("{other:?}"),
    }
    // invalid_client: a configuration problem; the refresh token stays (no state to write)
    match on_error(
        &snap,
        attempt(),
        &reject(401, Some("invalid_client: bad secret")),
    ) {
        AfterError::Fail(f) => {
            assert_eq!(f.reason, Reason::Unauthorized);
            assert!(f.state.is_none(), "the refresh token was dropped");
            assert!(f.message.contains("refresh grant"), "{}", f.message);
        }
        other => panic!("{other:?}"),
    }
    // an outage keeps it too
    match on_error(&snap, attempt(), &reject(503, None)) {
        AfterError::Fail(f) => assert!(f.state.is_none()),
        other => panic!("{other:?}"),
    }
}

/// Issue 11: the state Secret is written only when what it must hold changes. A credential
/// with no refresh token and nothing to revoke writes none (a renewal is the output Secret and
/// the status); a refresh token that does not rotate is written once; a rotating one each time.
#[test]
fn the_state_is_written_only_when_it_changes() {
    // (grant, refresh token of each answer: None, the same, or a new one per renewal)
    type RefreshOf = fn(usize) -> Option<String>;
    let cases: [(&str, GrantType, RefreshOf, usize); 3] = [
        (
            "client credentials",
            GrantType::ClientCredentials,
            |_| None,
            0,
        ),
        (
            "password, refresh token kept",
            GrantType::Password,
            |_| Some("rt-same".into()),
            1,
        ),
        (
            "password, rotating",
            GrantType::Password,
            |i| Some(format!("rt-{i}")),
            4,
        ),
    ];
    for (what, grant, refresh, state_writes) in cases {
        let mut snap = snapshot(credential(grant));
        let mut writes_of_state = 0;
        let mut now = t(0);
        for i in 0..4 {
            let Plan::Fetch(attempt) = plan(&snap, now) else {
                panic!("{what}: renewal {i} is fetched")
            };
            let mut tok = token(now, Some(add_secs(now, 600)), None);
            tok.refresh_token = refresh(i).map(SecretValue::new);
            let writes = on_token(&snap, &attempt, tok.clone()).unwrap();
            if let Some(state) = &writes.state {
                writes_of_state += 1;
                assert_eq!(
                    state.token, None,
                    "{what}: the token stays out of the state"
                );
            }
            // should the output write fail, the token would be kept
            let kept = writes.keep_on_failure.as_ref().expect("a fallback");
            assert_eq!(kept.token.as_ref(), Some(&tok.value), "{what}");
            apply(&mut snap, &writes);
            now = writes.wake;
        }
        assert_eq!(writes_of_state, state_writes, "{what}");
    }
}

/// Issue 11: a credential whose tokens are revoked, or that another names as its upstream,
/// keeps its current token in the state (written at each renewal).
#[test]
fn the_state_holds_the_token_when_others_need_it() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    snap.upstream_of_others = true;
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let tok = token(t(0), Some(t(600)), None);
    let writes = on_token(&snap, &attempt, tok.clone()).unwrap();
    let state = writes.state.as_ref().expect("the state is written");
    assert_eq!(state.token.as_ref(), Some(&tok.value));
    assert!(writes.keep_on_failure.is_none());
}

/// Issue 11: a token kept in the state by a failed write, older than the one in place, is
/// never written back over it; a newer one is (and requests nothing).
#[test]
fn only_a_newer_kept_token_is_restored() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let old = token(t(0), Some(t(600)), None);
    let writes = on_token(&snap, &attempt, old.clone()).unwrap();
    let kept_old = writes.keep_on_failure.clone().unwrap();
    apply(&mut snap, &writes);
    // a later token in place, and the old one kept in the state: nothing to restore
    let Plan::Fetch(attempt) = plan(&snap, writes.wake) else {
        panic!("due")
    };
    let newer = token(writes.wake, Some(add_secs(writes.wake, 600)), None);
    let w2 = on_token(&snap, &attempt, newer.clone()).unwrap();
    apply(&mut snap, &w2);
    snap.state_secret = Some(kept_old.build(&snap.pc));
    assert!(matches!(
        plan(&snap, add_secs(writes.wake, 10)),
        Plan::Wait { .. }
    ));
    // the output write of a newer token failed: it is written out from the state
    let Plan::Fetch(attempt) = plan(&snap, w2.wake) else {
        panic!("due")
    };
    let newest = token(w2.wake, Some(add_secs(w2.wake, 600)), None);
    let w3 = on_token(&snap, &attempt, newest.clone()).unwrap();
    snap.state_secret = Some(w3.keep_on_failure.clone().unwrap().build(&snap.pc));
    match plan(&snap, add_secs(w2.wake, 1)) {
        Plan::Write(w) => assert_eq!(w.fingerprint, newest.value.fingerprint()),
        other => panic!("{other:?}"),
    }
}

/// Issue 11: a credential that another just named as its upstream, whose token is not in its
/// state, renews at once (the dependent reads the token from there), and only once.
#[test]
fn a_new_upstream_puts_its_token_into_the_state() {
    let mut snap = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&snap, t(0)) else {
        panic!("a missing token is fetched")
    };
    let writes = on_token(&snap, &attempt, token(t(0), Some(t(600)), None)).unwrap();
    assert!(writes.state.is_none());
    apply(&mut snap, &writes);
    assert!(matches!(plan(&snap, t(60)), Plan::Wait { .. }));
    snap.upstream_of_others = true;
    let Plan::Fetch(attempt) = plan(&snap, t(60)) else {
        panic!("the token is renewed for the dependent")
    };
    let tok = token(t(60), Some(t(660)), None);
    let writes = on_token(&snap, &attempt, tok.clone()).unwrap();
    assert_eq!(
        writes.state.as_ref().unwrap().token.as_ref(),
        Some(&tok.value)
    );
    apply(&mut snap, &writes);
    assert!(matches!(plan(&snap, t(61)), Plan::Wait { .. }));
    // right after an issue, it waits out the floor instead
    let mut fresh = snapshot(credential(GrantType::ClientCredentials));
    let Plan::Fetch(attempt) = plan(&fresh, t(0)) else {
        panic!()
    };
    let writes = on_token(&fresh, &attempt, token(t(0), Some(t(600)), None)).unwrap();
    apply(&mut fresh, &writes);
    fresh.upstream_of_others = true;
    assert!(matches!(plan(&fresh, t(1)), Plan::Wait { until, .. } if until == t(5)));
}

/// Which new credentials have their state Secret's name looked up before the first request:
/// those whose first answer may have to be stored there.
#[test]
fn the_state_is_looked_for_before_a_first_token_that_may_be_stored_there() {
    let cases = [
        (GrantType::ClientCredentials, false, false),
        (GrantType::ClientCredentials, true, true),
        (GrantType::Password, false, true),
        (GrantType::AuthorizationCode, false, true),
        (GrantType::RefreshToken, false, true),
    ];
    for (grant, upstream_of_others, expected) in cases {
        let pc = credential(grant);
        assert_eq!(
            state_written_by_first_token(&pc.spec, upstream_of_others),
            expected,
            "{grant:?}, upstream of others: {upstream_of_others}"
        );
    }
    let mut http = credential(GrantType::ClientCredentials);
    http.spec.oauth2 = None;
    http.spec.http = Some(
        serde_json::from_value(serde_json::json!({
            "login": {"url": "https://vendor.example/login"},
            "response": {"token": "/token"}
        }))
        .unwrap(),
    );
    assert!(state_written_by_first_token(&http.spec, false));
}
