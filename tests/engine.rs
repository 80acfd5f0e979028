//! The renewal engine on the real apiserver: one-time inputs never burned by a later mistake,
//! write failures that back off without requesting again, one owner per output Secret, the state
//! written before the output, deletion without a configured revoke, and hung providers that
//! never delay healthy renewals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use tokensync::controller::Config;
use tokensync::crd::ProviderCredential;

const WAIT: Duration = Duration::from_secs(90);
const AA_CODE_ROUTE: &str = "altitude-angel token authorization_code";
const AA_CC_ROUTE: &str = "altitude-angel token client_credentials";

/// The Altitude Angel authorization-code example with a fresh code, its output keys replaced.
fn user_token_manifest(fakes: &FakeProviders, code: &str, keys: Option<&str>) -> String {
    let text =
        std::fs::read_to_string(root().join("examples/altitude-angel-user-token.yaml")).unwrap();
    let mut text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url())
        .replace("paste-the-authorization-code-here", code);
    if let Some(keys) = keys {
        text.push_str(&format!("    keys:\n{keys}\n"));
    }
    text
}

/// Defect 5a: a typo in an output template is found before the authorization code is
/// exchanged; fixing the template then spends the code once.
#[tokio::test]
async fn a_template_typo_never_burns_the_authorization_code() {
    let (client, ns, fakes) = setup("typo").await;
    let code = fakes.state.issue_code(Vendor::AltitudeAngel);
    let operator = Operator::start(&client, &ns.name);
    let typo = r#"      auth: "{{ token_typ }} {{ token }}""#;
    ns.apply(&user_token_manifest(&fakes, &code, Some(typo)))
        .await;
    let pc = ns.wait_failing("altitude-angel-user", "InvalidSpec").await;
    let message = degraded(&pc).unwrap().message.clone();
    assert!(message.contains("spec.output.keys.auth"), "{message}");
    assert_eq!(fakes.state.count(AA_CODE_ROUTE), 0, "the code was spent");

    let fixed = r#"      auth: "{{ token_type }} {{ token }}""#;
    ns.apply(&user_token_manifest(&fakes, &code, Some(fixed)))
        .await;
    ns.wait_ready("altitude-angel-user", "True", None).await;
    let secret = ns
        .api::<Secret>()
        .get("altitude-angel-user-token")
        .await
        .unwrap();
    assert!(secret_text(&secret, "auth").unwrap().starts_with("Bearer "));
    assert_eq!(fakes.state.count(AA_CODE_ROUTE), 1);
    operator.stop().await;
    ns.delete().await;
}

/// Defect 6: an output Secret the apiserver refuses (over 1 MiB) is `Ready=False` with a
/// reason, backs off, and never requests a new token per retry: the one issued is kept in the
/// state Secret and written once the spec is fixed.
#[tokio::test]
async fn a_refused_output_write_backs_off_and_keeps_the_issued_token() {
    let (client, ns, fakes) = setup("toolarge").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("altitude-angel-client-credentials.yaml", &fakes)
        .await;
    ns.wait_ready("altitude-angel-client", "True", None).await;
    let requests = fakes.state.count(AA_CC_ROUTE);
    // a template that renders more than 1 MiB
    let huge =
        "{% for i in range(1000) %}{% for j in range(100) %}{{ token }}{% endfor %}{% endfor %}";
    let patch = serde_json::json!({"spec": {"output": {"keys": {"huge": huge}}}});
    let api: Api<ProviderCredential> = ns.api();
    api.patch(
        "altitude-angel-client",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let pc = ns
        .wait_failing("altitude-angel-client", "SecretWriteFailed")
        .await;
    let message = degraded(&pc).unwrap().message.clone();
    assert!(message.contains("kept in the state Secret"), "{message}");
    // one token for the new spec, then only writes retried with backoff (5 s, 10 s, 20 s)
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = fakes.state.count(AA_CC_ROUTE);
    assert_eq!(after, requests + 1, "a new token was requested per retry");
    let events = ns.events("altitude-angel-client").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SecretWriteFailed")),
        "{events:?}"
    );
    // fixing the spec (a new generation) requests again: the stored token came from the old spec
    let patch = serde_json::json!({"spec": {"output": {"keys": {"huge": null}}}});
    api.patch(
        "altitude-angel-client",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    ns.wait_ready("altitude-angel-client", "True", None).await;
    operator.stop().await;
    ns.delete().await;
}

/// The Altitude Angel client-credentials example against the fakes: its inputs Secret applied,
/// and a function giving its ProviderCredential under another name and output Secret.
async fn client_credentials(
    ns: &TestNs,
    fakes: &FakeProviders,
) -> impl Fn(&str, &str) -> String + use<> {
    let text =
        std::fs::read_to_string(root().join("examples/altitude-angel-client-credentials.yaml"))
            .unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url());
    let (secret_doc, pc_doc) = text.split_once("\n---").unwrap();
    ns.apply(secret_doc).await;
    let pc_doc = pc_doc.to_string();
    move |name: &str, output: &str| {
        pc_doc
            .replace(
                "  name: altitude-angel-client\n",
                &format!("  name: {name}\n"),
            )
            .replace(
                "secretName: altitude-angel-token",
                &format!("secretName: {output}"),
            )
    }
}

