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
    render_with(release, namespace, set, None)
}

/// `helm template` of the chart with `--set`s and a values file's text, as documents.
fn render_with(
    release: &str,
    namespace: &str,
    set: &[&str],
    values: Option<&str>,
) -> Vec<serde_json::Value> {
    let mut cmd = std::process::Command::new(tool("helm"));
    cmd.args(["template", release])
        .arg(root().join("charts/tokensync"))
        .args(["--namespace", namespace]);
    for s in set {
        cmd.args(["--set", s]);
    }
    let file = values.map(|text| {
        let path = std::env::temp_dir().join(format!(
            "tokensync-values-{}-{release}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    });
    if let Some(path) = &file {
        cmd.arg("-f").arg(path);
    }
    let out = cmd.output().unwrap();
    if let Some(path) = &file {
        let _ = std::fs::remove_file(path);
    }
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
    kubectl_apply_with(docs, &[]);
}

/// Apply documents with the admin identity and more `kubectl apply` flags (`--dry-run=server`).
fn kubectl_apply_with(docs: &[serde_json::Value], flags: &[&str]) {
    let text = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut child = std::process::Command::new(tool("kubectl"))
        .env("KUBECONFIG", kubeconfig_path())
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .args(flags)
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
    // never the CRD: the apiserver is shared, and deleting it deletes every ProviderCredential
    let cluster_scoped = docs.iter().filter(|d| {
        d["metadata"]["namespace"].is_null() && d["kind"] != "CustomResourceDefinition"
    });
    for d in cluster_scoped {
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
    // the CRD is the tests' own (tests/common), applied once; see the crds test for the chart's
    let mut set = vec!["crds.enabled=false"];
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
                    // (a client-credentials token is never patched into a state Secret, so
                    // creating the output Secret is the first write it needs)
                    verbs.retain(|v| v != "create");
                }
            }
        }
    })
    .await;
    let pc = ns.wait_failing("pix4d", "Forbidden").await;
    let message = &degraded(&pc).unwrap().message;
    assert!(
        message.contains("cannot create resource \"secrets\""),
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

/// Every option of the pod, rendered into a namespace that enforces the `restricted` Pod
/// Security Standard.
const POD_OPTIONS: &str = r#"
commonLabels: {team: platform}
image:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
extraArgs: ["--lease-namespace=tokensync-leases"]
extraEnv:
  - {name: HTTPS_PROXY, value: "http://proxy.example:3128"}
  - {name: SSL_CERT_FILE, value: /etc/tokensync/ca/ca.crt}
volumes:
  - {name: corp-ca, configMap: {name: corp-ca}}
volumeMounts:
  - {name: corp-ca, mountPath: /etc/tokensync/ca, readOnly: true}
podAnnotations: {example.com/owner: platform}
podLabels: {example.com/tier: ops}
nodeSelector: {kubernetes.io/os: linux}
tolerations:
  - {key: dedicated, operator: Equal, value: ops, effect: NoSchedule}
affinity:
  nodeAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 1
        preference:
          matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}]
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector: {matchLabels: {app.kubernetes.io/name: tokensync}}
priorityClassName: PRIORITY_CLASS
"#;

/// A namespace that enforces the `restricted` Pod Security Standard.
async fn restricted_namespace(client: &Client, prefix: &str) -> TestNs {
    let ns = TestNs::new(client, prefix).await;
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
    ns
}

/// The pod of a Deployment's template, created with `--dry-run`: admission (Pod Security,
/// priority classes) runs in full and nothing is stored. The admitted pod.
async fn admit_pod(ns: &TestNs, deployment: &serde_json::Value) -> Result<Pod, kube::Error> {
    let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tokensync-admit"}});
    pod["spec"] = deployment["spec"]["template"]["spec"].clone();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    ns.api::<Pod>()
        .create(&dry_run, &serde_json::from_value(pod).unwrap())
        .await
}

