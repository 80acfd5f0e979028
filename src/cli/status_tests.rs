//! `render` table tests: each case is a snapshot and the lines it must show.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::*;

const NOW: &str = "2026-11-26T10:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn credential(spec: &str, status: Value) -> Credential {
    let spec: Value = serde_saphyr::from_str(spec).unwrap();
    Credential::from_json(&json!({
        "metadata": {"name": "pc", "namespace": "ns", "uid": "u-1", "generation": 2,
                     "creationTimestamp": "2026-11-26T07:00:00Z"},
        "spec": spec,
        "status": status,
    }))
}

fn snapshot(c: Credential) -> Snapshot {
    Snapshot {
        namespace: "ns".into(),
        name: "pc".into(),
        now: now(),
        credential: Lookup::Found(c),
        inputs: Lookup::NotFound,
        output: Lookup::NotFound,
        state: Lookup::NotFound,
        upstream: None,
        ca: None,
        events: Lookup::Found(vec![]),
    }
}

fn secret(
    name: &str,
    owner_uid: &str,
    data: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            "ownerReferences": [{"apiVersion": "tokensync.dev/v1alpha1", "kind": "ProviderCredential",
                                 "name": "pc", "uid": owner_uid, "controller": true}],
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap()
}

fn keys(names: &[&str]) -> InputsSecret {
    InputsSecret {
        keys: names.iter().map(|k| k.to_string()).collect(),
        used: BTreeSet::new(),
        opted_in: true,
    }
}

/// Issue 8: a Secret without the opt-in label says so.
#[test]
fn inputs_not_opted_in_say_so() {
    let mut s = snapshot(credential(AUTHORIZATION_CODE, healthy_status()));
    s.inputs = Lookup::Found(InputsSecret {
        opted_in: false,
        ..keys(&["client_id", "client_secret", "code", "redirect_uri"])
    });
    assert_lines(
        &render(&s),
        &["NOT OPTED IN: label it tokensync.dev/inputs=true"],
    );
}

fn assert_lines(text: &str, expected: &[&str]) {
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in:\n{text}");
    }
}

const CLIENT_CREDENTIALS: &str = r#"
inputs: {secretName: pix4d-login}
output: {secretName: pix4d-token}
oauth2: {tokenUrl: "https://cloud.pix4d.com/oauth/token?tenant=x", grantType: client_credentials}
"#;

const AUTHORIZATION_CODE: &str = r#"
inputs: {secretName: aa-user}
output: {secretName: aa-user-token}
oauth2: {tokenUrl: "https://auth.altitudeangel.com/oauth/v2/token", grantType: authorization_code}
"#;

fn healthy_status() -> Value {
    json!({
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "TokenRenewed",
                        "message": "token valid until 2026-11-26T11:00:00Z",
                        "lastTransitionTime": "2026-11-26T09:00:00Z"}],
        "expiresAt": "2026-11-26T11:00:00Z",
        "renewAt": "2026-11-26T10:40:00Z",
        "nextAttemptAt": "2026-11-26T10:40:00Z",
        "lastRefreshAt": "2026-11-26T09:00:00Z",
        "tokenFingerprint": "abcd1234",
    })
}

