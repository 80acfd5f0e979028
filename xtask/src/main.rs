//! Developer commands: `cargo xtask <command>`.
//!
//!   demo                 local control plane + fake providers + operator + examples; prints the Secrets
//!   test                 everything CI runs, but the conformance tests
//!   conformance          the conformance tests against a real Keycloak (installed and cached by
//!                        xtask/keycloak.sh); CI runs them after `test`
//!   gen                  write crds/ (and the chart's copy in files/crds/) from the Rust types
//!   cluster up|down|env|tools|status   the local control plane (xtask/cluster.sh)
//!   bench [--n N] [--unrelated M] [--out FILE] [--steady-secs S] [--latency-ms L] [--no-micro]
//!                        micro-benchmarks, then the scale benchmark (benches/scale.rs) on the
//!                        local control plane; prints a table, writes FILE (target/bench.json)
//!   chaos [--minutes N]  soak: random vendor faults and operator SIGKILLs for N minutes
//!                        (default 10); prints a table, writes target/chaos.json (tests/chaos.rs)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, String>;

const CRD_FILE: &str = "tokensync.dev_providercredentials.yaml";
const DEMO_NS: &str = "tokensync-demo";
const CODE_PLACEHOLDER: &str = "paste-the-authorization-code-here";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(),
        Some("gen") => gen_crds(),
        Some("cluster") => cluster(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("conformance") => conformance(),
        _ => Err(
            "usage: cargo xtask demo | test | conformance | gen | cluster up|down|env|tools|status | bench [--n N ...] | chaos [--minutes N]"
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

/// Where the generated CRD goes: `crds/` for `kubectl apply`, and the chart's `files/crds/`, which
/// its `crds.yaml` template renders (Helm never upgrades a chart's `crds/` directory, so the chart
/// has none).
fn crd_paths() -> [PathBuf; 2] {
    [
        root().join("crds").join(CRD_FILE),
        root().join("charts/tokensync/files/crds").join(CRD_FILE),
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
    // the chart's appVersion is the crate's version
    let field = |path: &str, key: &str| -> Result<String> {
        let text =
            std::fs::read_to_string(root().join(path)).map_err(|e| format!("{path}: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| format!("{path} has no {key}"))
    };
    let crate_version = field("Cargo.toml", "version = ")?;
    let app_version = field("charts/tokensync/Chart.yaml", "appVersion: ")?;
    if crate_version != app_version {
        return Err(format!(
            "charts/tokensync/Chart.yaml appVersion {app_version} differs from the crate version {crate_version}"
        ));
    }
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
    on_the_control_plane(|on| {
        step("cargo test (unit and integration tests on the real apiserver)");
        run(on(cargo().args([
            "test",
            "--workspace",
            "--",
            "--test-threads",
            "4",
        ])))
    })?;
    eprintln!("\nall checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Run `tests` against the local control plane (started, built and cached on first use), and
/// stop it afterwards if this run started it, whether the tests passed or not. `tests` gets a
/// function that points a cargo command at it (its KUBECONFIG; cluster tests never skipped).
fn on_the_control_plane(
    tests: impl FnOnce(&dyn Fn(&mut Command) -> &mut Command) -> Result,
) -> Result {
    step("local control plane (built and cached on first use)");
    let was_running = cluster_sh()
        .arg("status")
        .status()
        .is_ok_and(|s| s.success());
    run(cluster_sh().arg("up"))?;
    let kubeconfig = kubeconfig()?;
    let result = tests(&|cmd: &mut Command| {
        cmd.env("KUBECONFIG", &kubeconfig)
            .env("TOKENSYNC_REQUIRE_CLUSTER", "1")
    });
    if !was_running {
        step("stopping the control plane this run started");
        run(cluster_sh().arg("down"))?;
    }
    result
}

/// The chaos soak of tests/chaos.rs (an ignored test): the control plane as `test` has it, the
/// operator binary built, then the test with CHAOS_MINUTES. CHAOS_SEED, CHAOS_LIES, CHAOS_OUT
/// and CHAOS_TOKENSYNC_BIN pass through from the environment.
fn chaos(args: &[String]) -> Result {
    let minutes = match args {
        [] => "10".to_string(),
        [flag, n] if flag == "--minutes" => n.clone(),
        [flag] if flag.starts_with("--minutes=") => flag["--minutes=".len()..].to_string(),
        _ => return Err("usage: cargo xtask chaos [--minutes N]".into()),
    };
    if minutes.parse::<f64>().map_or(true, |m| m <= 0.0) {
        return Err(format!(
            "--minutes {minutes:?}: a positive number of minutes"
        ));
    }
    on_the_control_plane(|on| {
        step("building tokensync");
        run(cargo().args(["build", "--bin", "tokensync"]))?;
        step(&format!("chaos: {minutes} minutes of faults and SIGKILLs"));
        run(on(cargo()
            .args(["test", "--test", "chaos", "--", "--ignored", "--nocapture"])
            .env("CHAOS_MINUTES", &minutes)))
    })
}

/// The conformance tests (`tests/keycloak.rs`, `#[ignore]`d in the normal run): the Dronetag
/// flows against a real Keycloak, on the local control plane. A few minutes: they wait out
/// Keycloak's session maximum.
fn conformance() -> Result {
    let started = Instant::now();
    step("Keycloak and its Java runtime (downloaded and cached on first use)");
    let install = Instant::now();
    run(Command::new("bash").args(["xtask/keycloak.sh", "install"]))?;
    eprintln!("Keycloak installed in {:.1?}", install.elapsed());
    on_the_control_plane(|on| {
        step("cargo test --test keycloak -- --ignored (the tests share one Keycloak)");
        run(on(cargo().args([
            "test",
            "--test",
            "keycloak",
            "--",
            "--ignored",
            "--test-threads",
            "8",
            // the harness prints Keycloak's start time
            "--show-output",
        ])))
    })?;
    eprintln!("\nconformance passed in {:.0?}", started.elapsed());
    Ok(())
}

/// `cargo xtask bench [--n 1000] [--unrelated 2000] [--out bench.json] [--steady-secs 300]
/// [--latency-ms 20] [--no-micro]`: the micro-benchmarks (unless `--no-micro`), then the scale
/// benchmark of benches/scale.rs (issue 11) on the local control plane with the release binary.
fn bench(args: &[String]) -> Result {
    let usage = "usage: cargo xtask bench [--n 1000] [--unrelated 2000] [--out bench.json] [--steady-secs 300] [--latency-ms 20] [--no-micro]";
    let mut micro = true;
    let mut scale_args: Vec<String> = Vec::new();
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--no-micro" {
            micro = false;
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f, v.to_string()),
            None => (
                arg.as_str(),
                it.next()
                    .ok_or_else(|| format!("{arg} needs a value; {usage}"))?
                    .clone(),
            ),
        };
        match flag {
            "--n" | "--unrelated" | "--steady-secs" | "--latency-ms" => {
                if value.parse::<u64>().is_err() {
                    return Err(format!("{flag} {value:?}: a whole number"));
                }
                scale_args.extend([flag.to_string(), value]);
            }
            // relative to where the command runs, not to the bench's working directory
            "--out" => out = Some(cwd()?.join(value)),
            _ => return Err(format!("unknown argument {arg:?}; {usage}")),
        }
    }
    let target = target_dir()?;
    let out = out.unwrap_or_else(|| target.join("bench.json"));
    scale_args.extend(["--out".to_string(), out.display().to_string()]);

    if micro {
        step("micro-benchmarks of the pure per-reconcile work");
        run(cargo().args(["bench", "--bench", "renewal"]))?;
    }
    on_the_control_plane(|on| {
        step("building tokensync (release)");
        run(cargo().args(["build", "--release", "--bin", "tokensync"]))?;
        step(&format!("scale benchmark: {}", scale_args.join(" ")));
        run(on(cargo()
            .args(["bench", "--bench", "scale", "--"])
            .args(&scale_args)
            .env("TOKENSYNC_BIN", target.join("release/tokensync"))))
    })
}

fn cwd() -> Result<PathBuf> {
    std::env::current_dir().map_err(|e| format!("the working directory: {e}"))
}

/// Cargo's target directory: CARGO_TARGET_DIR (relative to the working directory, as cargo
/// takes it) or the workspace's `target/`.
fn target_dir() -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => Ok(cwd()?.join(dir)),
        None => Ok(root().join("target")),
    }
}

/// A one-time code from the fake Altitude Angel authorize endpoint (curl, not following the redirect).
fn authorization_code(base: &str) -> Result<String> {
    let url = format!(
        "{base}/altitude-angel/oauth/v2/authorize?response_type=code&client_id=example-client-id\
         &redirect_uri=https%3A%2F%2Ftokensync.example%2Fcallback&scope=query_mapdata"
    );
    let location = output(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        &url,
    ]))?;
    location
        .split_once("code=")
        .map(|(_, c)| c.split('&').next().unwrap_or(c).to_string())
        .ok_or_else(|| format!("no code in the authorize redirect {location:?}"))
}