#[tokio::test]
async fn every_pod_option_renders_applies_and_passes_the_restricted_standard() {
    let client = client().await;
    let ns = restricted_namespace(&client, "opts").await;
    let class = format!("tokensync-test-{}", ns.name);
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": class}, "value": 1000
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    let docs = render_with(
        "opts",
        &ns.name,
        &["crds.enabled=false", &watch],
        Some(&POD_OPTIONS.replace("PRIORITY_CLASS", &class)),
    );

    // commonLabels on every object, and on the pod
    for d in &docs {
        assert_eq!(d["metadata"]["labels"]["team"], "platform", "{}", d["kind"]);
    }
    let deployment = find(&docs, "Deployment")[0];
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    let container = &pod["containers"][0];
    assert_eq!(template["metadata"]["labels"]["team"], "platform");
    assert_eq!(template["metadata"]["labels"]["example.com/tier"], "ops");
    assert_eq!(
        template["metadata"]["annotations"]["example.com/owner"],
        "platform"
    );
    assert_eq!(
        container["image"],
        "ghcr.io/tokensync/tokensync@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args.contains(&"--lease-namespace=tokensync-leases".into()));
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "RUST_LOG",
        "POD_NAME",
        "POD_NAMESPACE",
        "HTTPS_PROXY",
        "SSL_CERT_FILE",
    ] {
        assert!(env.contains(&name), "{name} not in {env:?}");
    }
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/etc/tokensync/ca"
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "corp-ca");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(pod["priorityClassName"], class.as_str());

    // the apiserver takes every object, and admits the pod: restricted, with the priority class
    kubectl_apply(&docs);
    let admitted = admit_pod(&ns, deployment)
        .await
        .expect("the pod with every option is admitted");
    assert_eq!(admitted.spec.unwrap().priority, Some(1000));
    // the binary accepts the extra args
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(&args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot build a Kubernetes client"),
        "{stderr}"
    );
    classes
        .delete(&class, &DeleteParams::default())
        .await
        .unwrap();
    ns.delete().await;
}

/// OpenShift's restricted-v2 assigns the user id: the chart's fixed ids can be dropped, and the
/// pod still passes the `restricted` standard (runAsNonRoot stays).
#[tokio::test]
async fn the_security_context_can_drop_the_fixed_user_for_openshift() {
    let client = client().await;
    let ns = restricted_namespace(&client, "openshift").await;
    let docs = render(
        "openshift",
        &ns.name,
        &[
            "podSecurityContext.runAsUser=null",
            "podSecurityContext.runAsGroup=null",
        ],
    );
    let deployment = find(&docs, "Deployment")[0];
    let pod_sc = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert!(pod_sc["runAsUser"].is_null(), "{pod_sc}");
    assert!(pod_sc["runAsGroup"].is_null(), "{pod_sc}");
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    admit_pod(&ns, deployment)
        .await
        .expect("the pod without fixed ids passes the restricted standard");
    // and a context of one's own replaces the container's
    let docs = render(
        "openshift",
        &ns.name,
        &["securityContext.readOnlyRootFilesystem=false"],
    );
    let container = &find(&docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"],
        false
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    ns.delete().await;
}

/// Numbers as f64, so that `0` and `0.0` (a YAML round trip through Helm) compare equal.
fn normalized(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64().unwrap()),
        serde_json::Value::Array(a) => a.iter().map(normalized).collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), normalized(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

/// Helm installs a chart's crds/ once and never upgrades it: the chart renders the generated CRD
/// from a template instead, with `helm.sh/resource-policy: keep` unless `crds.keep=false`.
#[test]
fn the_crd_is_the_generated_one_rendered_with_keep_and_the_apiserver_takes_it() {
    let generated: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("crds/tokensync.dev_providercredentials.yaml"))
            .unwrap(),
    )
    .unwrap();
    let docs = render("crds", "ops", &["commonLabels.team=platform"]);
    let crds = find(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 1);
    let mut crd = crds[0].clone();
    let meta = &crd["metadata"];
    assert_eq!(meta["annotations"]["helm.sh/resource-policy"], "keep");
    assert_eq!(meta["labels"]["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(meta["labels"]["team"], "platform");
    // the same CRD as crds/ (which `cargo xtask gen` writes with the chart's copy)
    crd["metadata"].as_object_mut().unwrap().remove("labels");
    crd["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert!(
        normalized(&crd) == normalized(&generated),
        "the chart's CRD differs from crds/: run cargo xtask gen"
    );
    // the apiserver validates it in full (a server-side dry run: the tests' CRD stays)
    kubectl_apply_with(&[crds[0].clone()], &["--dry-run=server"]);

    let docs = render("crds", "ops", &["crds.keep=false"]);
    let crd = find(&docs, "CustomResourceDefinition")[0];
    assert!(
        crd["metadata"]["annotations"].is_null(),
        "{}",
        crd["metadata"]
    );
    let docs = render("crds", "ops", &["crds.enabled=false"]);
    assert!(find(&docs, "CustomResourceDefinition").is_empty());
    // no crds/ directory, which Helm would install besides the template
    assert!(!root().join("charts/tokensync/crds").exists());
}

/// The chart as a subchart: a parent's `global` values pass the schema.
#[test]
fn the_chart_works_as_a_subchart_with_global_values() {
    let parent = std::env::temp_dir().join(format!("tokensync-parent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&parent);
    let sub = parent.join("charts/tokensync");
    std::fs::create_dir_all(sub.join("templates")).unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: tokensync\n    version: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\n  imagePullSecrets: []\ntokensync:\n  replicaCount: 2\n",
    )
    .unwrap();
    let out = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join("charts/tokensync/."))
        .arg(&sub)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(tool("helm"))
        .args(["template", "platform"])
        .arg(&parent)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&parent);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replicas: 2"));
}

