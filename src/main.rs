//! The `tokensync` binary: flags and wiring only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use tokensync::controller::{self, Config, Context};
use tokensync::crd::ProviderCredential;
use tokensync::telemetry::{self, LogFormat};
use tokensync::token::Inputs;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps short-lived vendor API tokens fresh in Kubernetes Secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (reads KUBECONFIG or the in-cluster config).
    Run(RunArgs),
    /// Print the ProviderCredential CRD as YAML.
    Crd,
    /// Fetch one token as the controller would, without a cluster, and print a JSON summary.
    Check(CheckArgs),
    /// Ask the controller to renew a ProviderCredential's token now (sets the
    /// `tokensync.dev/force-refresh` annotation).
    Refresh(RefreshArgs),
    /// Show a ProviderCredential and what it depends on (inputs, upstream, CA, output and state
    /// Secrets, events) and what happens next, without any secret value. Exits non-zero when
    /// it is not Ready.
    Status(StatusArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only these namespaces (repeat or comma-separate; default: all namespaces).
    #[arg(
        long = "namespace",
        env = "TOKENSYNC_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Allow plain-http token URLs. Never in production.
    #[arg(long, env = "TOKENSYNC_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// Token hosts requests may go to (comma-separated; `*.example.com` for subdomains).
    /// Default: any host. Keeps tenants from pointing the controller at internal addresses.
    #[arg(long, env = "TOKENSYNC_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Timeout of one request to a provider, in seconds.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Attempts to revoke a replaced or deleted token before giving up (with a Warning event).
    #[arg(long, default_value_t = 5)]
    max_revoke_attempts: u32,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "TOKENSYNC_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    /// Run the controllers only while holding a coordination.k8s.io Lease (for replicas > 1).
    #[arg(long, env = "TOKENSYNC_LEADER_ELECT")]
    leader_elect: bool,
    #[arg(long, default_value = "tokensync-leader")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a lease lasts without renewal: the longest a dead leader blocks a standby.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOKENSYNC_LOG_FORMAT")]
    log_format: LogFormat,
    /// How the watches list: `auto` streams when the apiserver serves streaming lists
    /// (Kubernetes 1.32, 1.34 and later), else pages; `pages` always pages.
    #[arg(long, value_enum, default_value_t = ListsArg::Auto, env = "TOKENSYNC_LISTS")]
    lists: ListsArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListsArg {
    Auto,
    Pages,
}

#[derive(clap::Args)]
struct RefreshArgs {
    /// The ProviderCredential to renew now.
    name: String,
    /// Default: the kubeconfig context's namespace.
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The ProviderCredential.
    name: String,
    /// Default: the kubeconfig context's namespace.
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The ProviderCredential manifest (it may hold the inputs Secret too, as examples/ do).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// The inputs Secret manifest, when it is not in the -f file.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// The manifest (ProviderCredential + inputs Secret) of the credential named in
    /// spec.http.upstream; it is fetched first.
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// After the login, refresh once with the refresh token that came back.
    #[arg(long)]
    refresh: bool,
    /// Allow plain-http token URLs.
    #[arg(long)]
    allow_insecure_http: bool,
    /// Print the token itself too.
    #[arg(long)]
    show_token: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // as a kubectl plugin (`kubectl-tokensync`), help and errors say `kubectl tokensync`
    let bin_name = tokensync::cli::bin_name(std::env::args_os().next().as_deref());
    let matches = Cli::command().bin_name(bin_name).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Crd => {
            print!("{}", tokensync::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => run(args).await,
        Command::Check(args) => check(args).await,
        Command::Refresh(args) => refresh(args).await,
        Command::Status(args) => status(args).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tokensync",
                &mut std::io::stdout(),
            );
            std::process::ExitCode::SUCCESS
        }
    }
}

