//! Admission on the real apiserver: the CRD's schema and CEL rules refuse manifests the operator
//! could not act on (unbounded durations, reserved Secret names, names whose state Secret would
//! overflow, invalid output labels and annotations) with a message naming the field, and admit
//! the edge values just inside each bound. The 16 cases of `tests/foundation.rs` are not repeated.

mod common;

use common::*;
use kube::Api;
use kube::api::PostParams;
use kube::core::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use tokensync::crd::ProviderCredential;

/// Creates ProviderCredentials in a namespace of their own and records every verdict that
/// differs from the expected one, so one run shows every gap at once.
struct Admission {
    ns: TestNs,
    api: Api<DynamicObject>,
    created: usize,
    wrong: Vec<String>,
}

impl Admission {
    async fn new(prefix: &str) -> Self {
        let client = client().await;
        let ns = TestNs::new(&client, prefix).await;
        let ar = ApiResource::erase::<ProviderCredential>(&());
        let api = Api::namespaced_with(client, &ns.name, &ar);
        Self {
            ns,
            api,
            created: 0,
            wrong: vec![],
        }
    }

    async fn create(&mut self, name: Option<&str>, patch: &Value) -> Result<(), (u16, String)> {
        self.created += 1;
        let name = name.map_or_else(|| format!("case-{}", self.created), str::to_string);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tokensync.dev/v1alpha1", "kind": "ProviderCredential",
            "metadata": {"name": name}, "spec": spec(patch),
        }))
        .unwrap();
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) => Err((s.code, s.message)),
            Err(other) => panic!("{name}: unexpected error {other}"),
        }
    }

    /// The manifest (the valid spec with `patch` merged in) is refused as invalid (422), and the
    /// apiserver's message holds every one of `needles`.
    async fn refused(&mut self, case: &str, name: Option<&str>, patch: Value, needles: &[&str]) {
        match self.create(name, &patch).await {
            Ok(()) => self.wrong.push(format!("{case}: admitted")),
            Err((code, message)) => {
                if code != 422 {
                    self.wrong.push(format!("{case}: HTTP {code}: {message}"));
                }
                for needle in needles {
                    if !message.contains(needle) {
                        self.wrong
                            .push(format!("{case}: {message:?} lacks {needle:?}"));
                    }
                }
            }
        }
    }

    async fn admitted(&mut self, case: &str, name: Option<&str>, patch: Value) {
        if let Err((code, message)) = self.create(name, &patch).await {
            self.wrong
                .push(format!("{case}: refused, HTTP {code}: {message}"));
        }
    }

    async fn finish(self) {
        self.ns.delete().await;
        assert!(
            self.wrong.is_empty(),
            "{} wrong verdicts:\n{}",
            self.wrong.len(),
            self.wrong.join("\n")
        );
    }
}