#[test]
fn healthy_authorization_code_credential_renews_via_the_refresh_grant() {
    let mut s = snapshot(credential(AUTHORIZATION_CODE, healthy_status()));
    s.inputs = Lookup::Found(InputsSecret {
        used: ["code".to_string()].into(),
        ..keys(&["client_id", "client_secret", "code", "redirect_uri"])
    });
    s.output = Lookup::Found(OutputSecret {
        keys: ["expires_at", "token", "token_type"]
            .map(String::from)
            .into(),
        owned: true,
        expires_at: Some("2026-11-26T11:00:00Z".into()),
        fingerprint: Some("abcd1234".into()),
    });
    s.state = Lookup::Found(StateSecret {
        owned: true,
        refresh_token: true,
        refresh_expires_at: Some("2026-12-26T10:00:00Z".parse().unwrap()),
        token: true,
        token_expires_at: Some("2026-11-26T11:00:00Z".parse().unwrap()),
        pending_revocations: Some(1),
        used_inputs: vec!["0123abcd".into()],
    });
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "ProviderCredential ns/pc",
            "created 2026-11-26T07:00:00Z (3h ago), generation 2, observed 2",
            "provider: oauth2, grant authorization_code, token URL https://auth.altitudeangel.com/oauth/v2/token",
            "Ready      True    TokenRenewed           since 2026-11-26T09:00:00Z (1h ago)",
            "token valid until 2026-11-26T11:00:00Z",
            "fingerprint            abcd1234",
            "expires                2026-11-26T11:00:00Z (in 1h)",
            "renew at               2026-11-26T10:40:00Z (in 40m)",
            "Inputs: Secret \"aa-user\"",
            "client_id              present  [client id]",
            "code                   present (already exchanged",
            "redirect_uri           present  [authorization code]",
            "CA bundle: none (the system roots)",
            "Output: Secret \"aa-user-token\"",
            "keys                   expires_at, token, token_type",
            "expires (annotation)   2026-11-26T11:00:00Z (in 1h) (matches status.expiresAt)",
            "State: Secret \"pc-tokensync-state\"",
            "refresh token          present, expires 2026-12-26T10:00:00Z (in 30d)",
            "pending revocations    1",
            "one-time inputs used   1",
            "Events: none",
            "next: renew at 2026-11-26T10:40:00Z (in 40m) via the refresh grant",
        ],
    );
    assert!(!text.contains("MISSING"), "{text}");
    assert!(ready(&s));
    assert_eq!(exit_code(&s), 0);
}

#[test]
fn a_failing_credential_says_when_it_tries_again_and_shows_every_condition() {
    let mut status = healthy_status();
    status["conditions"] = json!([
        {"type": "Ready", "status": "True", "reason": "TokenValid", "lastTransitionTime": "2026-11-26T09:00:00Z"},
        {"type": "Degraded", "status": "True", "reason": "ProviderUnreachable",
         "message": "connection refused", "lastTransitionTime": "2026-11-26T09:58:00Z"},
    ]);
    status["nextAttemptAt"] = json!("2026-11-26T10:00:40Z");
    status["refreshTokenExpiresAt"] = json!("2026-11-27T10:00:00Z");
    status["lastFailure"] =
        json!({"at": "2026-11-26T09:59:30Z", "count": 3, "reason": "ProviderUnreachable"});
    let mut s = snapshot(credential(CLIENT_CREDENTIALS, status));
    s.inputs = Lookup::Found(keys(&["client_id", "client_secret", "extra"]));
    s.events = Lookup::Found(vec![
        EventLine {
            time: Some("2026-11-26T09:59:30Z".parse().unwrap()),
            type_: "Warning".into(),
            reason: "ProviderUnreachable".into(),
            message: "connection refused".into(),
            count: 3,
        },
        EventLine {
            time: Some("2026-11-26T09:00:00Z".parse().unwrap()),
            type_: "Normal".into(),
            reason: "TokenRenewed".into(),
            message: "renewed".into(),
            count: 1,
        },
    ]);
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "provider: oauth2, grant client_credentials, token URL https://cloud.pix4d.com/oauth/token\n",
            "Degraded   True    ProviderUnreachable    since 2026-11-26T09:58:00Z (2m ago)",
            "             connection refused",
            "refresh token expires  2026-11-27T10:00:00Z (in 1d)",
            "failing                3 failed attempt(s), the last 2026-11-26T09:59:30Z (30s ago) (ProviderUnreachable)",
            "other keys             extra",
            "Output: Secret \"pix4d-token\"\n  NOT FOUND",
            "State: Secret \"pc-tokensync-state\"\n  none: nothing to keep yet",
            "Events (newest last):\n  1h ago     Normal   TokenRenewed           renewed\n  30s ago    Warning  ProviderUnreachable    connection refused (x3)",
            "next: attempt at 2026-11-26T10:00:40Z (in 40s) after failure 3 (ProviderUnreachable)",
        ],
    );
    assert!(!text.contains("tenant=x"), "the query is not shown");
    // Ready is what the exit code follows, whatever other conditions say
    assert!(ready(&s));
    if let Lookup::Found(c) = &mut s.credential {
        c.status["conditions"][0]["status"] = json!("False");
    }
    assert!(!ready(&s));
}

