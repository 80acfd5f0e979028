//! The command line on the real apiserver: `tokensync status` on a healthy, a failing and a
//! missing-inputs credential (lines and exit codes, and never a secret value), the namespace of
//! the kubeconfig context, the kubectl plugin, shell completions and plain-text logs off a
//! terminal.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tokensync::crd::ProviderCredential;

const WAIT: Duration = Duration::from_secs(60);
const AA_USER: &str = "altitude-angel-user";
const AA_CLIENT_SECRET: &str = "example-client-secret&=+%/";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run a program with `KUBECONFIG` set (and `PATH` prefixed with `path`, when given).
async fn run_with(program: &Path, args: &[&str], kubeconfig: &Path, path: Option<&Path>) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).env("KUBECONFIG", kubeconfig);
    if let Some(dir) = path {
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
    }
    let out = cmd.output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tokensync"))
}

async fn tokensync(args: &[&str]) -> Run {
    run_with(bin(), args, &kubeconfig_path(), None).await
}

async fn status(ns: &TestNs, name: &str) -> Run {
    tokensync(&["status", name, "-n", &ns.name]).await
}

fn assert_lines(run: &Run, expected: &[&str]) {
    for e in expected {
        assert!(
            run.stdout.contains(e),
            "missing {e:?} in:\n{}\nstderr: {}",
            run.stdout,
            run.stderr
        );
    }
}

/// Every value of the Secrets in `ns` (inputs, output and state) of four characters or more.
async fn secret_values(ns: &TestNs) -> Vec<String> {
    let secrets = ns.api::<Secret>().list(&Default::default()).await.unwrap();
    let mut values = vec![];
    for s in secrets.items {
        for (key, v) in s.data.iter().flatten() {
            let text = String::from_utf8_lossy(&v.0).into_owned();
            // times and counts are shown on purpose; everything else is a value to hide
            let shown = [
                "expires_at",
                "refresh_expires_at",
                "issued_at",
                "token_type",
            ];
            if text.len() >= 4 && !shown.contains(&key.as_str()) && text != "[]" && text != "{}" {
                values.push(text);
            }
        }
    }
    values
}

fn assert_no_secret(run: &Run, values: &[String]) {
    for v in values {
        assert!(
            !run.stdout.contains(v.as_str()) && !run.stderr.contains(v.as_str()),
            "a secret value was printed:\n{}",
            run.stdout
        );
    }
}

/// The exit code follows the Ready condition: 0 when True, 1 otherwise.
fn expected_code(pc: &ProviderCredential) -> i32 {
    if ready(pc).is_some_and(|c| c.status == "True") {
        0
    } else {
        1
    }
}

