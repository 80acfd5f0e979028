//! The standard OAuth 2.0 flows against oidc-provider, a real OpenID Certified server: client
//! credentials (post and basic) through discovery, the authorization-code bootstrap living on
//! rotating refresh tokens, and the server's revocation of a reused refresh token. (It has no
//! password grant; that one is tested against the Dronetag fake.)

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

const WAIT: Duration = Duration::from_secs(90);

fn manifest(name: &str, client_id: &str, oauth2: &str, extra_inputs: &str) -> String {
    let secret = serde_json::to_string(OIDC_CLIENT_SECRET).unwrap();
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: {name}-inputs}}
stringData:
  client_id: {client_id}
  client_secret: {secret}
{extra_inputs}
---
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata: {{name: {name}}}
spec:
  inputs: {{secretName: {name}-inputs}}
  oauth2: {oauth2}
  output: {{secretName: {name}-token}}
"#
    )
}

#[tokio::test]
async fn client_credentials_post_and_basic_through_discovery() {
    let client = client().await;
    let ns = TestNs::new(&client, "oidc-cc").await;
    let oidc = OidcServer::start(12).await;
    let operator = Operator::start(&client, &ns.name);
    let post = TokenLog::start(&ns, "cc-post-token", "token");
    let basic = TokenLog::start(&ns, "cc-basic-token", "token");
    let issuer = &oidc.base;
    ns.apply(&manifest(
        "cc-post",
        "tokensync-post",
        &format!("{{issuerUrl: '{issuer}', grantType: client_credentials, scopes: [api:read]}}"),
        "",
    ))
    .await;
    ns.apply(&manifest(
        "cc-basic",
        "tokensync-basic",
        &format!("{{issuerUrl: '{issuer}', grantType: client_credentials, scopes: [api:read], clientAuthentication: client_secret_basic}}"),
        "",
    ))
    .await;
    for (name, log) in [("cc-post", &post), ("cc-basic", &basic)] {
        let pc = ns.wait_ready(name, "True", None).await;
        let status = pc.status.unwrap();
        let lifetime = status
            .expires_at
            .unwrap()
            .0
            .duration_since(status.last_refresh_at.unwrap().0);
        assert_eq!(lifetime.as_secs(), 12, "{name}: expires_in from the server");
        log.wait_for(3, WAIT).await;
        log.assert_renewed_before_expiry();
    }
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn authorization_code_bootstrap_lives_on_rotating_refresh_tokens() {
    let client = client().await;
    let ns = TestNs::new(&client, "oidc-code").await;
    let oidc = OidcServer::start(12).await;
    let code = oidc.code().await;
    let operator = Operator::start(&client, &ns.name);
    let log = TokenLog::start(&ns, "user-token", "token");
    let refresh_log = TokenLog::start(&ns, "user-tokensync-state", "refresh_token");
    ns.apply(&manifest(
        "user",
        "tokensync-post",
        &format!(
            "{{issuerUrl: '{}', grantType: authorization_code}}",
            oidc.base
        ),
        &format!("  code: {code}\n  redirect_uri: https://tokensync.example/callback"),
    ))
    .await;
    ns.wait_ready("user", "True", Some("TokenIssued")).await;
    log.wait_for(3, WAIT).await;
    log.assert_renewed_before_expiry();
    // every refresh rotated the refresh token, and the newest is in the state Secret
    let rts = refresh_log.wait_for(3, WAIT).await;

    // Reuse detection: presenting a rotated-away refresh token makes the server revoke the whole
    // grant. The operator then finds its refresh token rejected and, with the code used, says a
    // person must act, instead of retrying the dead token or resending the code.
    let token_url = format!("{}/token", oidc.base);
    let reused = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rts[0].value.as_str()),
            ("client_id", "tokensync-post"),
            ("client_secret", OIDC_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status(), 400);
    assert_eq!(
        reused.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let pc = ns
        .wait_ready("user", "False", Some("RefreshTokenRejected"))
        .await;
    assert!(
        ready(&pc).unwrap().message.contains("invalid_grant"),
        "{:?}",
        ready(&pc)
    );
    // the last token stays in place until it expires
    let secret = ns.api::<Secret>().get("user-token").await.unwrap();
    assert_eq!(
        secret_text(&secret, "token").unwrap(),
        log.values().last().unwrap().value
    );

    // a person provides a new code: back to Ready
    let code = oidc.code().await;
    let patch = serde_json::json!({"stringData": {"code": code}});
    let secrets: Api<Secret> = ns.api();
    secrets
        .patch(
            "user-inputs",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns.wait_ready("user", "True", Some("TokenRenewed")).await;
    operator.stop().await;
    ns.delete().await;
}
