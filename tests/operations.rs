//! Running it in production: Secret ownership, inputs and Secret watches, egress controls, private
//! CAs, forced renewal, metrics, and leader election, on the real apiserver.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tokensync::controller::lists::{self, Lists};
use tokensync::controller::{Config, Context};
use tokensync::crd::ProviderCredential;
use tokensync::election;

const AA_EXAMPLE: &str = "altitude-angel-client-credentials.yaml";
const AA: &str = "altitude-angel-client";
const AA_SECRET: &str = "altitude-angel-token";
const AA_ROUTE: &str = "altitude-angel token client_credentials";
const WAIT: Duration = Duration::from_secs(60);

fn example(name: &str, base: &str) -> String {
    let text = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
    tokensync_fakes::rewrite_urls(&text, base)
}

/// The watches list as a stream where the apiserver serves streaming lists (the local one is
/// 1.35: the probe must say so), and in pages where it does not (forced here): credentials and
/// inputs that exist before the operator starts are listed either way.
#[tokio::test]
async fn watches_list_as_a_stream_or_in_pages() {
    let (client, ns, fakes) = setup("lists").await;
    assert_eq!(lists::probe(&ns.api::<Secret>()).await, Lists::Streaming);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    let operator = Operator::start_with(
        &client,
        Config {
            namespaces: vec![ns.name.clone()],
            allow_insecure_http: true,
            lists: Some(Lists::Pages),
            ..Config::default()
        },
    );
    ns.wait_ready(AA, "True", None).await;
    assert_eq!(fakes.state.count(AA_ROUTE), 1);
    operator.stop().await;
    // a restart that streams what the first one wrote, and then watches: the output Secret
    // deleted by hand is written again
    let operator = Operator::start(&client, &ns.name);
    let secrets = ns.api::<Secret>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token");
    let after = delete_and_await_rewrite(&secrets, AA_SECRET).await;
    assert_ne!(Some(after), before);
    operator.stop().await;
    ns.delete().await;
}

/// Delete the output Secret `name` by hand and wait until the operator has written it again;
/// its new token.
async fn delete_and_await_rewrite(secrets: &Api<Secret>, name: &str) -> String {
    secrets
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Secret rewritten", WAIT, || async {
        let s = secrets.get_opt(name).await.ok()??;
        secret_text(&s, "token")
    })
    .await
}