/// The local control plane, started if need be, and kubectl pointed at it.
struct Cluster {
    kubeconfig: String,
    kubectl: String,
}

impl Cluster {
    fn up() -> Result<Self> {
        run(cluster_sh().arg("up"))?;
        Ok(Self {
            kubeconfig: kubeconfig()?,
            kubectl: tool("kubectl")?,
        })
    }

    /// Apply the generated CRD and wait until it is established.
    fn install_crd(&self) -> Result {
        let crd = format!("crds/{CRD_FILE}");
        run(&mut self.kubectl(&["apply", "--server-side", "-f", &crd]))?;
        run(&mut self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/providercredentials.tokensync.dev",
            "--timeout=60s",
        ]))
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig).args(args);
        c
    }
}

/// The fake vendor APIs in the background, and their base URL.
fn start_fakes(bin: &Path) -> Result<(Background, String)> {
    let mut fakes = Command::new(bin.join("fake-providers"))
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start fake-providers: {e}"))?;
    let mut line = String::new();
    BufReader::new(fakes.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok((Background(fakes), line.trim().to_string()))
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
    let cluster = Cluster::up()?;
    let kubeconfig = cluster.kubeconfig.clone();
    let k = |args: &[&str]| cluster.kubectl(args);
    step("building tokensync and the fake providers");
    run(cargo().args(["build", "--quiet", "--workspace", "--bins"]))?;
    let bin = root().join("target/debug");
    let log_dir = root().join(".tokensync");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;

    step("fake vendor token APIs");
    let (_fakes, base) = start_fakes(&bin)?;
    eprintln!("serving at {base}");

    step("CRD and examples");
    cluster.install_crd()?;
    let ns_yaml = output(&mut k(&[
        "create",
        "namespace",
        DEMO_NS,
        "--dry-run=client",
        "-o",
        "yaml",
    ]))?;
    print!("{}", pipe(&mut k(&["apply", "-f", "-"]), &ns_yaml)?);
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for example in &examples {
        let mut text = std::fs::read_to_string(example).map_err(|e| e.to_string())?;
        if text.contains(CODE_PLACEHOLDER) {
            // the person in the browser: the fake's authorize endpoint redirects with a code
            text = text.replace(CODE_PLACEHOLDER, &authorization_code(&base)?);
        }
        let rewritten = pipe(
            Command::new(bin.join("fake-providers")).args(["rewrite", &base]),
            &text,
        )?;
        eprintln!("applying {} (vendor URLs -> {base})", example.display());
        print!(
            "{}",
            pipe(&mut k(&["apply", "-n", DEMO_NS, "-f", "-"]), &rewritten)?
        );
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
    step("synced Secrets (long values shortened)");
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
            // any long value may hold the token (templated keys too): show only its start
            let shown = if value.len() > 24 && key != "expires_at" {
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

/// Run `cmd` with `input` on its stdin; its stdout. stdin is written from a thread, so a
/// command that writes before it has read everything cannot block on a full pipe.
fn pipe(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let mut child = cmd
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let out = std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input.as_bytes()));
        child.wait_with_output()
    })
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
