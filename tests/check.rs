//! `tokensync check` on every example against the fake providers, and its clear failures.
//! No cluster is involved: check runs the controller's fetch code alone.

use std::path::PathBuf;
use std::str::FromStr;

use tokensync_fakes::{FakeProviders, Fault, Vendor};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        assert!(self.ok, "check failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).expect("check prints JSON")
    }
}

/// Write the examples, pointed at `fakes`, into a directory of their own.
fn examples(fakes: &FakeProviders, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokensync-check-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url());
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

async fn check(dir: &std::path::Path, file: &str, extra: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["check", "--allow-insecure-http", "-f"])
        .arg(dir.join(file))
        .args(extra)
        .output()
        .await
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn check_works_for_every_example() {
    let fakes = FakeProviders::start(0).await.unwrap();
    let dir = examples(&fakes, "all");
    let cases = [
        (
            "altitude-angel-client-credentials.yaml",
            "oauth2",
            true,
            Vendor::AltitudeAngel,
        ),
        (
            "pix4d-client-credentials.yaml",
            "oauth2",
            false,
            Vendor::Pix4d,
        ),
        ("dronetag-oidc.yaml", "oauth2", true, Vendor::Dronetag),
        ("airmap.yaml", "http", true, Vendor::AirMap),
        ("json-login-platform.yaml", "http", false, Vendor::JsonLogin),
    ];
    for (file, provider, refresh_token, vendor) in cases {
        let summary = check(&dir, file, &["--show-token"]).await.json();
        assert_eq!(summary["provider"], provider, "{file}");
        assert_eq!(summary["refreshToken"], refresh_token, "{file}");
        let token = summary["token"].as_str().unwrap();
        assert_eq!(
            Some(token),
            fakes.state.issued(vendor).last().map(|i| i.token.as_str()),
            "{file}"
        );
        assert_eq!(
            summary["fingerprint"],
            tokensync::token::SecretValue::new(token).fingerprint(),
            "{file}"
        );
        assert!(
            summary["expiresAt"].is_string() && summary["renewAt"].is_string(),
            "{file}"
        );
    }
    // without --show-token the token is not printed
    let run = check(&dir, "pix4d-client-credentials.yaml", &[]).await;
    assert!(run.json().get("token").is_none());
    let last = fakes
        .state
        .issued(Vendor::Pix4d)
        .last()
        .unwrap()
        .token
        .clone();
    assert!(!run.stdout.contains(&last) && !run.stderr.contains(&last));

    // the Altitude Angel user token from a one-time code (the code is filled in here)
    let code = fakes.state.issue_code(Vendor::AltitudeAngel);
    let text = std::fs::read_to_string(dir.join("altitude-angel-user-token.yaml")).unwrap();
    std::fs::write(
        dir.join("aa-user.yaml"),
        text.replace("paste-the-authorization-code-here", &code),
    )
    .unwrap();
    assert_eq!(
        check(&dir, "aa-user.yaml", &[]).await.json()["refreshToken"],
        true
    );

    // the Dronetag PAT, minted with the OIDC token fetched first
    let upstream = dir.join("dronetag-oidc.yaml");
    let summary = check(
        &dir,
        "dronetag-pat.yaml",
        &["--upstream", upstream.to_str().unwrap()],
    )
    .await
    .json();
    assert_eq!(summary["provider"], "http");
    assert_eq!(fakes.state.issued(Vendor::DronetagPat).len(), 1);

    // --refresh: log in, then one refresh
    for (file, route) in [
        ("dronetag-oidc.yaml", "dronetag token refresh_token"),
        ("airmap.yaml", "airmap delegation"),
        (
            "altitude-angel-client-credentials.yaml",
            "altitude-angel token refresh_token",
        ),
    ] {
        let before = fakes.state.count(route);
        let summary = check(&dir, file, &["--refresh"]).await.json();
        assert_eq!(summary["refreshed"], true, "{file}");
        assert_eq!(fakes.state.count(route), before + 1, "{file}");
    }
    // client credentials issue no refresh token: the login's summary, and a note, not a failure
    let before = fakes.state.issued(Vendor::Pix4d).len();
    let run = check(&dir, "pix4d-client-credentials.yaml", &["--refresh"]).await;
    let summary = run.json();
    assert_eq!(summary["refreshed"], false);
    assert_eq!(summary["refreshToken"], false);
    assert!(summary["expiresAt"].is_string() && summary["fingerprint"].is_string());
    assert!(
        summary["notes"][0]
            .as_str()
            .unwrap()
            .contains("issued no refresh token"),
        "{summary}"
    );
    assert_eq!(fakes.state.issued(Vendor::Pix4d).len(), before + 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// What `check` prints is what the Secret gets: `Bearer` for Altitude Angel's `bearer`, and the
/// granted scope, from `spec.oauth2` and from `spec.http` alike.
#[tokio::test]
async fn check_prints_the_token_type_and_scope_as_the_secret_gets_them() {
    let fakes = FakeProviders::start(0).await.unwrap();
    let dir = examples(&fakes, "type-scope");
    let summary = check(&dir, "altitude-angel-client-credentials.yaml", &[])
        .await
        .json();
    assert_eq!(summary["tokenType"], "Bearer", "{summary}");
    let summary = check(&dir, "dronetag-oidc.yaml", &[]).await.json();
    assert_eq!(summary["scope"], "openid profile email", "{summary}");

    // the Dronetag login as a declarative spec.http: its answer's scope is printed too
    let manifest = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: login}}
stringData:
  client_id: {id}
  client_secret: {secret}
  username: {user}
  password: {password}
---
apiVersion: tokensync.dev/v1alpha1
kind: ProviderCredential
metadata: {{name: http-login}}
spec:
  inputs: {{secretName: login}}
  http:
    login:
      url: {base}/dronetag-auth/realms/dcp/protocol/openid-connect/token
      form:
        grant_type: password
        client_id: "{{{{ inputs.client_id }}}}"
        client_secret: "{{{{ inputs.client_secret }}}}"
        username: "{{{{ inputs.username }}}}"
        password: "{{{{ inputs.password }}}}"
        scope: openid
    response:
      token: /access_token
      expiry: {{pointer: /expires_in}}
  output: {{secretName: http-login-token}}
"#,
        id = serde_json::to_string(tokensync_fakes::CLIENT_ID).unwrap(),
        secret = serde_json::to_string(tokensync_fakes::CLIENT_SECRET).unwrap(),
        user = serde_json::to_string(tokensync_fakes::USERNAME).unwrap(),
        password = serde_json::to_string(tokensync_fakes::PASSWORD).unwrap(),
        base = fakes.base_url(),
    );
    std::fs::write(dir.join("http-login.yaml"), manifest).unwrap();
    let run = check(&dir, "http-login.yaml", &[]).await;
    let summary = run.json();
    assert_eq!(summary["provider"], "http");
    assert_eq!(summary["scope"], "openid profile email", "{summary}");
    assert_eq!(summary["tokenType"], "Bearer");
    let lifetime = jiff::Timestamp::from_str(summary["expiresAt"].as_str().unwrap())
        .unwrap()
        .duration_since(jiff::Timestamp::now())
        .as_secs();
    assert!((1190..=1200).contains(&lifetime), "{summary}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn check_fails_clearly() {
    let fakes = FakeProviders::start(0).await.unwrap();
    let dir = examples(&fakes, "fail");

    // wrong credentials: the provider's 401, and never the secret that was sent
    let text = std::fs::read_to_string(dir.join("dronetag-oidc.yaml")).unwrap();
    let wrong = "wrong-password-5c1d";
    std::fs::write(
        dir.join("wrong.yaml"),
        text.replace("example-password\"&=+", wrong),
    )
    .unwrap();
    let run = check(&dir, "wrong.yaml", &[]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("HTTP 401") && run.stderr.contains("Invalid user credentials"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));

    // an unknown field in the response mapping
    let text = std::fs::read_to_string(dir.join("json-login-platform.yaml")).unwrap();
    std::fs::write(
        dir.join("typo.yaml"),
        text.replace("token: /token", "token: /tokn"),
    )
    .unwrap();
    let run = check(&dir, "typo.yaml", &[]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("the response has no field at /tokn"),
        "{}",
        run.stderr
    );

    // a response that is not JSON
    fakes.state.set_fault(Vendor::AirMap, Fault::Malformed);
    let run = check(&dir, "airmap.yaml", &[]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("not JSON"), "{}", run.stderr);
    fakes.state.set_fault(Vendor::Pix4d, Fault::Malformed);
    let run = check(&dir, "pix4d-client-credentials.yaml", &[]).await;
    assert!(
        !run.ok && run.stderr.contains("not a JSON token response"),
        "{}",
        run.stderr
    );

    // a response over the 1 MiB cap is refused, not read into memory whole
    fakes.state.set_fault(Vendor::Pix4d, Fault::Oversized);
    let run = check(&dir, "pix4d-client-credentials.yaml", &[]).await;
    assert!(
        !run.ok && run.stderr.contains("larger than 1048576 bytes"),
        "{}",
        run.stderr
    );

    // plain http without the flag
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["check", "-f"])
        .arg(dir.join("airmap.yaml"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-insecure-http"));
    std::fs::remove_dir_all(dir).unwrap();
}