#[test]
fn missing_inputs_name_the_secret_and_the_keys_to_create() {
    let status = json!({
        "conditions": [{"type": "Ready", "status": "False", "reason": "InputsNotFound",
                        "message": "inputs Secret \"pix4d-login\" not found in namespace \"ns\"",
                        "lastTransitionTime": "2026-11-26T09:59:00Z"}],
        "nextAttemptAt": "2026-11-26T10:05:00Z",
        "lastFailure": {"at": "2026-11-26T09:59:00Z", "count": 1, "reason": "InputsNotFound"},
    });
    let s = snapshot(credential(CLIENT_CREDENTIALS, status));
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "Ready      False   InputsNotFound",
            "Inputs: Secret \"pix4d-login\"\n  NOT FOUND: create it in namespace ns with the keys client_id, client_secret",
            "no token issued yet",
            "next: needs the inputs Secret \"pix4d-login\"; the controller tries again as soon as it is created",
        ],
    );
    assert!(!ready(&s));
}

#[test]
fn a_missing_key_is_named() {
    let spec = r#"
inputs: {secretName: login, keys: {password: pass}}
output: {secretName: out}
oauth2: {tokenUrl: "https://a.example/token", grantType: password, clientAuthentication: none}
"#;
    let mut s = snapshot(credential(spec, json!({})));
    s.inputs = Lookup::Found(keys(&["client_id", "username"]));
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "client_id              present  [client id]",
            "username               present  [password grant]",
            "pass                   MISSING  [password grant]",
            "none yet: the controller has not reconciled it (is the operator running, watching namespace ns?)",
            "next: waiting for the controller",
        ],
    );
    assert!(!text.contains("client_secret"), "{text}");
}

#[test]
fn a_used_code_and_a_rejected_refresh_token_need_new_inputs() {
    let status = json!({
        "conditions": [{"type": "Ready", "status": "False", "reason": "RefreshTokenRejected",
                        "lastTransitionTime": "2026-11-26T09:00:00Z"}],
        "lastFailure": {"at": "2026-11-26T09:00:00Z", "count": 1, "reason": "RefreshTokenRejected"},
        "nextAttemptAt": "2026-11-26T10:05:00Z",
    });
    let mut s = snapshot(credential(AUTHORIZATION_CODE, status));
    s.inputs = Lookup::Found(InputsSecret {
        used: ["code".to_string()].into(),
        ..keys(&["client_id", "client_secret", "code", "redirect_uri"])
    });
    s.state = Lookup::Found(StateSecret {
        owned: true,
        pending_revocations: Some(0),
        ..Default::default()
    });
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "refresh token          absent",
            "next: needs new inputs: a person must put a new authorization code (key code) into Secret \"aa-user\"",
        ],
    );

    // healthy so far, but the refresh token dies before the renewal and the code is used
    let mut s = snapshot(credential(AUTHORIZATION_CODE, healthy_status()));
    s.inputs = Lookup::Found(InputsSecret {
        used: ["code".to_string()].into(),
        ..keys(&["client_id", "client_secret", "code", "redirect_uri"])
    });
    s.state = Lookup::Found(StateSecret {
        owned: true,
        refresh_token: true,
        refresh_expires_at: Some("2026-11-26T10:30:00Z".parse().unwrap()),
        pending_revocations: Some(0),
        ..Default::default()
    });
    assert_lines(
        &render(&s),
        &[
            "next: needs new inputs by 2026-11-26T10:40:00Z (in 40m): no usable refresh token (the refresh token expires 2026-11-26T10:30:00Z before then), and the one-time input \"code\" is used or absent: put a new authorization code into Secret \"aa-user\"",
        ],
    );
}