async fn run(args: RunArgs) -> std::process::ExitCode {
    telemetry::init(args.log_format);
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "cannot build a Kubernetes client");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = Config {
        namespaces: args.namespaces,
        allow_insecure_http: args.allow_insecure_http,
        allowed_hosts: args.allowed_hosts,
        request_timeout: Duration::from_secs(args.request_timeout),
        concurrency: args.concurrency,
        max_revoke_attempts: args.max_revoke_attempts.max(1),
        leader_election: args.leader_elect,
        lists: match args.lists {
            ListsArg::Auto => None,
            ListsArg::Pages => Some(tokensync::controller::lists::Lists::Pages),
        },
        ..Config::default()
    };
    let ctx = match Context::new(client, config) {
        Ok(c) => Arc::new(c),
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.http_addr).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, addr = %args.http_addr, "cannot listen for /healthz, /readyz, /metrics");
            return std::process::ExitCode::FAILURE;
        }
    };
    tokio::spawn(tokensync::admin::serve(
        listener,
        ctx.health.clone(),
        ctx.metrics.clone(),
    ));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        http = %args.http_addr,
        namespaces = ?ctx.config.namespaces,
        leader_elect = args.leader_elect,
        "tokensync controller starting"
    );
    if args.leader_elect {
        let identity = args.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let lease = tokensync::election::LeaseConfig {
            name: args.lease_name,
            namespace: args.lease_namespace,
            identity,
            duration_seconds: args.lease_duration,
            grace_seconds: (args.lease_duration / 3).max(1),
        };
        if let Err(error) = tokensync::election::run(ctx, lease, shutdown_signal()).await {
            tracing::error!(%error, "exiting");
            return std::process::ExitCode::FAILURE;
        }
    } else {
        ctx.metrics.set_leader(true);
        let shutdown = shutdown_signal().shared();
        let ended = tokio::spawn(controller::run(ctx.clone(), shutdown.clone())).await;
        let failed = match ended {
            Ok(()) if shutdown.peek().is_some() => None,
            Ok(()) => Some("returned before a shutdown signal"),
            Err(e) if e.is_panic() => Some("panicked"),
            Err(_) => Some("were cancelled"),
        };
        if let Some(how) = failed {
            // nothing renews tokens any more: exit, and Kubernetes restarts the pod
            ctx.health.set_failed();
            ctx.metrics.set_leader(false);
            tracing::error!("the controllers {how}: exiting");
            return std::process::ExitCode::FAILURE;
        }
    }
    tracing::info!("tokensync controller stopped");
    std::process::ExitCode::SUCCESS
}

async fn status(args: StatusArgs) -> std::process::ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokensync status: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let namespace = tokensync::cli::namespace(args.namespace, &client);
    let snapshot = tokensync::cli::status::fetch(&client, &namespace, &args.name).await;
    print!("{}", tokensync::cli::status::render(&snapshot));
    std::process::ExitCode::from(tokensync::cli::status::exit_code(&snapshot))
}

async fn refresh(args: RefreshArgs) -> std::process::ExitCode {
    let mut namespace = String::new();
    let result = async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| e.to_string())?;
        namespace = tokensync::cli::namespace(args.namespace, &client);
        let api: kube::Api<ProviderCredential> = kube::Api::namespaced(client, &namespace);
        let patch = serde_json::json!({"metadata": {"annotations": {
            tokensync::controller::FORCE_REFRESH_ANNOTATION: jiff::Timestamp::now().to_string()
        }}});
        api.patch(
            &args.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(_) => {
            println!("renewal of {namespace}/{} requested", args.name);
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tokensync refresh: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn load(path: &PathBuf) -> Result<(Option<ProviderCredential>, Option<Secret>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    tokensync::check::parse_manifests(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The ProviderCredential and its inputs from `file` (and `inputs`, when given).
fn load_pair(
    file: &PathBuf,
    inputs: Option<&PathBuf>,
) -> Result<(ProviderCredential, Inputs), String> {
    let (pc, secret) = load(file)?;
    let pc = pc.ok_or_else(|| format!("{}: no ProviderCredential in it", file.display()))?;
    let secret = match inputs {
        Some(path) => load(path)?.1,
        None => secret,
    }
    .ok_or("no inputs Secret: give --inputs, or put the Secret in the -f file")?;
    let inputs = Inputs::from_secret(&secret).with_public_roles(&pc.spec.inputs.keys);
    Ok((pc, inputs))
}

async fn check(args: CheckArgs) -> std::process::ExitCode {
    let egress = tokensync::providers::Egress {
        allow_insecure_http: args.allow_insecure_http,
        allowed_hosts: Vec::new(),
    };
    let options = tokensync::check::Options {
        egress: egress.clone(),
        show_token: args.show_token,
        refresh: args.refresh,
    };
    let result = async {
        let (pc, inputs) = load_pair(&args.file, args.inputs.as_ref())?;
        let upstream = match &args.upstream {
            Some(path) => {
                let (up, up_inputs) = load_pair(path, None)?;
                Some(tokensync::check::upstream(&up, &up_inputs, &egress).await?)
            }
            None => None,
        };
        tokensync::check::run(&pc, &inputs, upstream, &options).await
    }
    .await;
    match result {
        Ok(summary) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).expect("serializes")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tokensync check: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