/// Defect 7: two credentials created together with the same output Secret: exactly one owns
/// it, keeps it, and the other is told.
#[tokio::test]
async fn two_credentials_never_share_an_output_secret() {
    let (client, ns, fakes) = setup("twoowners").await;
    let credential = client_credentials(&ns, &fakes).await;
    for round in 0..3 {
        let names = [format!("first-{round}"), format!("second-{round}")];
        let output = format!("shared-{round}");
        let operator = Operator::start(&client, &ns.name);
        for name in &names {
            let doc = credential(name, &output);
            ns.apply(&doc).await;
        }
        let (owner, loser) = eventually("one owner and one refusal", WAIT, || async {
            let a = ns.pcred(&names[0]).await;
            let b = ns.pcred(&names[1]).await;
            let (ra, rb) = (ready(&a)?.clone(), ready(&b)?.clone());
            match (ra.status.as_str(), rb.status.as_str()) {
                ("True", "False") => Some((a, rb)),
                ("False", "True") => Some((b, ra)),
                _ => None,
            }
        })
        .await;
        assert_eq!(loser.reason, "SecretOwnedElsewhere", "{loser:?}");
        // the owner's token stays in the Secret, written by its owner
        tokio::time::sleep(Duration::from_secs(3)).await;
        let secret = ns.api::<Secret>().get(&output).await.unwrap();
        let owner_ref = &secret.owner_references()[0];
        assert_eq!(Some(&owner_ref.uid), owner.metadata.uid.as_ref());
        let fp = owner.status.as_ref().unwrap().token_fingerprint.clone();
        assert_eq!(
            secret.annotations().get("tokensync.dev/fingerprint"),
            fp.as_ref()
        );
        operator.stop().await;
    }
    ns.delete().await;
}

/// The execute step writes the state Secret before the output Secret whenever it changes: every
/// rotated refresh token Dronetag issued is stored (at an earlier resourceVersion) before the
/// output Secret gets the access token that came with it. The state does not hold the access
/// token itself (nothing revokes it and no credential reads it as upstream; issue 11).
#[tokio::test]
async fn the_state_is_written_before_the_output() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let (client, ns, fakes) = setup("order").await;
    fakes.state.set_lifetime(Vendor::Dronetag, 12);
    // (resourceVersion, "state" | "output", refresh token | access token)
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, String, String)>>> = Default::default();
    let sink = seen.clone();
    let api = ns.api::<Secret>();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(s)) = stream.next().await {
            let rv: u64 = s
                .resource_version()
                .unwrap_or_default()
                .parse()
                .unwrap_or(0);
            let mut sink = sink.lock().unwrap();
            if s.name_any().ends_with("-tokensync-state") {
                assert!(
                    secret_text(&s, "token").is_none(),
                    "the access token went to the state Secret"
                );
                if let Some(rt) = secret_text(&s, "refresh_token") {
                    sink.push((rv, "state".into(), rt));
                }
            } else if let Some(token) = secret_text(&s, "token") {
                sink.push((rv, "output".into(), token));
            }
        }
    });
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    let log = TokenLog::start(&ns, "dronetag-token", "token");
    log.wait_for(3, WAIT).await;
    operator.stop().await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    let outputs: Vec<u64> = seen
        .iter()
        .filter(|s| s.1 == "output")
        .map(|s| s.0)
        .collect();
    assert!(outputs.len() >= 3, "{} output writes", outputs.len());
    // each access token came with a new refresh token: the state was written before it
    let mut previous = 0;
    for rv in outputs {
        let state_between = seen
            .iter()
            .any(|s| s.1 == "state" && s.0 > previous && s.0 < rv);
        assert!(
            state_between,
            "the output Secret (rv {rv}) was written without the rotated refresh token stored first: {seen:?}"
        );
        previous = rv;
    }
    ns.delete().await;
}