#[test]
fn http_templates_give_the_expected_keys_and_the_upstream_is_shown() {
    let spec = r#"
inputs: {secretName: pat-inputs}
output: {secretName: pat-token}
http:
  upstream: {providerCredential: dronetag}
  login:
    url: "https://api.dronetag.app/v2/pats/tokens?u={{ inputs.user_name }}"
    headers: {Authorization: "Bearer {{ upstream.token }}"}
    json: {password: "{{ inputs.password }}", nested: ["{{ inputs['api-key'] }}"], n: 1}
  refresh:
    url: "https://api.dronetag.app/v2/refresh"
    form: {rt: "{{ refresh_token }}", p: "{{inputs . password}}"}
"#;
    let mut s = snapshot(credential(spec, healthy_status()));
    s.inputs = Lookup::Found(keys(&["password", "unused"]));
    let mut up_status = healthy_status();
    up_status["expiresAt"] = json!("2026-11-26T10:03:00Z");
    s.upstream = Some((
        "dronetag".into(),
        Lookup::Found(credential(CLIENT_CREDENTIALS, up_status)),
    ));
    s.ca = Some(CaSource {
        kind: "ConfigMap",
        name: "corp-ca".into(),
        key: "ca.crt".into(),
        key_present: Lookup::Found(false),
    });
    s.state = Lookup::Found(StateSecret {
        owned: true,
        refresh_token: true,
        pending_revocations: Some(0),
        ..Default::default()
    });
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "provider: http, login POST https://api.dronetag.app/v2/pats/tokens, refresh POST https://api.dronetag.app/v2/refresh",
            "api-key                MISSING  [spec.http.login]",
            "password               present  [spec.http.login, spec.http.refresh]",
            "user_name              MISSING  [spec.http.login]",
            "other keys             unused",
            "Upstream: ProviderCredential \"dronetag\": Ready=True (TokenRenewed), its token expires 2026-11-26T10:03:00Z (in 3m)",
            "CA bundle: ConfigMap \"corp-ca\" key \"ca.crt\": KEY MISSING",
            "refresh token          present, no known deadline",
            "next: renew at 2026-11-26T10:40:00Z (in 40m) via the refresh grant",
        ],
    );
    assert!(!text.contains("upstream.token      "), "{text}");
}

#[test]
fn input_names_are_found_in_both_spellings_and_nothing_else() {
    assert_eq!(
        input_names(
            "{{ inputs.a }}{{inputs['b-c']}}{{ inputs[\"d\"] }}{{ myinputs.x }}{{ kept.inputs }}"
        ),
        ["a", "b-c", "d"]
    );
    assert!(input_names("{{ inputs }} inputs.-x inputs[ x ] inputs").is_empty());
}

#[test]
fn expiry_annotation_against_status_and_an_expired_token() {
    let mut status = healthy_status();
    status["expiresAt"] = json!("2026-11-26T09:50:00Z");
    let mut s = snapshot(credential(CLIENT_CREDENTIALS, status));
    s.output = Lookup::Found(OutputSecret {
        keys: ["token"].map(String::from).into(),
        owned: false,
        expires_at: Some("2026-11-26T11:00:00Z".into()),
        fingerprint: Some("ffff0000".into()),
    });
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "EXPIRED 10m ago",
            "NOT OWNED by this ProviderCredential",
            "2026-11-26T11:00:00Z (in 1h), but status.expiresAt is 2026-11-26T09:50:00Z (10m ago)",
            "the Secret's token (ffff0000) is not the one in status (abcd1234)",
        ],
    );
}