/// The metric names a PromQL expression reads; panics naming the expression when it does not
/// parse as PromQL.
fn selected_metrics(expr: &str) -> Vec<String> {
    use promql_parser::parser::Expr;
    fn walk(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
            Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(p) = &a.param {
                    walk(p, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            _ => {}
        }
    }
    let parsed =
        promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("not PromQL: {e}\n{expr}"));
    let mut names = vec![];
    walk(&parsed, &mut names);
    names
}

/// The metric names `exprs` read that the operator does not export (besides Prometheus's `up`);
/// every expression must parse as PromQL.
fn unknown_metrics<'a>(exprs: impl Iterator<Item = &'a str>) -> Vec<String> {
    // a family shows in a scrape once it has a series
    let metrics = tokensync::metrics::Metrics::default();
    metrics.token_request("oauth2", "success", 0.1);
    metrics.reconcile_error("ProviderUnreachable");
    let scrape = metrics.encode();
    let mut exported = std::collections::BTreeSet::from(["up".to_string()]);
    for line in scrape.lines() {
        let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            exported.insert(format!("{name}{s}"));
        }
    }
    assert!(
        exported.contains("tokensync_reconcile_duration_seconds_bucket"),
        "{exported:?}"
    );
    let mut unknown = vec![];
    for expr in exprs {
        let names = selected_metrics(expr);
        assert!(!names.is_empty(), "reads no metric: {expr}");
        unknown.extend(names.into_iter().filter(|n| !exported.contains(n)));
    }
    unknown
}

/// prometheus-operator's ServiceMonitor and PrometheusRule kinds, reduced to the fields the
/// chart sets (tests/monitoring/crds.yaml), so that the apiserver validates what the chart renders.
fn install_monitoring_crds() {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(tool("kubectl"))
            .env("KUBECONFIG", kubeconfig_path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let file = root().join("tests/monitoring/crds.yaml");
    let file = file.to_str().unwrap();
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", file]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        file,
    ]);
    *done = true;
}

#[tokio::test]
async fn the_service_monitor_takes_its_options() {
    let client = client().await;
    let ns = TestNs::new(&client, "smon").await;
    tokio::task::spawn_blocking(install_monitoring_crds)
        .await
        .unwrap();
    let docs = render_with(
        "sm",
        "ops",
        &[],
        Some(&format!(
            r#"
metrics:
  serviceMonitor:
    enabled: true
    namespace: {}
    interval: 15s
    scrapeTimeout: 10s
    labels: {{release: kube-prometheus-stack}}
    relabelings:
      - {{sourceLabels: [__meta_kubernetes_pod_node_name], targetLabel: node}}
    metricRelabelings:
      - {{sourceLabels: [__name__], regex: "go_.*", action: drop}}
"#,
            ns.name
        )),
    );
    let sm = find(&docs, "ServiceMonitor")[0];
    assert_eq!(sm["metadata"]["namespace"], ns.name.as_str());
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"][0], "ops");
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(endpoint["scrapeTimeout"], "10s");
    assert_eq!(endpoint["honorLabels"], true);
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "node");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
    // the Service it selects carries the labels it selects by
    let service = find(&docs, "Service")[0];
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][k], v);
    }
    let err = render_error(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.scrapeTimeout=10",
    ]);
    assert!(err.contains("scrapeTimeout"), "{err}");
    // the apiserver takes it (in a namespace of its own, away from the release's)
    kubectl_apply(std::slice::from_ref(sm));
    ns.delete().await;
}

/// The rules of a rendered PrometheusRule, as (group, rule) pairs.
fn rules(rule: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            let group = g["name"].as_str().unwrap().to_string();
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| (group.clone(), r.clone()))
        })
        .collect()
}

