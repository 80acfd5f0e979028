//! Real OAuth servers as they are (issue 10), against the fakes: expiry formats and a kept token
//! whose expiry cannot be read, OIDC discovery read once, and JSON logs without repeated keys.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use tokensync_fakes::PatExpiry;

const WAIT: Duration = Duration::from_secs(60);

/// The Dronetag PAT example when the vendor answers `expires_at` as the date it was asked for:
/// one PAT, kept, expiring at that date's start. With a form no parser reads, the PAT is still
/// kept, with the requested 30 days; never minted again and again.
#[tokio::test]
async fn a_pat_answered_with_a_date_or_an_unreadable_expiry_is_kept() {
    let (client, ns, fakes) = setup("pat-expiry").await;
    let operator = Operator::start(&client, &ns.name);
    fakes.state.set_pat_expiry(PatExpiry::Date);
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    ns.apply_example("dronetag-pat.yaml", &fakes).await;
    let pc = ns.wait_ready("dronetag-pat", "True", None).await;
    let expires = pc.status.unwrap().expires_at.unwrap().0;
    let date = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24 * 30))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    assert_eq!(
        expires,
        date.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp()
    );
    assert_eq!(fakes.state.issued(Vendor::DronetagPat).len(), 1);

    // an answer no parser reads: the PAT is kept with the requested lifetime
    fakes.state.set_pat_expiry(PatExpiry::Unreadable);
    let text = std::fs::read_to_string(root().join("examples/dronetag-pat.yaml")).unwrap();
    let other = tokensync_fakes::rewrite_urls(&text, &fakes.base_url())
        .replace("name: dronetag-pat\n", "name: pat-unreadable\n")
        .replace("dronetag-pat-token", "pat-unreadable-token");
    ns.apply(&other).await;
    let pc = ns.wait_ready("pat-unreadable", "True", None).await;
    let status = pc.status.unwrap();
    let lifetime = status
        .expires_at
        .unwrap()
        .0
        .duration_since(status.last_refresh_at.unwrap().0);
    assert_eq!(lifetime.as_secs(), 30 * 86400, "the requested lifetime");
    let issued = fakes.state.issued(Vendor::DronetagPat);
    assert_eq!(issued.len(), 2, "one PAT per credential, none thrown away");
    let secret = ns
        .api::<Secret>()
        .get("pat-unreadable-token")
        .await
        .unwrap();
    assert_eq!(
        secret_text(&secret, "token").as_deref(),
        Some(issued[1].token.as_str())
    );
    // nothing is minted again while the PATs live
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fakes.state.issued(Vendor::DronetagPat).len(), 2);
    operator.stop().await;
    ns.delete().await;
}

/// The discovery document is read once, not before every token request (87 GETs for 87 token
/// requests before).
#[tokio::test]
async fn discovery_is_read_once_for_many_token_requests() {
    let (client, ns, fakes) = setup("discovery-once").await;
    fakes.state.set_lifetime(Vendor::Dronetag, 12);
    let operator = Operator::start(&client, &ns.name);
    let log = TokenLog::start(&ns, "dronetag-token", "token");
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    log.wait_for(4, WAIT).await;
    let requests = fakes.state.count("dronetag token password")
        + fakes.state.count("dronetag token refresh_token");
    assert!(requests >= 4, "{:?}", fakes.state.counters());
    assert_eq!(
        fakes.state.count("dronetag discovery"),
        1,
        "{:?}",
        fakes.state.counters()
    );
    // the openid scope of the example was granted
    let issued = fakes.state.issued(Vendor::Dronetag);
    assert!(
        issued
            .iter()
            .all(|i| i.scopes.iter().any(|s| s == "openid"))
    );
    operator.stop().await;
    ns.delete().await;
}

