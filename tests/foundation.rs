//! The foundation on the real apiserver: a client-credentials token flows into an owned Secret,
//! is renewed before it expires, bad manifests are refused at admission, runtime problems become
//! conditions and events without losing the token in place, and deletion collects the Secret.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, ResourceExt};
use tokensync::crd::ProviderCredential;
use tokensync_fakes::{CLIENT_SECRET, PASSWORD};

const AA_EXAMPLE: &str = "altitude-angel-client-credentials.yaml";
const AA: &str = "altitude-angel-client";
const AA_SECRET: &str = "altitude-angel-token";
const AA_ROUTE: &str = "altitude-angel token client_credentials";

#[tokio::test]
async fn token_is_written_with_default_keys_and_owner_and_renewed_before_expiry() {
    let (client, ns, fakes) = setup("cc").await;
    fakes.state.set_lifetime(Vendor::AltitudeAngel, 12);
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;

    let pc = ns.wait_ready(AA, "True", Some("TokenIssued")).await;
    let status = pc.status.clone().unwrap();
    assert_eq!(status.observed_generation, pc.metadata.generation);
    let expires = status.expires_at.clone().expect("expiresAt").0;
    let renew = status.renew_at.clone().expect("renewAt").0;
    let refreshed = status.last_refresh_at.clone().expect("lastRefreshAt").0;
    assert!(
        refreshed < renew && renew < expires,
        "{refreshed} < {renew} < {expires}"
    );
    assert_eq!(expires.duration_since(refreshed).as_secs(), 12);

    let secrets: Api<Secret> = ns.api();
    let secret = secrets.get(AA_SECRET).await.unwrap();
    let first = secret_text(&secret, "token").unwrap();
    assert!(first.starts_with("aa-at-"), "{first}");
    assert_eq!(
        secret_text(&secret, "token_type").as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        secret_text(&secret, "expires_at")
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap(),
        expires
    );
    let owner = &secret.owner_references()[0];
    assert_eq!(owner.kind, "ProviderCredential");
    assert_eq!(Some(&owner.uid), pc.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(secret.labels()["app.kubernetes.io/managed-by"], "tokensync");
    assert_eq!(
        status.token_fingerprint.as_deref(),
        Some(
            tokensync::token::SecretValue::new(first.clone())
                .fingerprint()
                .as_str()
        )
    );

    // the token is replaced before it expires
    let (second, issued) = eventually("a renewed token", Duration::from_secs(30), || async {
        let s = secrets.get(AA_SECRET).await.ok()?;
        let t = secret_text(&s, "token")?;
        let issued: jiff::Timestamp = s
            .annotations()
            .get("tokensync.dev/issued-at")?
            .parse()
            .ok()?;
        (t != first).then_some((t, issued))
    })
    .await;
    assert!(
        issued < expires,
        "renewed at {issued}, old token expired at {expires}"
    );
    assert!(second.starts_with("aa-at-"));
    let pc = ns.wait_ready(AA, "True", Some("TokenRenewed")).await;
    assert!(pc.status.unwrap().last_refresh_at.unwrap().0 >= issued);
    let events = ns.events(AA).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("TokenIssued")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("TokenRenewed")),
        "{events:?}"
    );

    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_reconcile_that_changes_nothing_writes_nothing() {
    let (client, ns, fakes) = setup("noop").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    let pc = ns.wait_ready(AA, "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let secret_rv = secrets.get(AA_SECRET).await.unwrap().resource_version();

    // Each label change is a watch event and a reconcile, but changes neither the spec
    // generation nor the inputs: nothing may be fetched or written.
    let api: Api<ProviderCredential> = ns.api();
    for i in 0..3 {
        let patch = serde_json::json!({"metadata": {"labels": {"touched": i.to_string()}}});
        api.patch(AA, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // restarting the operator reconciles everything again from scratch
    operator.stop().await;
    let operator = Operator::start(&client, &ns.name);
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        fakes.state.count(AA_ROUTE),
        1,
        "{:?}",
        fakes.state.counters()
    );
    assert_eq!(
        secrets.get(AA_SECRET).await.unwrap().resource_version(),
        secret_rv
    );
    let after = api.get(AA).await.unwrap();
    assert_eq!(after.status, pc.status, "status was rewritten");
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn missing_inputs_secret_is_a_condition_and_recovers_when_it_appears() {
    let (client, ns, fakes) = setup("inputs").await;
    let operator = Operator::start(&client, &ns.name);
    let text = std::fs::read_to_string(root().join("examples").join(AA_EXAMPLE)).unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url());
    let (secret_doc, pc_doc) = text.split_once("\n---").unwrap();
    ns.apply(pc_doc).await;

    let pc = ns.wait_failing(AA, "InputsNotFound").await;
    let message = degraded(&pc).unwrap().message.clone();
    assert!(message.contains("\"altitude-angel-client\""), "{message}");
    let events = ns.events(AA).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InputsNotFound")
                && e.type_.as_deref() == Some("Warning")),
        "{events:?}"
    );
    assert!(
        ns.api::<Secret>()
            .get_opt(AA_SECRET)
            .await
            .unwrap()
            .is_none()
    );

    // the Secret appears: the inputs watch brings the credential back without waiting out the backoff
    ns.apply(secret_doc).await;
    let pc = ns.wait_ready(AA, "True", Some("TokenIssued")).await;
    assert_eq!(pc.status.unwrap().last_failure, None);
    assert!(
        ns.api::<Secret>()
            .get_opt(AA_SECRET)
            .await
            .unwrap()
            .is_some()
    );
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_failing_refresh_keeps_the_valid_token_and_says_why() {
    let (client, ns, fakes) = setup("fail").await;
    fakes.state.set_lifetime(Vendor::AltitudeAngel, 30);
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let token = secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap();

    // the provider starts failing; a change of the spec asks for a new token now
    fakes
        .state
        .set_fault(Vendor::AltitudeAngel, Fault::Status(503));
    let api: Api<ProviderCredential> = ns.api();
    let patch = serde_json::json!({"spec": {"refresh": {"renewBefore": "20s"}}});
    api.patch(AA, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let pc = ns.wait_failing(AA, "TokenRequestFailed").await;
    let message = degraded(&pc).unwrap().message.clone();
    assert!(message.contains("HTTP 503"), "{message}");
    // the token in place is still valid: Ready stays True and says renewal fails; status says
    // when the next request goes out
    let now_ready = ready(&pc).unwrap();
    assert_eq!(
        (now_ready.status.as_str(), now_ready.reason.as_str()),
        ("True", "RenewalFailing"),
        "{now_ready:?}"
    );
    assert!(pc.status.as_ref().unwrap().next_attempt_at.is_some());
    assert!(
        message.contains("/altitude-angel/oauth/v2/token"),
        "{message}"
    );
    assert_eq!(
        secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap(),
        token
    );

    // wrong credentials: 401 is its own reason, and the old token still stays
    fakes.state.clear_fault(Vendor::AltitudeAngel);
    let patch = serde_json::json!({"stringData": {"client_secret": "wrong"}});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let pc = ns.wait_failing(AA, "Unauthorized").await;
    assert!(degraded(&pc).unwrap().message.contains("HTTP 401"));
    assert_eq!(
        secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap(),
        token
    );

    // fixed inputs: a new token at once (the inputs changed, so no backoff wait)
    let patch = serde_json::json!({"stringData": {"client_secret": CLIENT_SECRET}});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns.wait_ready(AA, "True", Some("TokenRenewed")).await;
    assert_ne!(
        secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap(),
        token
    );
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn deleting_the_credential_garbage_collects_the_secret() {
    let (client, ns, fakes) = setup("gc").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    ns.wait_ready("pix4d", "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let secret = secrets.get("pix4d-token").await.unwrap();
    // Pix4D hands out a JWT when asked with token_format=jwt; its exp agrees with expires_in
    let token = secret_text(&secret, "token").unwrap();
    assert_eq!(token.split('.').count(), 3, "not a JWT");
    assert_eq!(
        secret.labels()["app.kubernetes.io/part-of"],
        "photogrammetry"
    );

    let api: Api<ProviderCredential> = ns.api();
    api.delete("pix4d", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the Secret is garbage-collected",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("pix4d-token")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    // the inputs Secret is the user's and stays
    assert!(secrets.get_opt("pix4d-client").await.unwrap().is_some());
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn printer_columns_show_in_kubectl() {
    let (client, ns, fakes) = setup("columns").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    let pc = ns.wait_ready(AA, "True", None).await;
    let out = std::process::Command::new(tool("kubectl"))
        .env("KUBECONFIG", kubeconfig_path())
        .args(["get", "pcred", "-A"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "REASON",
            "EXPIRES",
            "NEXT",
            "AGE"
        ]
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&ns.name))
        .expect("our row");
    let status = pc.status.unwrap();
    let expires = status.expires_at.unwrap().0.to_string();
    let next = status.next_attempt_at.unwrap().0.to_string();
    assert!(
        row.contains("True")
            && row.contains("TokenIssued")
            && row.contains(&expires)
            && row.contains(&next),
        "{row}"
    );
    operator.stop().await;
    ns.delete().await;
}

/// Each case: a manifest fragment that breaks one rule, and what the apiserver's message names.
#[tokio::test]
async fn invalid_manifests_are_refused_at_admission_naming_the_field() {
    let client = client().await;
    let ns = TestNs::new(&client, "admission").await;
    let valid = serde_json::json!({
        "inputs": {"secretName": "in"},
        "oauth2": {"tokenUrl": "https://auth.example/token", "grantType": "client_credentials"},
        "output": {"secretName": "out"}
    });
    let with = |path: &[&str], value: serde_json::Value| {
        let mut spec = valid.clone();
        let mut node = &mut spec;
        for p in &path[..path.len() - 1] {
            node = node
                .as_object_mut()
                .unwrap()
                .entry(*p)
                .or_insert(serde_json::json!({}));
        }
        let last = path[path.len() - 1];
        if value.is_null() {
            node.as_object_mut().unwrap().remove(last);
        } else {
            node[last] = value;
        }
        spec
    };
    let http = serde_json::json!({"login": {"url": "https://x.example/login"}});
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        ("no provider", with(&["oauth2"], serde_json::Value::Null), &["spec.oauth2 or spec.http"]),
        ("two providers", with(&["http"], http.clone()), &["spec.oauth2 or spec.http"]),
        (
            "neither tokenUrl nor issuerUrl",
            with(&["oauth2", "tokenUrl"], serde_json::Value::Null),
            &["spec.oauth2", "tokenUrl or issuerUrl"],
        ),
        ("not a URL", with(&["oauth2", "tokenUrl"], "ftp://x/token".into()), &["spec.oauth2.tokenUrl"]),
        ("unknown grant", with(&["oauth2", "grantType"], "implicit".into()), &["spec.oauth2.grantType", "client_credentials"]),
        (
            "client credentials without a secret",
            with(&["oauth2", "clientAuthentication"], "none".into()),
            &["spec.oauth2.clientAuthentication"],
        ),
        ("bad duration", with(&["refresh", "renewBefore"], "ten minutes".into()), &["spec.refresh.renewBefore"]),
        ("percentage out of range", with(&["refresh", "renewBeforePercentage"], 100.into()), &["spec.refresh.renewBeforePercentage"]),
        (
            "both renewal forms",
            with(&["refresh"], serde_json::json!({"renewBefore": "5m", "renewBeforePercentage": 10})),
            &["spec.refresh", "renewBefore or renewBeforePercentage"],
        ),
        ("bad Secret name", with(&["output", "secretName"], "Not_A_Name".into()), &["spec.output.secretName"]),
        ("output over the inputs", with(&["output", "secretName"], "in".into()), &["spec.output.secretName"]),
        ("missing inputs", with(&["inputs"], serde_json::Value::Null), &["spec.inputs"]),
        ("bad input key", with(&["inputs", "keys"], serde_json::json!({"password": "a/b"})), &["spec.inputs.keys.password"]),
        (
            "JSON pointer",
            with(&["oauth2"], serde_json::Value::Null).as_object().cloned().map(|mut m| {
                m.insert("http".into(), serde_json::json!({"login": {"url": "https://x.example/l"}, "response": {"token": "token"}}));
                serde_json::Value::Object(m)
            }).unwrap(),
            &["spec.http.response.token"],
        ),
        (
            "templated host",
            with(&["oauth2"], serde_json::Value::Null).as_object().cloned().map(|mut m| {
                m.insert("http".into(), serde_json::json!({"login": {"url": "https://{{ inputs.host }}/login"}}));
                serde_json::Value::Object(m)
            }).unwrap(),
            &["spec.http.login.url"],
        ),
        (
            "two bodies",
            with(&["oauth2"], serde_json::Value::Null).as_object().cloned().map(|mut m| {
                m.insert("http".into(), serde_json::json!({"login": {"url": "https://x.example/l", "json": {}, "form": {}}}));
                serde_json::Value::Object(m)
            }).unwrap(),
            &["spec.http.login", "json or form"],
        ),
    ];
    let ar = kube::core::ApiResource::erase::<ProviderCredential>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    // the valid manifest passes, so each refusal below is for its one broken rule
    let ok: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "tokensync.dev/v1alpha1", "kind": "ProviderCredential",
        "metadata": {"name": "valid"}, "spec": valid,
    }))
    .unwrap();
    api.create(&PostParams::default(), &ok)
        .await
        .expect("the valid manifest is accepted");
    assert!(cases.len() >= 8);
    for (i, (name, spec, needles)) in cases.into_iter().enumerate() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "ProviderCredential",
            "metadata": {"name": format!("case-{i}")}, "spec": spec,
        }))
        .unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("case {name:?} was accepted"));
        let message = match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 422, "{name}: {s:?}");
                s.message
            }
            other => panic!("{name}: unexpected error {other}"),
        };
        for needle in needles {
            assert!(
                message.contains(needle),
                "{name}: {message:?} does not name {needle:?}"
            );
        }
    }
    ns.delete().await;
}