/// A Secret someone else made, named `name`, holding "somebody else's" under `key`.
async fn create_foreign(secrets: &Api<Secret>, name: &str, key: &str) {
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "stringData": {key: "somebody else's"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
}

/// A new client-credentials credential asks the vendor without looking for its state Secret
/// first (what it is issued rarely needs storing there). Altitude Angel sends a refresh token
/// with it, and a Secret someone else made holds the state's name: the refresh token cannot be
/// kept, and each retry looks first instead of asking again.
#[tokio::test]
async fn a_state_name_held_by_someone_else_costs_one_request_not_one_per_retry() {
    let (client, ns, fakes) = setup("statename").await;
    let secrets: Api<Secret> = ns.api();
    create_foreign(&secrets, &format!("{AA}-tokensync-state"), "note").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_failing(AA, "SecretOwnedElsewhere").await;
    eventually("a retry after the failure", WAIT, || async {
        let pc = ns.pcred(AA).await;
        (pc.status?.last_failure?.count >= 2).then_some(())
    })
    .await;
    assert_eq!(
        fakes.state.count(AA_ROUTE),
        1,
        "{:?}",
        fakes.state.counters()
    );
    let kept = secrets.get(&format!("{AA}-tokensync-state")).await.unwrap();
    assert!(kept.owner_references().is_empty());
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let (client, ns, fakes) = setup("foreign").await;
    let secrets: Api<Secret> = ns.api();
    create_foreign(&secrets, AA_SECRET, "token").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    let pc = ns.wait_failing(AA, "SecretOwnedElsewhere").await;
    assert!(degraded(&pc).unwrap().message.contains(AA_SECRET));
    let secret = secrets.get(AA_SECRET).await.unwrap();
    assert_eq!(
        secret_text(&secret, "token").as_deref(),
        Some("somebody else's")
    );
    assert!(secret.owner_references().is_empty());
    assert_eq!(
        fakes.state.count(AA_ROUTE),
        0,
        "no token is fetched for a Secret it cannot write"
    );
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn changed_inputs_give_a_new_token_and_a_deleted_secret_is_rewritten() {
    let (client, ns, fakes) = setup("watches").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let first = secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap();

    // the inputs' data change (a rotated client secret, here a new key): a new token now, long
    // before the 20-minute token's renewal
    let patch = serde_json::json!({"stringData": {"rotated": "yes"}});
    secrets
        .patch(
            "altitude-angel-client",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let second = eventually("a token for the new inputs", WAIT, || async {
        let t = secret_text(&secrets.get(AA_SECRET).await.ok()?, "token")?;
        (t != first).then_some(t)
    })
    .await;

    // the managed Secret is deleted by hand: it is written again
    let third = delete_and_await_rewrite(&secrets, AA_SECRET).await;
    // the access token is not kept in the state Secret (nothing reads it back; issue 11 keeps
    // renewals at two writes): the Secret is written again with one new token, by the refresh
    // token Altitude Angel issued with the last one
    assert_ne!(third, second);
    ns.wait_event(AA, "TokenIssued").await;
    assert_eq!(
        fakes.state.count(AA_ROUTE),
        2,
        "{:?}",
        fakes.state.counters()
    );
    assert_eq!(fakes.state.count("altitude-angel token refresh_token"), 1);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn plain_http_is_refused_without_the_flag_and_hosts_outside_the_allowlist_always() {
    let (client, ns, fakes) = setup("egress").await;
    let strict = Config {
        namespaces: vec![ns.name.clone()],
        ..Config::default()
    };
    let operator = Operator::start_with(&client, strict);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    let pc = ns.wait_failing(AA, "InsecureURL").await;
    assert!(
        degraded(&pc)
            .unwrap()
            .message
            .contains("--allow-insecure-http")
    );
    operator.stop().await;

    // http allowed, but only to hosts on the allowlist
    let allowlisted = Config {
        namespaces: vec![ns.name.clone()],
        allow_insecure_http: true,
        allowed_hosts: vec!["auth.altitudeangel.com".into(), "*.pix4d.com".into()],
        ..Config::default()
    };
    let operator = Operator::start_with(&client, allowlisted);
    let pc = ns.wait_failing(AA, "HostNotAllowed").await;
    assert!(degraded(&pc).unwrap().message.contains("\"127.0.0.1\""));
    assert_eq!(fakes.state.count(AA_ROUTE), 0, "a refused host was called");
    let events = ns.events(AA).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("HostNotAllowed")),
        "{events:?}"
    );
    operator.stop().await;

    let allowed = Config {
        namespaces: vec![ns.name.clone()],
        allow_insecure_http: true,
        allowed_hosts: vec!["127.0.0.1".into()],
        ..Config::default()
    };
    let operator = Operator::start_with(&client, allowed);
    // the operator changed, not the object: wait out the backoff of the last failure
    ns.wait_ready(AA, "True", None).await;
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_token_endpoint_behind_a_private_ca_works_with_the_bundle_and_fails_without() {
    let client = client().await;
    let ns = TestNs::new(&client, "privateca").await;
    let ca = PrivateCa::new();
    let fakes = FakeProviders::start_tls(&ca.cert_pem, &ca.key_pem)
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns.name);
    let bundle: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vendor-ca"},
        "data": {"ca.crt": ByteString(ca.ca_pem.clone())},
    }))
    .unwrap();
    ns.api::<Secret>()
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
    let manifest = example(AA_EXAMPLE, &fakes.base_url());
    assert!(manifest.contains("https://127.0.0.1:"), "served over TLS");

    // without the bundle: the system roots do not know the CA
    ns.apply(&manifest).await;
    let pc = ns.wait_failing(AA, "ProviderUnreachable").await;
    let message = degraded(&pc).unwrap().message.to_lowercase();
    assert!(message.contains("certificate"), "{message}");

    // with the bundle from a Secret: Ready
    let patch = serde_json::json!({"spec": {"tls": {"caBundleSecret": {"name": "vendor-ca", "key": "ca.crt"}}}});
    ns.api::<ProviderCredential>()
        .patch(AA, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    ns.wait_ready(AA, "True", None).await;
    assert_eq!(fakes.state.count(AA_ROUTE), 1);

    // from a ConfigMap too; a missing one is its own condition
    let patch = serde_json::json!({"spec": {"tls": {"caBundleSecret": null, "caBundleConfigMap": {"name": "vendor-ca", "key": "ca.crt"}}}});
    ns.api::<ProviderCredential>()
        .patch(AA, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    ns.wait_failing(AA, "CABundleNotFound").await;
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vendor-ca"},
        "data": {"ca.crt": String::from_utf8(ca.ca_pem.clone()).unwrap()},
    }))
    .unwrap();
    ns.api::<k8s_openapi::api::core::v1::ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    // a ConfigMap is not watched: the retry after the backoff picks it up
    ns.wait_ready(AA, "True", None).await;
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn tokensync_refresh_renews_on_demand() {
    let (client, ns, fakes) = setup("force").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    assert_eq!(fakes.state.count(AA_ROUTE), 1);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["refresh", AA, "-n", &ns.name])
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("a forced renewal", WAIT, || async {
        (fakes.state.count(AA_ROUTE) == 2).then_some(())
    })
    .await;
    let pc = ns.wait_ready(AA, "True", Some("TokenRenewed")).await;
    assert!(
        pc.annotations()
            .contains_key(tokensync::controller::FORCE_REFRESH_ANNOTATION)
    );
    // the same request is honoured once
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fakes.state.count(AA_ROUTE), 2);
    operator.stop().await;
    ns.delete().await;
}