/// A refresh answered with a bare 400 and an empty body (no `invalid_grant`, issue 10 item 1)
/// means the refresh token is dead: the password grant runs at once, and the token never
/// expires in the Secret.
#[tokio::test]
async fn a_bare_400_to_a_refresh_falls_back_to_the_password_grant() {
    let (client, ns, fakes) = setup("bare-400").await;
    fakes.state.set_lifetime(Vendor::Dronetag, 15);
    let operator = Operator::start(&client, &ns.name);
    let log = TokenLog::start(&ns, "dronetag-token", "token");
    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    log.wait_for(1, WAIT).await;
    assert_eq!(fakes.state.count("dronetag token password"), 1);
    fakes
        .state
        .set_fault(Vendor::Dronetag, Fault::BareOnRefresh(400));
    log.wait_for(2, WAIT).await;
    assert_eq!(
        fakes.state.count("dronetag token refresh_token"),
        1,
        "the dead refresh token is not presented again: {:?}",
        fakes.state.counters()
    );
    assert_eq!(fakes.state.count("dronetag token password"), 2);
    log.assert_renewed_before_expiry();
    ns.wait_ready("dronetag", "True", Some("TokenRenewed"))
        .await;
    operator.stop().await;
    ns.delete().await;
}

/// Whether any JSON object in `text` repeats a key (serde_json keeps the last one silently).
fn repeated_key(text: &str) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> DeserializeSeed<'de> for Check {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys = BTreeSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!("repeated key {key:?}")));
                }
                map.next_value_seed(Check)?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Check)?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Check.deserialize(&mut de).map_err(|e| e.to_string())
}

#[test]
fn the_repeated_key_check_finds_them() {
    assert!(repeated_key(r#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
    assert!(repeated_key(r#"{"name":"dronetag","namespace":"ns","name":"reconcile"}"#).is_err());
    assert!(repeated_key(r#"{"x":[{"m":1,"m":2}]}"#).is_err());
}

/// The operator binary with `--log-format json`, renewing one credential and failing another
/// (a wrong client secret, so the warning carries a reason): every line is JSON and no object
/// in it repeats a key (issue 10, item 9: `name` and `message` came twice).
#[tokio::test]
async fn json_logs_repeat_no_key() {
    let (_client, ns, fakes) = setup("json-logs").await;
    fakes.state.set_lifetime(Vendor::Pix4d, 12);
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args([
            "run",
            "--log-format",
            "json",
            "--allow-insecure-http",
            "--http-addr",
            "127.0.0.1:0",
            "--namespace",
        ])
        .arg(&ns.name)
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = operator.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut stream = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = stream.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    let text = std::fs::read_to_string(root().join("examples/dronetag-oidc.yaml")).unwrap();
    let wrong = tokensync_fakes::rewrite_urls(&text, &fakes.base_url())
        .replace("example-client-secret&=+%/", "wrong-client-secret-9a0b");
    ns.apply(&wrong).await;
    ns.wait_ready("dronetag", "False", Some("Unauthorized"))
        .await;
    let log = TokenLog::start(&ns, "pix4d-token", "token");
    log.wait_for(2, WAIT).await;
    operator.kill().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    let lines = lines.lock().unwrap().clone();
    assert!(lines.len() > 10, "{lines:?}");
    let mut saw = BTreeSet::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        repeated_key(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(m) = v["fields"]["message"].as_str() {
            saw.insert(m.to_string());
        }
        assert!(!line.contains("wrong-client-secret-9a0b"), "{line}");
    }
    // the lines the issue named are among them, with their own keys
    let failed = lines
        .iter()
        .find(|l| l.contains("token not refreshed"))
        .expect("a failure line");
    let v: serde_json::Value = serde_json::from_str(failed).unwrap();
    assert_eq!(v["span"]["credential"], "dronetag", "{failed}");
    assert_eq!(v["span"]["name"], "reconcile", "{failed}");
    assert_eq!(v["fields"]["reason"], "Unauthorized", "{failed}");
    assert!(saw.contains("token received"), "{saw:?}");
    ns.delete().await;
}
