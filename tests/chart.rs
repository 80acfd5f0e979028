//! The Helm chart on the real apiserver: its pod passes the `restricted` Pod Security Standard,
//! and the controller, running with the identity of the chart's ServiceAccount (impersonated),
//! syncs an example with exactly the RBAC the chart grants; with one verb removed it reports a
//! clear Forbidden condition instead of crashing.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// `helm template` of the chart, as documents.
fn render(release: &str, namespace: &str, set: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new(tool("helm"));
    cmd.args(["template", release])
        .arg(root().join("charts/tokensync"))
        .args(["--namespace", namespace]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(&text).expect("helm template renders YAML");
    docs.into_iter()
        .flatten()
        .filter(|v| !v.is_null())
        .collect()
}

/// Apply documents with the admin identity (kubectl server-side apply).
fn kubectl_apply(docs: &[serde_json::Value]) {
    let text = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut child = std::process::Command::new(tool("kubectl"))
        .env("KUBECONFIG", kubeconfig_path())
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kubectl_delete(docs: &[serde_json::Value]) {
    for d in docs.iter().filter(|d| d["metadata"]["namespace"].is_null()) {
        let kind = d["kind"].as_str().unwrap().to_lowercase();
        let name = d["metadata"]["name"].as_str().unwrap();
        let _ = std::process::Command::new(tool("kubectl"))
            .env("KUBECONFIG", kubeconfig_path())
            .args(["delete", &kind, name, "--ignore-not-found"])
            .output();
    }
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// A client acting as `system:serviceaccount:NS:NAME`.
async fn as_service_account(namespace: &str, name: &str) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn the_rendered_pod_passes_the_restricted_pod_security_standard() {
    let client = client().await;
    let ns = TestNs::new(&client, "pss").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    nss.patch(
        &ns.name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let docs = render("pss", &ns.name, &["replicaCount=2"]);
    let deployment = find(&docs, "Deployment")[0].clone();
    assert_eq!(
        find(&docs, "PodDisruptionBudget").len(),
        1,
        "a PDB with replicas > 1"
    );

    // the Deployment applies (no kubelet here to run its pods), and its pod template is admitted
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = ns.api();
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment.clone()).unwrap(),
        )
        .await
        .expect("the Deployment is accepted");
    let pod = |template: &serde_json::Value| -> Pod {
        let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tokensync-pss"}});
        pod["spec"] = template["spec"].clone();
        serde_json::from_value(pod).unwrap()
    };
    let template = &deployment["spec"]["template"];
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pods: Api<Pod> = ns.api();
    pods.create(&dry_run, &pod(template))
        .await
        .expect("the chart's pod passes the restricted standard");

    // control: the namespace does enforce it
    let mut weakened = template.clone();
    weakened["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = true.into();
    let err = pods.create(&dry_run, &pod(&weakened)).await.unwrap_err();
    assert!(err.to_string().contains("violates PodSecurity"), "{err}");
    ns.delete().await;
}

/// Install the chart's RBAC (and the rest) for `release`, run the controller as its
/// ServiceAccount, and apply the Pix4D example.
async fn sync_as_service_account(
    mode: &str,
    mutate: impl Fn(&mut Vec<serde_json::Value>),
) -> (TestNs, Vec<serde_json::Value>) {
    let client = client().await;
    let ns = TestNs::new(&client, mode).await;
    let release = format!("ts-{}", ns.name);
    let mut set = vec![];
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    if mode == "rbac-ns" {
        set.push(watch.as_str());
    }
    let mut docs = render(&release, &ns.name, &set);
    mutate(&mut docs);
    kubectl_apply(&docs);
    let sa = find(&docs, "ServiceAccount")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let fakes = FakeProviders::start(0).await.unwrap();
    let sa_client = as_service_account(&ns.name, &sa).await;
    let operator = Operator::start_elected(&sa_client, &ns.name, &release, "replica", 5);
    ns.apply_example("pix4d-client-credentials.yaml", &fakes)
        .await;
    // keep the fakes and operator alive while the caller waits
    tokio::spawn(async move {
        let _keep = (fakes, operator);
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    (ns, docs)
}

#[tokio::test]
async fn the_chart_rbac_is_enough_for_a_full_sync_cluster_wide_and_namespaced() {
    for mode in ["rbac-cluster", "rbac-ns"] {
        let (ns, docs) = sync_as_service_account(mode, |_| {}).await;
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        if mode == "rbac-ns" {
            assert!(
                !kinds.contains(&"ClusterRole"),
                "namespaced mode renders no ClusterRole"
            );
        } else {
            assert!(kinds.contains(&"ClusterRole"));
        }
        let pc = ns.wait_ready("pix4d", "True", Some("TokenIssued")).await;
        assert!(pc.status.unwrap().expires_at.is_some());
        // the event follows the status write
        eventually("a TokenIssued event", Duration::from_secs(30), || async {
            let events = ns.events("pix4d").await;
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("TokenIssued"))
                .then_some(())
        })
        .await;
        kubectl_delete(&docs);
        ns.delete().await;
    }
}

#[tokio::test]
async fn with_one_verb_removed_the_controller_reports_forbidden() {
    let (ns, docs) = sync_as_service_account("rbac-verb", |docs| {
        for d in docs.iter_mut().filter(|d| d["kind"] == "ClusterRole") {
            for rule in d["rules"].as_array_mut().unwrap() {
                if rule["resources"][0] == "secrets" {
                    let verbs = rule["verbs"].as_array_mut().unwrap();
                    verbs.retain(|v| v != "patch");
                }
            }
        }
    })
    .await;
    let pc = ns.wait_failing("pix4d", "Forbidden").await;
    let message = &degraded(&pc).unwrap().message;
    assert!(
        message.contains("cannot patch resource \"secrets\""),
        "{message}"
    );
    assert!(
        ns.api::<k8s_openapi::api::core::v1::Secret>()
            .get_opt("pix4d-token")
            .await
            .unwrap()
            .is_none()
    );
    kubectl_delete(&docs);
    let _ = Api::<Namespace>::all(ns.client.clone())
        .delete(&ns.name, &DeleteParams::default())
        .await;
}

#[test]
fn a_bad_value_fails_with_a_message_naming_it() {
    for (set, needle) in [
        ("replicaCount=abc", "/replicaCount"),
        ("logFormat=yaml", "/logFormat"),
        ("allowedHosts={http://internal}", "/allowedHosts/0"),
        ("unknownValue=1", "unknownValue"),
        (
            "terminationGracePeriodSeconds=abc",
            "/terminationGracePeriodSeconds",
        ),
    ] {
        let out = std::process::Command::new(tool("helm"))
            .args(["template", "t"])
            .arg(root().join("charts/tokensync"))
            .args(["--set", set])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{set} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{set}: {err}");
    }
    // two replicas without leader election would fetch every token twice
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "t"])
        .arg(root().join("charts/tokensync"))
        .args([
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=false",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs leaderElection.enabled"));
}

/// `helm template` with `set` fails; its error output.
fn render_error(set: &[&str]) -> String {
    let mut cmd = std::process::Command::new(tool("helm"));
    cmd.args(["template", "t"])
        .arg(root().join("charts/tokensync"));
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{set:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A token request in flight at shutdown can finish: the pod's grace period is above the
/// `--request-timeout` it passes, and a grace period that is not fails to render, naming both.
#[test]
fn the_grace_period_outlasts_the_request_timeout() {
    let grace_and_timeout = |set: &[&str]| -> (i64, i64) {
        let docs = render("grace", "ops", set);
        let pod = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("a grace period");
        let timeout = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| a.as_str()?.strip_prefix("--request-timeout="))
            .expect("a --request-timeout arg")
            .parse()
            .unwrap();
        (grace, timeout)
    };
    for (set, expected) in [
        (&[][..], (45, 30)),
        (
            &[
                "requestTimeoutSeconds=60",
                "terminationGracePeriodSeconds=61",
            ][..],
            (61, 60),
        ),
    ] {
        let (grace, timeout) = grace_and_timeout(set);
        assert_eq!((grace, timeout), expected, "{set:?}");
        assert!(grace > timeout, "{set:?}");
    }
    for set in [
        &["terminationGracePeriodSeconds=30"][..],
        &["requestTimeoutSeconds=45"][..],
        &[
            "requestTimeoutSeconds=120",
            "terminationGracePeriodSeconds=60",
        ][..],
    ] {
        let err = render_error(set);
        assert!(
            err.contains("terminationGracePeriodSeconds") && err.contains("requestTimeoutSeconds"),
            "{set:?}: {err}"
        );
    }
}

/// The Deployment's args are ones the binary accepts: run it with them (and no cluster to reach),
/// and it must get past flag parsing to building its Kubernetes client.
#[test]
fn the_rendered_args_are_accepted_by_the_binary() {
    let docs = render(
        "args",
        "ops",
        &[
            "watchNamespaces={team-a,team-b}",
            "allowedHosts={auth.dronetag.app,*.airmap.io}",
            "allowInsecureHttp=true",
            "replicaCount=2",
        ],
    );
    let deployment = find(&docs, "Deployment")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for expected in [
        "--namespace=team-a,team-b",
        "--allowed-hosts=auth.dronetag.app,*.airmap.io",
        "--allow-insecure-http",
        "--leader-elect",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} not in {args:?}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(&args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot build a Kubernetes client"),
        "{stderr}"
    );
}