/// The value of the first sample of `series` (a name with its labels) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_are_served_with_plausible_values() {
    let (client, ns, fakes) = setup("metrics").await;
    let operator = Operator::start(&client, &ns.name);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokensync::admin::serve(
        listener,
        operator.ctx.health.clone(),
        operator.ctx.metrics.clone(),
    ));
    operator.ctx.metrics.set_leader(true);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.apply_example("json-login-platform.yaml", &fakes).await;
    let pc = ns.wait_ready(AA, "True", None).await;
    ns.wait_ready("json-login-platform", "True", None).await;
    // one credential failing, for the error series
    let patch = serde_json::json!({"spec": {"inputs": {"secretName": "absent"}}});
    ns.api::<ProviderCredential>()
        .patch(
            "json-login-platform",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns.wait_failing("json-login-platform", "InputsNotFound")
        .await;

    let get = |path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(get("/healthz").await, (200, "ok".to_string()));
    let (code, body) = get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, scrape) = get("/metrics").await;
    assert_eq!(code, 200);
    let id = format!(r#"namespace="{}",name="{AA}""#, ns.name);
    let expires = pc
        .status
        .as_ref()
        .unwrap()
        .expires_at
        .as_ref()
        .unwrap()
        .0
        .as_second() as f64;
    let renew = pc
        .status
        .as_ref()
        .unwrap()
        .renew_at
        .as_ref()
        .unwrap()
        .0
        .as_second() as f64;
    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    assert_eq!(
        sample(
            &scrape,
            &series("tokensync_credential_expiration_timestamp_seconds", &id)
        ),
        Some(expires),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            &series("tokensync_credential_renewal_timestamp_seconds", &id)
        ),
        Some(renew)
    );
    assert_eq!(
        sample(
            &scrape,
            &series(
                "tokensync_credential_ready_status",
                &format!(r#"{id},condition="True""#)
            )
        ),
        Some(1.0)
    );
    // its token is still valid: Ready, with the failing renewals counted
    let failing = format!(
        r#"namespace="{}",name="json-login-platform",condition="True""#,
        ns.name
    );
    assert_eq!(
        sample(
            &scrape,
            &series("tokensync_credential_ready_status", &failing)
        ),
        Some(1.0)
    );
    let failures = sample(
        &scrape,
        &series(
            "tokensync_credential_renewal_failures",
            &format!(r#"namespace="{}",name="json-login-platform""#, ns.name),
        ),
    );
    assert!(failures.is_some_and(|f| f >= 1.0), "{scrape}");
    let ok = sample(
        &scrape,
        r#"tokensync_token_requests_total{provider="oauth2",result="success"}"#,
    )
    .unwrap();
    assert!(ok >= 1.0);
    let http_ok = sample(
        &scrape,
        r#"tokensync_token_requests_total{provider="http",result="success"}"#,
    )
    .unwrap();
    assert!(http_ok >= 1.0);
    let count = sample(
        &scrape,
        r#"tokensync_token_request_duration_seconds_count{provider="oauth2"}"#,
    )
    .unwrap();
    let sum = sample(
        &scrape,
        r#"tokensync_token_request_duration_seconds_sum{provider="oauth2"}"#,
    )
    .unwrap();
    assert!(
        count >= 1.0 && sum > 0.0 && sum / count < 5.0,
        "mean request time {sum}/{count}"
    );
    assert!(
        sample(
            &scrape,
            r#"tokensync_reconcile_errors_total{reason="InputsNotFound"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&scrape, "tokensync_reconciles_total").unwrap() >= 2.0);
    assert_eq!(sample(&scrape, "tokensync_leader"), Some(1.0));

    // a deleted credential leaves no series behind
    ns.api::<ProviderCredential>()
        .delete(AA, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the series of a deleted credential gone", WAIT, || async {
        let (_, scrape) = get("/metrics").await;
        (!scrape.contains(&id)).then_some(())
    })
    .await;
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn leader_election_one_reconciles_and_a_standby_takes_over_without_duplicate_fetches() {
    let (client, ns, fakes) = setup("leader").await;
    // renewed 5 s before expiry: more than a killed leader's lease (3 s) takes to run out
    fakes
        .state
        .set_lifetime(tokensync_fakes::Vendor::AltitudeAngel, 15);
    let log = TokenLog::start(&ns, AA_SECRET, "token");
    let first = Operator::start_elected(&client, &ns.name, "tokensync-leader", "replica-a", 3);
    eventually("replica-a leads", WAIT, || async {
        (sample(&first.metrics(), "tokensync_leader") == Some(1.0)).then_some(())
    })
    .await;
    let second = Operator::start_elected(&client, &ns.name, "tokensync-leader", "replica-b", 3);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    log.wait_for(1, WAIT).await;
    // exactly one reconciles; the standby is ready and says it does not lead
    assert_eq!(sample(&second.metrics(), "tokensync_leader"), Some(0.0));
    assert_eq!(
        sample(&second.metrics(), "tokensync_reconciles_total"),
        Some(0.0)
    );
    assert!(second.ctx.health.ready());
    assert!(sample(&first.metrics(), "tokensync_reconciles_total").unwrap() >= 1.0);

    // kill the leader: no graceful stop, no lease release; the standby takes over after the
    // lease runs out and keeps renewing, without fetching a token twice
    let seen_before = log.values().len();
    first.kill();
    eventually("replica-b leads", WAIT, || async {
        (sample(&second.metrics(), "tokensync_leader") == Some(1.0)).then_some(())
    })
    .await;
    log.wait_for(seen_before + 1, WAIT).await;
    assert!(sample(&second.metrics(), "tokensync_reconciles_total").unwrap() >= 1.0);
    second.stop().await;
    log.assert_every_issued_token_written(&fakes, tokensync_fakes::Vendor::AltitudeAngel)
        .await;
    log.assert_renewed_before_expiry();
    ns.delete().await;
}

/// The holder of the Lease `name` in `ns`, if any.
async fn lease_holder(ns: &TestNs, name: &str) -> Option<String> {
    let lease = ns.api::<Lease>().get(name).await.unwrap();
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// A leader whose controllers end while it leads (a panic in a reconcile, or the run future
/// returning) releases the Lease, is no longer ready, exports `tokensync_leader 0` and returns an
/// error, so the process exits and Kubernetes restarts it.
async fn a_leader_whose_controllers_end(prefix: &str, panic: bool) {
    let (client, ns, _fakes) = setup(prefix).await;
    let config = Config {
        namespaces: vec![ns.name.clone()],
        leader_election: true,
        ..Config::default()
    };
    let ctx = Arc::new(Context::new(client, config).unwrap());
    let lease = election::LeaseConfig {
        name: "tokensync-leader".into(),
        namespace: ns.name.clone(),
        identity: "replica-a".into(),
        duration_seconds: 15,
        grace_seconds: 5,
    };
    // the controllers' stand-in: synced at once, it ends when told to
    let end = Arc::new(tokio::sync::Notify::new());
    let told = end.clone();
    let start = move |ctx: Arc<Context>, stop: election::Stop| {
        let told = told.clone();
        async move {
            ctx.health.starting(1);
            ctx.health.synced_one();
            tokio::select! {
                _ = stop => {}
                _ = told.notified() => if panic { panic!("a reconcile panicked") },
            }
        }
    };
    let (_no_shutdown, shutdown) = tokio::sync::oneshot::channel::<()>();
    let mut elected = tokio::spawn(election::run_with(
        ctx.clone(),
        lease,
        async {
            let _ = shutdown.await;
        },
        start,
    ));
    eventually("replica-a leads, ready", WAIT, || async {
        let leads = sample(&ctx.metrics.encode(), "tokensync_leader") == Some(1.0);
        (leads && ctx.health.ready()).then_some(())
    })
    .await;
    assert_eq!(
        lease_holder(&ns, "tokensync-leader").await.as_deref(),
        Some("replica-a")
    );

    end.notify_one();
    let result = tokio::time::timeout(WAIT, &mut elected)
        .await
        .expect("the election returns once the controllers ended")
        .expect("the election does not panic");
    let error = result.expect_err("controllers that end are an error");
    let how = if panic { "panicked" } else { "returned" };
    assert!(error.to_string().contains(how), "{error}");
    assert_eq!(lease_holder(&ns, "tokensync-leader").await, None);
    assert!(!ctx.health.ready());
    assert_eq!(sample(&ctx.metrics.encode(), "tokensync_leader"), Some(0.0));
    ns.delete().await;
}

#[tokio::test]
async fn leader_whose_controllers_panic_releases_the_lease_and_fails() {
    a_leader_whose_controllers_end("leader-panic", true).await;
}

#[tokio::test]
async fn leader_whose_controllers_return_releases_the_lease_and_fails() {
    a_leader_whose_controllers_end("leader-return", false).await;
}

/// The per-credential series (name and labels) in a scrape, sorted.
fn credential_series(scrape: &str) -> Vec<&str> {
    let mut series: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("tokensync_credential_"))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .collect();
    series.sort();
    series
}

#[tokio::test]
async fn leader_terms_a_standby_exports_no_credential_series_and_a_new_leader_each_once() {
    let (client, ns, fakes) = setup("terms").await;
    let operator = Operator::start_elected(&client, &ns.name, "tokensync-leader", "replica-a", 5);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    let id = format!(r#"namespace="{}",name="{AA}""#, ns.name);
    let mut expected = vec![
        format!("tokensync_credential_expiration_timestamp_seconds{{{id}}}"),
        format!("tokensync_credential_renewal_timestamp_seconds{{{id}}}"),
        format!("tokensync_credential_renewal_failures{{{id}}}"),
    ];
    for condition in ["False", "True", "Unknown"] {
        expected.push(format!(
            r#"tokensync_credential_ready_status{{{id},condition="{condition}"}}"#
        ));
    }
    expected.sort();
    eventually(
        "the leader exports the credential's series",
        WAIT,
        || async { (credential_series(&operator.metrics()) == expected).then_some(()) },
    )
    .await;

    // another replica takes the lease: replica-a stands by until that lease runs out
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let steal = serde_json::json!({"spec": {
        "holderIdentity": "replica-b", "renewTime": now, "leaseDurationSeconds": 5
    }});
    ns.api::<Lease>()
        .patch(
            "tokensync-leader",
            &PatchParams::default(),
            &Patch::Merge(&steal),
        )
        .await
        .unwrap();
    let standby = eventually("replica-a stands by", WAIT, || async {
        let scrape = operator.metrics();
        (sample(&scrape, "tokensync_leader") == Some(0.0)).then_some(scrape)
    })
    .await;
    assert_eq!(
        credential_series(&standby),
        Vec::<&str>::new(),
        "a standby exports per-credential series"
    );

    // replica-a leads again: each series once, none frozen from the first term
    eventually("replica-a leads again", WAIT, || async {
        (sample(&operator.metrics(), "tokensync_leader") == Some(1.0)).then_some(())
    })
    .await;
    let scrape = eventually("the new leader exports series", WAIT, || async {
        let scrape = operator.metrics();
        (!credential_series(&scrape).is_empty()).then_some(scrape)
    })
    .await;
    assert_eq!(credential_series(&scrape), expected);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn a_slow_provider_times_out_and_the_token_in_place_stays() {
    let (client, ns, fakes) = setup("timeout").await;
    let config = Config {
        namespaces: vec![ns.name.clone()],
        allow_insecure_http: true,
        request_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let operator = Operator::start_with(&client, config);
    ns.apply_example(AA_EXAMPLE, &fakes).await;
    ns.wait_ready(AA, "True", None).await;
    let secrets: Api<Secret> = ns.api();
    let token = secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap();

    fakes.state.set_fault(
        tokensync_fakes::Vendor::AltitudeAngel,
        tokensync_fakes::Fault::Delay(Duration::from_secs(5)),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["refresh", AA, "-n", &ns.name])
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let pc = ns.wait_failing(AA, "ProviderUnreachable").await;
    let message = degraded(&pc).unwrap().message.to_lowercase();
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(
        secret_text(&secrets.get(AA_SECRET).await.unwrap(), "token").unwrap(),
        token
    );
    operator.stop().await;
    ns.delete().await;
}