/// Runs last in name order within this binary's parallel set is not guaranteed, so it makes its
/// own traffic: a success, a 401 with a planted wrong secret, and a missing key; then it greps
/// everything the operators of this binary logged, and the events and status it wrote.
#[tokio::test]
async fn secret_values_never_reach_logs_events_or_status() {
    let (client, ns, fakes) = setup("leak").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let token = secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap();

    let planted = "planted-wrong-secret-7f3a";
    let patch = serde_json::json!({"stringData": {"client_secret": planted, "password": PASSWORD}});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns.wait_failing(AA, "Unauthorized").await;
    let patch = serde_json::json!({"spec": {"inputs": {"keys": {"clientSecret": "absent"}}}});
    ns.api::<ProviderCredential>()
        .patch(AA, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let pc = ns.wait_failing(AA, "InputKeyMissing").await;

    // the declarative HTTP provider: a JSON login whose body carries the planted password,
    // answered 401, and a revocation on delete
    let planted_password = "planted-password-9e2b";
    let json_login = tokensync_fakes::rewrite_urls(
        &std::fs::read_to_string(root().join("examples/json-login-platform.yaml")).unwrap(),
        &fakes.base_url(),
    );
    ns.apply(&json_login).await;
    ns.wait_ready("json-login-platform", "True", None).await;
    let jl_token = secret_text(&secrets.get("json-login-token").await.unwrap(), "token").unwrap();
    let patch = serde_json::json!({"stringData": {"password": planted_password}});
    secrets
        .patch("json-login", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let jl = ns.wait_failing("json-login-platform", "Unauthorized").await;
    ns.api::<ProviderCredential>()
        .delete("json-login-platform", &DeleteParams::default())
        .await
        .unwrap();
    eventually("revoked and deleted", Duration::from_secs(60), || async {
        ns.api::<ProviderCredential>()
            .get_opt("json-login-platform")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    operator.stop().await;

    let logs = captured_logs();
    assert!(
        logs.contains("token received"),
        "the capture holds the operator's logs"
    );
    let events = format!(
        "{:?} {:?}",
        ns.events(AA).await,
        ns.events("json-login-platform").await
    );
    let status = serde_json::to_string(&(&pc.status, &jl.status)).unwrap();
    for value in [
        planted,
        planted_password,
        CLIENT_SECRET,
        PASSWORD,
        token.as_str(),
        jl_token.as_str(),
    ] {
        assert!(!logs.contains(value), "a secret value is in the logs");
        assert!(
            !events.contains(value),
            "a secret value is in an event: {events}"
        );
        assert!(
            !status.contains(value),
            "a secret value is in the status: {status}"
        );
    }
    ns.delete().await;
}