/// Defect 11: once `spec.http.revoke` is removed, deleting the credential no longer waits on a
/// revocation nothing can do.
#[tokio::test]
async fn deletion_does_not_hang_on_a_revoke_no_longer_configured() {
    let (client, ns, fakes) = setup("finalizer").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("json-login-platform.yaml", &fakes).await;
    let pc = ns.wait_ready("json-login-platform", "True", None).await;
    assert!(
        pc.finalizers()
            .contains(&tokensync::controller::FINALIZER.to_string())
    );
    let api: Api<ProviderCredential> = ns.api();
    let patch = serde_json::json!({"spec": {"http": {"revoke": null}}});
    api.patch(
        "json-login-platform",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
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
    ns.delete().await;
}

/// A TCP server that accepts connections and never answers.
async fn hung_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}"), task)
}

/// Defect 9: 10 credentials whose endpoint never answers, beside 8 healthy ones with 20 s
/// tokens, at the default concurrency (4) and request timeout (30 s): the healthy ones never
/// serve an expired token.
#[tokio::test]
async fn hung_providers_never_delay_healthy_renewals() {
    let (client, ns, fakes) = setup("noisy").await;
    fakes.state.set_lifetime(Vendor::AltitudeAngel, 20);
    let (hung, _server) = hung_server().await;
    let credential = client_credentials(&ns, &fakes).await;
    let operator = Operator::start_with(
        &client,
        Config {
            namespaces: vec![ns.name.clone()],
            allow_insecure_http: true,
            ..Config::default()
        },
    );
    let healthy: Vec<String> = (0..8).map(|i| format!("healthy-{i}")).collect();
    for name in &healthy {
        ns.apply(&credential(name, &format!("{name}-token"))).await;
    }
    for name in &healthy {
        ns.wait_ready(name, "True", None).await;
    }
    let base = format!("{}/altitude-angel", fakes.base_url());
    for i in 0..10 {
        let name = format!("hung-{i}");
        let doc = credential(&name, &format!("{name}-token"));
        ns.apply(&doc.replace(&base, &format!("{hung}/altitude-angel")))
            .await;
    }
    // sample every healthy Secret once a second for 75 s
    let secrets: Api<Secret> = ns.api();
    let mut samples = 0;
    let mut expired = BTreeMap::<String, usize>::new();
    for _ in 0..75 {
        for name in &healthy {
            let secret = secrets.get(&format!("{name}-token")).await.unwrap();
            let expires: jiff::Timestamp = secret.annotations()["tokensync.dev/expires-at"]
                .parse()
                .unwrap();
            samples += 1;
            if expires <= jiff::Timestamp::now() {
                *expired.entry(name.clone()).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(samples >= 600);
    assert!(expired.is_empty(), "expired samples: {expired:?}");
    // the hung ones said why
    let pc = ns.pcred("hung-0").await;
    if ready(&pc).is_none() {
        for line in captured_logs()
            .lines()
            .filter(|l| l.contains("hung-0"))
            .take(40)
        {
            eprintln!("{line}");
        }
    }
    assert_eq!(
        ready(&pc).map(|c| c.reason.as_str()),
        Some("ProviderUnreachable")
    );
    operator.stop().await;
    ns.delete().await;
}

/// Defect 13: a label or annotation edit on the inputs Secret (Argo CD, Reloader) is not a new
/// input; a change of its data is.
#[tokio::test]
async fn only_a_change_of_the_inputs_data_renews() {
    let (client, ns, fakes) = setup("inputshash").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("altitude-angel-client-credentials.yaml", &fakes)
        .await;
    let pc = ns.wait_ready("altitude-angel-client", "True", None).await;
    let hash = pc.status.unwrap().inputs_hash.expect("status.inputsHash");
    let requests = fakes.state.count(AA_CC_ROUTE);
    let secrets: Api<Secret> = ns.api();
    let patch = serde_json::json!({"metadata": {
        "labels": {"argocd.argoproj.io/instance": "drones"},
        "annotations": {"reloader.stakater.com/match": "true"}
    }});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        fakes.state.count(AA_CC_ROUTE),
        requests,
        "a label edit renewed"
    );
    let patch =
        serde_json::json!({"stringData": {"client_id": tokensync_fakes::CLIENT_ID, "unused": "x"}});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let pc = eventually("a renewal for the new data", WAIT, || async {
        let pc = ns.pcred("altitude-angel-client").await;
        let h = pc.status.as_ref()?.inputs_hash.clone()?;
        (h != hash).then_some(pc)
    })
    .await;
    assert_eq!(ready(&pc).unwrap().status, "True");
    assert_eq!(fakes.state.count(AA_CC_ROUTE), requests + 1);
    operator.stop().await;
    ns.delete().await;
}