#[tokio::test]
async fn status_of_a_healthy_then_rejected_authorization_code_credential() {
    let (client, ns, fakes) = setup("st-aa").await;
    let code = fakes.state.issue_code(Vendor::AltitudeAngel);
    let operator = Operator::start(&client, &ns.name);
    let text =
        std::fs::read_to_string(root().join("examples/altitude-angel-user-token.yaml")).unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url())
        .replace("paste-the-authorization-code-here", &code);
    ns.apply(&text).await;
    ns.wait_ready(AA_USER, "True", Some("TokenIssued")).await;

    let run = status(&ns, AA_USER).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_lines(
        &run,
        &[
            &format!("ProviderCredential {}/{AA_USER}", ns.name),
            "provider: oauth2, grant authorization_code, token URL http://",
            "Ready      True    TokenIssued",
            "client_id              present",
            "client_secret          present",
            "code                   present (already exchanged",
            "redirect_uri           present",
            "CA bundle: none",
            "Output: Secret \"altitude-angel-user-token\"",
            "(matches status.expiresAt)",
            "State: Secret \"altitude-angel-user-tokensync-state\"",
            "refresh token          present",
            "pending revocations    0",
            "one-time inputs used   1",
            "Events (newest last):",
            "TokenIssued",
            "via the refresh grant",
        ],
    );
    assert!(run.stdout.contains("\nnext: renew at "), "{}", run.stdout);
    let values = secret_values(&ns).await;
    assert!(values.iter().any(|v| v == AA_CLIENT_SECRET), "{values:?}");
    assert!(values.iter().any(|v| v == &code));
    assert!(
        values.len() >= 5,
        "the token and refresh token too: {values:?}"
    );
    assert_no_secret(&run, &values);

    // the provider forgets the refresh token and the code is spent: only a person can help
    fakes.state.revoke_refresh_tokens(Vendor::AltitudeAngel);
    tokensync(&["refresh", AA_USER, "-n", &ns.name]).await;
    let pc = eventually("the refresh token rejected", WAIT, || async {
        let pc = ns.pcred(AA_USER).await;
        let reason = pc.status.as_ref()?.last_failure.as_ref()?.reason.clone();
        (reason == "RefreshTokenRejected").then_some(pc)
    })
    .await;
    let run = status(&ns, AA_USER).await;
    assert_eq!(run.code, expected_code(&pc), "{}", run.stdout);
    assert_lines(
        &run,
        &[
            "RefreshTokenRejected",
            "next: needs new inputs: a person must put a new authorization code (key code) into Secret \"altitude-angel-user\"",
        ],
    );
    assert_no_secret(&run, &secret_values(&ns).await);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn status_of_a_failing_credential_says_when_it_tries_again() {
    let (client, ns, fakes) = setup("st-fail").await;
    fakes.state.set_fault(Vendor::Pix4d, Fault::Status(503));
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    let pc = eventually("a failed attempt", WAIT, || async {
        let pc = ns.pcred("pix4d").await;
        pc.status.as_ref()?.last_failure.as_ref()?;
        pc.status.as_ref()?.next_attempt_at.as_ref()?;
        Some(pc)
    })
    .await;
    let run = status(&ns, "pix4d").await;
    // no token was ever issued: not Ready, whatever else the conditions say
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(expected_code(&pc), 1);
    assert_lines(
        &run,
        &[
            "Ready      False",
            "no token issued yet",
            "failing                ",
            "client_id              present",
            "client_secret          present",
            "Output: Secret \"pix4d-token\"\n  NOT FOUND",
            "State: Secret \"pix4d-tokensync-state\"",
            "Events (newest last):",
            "after failure ",
        ],
    );
    let next = run
        .stdout
        .lines()
        .find(|l| l.starts_with("next: attempt at "))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    let failure = pc.status.unwrap().last_failure.unwrap();
    assert!(
        next.ends_with(&format!("({})", failure.reason)),
        "{next}: {failure:?}"
    );
    assert_no_secret(&run, &secret_values(&ns).await);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn status_of_a_credential_without_its_inputs_names_the_secret_and_keys() {
    let (client, ns, fakes) = setup("st-noin").await;
    let operator = Operator::start(&client, &ns.name);
    let text =
        std::fs::read_to_string(root().join("examples/pix4d-client-credentials.yaml")).unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url());
    // the credential only, without its inputs Secret
    let pc = text
        .split("\n---")
        .find(|d| d.contains("kind: ProviderCredential"))
        .unwrap();
    ns.apply(pc).await;
    let pc = ns
        .wait_ready("pix4d", "False", Some("InputsNotFound"))
        .await;
    let run = status(&ns, "pix4d").await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(expected_code(&pc), 1);
    assert_lines(
        &run,
        &[
            "Ready      False   InputsNotFound",
            &format!(
                "Inputs: Secret \"pix4d-client\"\n  NOT FOUND: create it in namespace {} with the keys client_id, client_secret",
                ns.name
            ),
            "InputsNotFound",
            "next: needs the inputs Secret \"pix4d-client\"; the controller tries again as soon as it is created",
        ],
    );
    // and a credential that does not exist
    let run = status(&ns, "absent").await;
    assert_eq!(run.code, 1);
    assert_lines(&run, &["absent: not found"]);
    operator.stop().await;
    ns.delete().await;
}

/// An `http` credential: the inputs its templates use, its upstream (missing, then Ready) and its
/// CA bundle.
#[tokio::test]
async fn status_of_an_http_credential_shows_its_upstream_template_inputs_and_ca() {
    let (client, ns, fakes) = setup("st-pat").await;
    let ca = PrivateCa::new();
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "corp-ca"},
        "data": {"ca.crt": String::from_utf8(ca.ca_pem.clone()).unwrap()},
    }))
    .unwrap();
    ns.api::<k8s_openapi::api::core::v1::ConfigMap>()
        .create(&Default::default(), &cm)
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns.name);
    let text = std::fs::read_to_string(root().join("examples/dronetag-pat.yaml")).unwrap();
    let text = tokensync_fakes::rewrite_urls(&text, &fakes.base_url()).replace(
        "spec:\n  inputs:\n",
        "spec:\n  tls:\n    caBundleConfigMap: {name: corp-ca, key: ca.crt}\n  inputs:\n",
    );
    assert!(text.contains("caBundleConfigMap"));
    ns.apply(&text).await;
    ns.wait_ready("dronetag-pat", "False", Some("UpstreamNotReady"))
        .await;
    let run = status(&ns, "dronetag-pat").await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_lines(
        &run,
        &[
            "provider: http, login POST http://",
            "password               present  [spec.http.login]",
            "Upstream: ProviderCredential \"dronetag\": NOT FOUND",
            "CA bundle: ConfigMap \"corp-ca\" key \"ca.crt\": present",
            "after failure ",
            "(UpstreamNotReady)",
        ],
    );

    ns.apply_example("dronetag-oidc.yaml", &fakes).await;
    ns.wait_ready("dronetag-pat", "True", None).await;
    let run = status(&ns, "dronetag-pat").await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_lines(
        &run,
        &[
            "Upstream: ProviderCredential \"dronetag\": Ready=True (TokenIssued), its token expires ",
            "keys                   expires_at, header, token",
            // no refresh token, nothing to revoke, no dependent: no state (issue 11)
            "State: Secret \"dronetag-pat-tokensync-state\"\n  none: nothing to keep yet",
            "via the login request",
        ],
    );
    assert_no_secret(&run, &secret_values(&ns).await);
    // and the upstream, a password grant
    let run = status(&ns, "dronetag").await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_lines(
        &run,
        &[
            "provider: oauth2, grant password, issuer http://",
            "username               present  [password grant]",
            "password               present  [password grant]",
            "next: renew at ",
        ],
    );
    assert_no_secret(&run, &secret_values(&ns).await);
    operator.stop().await;
    ns.delete().await;
}

