//! Developer commands: `cargo xtask <command>`.
//!
//!   demo                 local control plane + fake providers + operator + examples; prints the Secrets
//!   test                 everything CI runs
//!   gen                  write crds/ (and the chart's copy) from the Rust types
//!   cluster up|down|env|tools|status   the local control plane (xtask/cluster.sh)
//!   bench                the benchmarks

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, String>;

const CRD_FILE: &str = "tokensync.dev_providercredentials.yaml";
const DEMO_NS: &str = "tokensync-demo";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(),
        Some("gen") => gen_crds(),
        Some("cluster") => cluster(&args[1..]),
        Some("bench") => bench(),
        _ => Err(
            "usage: cargo xtask demo | test | gen | cluster up|down|env|tools|status | bench"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Run a command in the workspace root; fail with its name when it fails.
fn run(cmd: &mut Command) -> Result {
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cluster_sh() -> Command {
    let mut c = Command::new("bash");
    c.arg(root().join("xtask/cluster.sh"));
    c
}

fn cluster(args: &[String]) -> Result {
    if args.is_empty() {
        return Err("usage: cargo xtask cluster up|down|env|tools|status".into());
    }
    run(cluster_sh().args(args))
}

fn kubeconfig() -> Result<String> {
    output(cluster_sh().arg("kubeconfig"))
}

fn tool(name: &str) -> Result<String> {
    output(cluster_sh().args(["bin", name]))
}

fn crd_paths() -> [PathBuf; 2] {
    [
        root().join("crds").join(CRD_FILE),
        root().join("charts/tokensync/crds").join(CRD_FILE),
    ]
}

fn crd_yaml() -> Result<String> {
    output(cargo().args(["run", "--quiet", "--bin", "tokensync", "--", "crd"])).map(|s| s + "\n")
}

fn gen_crds() -> Result {
    let yaml = crd_yaml()?;
    for path in crd_paths() {
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(&path, &yaml).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "wrote {}",
            path.strip_prefix(root()).unwrap_or(&path).display()
        );
    }
    Ok(())
}

fn check_crds_fresh() -> Result {
    let yaml = crd_yaml()?;
    for path in crd_paths() {
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != yaml {
            return Err(format!(
                "{} is stale: the CRD generated from src/crd.rs differs; run `cargo xtask gen` and commit",
                path.strip_prefix(root()).unwrap_or(&path).display()
            ));
        }
    }
    eprintln!("crds/ and the chart's copy match src/crd.rs");
    Ok(())
}

fn test() -> Result {
    let started = Instant::now();
    step("generated files are fresh");
    check_crds_fresh()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    let chart = root().join("charts/tokensync/Chart.yaml");
    if chart.exists() {
        step("helm lint");
        run(Command::new(tool("helm")?).args(["lint", "--strict", "charts/tokensync"]))?;
    }
    step("local control plane (built and cached on first use)");
    let was_running = cluster_sh()
        .arg("status")
        .status()
        .is_ok_and(|s| s.success());
    run(cluster_sh().arg("up"))?;
    step("cargo test (unit and integration tests on the real apiserver)");
    let result = run(cargo()
        .args(["test", "--workspace", "--", "--test-threads", "4"])
        .env("KUBECONFIG", kubeconfig()?)
        .env("TOKENSYNC_REQUIRE_CLUSTER", "1"));
    if !was_running {
        step("stopping the control plane this run started");
        run(cluster_sh().arg("down"))?;
    }
    result?;
    eprintln!("\nall checks passed in {:.0?}", started.elapsed());
    Ok(())
}

fn bench() -> Result {
    run(cargo().args(["bench", "--bench", "renewal"]))
}

/// A background process stopped on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo() -> Result {
    step("local control plane");
    run(cluster_sh().arg("up"))?;
    let kubeconfig = kubeconfig()?;
    let kubectl = tool("kubectl")?;
    let k = |args: &[&str]| {
        let mut c = Command::new(&kubectl);
        c.env("KUBECONFIG", &kubeconfig).args(args);
        c
    };
    step("building tokensync and the fake providers");
    run(cargo().args(["build", "--quiet", "--workspace", "--bins"]))?;
    let bin = root().join("target/debug");
    let log_dir = root().join(".tokensync");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;

    step("fake vendor token APIs");
    let mut fakes = Command::new(bin.join("fake-providers"))
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start fake-providers: {e}"))?;
    let mut line = String::new();
    BufReader::new(fakes.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let _fakes = Background(fakes);
    let base = line.trim().to_string();
    eprintln!("serving at {base}");

    step("CRD and examples");
    run(&mut k(&[
        "apply",
        "--server-side",
        "-f",
        &format!("crds/{CRD_FILE}"),
    ]))?;
    run(&mut k(&[
        "wait",
        "--for=condition=Established",
        "crd/providercredentials.tokensync.dev",
        "--timeout=60s",
    ]))?;
    let ns_yaml = output(&mut k(&[
        "create",
        "namespace",
        DEMO_NS,
        "--dry-run=client",
        "-o",
        "yaml",
    ]))?;
    apply_stdin(&mut k(&["apply", "-f", "-"]), &ns_yaml)?;
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for example in &examples {
        let text = std::fs::read_to_string(example).map_err(|e| e.to_string())?;
        let rewritten = output(
            Command::new(bin.join("fake-providers"))
                .args(["rewrite", &base])
                .stdin(Stdio::from(tempfile_with(&log_dir, &text)?)),
        )?;
        eprintln!("applying {} (vendor URLs -> {base})", example.display());
        apply_stdin(&mut k(&["apply", "-n", DEMO_NS, "-f", "-"]), &rewritten)?;
    }

    step("tokensync operator");
    let log =
        std::fs::File::create(log_dir.join("demo-operator.log")).map_err(|e| e.to_string())?;
    let mut operator = Background(
        Command::new(bin.join("tokensync"))
            .args(["run", "--allow-insecure-http", "--namespace", DEMO_NS])
            .env("KUBECONFIG", &kubeconfig)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start tokensync: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = k(&[
            "wait",
            "--for=condition=Ready",
            "pcred",
            "--all",
            "-n",
            DEMO_NS,
            "--timeout=5s",
        ])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        if let Ok(Some(status)) = operator.0.try_wait() {
            return Err(format!(
                "the operator exited ({status}); see .tokensync/demo-operator.log"
            ));
        }
        if Instant::now() > deadline {
            run(&mut k(&["get", "pcred", "-n", DEMO_NS, "-o", "wide"]))?;
            return Err(
                "not every ProviderCredential became Ready; see .tokensync/demo-operator.log"
                    .into(),
            );
        }
    }

    step("ProviderCredentials");
    run(&mut k(&["get", "pcred", "-n", DEMO_NS, "-o", "wide"]))?;
    step("synced Secrets (token values shortened)");
    let names = output(&mut k(&[
        "get",
        "pcred",
        "-n",
        DEMO_NS,
        "-o",
        "jsonpath={range .items[*]}{.spec.output.secretName}{\"\\n\"}{end}",
    ]))?;
    for name in names.lines().filter(|l| !l.is_empty()) {
        let tmpl = "{{range $k, $v := .data}}{{$k}}={{$v | base64decode}}\n{{end}}";
        let data = output(&mut k(&[
            "get",
            "secret",
            name,
            "-n",
            DEMO_NS,
            "-o",
            &format!("go-template={tmpl}"),
        ]))?;
        println!("Secret {DEMO_NS}/{name}");
        for entry in data.lines() {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            let shown = if key.contains("token") && key != "token_type" && value.len() > 12 {
                format!("{}... ({} bytes)", &value[..12], value.len())
            } else {
                value.to_string()
            };
            println!("  {key}: {shown}");
        }
    }
    eprintln!(
        "\nThe demo stops the operator and the fake providers now; the control plane keeps running.\n\
         Explore it with `eval \"$(cargo xtask cluster env)\"; kubectl get pcred -A`, stop it with `cargo xtask cluster down`.\n\
         Operator log: .tokensync/demo-operator.log"
    );
    Ok(())
}

fn tempfile_with(dir: &Path, text: &str) -> Result<std::fs::File> {
    let path = dir.join("manifest.tmp.yaml");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    std::fs::File::open(&path).map_err(|e| e.to_string())
}

fn apply_stdin(cmd: &mut Command, text: &str) -> Result {
    use std::io::Write;
    let mut child = cmd
        .current_dir(root())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed"))
    }
}