#[tokio::test]
async fn the_prometheus_rule_renders_with_its_thresholds_and_valid_rules() {
    let client = client().await;
    let ns = TestNs::new(&client, "promrule").await;
    tokio::task::spawn_blocking(install_monitoring_crds)
        .await
        .unwrap();
    assert!(
        find(&render("pr", "ops", &[]), "PrometheusRule").is_empty(),
        "opt-in"
    );
    let docs = render_with(
        "pr",
        "ops",
        &[],
        Some(&format!(
            r#"
prometheusRule:
  enabled: true
  namespace: {}
  labels: {{release: kube-prometheus-stack}}
  alertLabels: {{team: platform}}
  tokenExpiringSeconds: 600
  renewalFailingFor: 1h
  refreshTokenExpiringSeconds: 259200
"#,
            ns.name
        )),
    );
    let rule = find(&docs, "PrometheusRule")[0];
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let rules = rules(rule);
    let names: Vec<&str> = rules
        .iter()
        .map(|(_, r)| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "TokensyncTokenExpiringSoon",
            "TokensyncCredentialNotReady",
            "TokensyncRenewalFailing",
            "TokensyncRefreshTokenExpiring",
            "TokensyncOperatorAbsent",
            "TokensyncNoLeader",
        ]
    );
    let duration = |d: &str| {
        !d.is_empty()
            && d.trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .parse::<u64>()
                .is_ok()
            && ["s", "m", "h", "d"].iter().any(|u| d.ends_with(u))
    };
    for (group, r) in &rules {
        let alert = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().unwrap_or_default();
        assert!(!expr.trim().is_empty(), "{alert}: no expr");
        // PromQL that parses (and reads what the operator exports: below)
        assert!(!selected_metrics(expr).is_empty(), "{alert}: {expr}");
        assert!(
            duration(r["for"].as_str().unwrap_or_default()),
            "{alert}: for {}",
            r["for"]
        );
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{alert}: {severity}"
        );
        assert_eq!(r["labels"]["team"], "platform", "{alert}");
        for a in ["summary", "description"] {
            let text = r["annotations"][a].as_str().unwrap_or_default();
            assert!(!text.is_empty(), "{alert}: no {a}");
            assert_eq!(
                text.matches("{{").count(),
                text.matches("}}").count(),
                "{alert}: {text}"
            );
        }
        if group == "tokensync.credentials" {
            let description = r["annotations"]["description"].as_str().unwrap();
            assert!(
                description
                    .contains("tokensync status {{ $labels.name }} -n {{ $labels.namespace }}"),
                "{alert}: {description}"
            );
        }
    }
    let expr = |name: &str| {
        rules
            .iter()
            .find(|(_, r)| r["alert"] == name)
            .map(|(_, r)| r["expr"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(expr("TokensyncTokenExpiringSoon").contains("- time() < 600"));
    assert!(expr("TokensyncRefreshTokenExpiring").contains("- time() < 259200"));
    assert!(
        expr("TokensyncOperatorAbsent")
            .contains(r#"absent(up{job="pr-tokensync-metrics", namespace="ops"} == 1)"#)
    );
    assert!(
        expr("TokensyncNoLeader")
            .contains(r#"max(tokensync_leader{job="pr-tokensync-metrics", namespace="ops"}) == 0"#)
    );
    let failing = rules
        .iter()
        .find(|(_, r)| r["alert"] == "TokensyncRenewalFailing")
        .unwrap();
    assert_eq!(failing.1["for"], "1h");
    // (the parser does refuse what is not PromQL)
    assert!(std::panic::catch_unwind(|| selected_metrics("max(up{job=\"x\"}) ==")).is_err());
    // every series the rules read is one the operator exports (or Prometheus's `up`)
    let exprs: Vec<String> = rules
        .iter()
        .map(|(_, r)| r["expr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        unknown_metrics(exprs.iter().map(String::as_str)),
        Vec::<String>::new()
    );
    // a threshold that is not a number fails to render, naming it
    let err = render_error(&[
        "prometheusRule.enabled=true",
        "prometheusRule.tokenExpiringSeconds=soon",
    ]);
    assert!(err.contains("tokenExpiringSeconds"), "{err}");
    // the apiserver takes it
    kubectl_apply(std::slice::from_ref(rule));
    ns.delete().await;
}

#[tokio::test]
async fn the_dashboard_is_a_configmap_of_valid_json_over_exported_metrics() {
    let client = client().await;
    let ns = TestNs::new(&client, "dash").await;
    assert!(
        find(&render("dash", &ns.name, &[]), "ConfigMap").is_empty(),
        "opt-in"
    );
    let docs = render(
        "dash",
        &ns.name,
        &[
            "dashboard.enabled=true",
            "dashboard.annotations.grafana_folder=Operators",
        ],
    );
    let cm = find(&docs, "ConfigMap")[0];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Operators");
    let json: serde_json::Value =
        serde_json::from_str(cm["data"]["tokensync.json"].as_str().unwrap()).expect("JSON");
    assert_eq!(json["uid"], "tokensync");
    let panels = json["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut exprs = vec![];
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty());
            // Grafana's variables, as Grafana fills them in
            let expr = expr
                .replace("$__rate_interval", "2m")
                .replace("$namespace", ".*");
            exprs.push(expr);
        }
    }
    assert_eq!(
        unknown_metrics(exprs.iter().map(String::as_str)),
        Vec::<String>::new()
    );
    for metric in [
        "tokensync_credential_expiration_timestamp_seconds",
        "tokensync_credential_ready_status",
        "tokensync_token_requests_total",
        "tokensync_reconcile_duration_seconds_bucket",
        "tokensync_reconcile_errors_total",
        "tokensync_leader",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
    kubectl_apply(std::slice::from_ref(cm));
    ns.delete().await;
}