/// A copy of the kubeconfig whose context's namespace is `namespace`.
fn kubeconfig_in(namespace: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tokensync-kubeconfig-{namespace}"));
    std::fs::copy(kubeconfig_path(), &path).unwrap();
    let out = std::process::Command::new(tool("kubectl"))
        .args([
            "config",
            "set-context",
            "--current",
            "--namespace",
            namespace,
        ])
        .env("KUBECONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Without `-n`, `status` and `refresh` work in the kubeconfig context's namespace, and the
/// binary installed as `kubectl-tokensync` is the kubectl plugin `kubectl tokensync`.
#[tokio::test]
async fn the_context_namespace_is_the_default_and_kubectl_runs_the_plugin() {
    let (client, ns, fakes) = setup("st-ctx").await;
    let operator = Operator::start(&client, &ns.name);
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    ns.wait_ready("pix4d", "True", Some("TokenIssued")).await;
    let kubeconfig = kubeconfig_in(&ns.name);

    let run = run_with(bin(), &["status", "pix4d"], &kubeconfig, None).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_lines(
        &run,
        &[
            &format!("ProviderCredential {}/pix4d", ns.name),
            "via the client_credentials grant",
        ],
    );
    let run = run_with(bin(), &["refresh", "pix4d"], &kubeconfig, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("renewal of {}/pix4d requested", ns.name)
    );
    let pc = ns.pcred("pix4d").await;
    assert!(
        pc.annotations()
            .contains_key(tokensync::controller::FORCE_REFRESH_ANNOTATION)
    );

    // the plugin: kubectl finds kubectl-tokensync on PATH
    let dir = std::env::temp_dir().join(format!("tokensync-plugin-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("kubectl-tokensync");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(bin(), &plugin).unwrap();
    let kubectl = PathBuf::from(tool("kubectl"));
    let run = run_with(&kubectl, &["plugin", "list"], &kubeconfig, Some(&dir)).await;
    assert!(
        run.stdout.contains("kubectl-tokensync"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let run = run_with(
        &kubectl,
        &["tokensync", "status", "pix4d", "-n", &ns.name],
        &kubeconfig_path(),
        Some(&dir),
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_lines(&run, &[&format!("ProviderCredential {}/pix4d", ns.name)]);
    let run = run_with(&kubectl, &["tokensync", "--help"], &kubeconfig, Some(&dir)).await;
    assert!(
        run.stdout.contains("Usage: kubectl tokensync"),
        "{}",
        run.stdout
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(&kubeconfig);
    operator.stop().await;
    ns.delete().await;
}

#[tokio::test]
async fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "_tokensync()"),
        ("zsh", "#compdef tokensync"),
        ("fish", "complete -c tokensync"),
    ] {
        let out = std::process::Command::new(bin())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("status"), "{shell}: no status subcommand");
    }
    let out = std::process::Command::new(bin())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Text logs written to a pipe (a file, a container log) carry no ANSI colour codes.
#[test]
fn text_logs_off_a_terminal_have_no_colour_codes() {
    let out = std::process::Command::new(bin())
        .args(["run", "--log-format", "text"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NO_COLOR")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot build a Kubernetes client"),
        "{stderr}"
    );
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );
}

/// No apiserver to ask: exit code 2, and the reason.
#[tokio::test]
async fn status_without_an_apiserver_exits_2() {
    let path = std::env::temp_dir().join(format!(
        "tokensync-kubeconfig-unreachable-{}",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u, namespace: team-a}}]\n\
         current-context: x\n",
    )
    .unwrap();
    let run = run_with(bin(), &["status", "pix4d"], &path, None).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .starts_with("ProviderCredential team-a/pix4d: cannot read it: "),
        "{}",
        run.stdout
    );
}
