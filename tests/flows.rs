//! Every vendor flow end to end on the real apiserver, each from its manifest in `examples/`:
//! the Secret holds the right value for the vendor, at least two rotations happen before expiry,
//! the fake counts exactly one token request per rotation, refresh tokens survive an operator
//! restart in the state Secret, and revocation happens where the vendor has it.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tokensync::controller::Config;
use tokensync::crd::ProviderCredential;

const WAIT: Duration = Duration::from_secs(90);

fn state_refresh_token(secret: &Secret) -> Option<String> {
    secret_text(secret, "refresh_token")
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn dronetag_oidc_password_grant_refresh_and_new_session_before_the_refresh_deadline() {
    let (client, ns, fakes) = setup("dronetag").await;
    fakes.state.set_lifetime(Vendor::Dronetag, 12);
    fakes.state.set_refresh_lifetime(Vendor::Dronetag, 32);
    let log = TokenLog::start(&ns, "dronetag-token", "token");
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;

    ns.wait_ready("dronetag", "True", Some("TokenIssued")).await;
    let first = &log.wait_for(1, WAIT).await[0];
    assert_eq!(jwt_claims(&first.value)["typ"], "Bearer");
    assert!(
        fakes.state.count("dronetag discovery") >= 1,
        "the token endpoint comes from discovery"
    );

    // live on the refresh token; restart the operator after the first refresh: the rotated
    // refresh token in the state Secret must keep working
    eventually("a refresh", WAIT, || async {
        (fakes.state.count("dronetag token refresh_token") >= 1).then_some(())
    })
    .await;
    operator.stop().await;
    let secrets: Api<Secret> = ns.api();
    let state = secrets.get("dronetag-tokensync-state").await.unwrap();
    let rotated = state_refresh_token(&state).expect("a refresh token in the state Secret");
    assert!(state.owner_references()[0].controller == Some(true));
    let output = secrets.get("dronetag-token").await.unwrap();
    assert!(
        secret_text(&output, "refresh_token").is_none(),
        "the refresh token never reaches the output"
    );
    let refreshes = fakes.state.count("dronetag token refresh_token");
    let operator = Operator::start(&client, &ns.name);
    eventually("a refresh after the restart", WAIT, || async {
        (fakes.state.count("dronetag token refresh_token") > refreshes).then_some(())
    })
    .await;
    let state = secrets.get("dronetag-tokensync-state").await.unwrap();
    assert_ne!(
        state_refresh_token(&state).unwrap(),
        rotated,
        "the rotated refresh token was replaced"
    );

    // the session dies 32 s after login: a new password grant comes before that
    eventually("a second session", WAIT, || async {
        (fakes.state.count("dronetag token password") >= 2).then_some(())
    })
    .await;
    log.wait_for(4, WAIT).await;
    operator.stop().await;
    assert_eq!(
        fakes.state.count("dronetag token refresh_token rejected"),
        0,
        "a dead refresh token was used"
    );
    log.assert_renewed_before_expiry();
    log.assert_every_issued_token_written(&fakes, Vendor::Dronetag)
        .await;
    ns.delete().await;
}

#[tokio::test]
async fn dronetag_pat_is_minted_with_the_oidc_token_and_sent_as_a_header() {
    let (client, ns, fakes) = setup("pat").await;
    fakes.state.set_lifetime(Vendor::Dronetag, 60);
    fakes.state.set_lifetime(Vendor::DronetagPat, 12);
    let log = TokenLog::start(&ns, "dronetag-pat-token", "token");
    let operator = Operator::start(&client, &ns.name);
    // the PAT first: it waits for its upstream, then follows as soon as the upstream is ready
    ns.apply_example("dronetag-pat.yaml", &fakes).await;
    ns.wait_failing("dronetag-pat", "UpstreamNotReady").await;
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    ns.wait_ready("dronetag-pat", "True", None).await;

    let secret = ns.api::<Secret>().get("dronetag-pat-token").await.unwrap();
    let pat = secret_text(&secret, "token").unwrap();
    assert!(pat.starts_with("pat-"), "{pat}");
    assert_eq!(
        secret_text(&secret, "header").unwrap(),
        format!("X-Personal-Access-Token: {pat}")
    );
    log.wait_for(3, WAIT).await;
    operator.stop().await;
    log.assert_renewed_before_expiry();
    log.assert_every_issued_token_written(&fakes, Vendor::DronetagPat)
        .await;
    assert_eq!(
        fakes.state.count("dronetag-pat pats"),
        fakes.state.issued(Vendor::DronetagPat).len() as u64
    );
    ns.delete().await;
}

#[tokio::test]
async fn altitude_angel_client_credentials_rotate_and_an_undeclared_scope_is_a_condition() {
    let (client, ns, fakes) = setup("aacc").await;
    fakes.state.set_lifetime(Vendor::AltitudeAngel, 12);
    let log = TokenLog::start(&ns, "altitude-angel-token", "token");
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("altitude-angel-client-credentials.yaml", &fakes)
        .await;
    let seen = log.wait_for(3, WAIT).await;
    assert!(seen[0].value.starts_with("aa-at-"));
    log.assert_renewed_before_expiry();

    // an undeclared scope answers 401 invalid_scope: a clear condition named by the OAuth error
    // code (not the status), retried with backoff, not in a hot loop
    let api: Api<ProviderCredential> = ns.api();
    let patch =
        serde_json::json!({"spec": {"oauth2": {"scopes": ["query_mapdata", "manage_users"]}}});
    api.patch(
        "altitude-angel-client",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let pc = ns
        .wait_failing("altitude-angel-client", "InvalidScope")
        .await;
    assert!(
        degraded(&pc).unwrap().message.contains("invalid_scope"),
        "{:?}",
        ready(&pc)
    );
    let before = fakes.state.count("altitude-angel token client_credentials");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fakes.state.count("altitude-angel token client_credentials"),
        before,
        "retried before the backoff"
    );
    // the last good token is still in place
    let secret = ns
        .api::<Secret>()
        .get("altitude-angel-token")
        .await
        .unwrap();
    assert_eq!(
        secret_text(&secret, "token").unwrap(),
        log.values().last().unwrap().value
    );
    operator.stop().await;
    log.assert_every_issued_token_written(&fakes, Vendor::AltitudeAngel)
        .await;
    ns.delete().await;
}

#[tokio::test]
async fn altitude_angel_user_token_from_a_one_time_code_lives_on_refresh() {
    let (client, ns, fakes) = setup("aauser").await;
    fakes.state.set_lifetime(Vendor::AltitudeAngel, 12);
    let code = fakes.state.issue_code(Vendor::AltitudeAngel);
    let log = TokenLog::start(&ns, "altitude-angel-user-token", "token");
    let operator = Operator::start(&client, &ns.name);
    let text =
        std::fs::read_to_string(root().join("examples/altitude-angel-user-token.yaml")).unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url())
        .replace("paste-the-authorization-code-here", &code);
    ns.apply(&text).await;
    ns.wait_ready("altitude-angel-user", "True", Some("TokenIssued"))
        .await;
    log.wait_for(2, WAIT).await;

    // restart: the state Secret's refresh token carries on; the code is never sent again
    operator.stop().await;
    let refreshes = fakes.state.count("altitude-angel token refresh_token");
    let operator = Operator::start(&client, &ns.name);
    log.wait_for(4, WAIT).await;
    assert!(fakes.state.count("altitude-angel token refresh_token") > refreshes);
    assert_eq!(
        fakes.state.count("altitude-angel token authorization_code"),
        1
    );
    log.assert_renewed_before_expiry();

    // the provider forgets the refresh token: with the code used, a person must act
    fakes.state.revoke_refresh_tokens(Vendor::AltitudeAngel);
    let pc = ns
        .wait_failing("altitude-angel-user", "RefreshTokenRejected")
        .await;
    let message = &degraded(&pc).unwrap().message;
    assert!(
        message.contains("a person must put new inputs"),
        "{message}"
    );
    assert_eq!(
        fakes.state.count("altitude-angel token authorization_code"),
        1,
        "a used code was sent again"
    );
    // a new code brings it back
    let code = fakes.state.issue_code(Vendor::AltitudeAngel);
    let patch = serde_json::json!({"stringData": {"code": code}});
    ns.api::<Secret>()
        .patch(
            "altitude-angel-user",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns.wait_ready("altitude-angel-user", "True", Some("TokenRenewed"))
        .await;
    assert_eq!(
        fakes.state.count("altitude-angel token authorization_code"),
        2
    );
    operator.stop().await;
    log.assert_every_issued_token_written(&fakes, Vendor::AltitudeAngel)
        .await;
    ns.delete().await;
}

#[tokio::test]
async fn airmap_logs_in_once_then_lives_on_delegation_with_expiry_from_the_jwt() {
    let (client, ns, fakes) = setup("airmap").await;
    fakes.state.set_lifetime(Vendor::AirMap, 12);
    let log = TokenLog::start(&ns, "airmap-token", "token");
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("airmap.yaml", &fakes).await;
    let pc = ns.wait_ready("airmap", "True", None).await;
    let first = &log.wait_for(1, WAIT).await[0];
    // the id_token is the token, and its expiry is the JWT's exp (the login gives no expires_in)
    let claims = jwt_claims(&first.value);
    assert_eq!(claims["aud"], tokensync_fakes::CLIENT_ID);
    let exp = jiff::Timestamp::from_second(claims["exp"].as_i64().unwrap()).unwrap();
    assert_eq!(pc.status.unwrap().expires_at.unwrap().0, exp);

    log.wait_for(3, WAIT).await;
    operator.stop().await;
    assert_eq!(
        fakes.state.count("airmap ro"),
        1,
        "logged in more than once"
    );
    assert!(fakes.state.count("airmap delegation") >= 2);
    log.assert_renewed_before_expiry();
    log.assert_every_issued_token_written(&fakes, Vendor::AirMap)
        .await;
    ns.delete().await;
}

#[tokio::test]
async fn pix4d_repeats_the_client_credentials_grant_with_token_format_jwt() {
    let (client, ns, fakes) = setup("pix4d").await;
    fakes.state.set_lifetime(Vendor::Pix4d, 12);
    let log = TokenLog::start(&ns, "pix4d-token", "token");
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    let seen = log.wait_for(3, WAIT).await;
    // a JWT only comes back when token_format=jwt was sent
    assert_eq!(jwt_claims(&seen[0].value)["scope"], "read write");
    operator.stop().await;
    // no refresh token and nothing to revoke: no state is written at all (issue 11)
    let state = ns
        .api::<Secret>()
        .get_opt("pix4d-tokensync-state")
        .await
        .unwrap();
    assert!(state.is_none(), "a state Secret was written for Pix4D");
    log.assert_renewed_before_expiry();
    log.assert_every_issued_token_written(&fakes, Vendor::Pix4d)
        .await;
    ns.delete().await;
}

#[tokio::test]
async fn json_login_revokes_replaced_tokens_and_the_last_one_on_delete() {
    let (client, ns, fakes) = setup("jsonlogin").await;
    fakes.state.set_lifetime(Vendor::JsonLogin, 12);
    let log = TokenLog::start(&ns, "json-login-token", "token");
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("json-login-platform.yaml", &fakes).await;
    let pc = ns.wait_ready("json-login-platform", "True", None).await;
    assert!(
        pc.finalizers()
            .contains(&tokensync::controller::FINALIZER.to_string())
    );
    log.wait_for(3, WAIT).await;
    // every replaced token is revoked; only the current one lives
    eventually("replaced tokens revoked", WAIT, || async {
        let issued = fakes.state.issued(Vendor::JsonLogin);
        let (last, older) = issued.split_last()?;
        (!last.revoked && older.iter().all(|i| i.revoked)).then_some(())
    })
    .await;
    let scopes = &fakes.state.issued(Vendor::JsonLogin)[0].scopes;
    assert!(
        scopes.contains(&"DELETE /tokens/:id".to_string()),
        "{scopes:?}"
    );
    log.assert_renewed_before_expiry();

    let api: Api<ProviderCredential> = ns.api();
    api.delete("json-login-platform", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the ProviderCredential is gone", WAIT, || async {
        api.get_opt("json-login-platform")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    operator.stop().await;
    let issued = fakes.state.issued(Vendor::JsonLogin);
    assert!(
        issued.iter().all(|i| i.revoked),
        "a token outlived its ProviderCredential"
    );
    log.assert_every_issued_token_written(&fakes, Vendor::JsonLogin)
        .await;
    let events = ns.events("json-login-platform").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("TokenRevoked"))
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_failing_revocation_never_blocks_deletion_forever() {
    let (client, ns, fakes) = setup("revokefail").await;
    let config = Config {
        namespaces: vec![ns.name.clone()],
        allow_insecure_http: true,
        max_revoke_attempts: 2,
        ..Config::default()
    };
    let operator = Operator::start_with(&client, config);
    ns.apply_example("json-login-platform.yaml", &fakes).await;
    ns.wait_ready("json-login-platform", "True", None).await;
    fakes.state.set_fault(Vendor::JsonLogin, Fault::Status(500));
    let api: Api<ProviderCredential> = ns.api();
    api.delete("json-login-platform", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "deletion completes despite the failing revoke",
        WAIT,
        || async {
            api.get_opt("json-login-platform")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        fakes.state.count("json-login tokens delete"),
        2,
        "bounded attempts"
    );
    // events are published off the reconcile's path: the Warning may follow the deletion
    ns.wait_event("json-login-platform", "RevocationFailed")
        .await;
    let events = ns.events("json-login-platform").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("RevocationFailed")
                && e.type_.as_deref() == Some("Warning")),
        "{events:?}"
    );
    operator.stop().await;
    ns.delete().await;
}