/// A valid spec with `patch` merged in (JSON merge patch: objects merge, `null` removes).
fn spec(patch: &Value) -> Value {
    fn merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Object(into), Value::Object(patch)) => {
                for (k, v) in patch {
                    if v.is_null() {
                        into.remove(k);
                    } else {
                        merge(into.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (into, patch) => *into = patch.clone(),
        }
    }
    let mut spec = json!({
        "inputs": {"secretName": "in"},
        "oauth2": {"tokenUrl": "https://auth.example/token", "grantType": "client_credentials"},
        "output": {"secretName": "out"}
    });
    merge(&mut spec, patch);
    spec
}

fn refresh(field: &str, value: &str) -> Value {
    json!({"refresh": {field: value}})
}

/// The declarative provider, with a requested lifetime.
fn lifetime(value: &str) -> Value {
    json!({"oauth2": null, "http": {"login": {"url": "https://x.example/login"}, "requestedLifetime": value}})
}

#[tokio::test]
async fn durations_are_bounded_to_ten_years_and_the_fallback_to_one_minute() {
    let mut a = Admission::new("adm-duration").await;
    let year10 = "at most 10 years (3650d)";
    for (field, path) in [
        ("renewBefore", "spec.refresh.renewBefore"),
        ("fallbackInterval", "spec.refresh.fallbackInterval"),
    ] {
        // past the pattern's digit bounds: refused by the pattern alone
        for value in ["200000000d", "99999999999999999999d", "9999999999s"] {
            a.refused(
                &format!("{field} {value}"),
                None,
                refresh(field, value),
                &[path],
            )
            .await;
        }
        // inside the pattern, past 10 years: refused by the CEL bound, which names the field
        for value in [
            "3651d",
            "87601h",
            "5256001m",
            "315360001s",
            "3650d1s",
            "99999d",
        ] {
            a.refused(
                &format!("{field} {value}"),
                None,
                refresh(field, value),
                &[path, year10],
            )
            .await;
        }
        // not durations: a unit twice, out of order, nothing at all, no unit
        for value in ["1h1h", "30m1h", "", "90", "1h 30m", "-1s"] {
            a.refused(
                &format!("{field} {value:?}"),
                None,
                refresh(field, value),
                &[path],
            )
            .await;
        }
        for value in [
            "3650d",
            "87600h",
            "5256000m",
            "315360000s",
            "3649d23h59m60s",
            "1h30m",
        ] {
            a.admitted(&format!("{field} {value}"), None, refresh(field, value))
                .await;
        }
    }
    let path = "spec.http.requestedLifetime";
    for value in ["200000000d", "99999999999999999999d"] {
        a.refused(
            &format!("requestedLifetime {value}"),
            None,
            lifetime(value),
            &[path],
        )
        .await;
    }
    for value in ["3651d", "3650d1s", "87601h"] {
        a.refused(
            &format!("requestedLifetime {value}"),
            None,
            lifetime(value),
            &[path, year10],
        )
        .await;
    }
    for value in ["3650d", "8d", "12h"] {
        a.admitted(&format!("requestedLifetime {value}"), None, lifetime(value))
            .await;
    }

    // a fallback below a minute renews a token without expiry in a hot loop
    let path = "spec.refresh.fallbackInterval";
    for value in ["0s", "59s", "0m", "0d0h0m59s"] {
        a.refused(
            &format!("fallbackInterval {value}"),
            None,
            refresh("fallbackInterval", value),
            &[path, "at least 1m"],
        )
        .await;
    }
    for value in ["1m", "60s", "0d0h1m", "1h"] {
        a.admitted(
            &format!("fallbackInterval {value}"),
            None,
            refresh("fallbackInterval", value),
        )
        .await;
    }
    // renewBefore has no lower bound: 0s renews at expiry
    a.admitted("renewBefore 0s", None, refresh("renewBefore", "0s"))
        .await;
    a.finish().await;
}

#[tokio::test]
async fn the_state_secret_suffix_is_reserved_for_output_and_inputs() {
    let mut a = Admission::new("adm-secrets").await;
    let reserved = "-tokensync-state";
    let output = |name: &str| json!({"output": {"secretName": name}});
    let inputs = |name: &str| json!({"inputs": {"secretName": name}});
    // over its own state Secret
    a.refused(
        "output over its own state Secret",
        Some("own"),
        output("own-tokensync-state"),
        &["spec.output.secretName", reserved],
    )
    .await;
    // over, or reading the refresh token from, another credential's state Secret
    a.refused(
        "output over another state Secret",
        None,
        output("other-tokensync-state"),
        &["spec.output.secretName", reserved],
    )
    .await;
    a.refused(
        "inputs from another state Secret",
        None,
        inputs("other-tokensync-state"),
        &["spec.inputs.secretName", reserved],
    )
    .await;
    a.refused(
        "inputs from its own state Secret",
        Some("self"),
        inputs("self-tokensync-state"),
        &["spec.inputs.secretName", reserved],
    )
    .await;
    // the suffix only: names that merely contain the words are the user's
    a.admitted(
        "output containing the words",
        None,
        output("tokensync-state-copy"),
    )
    .await;
    a.admitted(
        "inputs containing the words",
        None,
        inputs("my-tokensync-state-in"),
    )
    .await;
    a.admitted(
        "output ending tokensync-state",
        None,
        output("tokensync-state"),
    )
    .await;
    a.finish().await;
}

#[tokio::test]
async fn a_name_whose_state_secret_would_overflow_is_refused() {
    let mut a = Admission::new("adm-name").await;
    // <name>-tokensync-state must fit a Secret name's 253 characters
    let longest = "n".repeat(237);
    a.admitted("237-character name", Some(&longest), json!({}))
        .await;
    for len in [238, 253] {
        let name = "n".repeat(len);
        a.refused(
            &format!("{len}-character name"),
            Some(&name),
            json!({}),
            &["metadata.name", "237"],
        )
        .await;
    }
    a.finish().await;
}

#[tokio::test]
async fn output_labels_and_annotations_must_be_valid_and_not_the_operators() {
    let mut a = Admission::new("adm-labels").await;
    let labels = |k: &str, v: &str| json!({"output": {"labels": {k: v}}});
    let annotations = |k: &str, v: &str| json!({"output": {"annotations": {k: v}}});
    let name63 = "a".repeat(63);
    let prefix253 = format!("{}.example", "p".repeat(245));
    assert_eq!(prefix253.len(), 253);

    let bad_keys = [
        "bad label!".to_string(),
        String::new(),
        "-starts-with-dash".into(),
        "ends-with-dot.".into(),
        "a/b/c".into(),
        "/no-prefix".into(),
        "no-name/".into(),
        "Upper.Example/team".into(),
        "under_score.example/team".into(),
        "a".repeat(64),
        format!("example.com/{}", "a".repeat(64)),
        format!("{prefix253}x/team"),
    ];
    for key in &bad_keys {
        a.refused(
            &format!("label key {key:?}"),
            None,
            labels(key, "v"),
            &["spec.output.labels"],
        )
        .await;
        a.refused(
            &format!("annotation key {key:?}"),
            None,
            annotations(key, "v"),
            &["spec.output.annotations"],
        )
        .await;
    }
    let long_value = "v".repeat(64);
    for value in ["bad value!", "-dash", "dot.", long_value.as_str(), "a/b"] {
        a.refused(
            &format!("label value {value:?}"),
            None,
            labels("team", value),
            &["spec.output.labels"],
        )
        .await;
    }
    // the operator's own keys: it would overwrite them, or they would mislead its readers
    for (key, reserved) in [
        ("tokensync.dev/issued-at", "tokensync.dev/"),
        ("tokensync.dev/role", "tokensync.dev/"),
        (
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/managed-by",
        ),
    ] {
        a.refused(
            &format!("reserved label {key}"),
            None,
            labels(key, "x"),
            &["spec.output.labels", reserved, "set by the operator"],
        )
        .await;
    }
    for key in [
        "tokensync.dev/issued-at",
        "tokensync.dev/provider-credential",
    ] {
        a.refused(
            &format!("reserved annotation {key}"),
            None,
            annotations(key, "x"),
            &[
                "spec.output.annotations",
                "tokensync.dev/",
                "set by the operator",
            ],
        )
        .await;
    }
    // the operator sets managed-by as a label only: as an annotation it is the user's
    a.admitted(
        "managed-by annotation",
        None,
        annotations("app.kubernetes.io/managed-by", "helm"),
    )
    .await;

    let good_keys = [
        "example.com/team".to_string(),
        "team".into(),
        "app.kubernetes.io/part-of".into(),
        "A_b.C-9".into(),
        name63.clone(),
        format!("{prefix253}/{name63}"),
        "sub.tokensync.dev.example/x".into(),
    ];
    for key in &good_keys {
        a.admitted(&format!("label key {key:?}"), None, labels(key, "v"))
            .await;
        a.admitted(
            &format!("annotation key {key:?}"),
            None,
            annotations(key, "v"),
        )
        .await;
    }
    for value in ["", "a", "Team_A.b-9", "v".repeat(63).as_str()] {
        a.admitted(
            &format!("label value {value:?}"),
            None,
            labels("team", value),
        )
        .await;
    }
    // a bounded number of entries, which the apiserver's cost estimate of the key rules needs
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    for field in ["labels", "annotations"] {
        let path = format!("spec.output.{field}");
        a.refused(
            &format!("257 {field}"),
            None,
            json!({"output": {field: many(257)}}),
            &[&path, "256"],
        )
        .await;
        a.admitted(
            &format!("256 {field}"),
            None,
            json!({"output": {field: many(256)}}),
        )
        .await;
    }
    // annotation values are free text
    a.admitted(
        "free-text annotation value",
        None,
        annotations("example.com/note", "any text: spaces, slashes/ and ! marks"),
    )
    .await;
    a.finish().await;
}

/// Issue 8: URLs never carry credentials; the grant's own parameters cannot be overridden;
/// scopes are RFC 6749 scope tokens.
#[tokio::test]
async fn the_wire_is_exact() {
    let mut a = Admission::new("adm-wire").await;
    a.refused(
        "userinfo in tokenUrl",
        None,
        json!({"oauth2": {"tokenUrl": "https://user:secret@auth.example/token"}}),
        &["spec.oauth2.tokenUrl"],
    )
    .await;
    a.refused(
        "userinfo in issuerUrl",
        None,
        json!({"oauth2": {"tokenUrl": null, "issuerUrl": "https://u:p@auth.example/realms/x"}}),
        &["spec.oauth2.issuerUrl"],
    )
    .await;
    a.refused(
        "userinfo in a templated URL",
        None,
        json!({"oauth2": null, "http": {"login": {"url": "https://u:{{ inputs.password }}@api.example/login"}}}),
        &["spec.http.login.url"],
    )
    .await;
    for reserved in ["grant_type", "client_secret", "scope", "refresh_token"] {
        a.refused(
            &format!("extraParams.{reserved}"),
            None,
            json!({"oauth2": {"extraParams": {reserved: "x"}}}),
            &["spec.oauth2.extraParams", "cannot be overridden"],
        )
        .await;
    }
    for scope in ["read write", "", "a\"b"] {
        a.refused(
            &format!("scope {scope:?}"),
            None,
            json!({"oauth2": {"scopes": ["ok", scope]}}),
            &["spec.oauth2.scopes[1]"],
        )
        .await;
    }
    a.admitted(
        "vendor extras and colon scopes",
        None,
        json!({"oauth2": {"extraParams": {"token_format": "jwt"}, "scopes": ["openid", "api:read", "https://api.example/.default"]}}),
    )
    .await;
    a.finish().await;
}