#[test]
fn a_credential_not_found_or_unreadable_is_said_and_not_ready() {
    let mut s = snapshot(credential(CLIENT_CREDENTIALS, json!({})));
    s.credential = Lookup::NotFound;
    assert_eq!(
        render(&s),
        "ProviderCredential ns/pc: not found (check the name and the namespace: -n NAMESPACE)\n"
    );
    assert!(!ready(&s));
    assert_eq!(exit_code(&s), 1);
    s.credential = Lookup::Failed("forbidden\x1b[31m".into());
    assert!(render(&s).contains("cannot read it: forbidden?[31m"));
    assert_eq!(exit_code(&s), 2);
}

#[test]
fn a_spec_this_binary_cannot_read_still_shows_the_status() {
    let c = Credential::from_json(&json!({
        "metadata": {"name": "pc", "uid": "u"},
        "spec": {"future": true},
        "status": healthy_status(),
    }));
    let s = snapshot(c);
    let text = render(&s);
    assert_lines(
        &text,
        &[
            "the spec cannot be read by this tokensync",
            "Ready      True",
            "next: unknown (the spec cannot be read)",
        ],
    );
}

#[test]
fn durations_read_as_a_person_would() {
    assert_eq!(span(0), "0s");
    assert_eq!(span(59), "59s");
    assert_eq!(span(60), "1m");
    assert_eq!(span(3_725), "1h2m");
    assert_eq!(span(86_400 * 3 + 7_200 + 5), "3d2h");
    assert_eq!(span(86_400 + 5), "1d");
    let now = now();
    assert_eq!(relative(now, now), "now");
    assert_eq!(
        relative(Timestamp::from_second(now.as_second() - 90).unwrap(), now),
        "1m30s ago"
    );
    // far times do not overflow
    assert!(relative(Timestamp::MIN, Timestamp::MAX).ends_with("ago"));
}

/// The values of the inputs, output and state Secrets never reach the report: the readers keep
/// names, times and counts only.
#[test]
fn planted_secret_values_never_appear() {
    const PLANTED: [&str; 6] = [
        "PLANTED-client-secret",
        "PLANTED-code",
        "PLANTED-access-token",
        "PLANTED-refresh-token",
        "PLANTED-old-token",
        "PLANTED-kept",
    ];
    let inputs = secret(
        "aa-user",
        "",
        &[
            ("client_id", "PLANTED-kept"),
            ("client_secret", PLANTED[0]),
            ("code", PLANTED[1]),
        ],
        &[],
    );
    let code_fp = crate::token::fingerprint(PLANTED[1].as_bytes());
    let state = secret(
        "pc-tokensync-state",
        "u-1",
        &[
            ("token", PLANTED[2]),
            ("refresh_token", PLANTED[3]),
            ("refresh_expires_at", "2026-12-01T00:00:00Z"),
            ("kept", r#"{"id":"PLANTED-kept"}"#),
            ("used_inputs", &format!("[\"{code_fp}\"]")),
            (
                "pending_revocations",
                r#"[{"token":"PLANTED-old-token","next_at":"2026-11-26T10:00:00Z"}]"#,
            ),
        ],
        &[],
    );
    let output = secret(
        "aa-user-token",
        "u-1",
        &[("token", PLANTED[2])],
        &[(EXPIRES_AT_ANNOTATION, "2026-11-26T11:00:00Z")],
    );
    let state = StateSecret::read(&state, Some("u-1"));
    assert!(state.owned && state.refresh_token && state.token);
    assert_eq!(state.pending_revocations, Some(1));
    let mut s = snapshot(credential(AUTHORIZATION_CODE, healthy_status()));
    s.inputs = Lookup::Found(InputsSecret::read(&inputs, &state.used_inputs));
    s.output = Lookup::Found(OutputSecret::read(&output, Some("u-1")));
    s.state = Lookup::Found(state);
    let text = render(&s);
    let debug = format!("{s:?}");
    for value in PLANTED {
        assert!(!text.contains(value), "{value} in:\n{text}");
        assert!(!debug.contains(value), "{value} in the snapshot's Debug");
    }
    assert_lines(
        &text,
        &[
            "code                   present (already exchanged",
            "refresh token          present, expires 2026-12-01T00:00:00Z",
            "pending revocations    1",
        ],
    );
}
