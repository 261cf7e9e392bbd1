//! gate-agent: judges the canary from canary-filter snapshots and moves its weight.
//!
//! `gate-agent run` reads the rollout spec, resumes the rollout from the filter's durable
//! configuration, serves the HTTP API and runs the control loop until SIGINT or SIGTERM.
//! `check-spec` and `check-config` validate files without running anything. `validate` checks
//! Kubernetes manifests for canary weight typos (see `gate_agent::validate`).
//!
//! Exit codes: 0 done, 1 a runtime failure (e.g. the configuration cannot be read), 64 a bad flag,
//! spec or configuration (the message names the field). `validate`, a CI tool, has its own: 0
//! clean, 1 errors found, 2 a bad flag or an unreadable input.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gate_agent::api::{self, ApiState};
use gate_agent::control::{Parts, Settings, StartError, lead, preflight, stopped};
use gate_agent::evidence::{EvidenceStore, FileEvidence};
use gate_agent::mesh::discovery::PodTargets;
use gate_agent::mesh::events::{Both, KubeEvents};
use gate_agent::mesh::extension::PluginKind;
use gate_agent::mesh::lease::{
    LeaderGated, Leadership, LeaseEvidence, LeaseSettings, spawn_election, spawn_election_with,
};
use gate_agent::mesh::wasmplugin::PluginRouter;
use gate_agent::notify::{Notifier, WebhookNotifier};
use gate_agent::router::{FileRouter, WeightRouter};
use gate_agent::source::HttpSource;
use gate_agent::spec::{Spec, parse_duration};
use gate_agent::status::StatusView;
use gate_agent::validate::{self, Input, Inputs};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use tokio::sync::{mpsc, watch};

const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gate-agent",
    version,
    about = "Gates a canary inside the proxy: judges it every tick, moves its weight."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the rollout: read the proxies, judge, move the weight, serve the API.
    Run(Box<RunArgs>),
    /// Check a rollout spec and print what it means.
    CheckSpec { file: PathBuf },
    /// Check a filter plugin configuration (JSON) with the filter's own parser.
    CheckConfig { file: PathBuf },
    /// Check Kubernetes manifests for canary weight typos before they are applied.
    ///
    /// Exit codes: 0 clean (warnings allowed), 1 errors found, 2 bad usage or unreadable input.
    Validate(ValidateArgs),
    /// Run a rollout for every CanaryGate in the given namespaces (or all), leader-elected.
    Controller(Box<ControllerArgs>),
    /// Print the CanaryGate CustomResourceDefinition (YAML), as shipped in deploy/crd.
    Crd,
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// Text for people, JSON for tools (the shape is documented and stable).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// The rollout spec (as given to `run --spec`): who is stable, the steps, maxWeight.
    #[arg(long, value_name = "ROLLOUT")]
    spec: Option<PathBuf>,
    /// What is applied now (e.g. `kubectl get vs,dr,wasmplugin -o yaml`), for the one-step rule.
    /// May be repeated.
    #[arg(long, value_name = "FILE")]
    live: Vec<PathBuf>,
    /// Manifests to check (YAML, several documents each); `-` reads standard input.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The rollout spec (YAML or JSON, Flagger-style fields).
    #[arg(long, env = "GATE_AGENT_SPEC")]
    spec: PathBuf,
    /// A proxy's snapshot listener, host:port; repeat (or comma-separate) for several proxies.
    /// Not needed with --pod-selector.
    #[arg(long = "target", env = "GATE_AGENT_TARGETS", value_delimiter = ',')]
    targets: Vec<String>,
    /// Where the durable weights live: `file` (the ECDS file Envoy watches), `wasmplugin` (an
    /// Istio WasmPlugin's pluginConfig, through the Kubernetes API) or `trafficextension` (its
    /// successor's `spec.wasm.pluginConfig`, Istio 1.30+; the same protocol).
    #[arg(long, env = "GATE_AGENT_ROUTER", value_enum, default_value_t = RouterKind::File)]
    router: RouterKind,
    /// With `--router file`: the ECDS file Envoy watches (the agent writes a new file in the
    /// `.gate-agent-staging` subdirectory of its directory and renames it into place).
    #[arg(long, env = "GATE_AGENT_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    /// With `--router wasmplugin` or `trafficextension`: the object's name.
    #[arg(long, env = "GATE_AGENT_WASMPLUGIN", default_value = "canary-gate")]
    wasmplugin: String,
    /// Kubernetes namespace of the WasmPlugin, Lease and pods (default: the kubeconfig's or the pod's).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Leader election on this coordination.k8s.io Lease: only the holder writes. Without it, the
    /// agent assumes it is the only writer.
    #[arg(long, env = "GATE_AGENT_LEASE")]
    lease: Option<String>,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Read every ready pod behind this label selector (e.g. `app=frontend`) instead of --target.
    #[arg(long, env = "GATE_AGENT_POD_SELECTOR")]
    pod_selector: Option<String>,
    /// The snapshot listener's port on each discovered pod.
    #[arg(long, env = "GATE_AGENT_POD_PORT", default_value_t = 15290)]
    pod_port: u16,
    /// How often the pod list is refreshed.
    #[arg(long, env = "GATE_AGENT_DISCOVERY_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    discovery_interval: Duration,
    /// Bound on each Kubernetes API call.
    #[arg(long, env = "GATE_AGENT_KUBE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    kube_timeout: Duration,
    /// Where the API listens. Actions need --token unless this is a loopback address.
    #[arg(long, env = "GATE_AGENT_LISTEN", default_value = "127.0.0.1:9903")]
    listen: SocketAddr,
    /// Write the API's bound address here once listening (useful with port 0).
    #[arg(long, env = "GATE_AGENT_LISTEN_ADDRESS_FILE")]
    listen_address_file: Option<PathBuf>,
    /// Bearer token required on POST actions.
    #[arg(long, env = "GATE_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How often the agent reads the proxies and judges.
    #[arg(long, env = "GATE_AGENT_TICK", default_value = "250ms", value_parser = parse_duration)]
    tick: Duration,
    /// Bound on each snapshot read and kill order.
    #[arg(long, env = "GATE_AGENT_FETCH_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// Threads that run the agent; by default one per core. 1 runs everything on one thread, which
    /// spent about a fifth less CPU per tick at 1,000 proxies but let a breach's kill order wait
    /// behind other work (bench/PROFILE.md).
    #[arg(long, env = "GATE_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// A proxy silent this long has its last data aged out.
    #[arg(long, env = "GATE_AGENT_STALENESS", default_value = "10s", value_parser = parse_duration)]
    staleness: Duration,
    /// Snapshot path on each target.
    #[arg(long, env = "GATE_AGENT_SNAPSHOT_PATH", default_value = canary_core::config::DEFAULT_SNAPSHOT_PATH)]
    snapshot_path: String,
    /// Kill-order path on each target.
    #[arg(long, env = "GATE_AGENT_KILL_PATH", default_value = canary_core::kill::DEFAULT_KILL_PATH)]
    kill_path: String,
    /// POST a JSON notice here on every phase change.
    #[arg(long, env = "GATE_AGENT_WEBHOOK")]
    webhook: Option<String>,
    #[arg(long, env = "GATE_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where the statistics' checkpoint is kept between agent lives, so a restarted agent resumes
    /// them (a JSON file, replaced atomically). Default with `--router file`:
    /// `.gate-agent-staging/<name>.evidence.json` in --config-file's directory; with --lease the
    /// checkpoint is kept on the Lease instead (annotation `canary-gate.io/evidence`, written by the
    /// leader's renewals), and this flag is refused; otherwise none, and the statistics start from
    /// zero on every start.
    #[arg(long, env = "GATE_AGENT_EVIDENCE_FILE")]
    evidence_file: Option<PathBuf>,
    /// How often the checkpoint is saved (also right after every durable write, and on the way out).
    #[arg(long, env = "GATE_AGENT_EVIDENCE_EVERY", default_value = "5s", value_parser = parse_duration)]
    evidence_every: Duration,
}

#[derive(Debug, clap::Args)]
struct ControllerArgs {
    /// Watch CanaryGates in these namespaces (repeat or comma-separate); none watches all.
    #[arg(long = "watch-namespace", env = "GATE_AGENT_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// The kind of the generated plugins: `auto` (WasmPlugin while the cluster serves it, else
    /// TrafficExtension), `wasmplugin` or `trafficextension`.
    #[arg(long, env = "GATE_AGENT_PLUGIN_KIND", value_enum, default_value_t = PluginKindArg::Auto)]
    plugin_kind: PluginKindArg,
    /// The port where each waypoint replica serves its Envoy stats (`/stats/prometheus`), read
    /// for gates with `attachment.mode: waypoint`: Istio's 15090.
    #[arg(long, env = "GATE_AGENT_WAYPOINT_STATS_PORT", default_value_t = gate_agent::mesh::envoy_stats::DEFAULT_STATS_PORT)]
    waypoint_stats_port: u16,
    /// The filter module the generated WasmPlugins pull (`oci://registry/canary-gate/filter:0.1.0`).
    #[arg(long, env = "GATE_AGENT_MODULE_URL")]
    module_url: String,
    /// Its sha256 digest (hex, without `sha256:`); istio-agent refuses a module that differs.
    #[arg(long, env = "GATE_AGENT_MODULE_SHA256")]
    module_sha256: String,
    /// The controller's namespace (Lease, and the snapshot port's allowed caller).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// The controller's ServiceAccount: the only principal the snapshot port admits.
    #[arg(long, env = "GATE_AGENT_SERVICE_ACCOUNT", default_value = "canary-gate-controller")]
    service_account: String,
    /// The controller pods' labels (`k=v`, repeat), for the generated NetworkPolicy.
    #[arg(
        long = "pod-label",
        env = "GATE_AGENT_POD_LABELS",
        value_delimiter = ',',
        default_value = "app.kubernetes.io/name=canary-gate-controller"
    )]
    pod_labels: Vec<String>,
    /// Leader election on this Lease in the controller's namespace.
    #[arg(long, env = "GATE_AGENT_LEASE", default_value = "canary-gate-controller")]
    lease: String,
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "GATE_AGENT_LISTEN", default_value = "127.0.0.1:9903")]
    listen: SocketAddr,
    #[arg(long, env = "GATE_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "GATE_AGENT_POLL", default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
    #[arg(long, env = "GATE_AGENT_TICK", default_value = "250ms", value_parser = parse_duration)]
    tick: Duration,
    #[arg(long, env = "GATE_AGENT_KUBE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    kube_timeout: Duration,
    #[arg(long, env = "GATE_AGENT_FETCH_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// Threads that run the controller; by default one per core. 1 runs everything on one thread, which
    /// spent about a fifth less CPU per tick at 1,000 proxies but let a breach's kill order wait
    /// behind other work (bench/PROFILE.md).
    #[arg(long, env = "GATE_AGENT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    #[arg(long, env = "GATE_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PluginKindArg {
    Auto,
    Wasmplugin,
    Trafficextension,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RouterKind {
    File,
    Wasmplugin,
    Trafficextension,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Why `run` stopped early.
enum Failure {
    Usage(String),
    Runtime(String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            let validating = std::env::args_os().nth(1).is_some_and(|a| a == "validate");
            return ExitCode::from(if validating { validate::EXIT_USAGE } else { EX_USAGE });
        }
        Err(e) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Cmd::Validate(args) => return validate_manifests(&args),
        Cmd::CheckSpec { file } => check_spec(&file),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Run(args) => run(*args),
        Cmd::Crd => print_crd(),
        Cmd::Controller(args) => run_controller(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("gate-agent: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Runtime(message)) => {
            eprintln!("gate-agent: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read_spec(file: &PathBuf) -> Result<Spec, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("--spec {}: cannot read: {e}", file.display())))?;
    Spec::from_yaml_or_json(&text).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))
}

fn check_spec(file: &PathBuf) -> Result<(), Failure> {
    let spec = read_spec(file)?;
    let steps: Vec<String> = spec.steps().iter().map(ToString::to_string).collect();
    println!(
        "{}: ok: rollout {} ({} -> {}), steps {}, check every {:?}, {} failed checks allowed",
        file.display(),
        spec.name(),
        spec.stable(),
        spec.canary(),
        steps.join(" "),
        spec.interval(),
        spec.threshold()
    );
    Ok(())
}

fn print_crd() -> Result<(), Failure> {
    let yaml = gate_agent::gate::crd::crd_yaml().map_err(Failure::Runtime)?;
    let _ = std::io::stdout().lock().write_all(yaml.as_bytes());
    Ok(())
}

fn check_config(file: &PathBuf) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Runtime(format!("{}: cannot read: {e}", file.display())))?;
    canary_core::config::parse(&bytes).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    println!("{}: ok", file.display());
    Ok(())
}

/// `validate`: reads every input (exit 2 if one cannot be read), checks, prints the report.
fn validate_manifests(args: &ValidateArgs) -> ExitCode {
    let inputs = match read_inputs(args) {
        Ok(inputs) => inputs,
        Err(message) => {
            eprintln!("gate-agent validate: {message}");
            return ExitCode::from(validate::EXIT_USAGE);
        }
    };
    let report = validate::validate(&inputs);
    let text = match args.format {
        ReportFormat::Text => report.to_text(),
        ReportFormat::Json => report.to_json() + "\n",
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes()); // a closed pipe changes nothing
    ExitCode::from(report.exit_code())
}

fn read_inputs(args: &ValidateArgs) -> Result<Inputs, String> {
    let mut stdin_taken = false;
    let mut read = |path: &Path| read_input(path, &mut stdin_taken);
    let files = args.files.iter().map(|f| read(f)).collect::<Result<_, _>>()?;
    let spec = args.spec.as_deref().map(&mut read).transpose()?;
    let live = args.live.iter().map(|f| read(f)).collect::<Result<_, _>>()?;
    Ok(Inputs { files, spec, live })
}

/// A file's text, or standard input's for `-` (once: it cannot be read twice).
fn read_input(path: &Path, stdin_taken: &mut bool) -> Result<Input, String> {
    if path == Path::new("-") {
        if std::mem::replace(stdin_taken, true) {
            return Err("`-` (standard input) is given more than once".into());
        }
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("standard input: cannot read: {e}"))?;
        return Ok(Input { name: "<stdin>".into(), text });
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    Ok(Input { name: path.display().to_string(), text })
}

fn run(args: RunArgs) -> Result<(), Failure> {
    init_logs(args.log_format);
    let spec = read_spec(&args.spec)?;
    if !args.listen.ip().is_loopback() && args.token.as_deref().is_none_or(str::is_empty) {
        return Err(Failure::Usage(format!(
            "--listen {} is not a loopback address: set --token (GATE_AGENT_TOKEN) so actions need a bearer token",
            args.listen
        )));
    }
    if args.targets.is_empty() && args.pod_selector.is_none() {
        return Err(Failure::Usage("give the proxies to read: --target host:port, or --pod-selector".into()));
    }
    if args.router == RouterKind::File && args.config_file.is_none() {
        return Err(Failure::Usage("--router file needs --config-file (the ECDS file Envoy watches)".into()));
    }
    if args.router == RouterKind::File && (args.lease.is_some() || args.pod_selector.is_some()) {
        return Err(Failure::Usage(
            "--lease and --pod-selector need --router wasmplugin or trafficextension (Kubernetes)".into(),
        ));
    }
    if args.evidence_file.is_some() && args.lease.is_some() {
        return Err(Failure::Usage(
            "--evidence-file cannot be used with --lease: replicas would not share it, and only the lease holder may write"
                .into(),
        ));
    }
    runtime(args.worker_threads)?.block_on(serve(args, spec))
}

async fn serve(args: RunArgs, spec: Spec) -> Result<(), Failure> {
    // A proxy may run several rollouts (one per gated service it calls): ask for this one.
    let snapshot_path = format!("{}?rollout={}", args.snapshot_path, spec.name());
    let source = HttpSource::new(&snapshot_path, &args.kill_path, args.fetch_timeout)
        .map_err(|e| Failure::Runtime(format!("HTTP client: {e}")))?;
    let webhook = match &args.webhook {
        Some(url) => Some(
            WebhookNotifier::new(url, Duration::from_secs(5))
                .map_err(|e| Failure::Usage(format!("--webhook {url}: {e}")))?,
        ),
        None => None,
    };
    let evidence: Option<Arc<dyn EvidenceStore>> = match (&args.evidence_file, args.router, &args.config_file) {
        (Some(path), _, _) => Some(Arc::new(FileEvidence::new(path))),
        (None, RouterKind::File, Some(config)) => Some(Arc::new(FileEvidence::beside(config))),
        _ => None,
    };
    match &evidence {
        Some(store) => tracing::info!(store = %store.location(), every = ?args.evidence_every, "evidence checkpoint"),
        None if args.lease.is_some() => {} // on the Lease, below
        None => tracing::info!("no evidence checkpoint: the statistics start from zero on every start"),
    }
    let settings = Settings {
        targets: args.targets.clone(),
        staleness: args.staleness,
        kill_timeout: args.fetch_timeout,
        evidence,
        evidence_every: args.evidence_every,
        ..Settings::default()
    };
    let stop = watch::channel(false);
    let (status, status_rx) = watch::channel(StatusView::default());
    let source = Arc::new(source);
    match args.router {
        RouterKind::File => {
            let path = args.config_file.clone().unwrap_or_default();
            let router = FileRouter::new(&path).with_guard(spec.guard());
            // A killed predecessor may have left a partial file in the staging directory.
            match router.remove_stale_temps() {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(?removed, "removed temporary files a previous agent left behind");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot clear stale temporary files: {e}"),
            }
            preflight(&spec, &router).await.map_err(start_failure)?;
            tracing::info!(targets = ?args.targets, config = %path.display(), "durable weights in the watched file");
            let notifier = Arc::new(Both(None::<KubeEvents>, webhook));
            let parts = Parts { spec, source, router, notifier, settings, status, tick: args.tick };
            serve_rollout(&args, parts, status_rx, (Leadership::always(), ""), stop).await
        }
        RouterKind::Wasmplugin | RouterKind::Trafficextension => {
            let kind = match args.router {
                RouterKind::Trafficextension => PluginKind::TrafficExtension,
                _ => PluginKind::WasmPlugin,
            };
            let client = gate_agent::mesh::client()
                .await
                .map_err(|e| Failure::Runtime(format!("Kubernetes client (in-cluster or KUBECONFIG): {e}")))?;
            let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
            let identity = args.identity.clone().unwrap_or_else(|| format!("gate-agent-{}", std::process::id()));
            let router = PluginRouter::of_kind(client.clone(), Some(&ns), kind, &args.wasmplugin, args.kube_timeout)
                .with_guard(spec.guard());
            preflight(&spec, &router).await.map_err(start_failure)?;
            let mut settings = settings;
            let (leadership, lease) = match &args.lease {
                Some(lease) => {
                    let lease_settings =
                        LeaseSettings { call_timeout: args.kube_timeout, ..LeaseSettings::new(lease, &identity) };
                    lease_settings.check().map_err(|e| Failure::Usage(format!("--lease {lease}: {e}")))?;
                    // The evidence rides on the leader's renewals of the same Lease.
                    let evidence = LeaseEvidence::new(lease);
                    tracing::info!(store = %evidence.location(), every = ?args.evidence_every, "evidence checkpoint");
                    settings.evidence = Some(Arc::new(evidence.clone()));
                    let (l, task) = spawn_election_with(
                        Api::namespaced(client.clone(), &ns),
                        lease_settings,
                        Some(evidence),
                        stopped(stop.1.clone()),
                    );
                    (l, Some((lease.clone(), task)))
                }
                None => (Leadership::always(), None),
            };
            if let Some(selector) = &args.pod_selector {
                let pods =
                    PodTargets::new(Api::namespaced(client.clone(), &ns), selector, args.pod_port, args.kube_timeout);
                let first = pods.list().await.unwrap_or_else(|e| {
                    tracing::warn!(%selector, "listing pods: {e}; starting with none");
                    Vec::new()
                });
                settings.target_updates = Some(pods.spawn(first, args.discovery_interval));
            }
            // With its uid, so `kubectl describe wasmplugin` lists the Events.
            let regarding = router.reference().await.unwrap_or_else(|e| {
                tracing::warn!("{e}: Events will name the {kind} without its uid");
                ObjectReference {
                    api_version: Some(kind.api_version()),
                    kind: Some(kind.kind().into()),
                    name: Some(args.wasmplugin.clone()),
                    namespace: Some(ns.clone()),
                    ..ObjectReference::default()
                }
            });
            let events = KubeEvents::new(Api::namespaced(client, &ns), regarding, &identity, args.kube_timeout);
            tracing::info!(
                namespace = %ns, %kind, name = %args.wasmplugin, lease = ?args.lease, identity = %identity,
                pod_selector = ?args.pod_selector, "durable weights in the {kind}"
            );
            let router = LeaderGated::new(router.with_fence(leadership.clone()), leadership.clone());
            let notifier = Arc::new(Both(Some(events), webhook));
            let parts = Parts { spec, source, router, notifier, settings, status, tick: args.tick };
            let name = lease.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
            let outcome = serve_rollout(&args, parts, status_rx, (leadership, &name), stop).await;
            if let Some((_, election)) = lease {
                // The election releases the lease on the way out, so a standby takes over at once.
                let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
            }
            outcome
        }
    }
}

/// Serves the API and leads the rollout until SIGINT or SIGTERM.
async fn serve_rollout<R: WeightRouter + Clone + 'static, N: Notifier + 'static>(
    args: &RunArgs,
    parts: Parts<HttpSource, R, N>,
    status_rx: watch::Receiver<StatusView>,
    (leadership, lease): (Leadership, &str),
    (stop_tx, stop_rx): (watch::Sender<bool>, watch::Receiver<bool>),
) -> Result<(), Failure> {
    let (command_tx, mut command_rx) = mpsc::channel(16);
    let state = ApiState { status: status_rx, commands: command_tx, token: args.token.as_deref().map(Arc::from) };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Runtime(format!("--listen {}: {e}", args.listen)))?;
    let bound = listener.local_addr().map_err(|e| Failure::Runtime(format!("--listen {}: {e}", args.listen)))?;
    if let Some(path) = &args.listen_address_file {
        std::fs::write(path, bound.to_string())
            .map_err(|e| Failure::Runtime(format!("--listen-address-file {}: {e}", path.display())))?;
    }
    tracing::info!(listen = %bound, "serving the API");

    let mut app = api::app(state);
    if let Some(ns) = &args.namespace {
        // Flagger's payloads name a namespace: with one configured, a Canary elsewhere is refused.
        app = app.layer(axum::Extension(gate_agent::status::ExpectedNamespace(Arc::from(ns.as_str()))));
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    let server = tokio::spawn(async move { server.await });
    stop_on_signal(stop_tx.clone());
    let outcome = lead(parts, leadership, &mut command_rx, stop_rx, lease).await.map_err(start_failure);
    let _ = stop_tx.send(true); // also when leading failed: the API server stops with it
    match server.await {
        Ok(Ok(())) => outcome,
        Ok(Err(e)) => Err(Failure::Runtime(format!("API server: {e}"))),
        Err(e) => Err(Failure::Runtime(format!("API server task: {e}"))),
    }
}

/// The tokio runtime: one worker per core by default, one thread for `Some(1)`, else that many
/// workers.
fn runtime(threads: Option<u16>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build().map_err(|e| Failure::Runtime(format!("tokio runtime: {e}")))
}

fn run_controller(args: ControllerArgs) -> Result<(), Failure> {
    use gate_agent::gate::controller::{ControllerSettings, GateIndex};
    init_logs(args.log_format);
    if !args.listen.ip().is_loopback() && args.token.as_deref().is_none_or(str::is_empty) {
        return Err(Failure::Usage(format!("--listen {} is not a loopback address: set --token", args.listen)));
    }
    let mut pod_labels = std::collections::BTreeMap::new();
    for label in &args.pod_labels {
        let (k, v) = label.split_once('=').ok_or_else(|| Failure::Usage(format!("--pod-label {label:?}: not k=v")))?;
        pod_labels.insert(k.to_owned(), v.to_owned());
    }
    runtime(args.worker_threads)?.block_on(async move {
        let client = gate_agent::mesh::client()
            .await
            .map_err(|e| Failure::Runtime(format!("Kubernetes client (in-cluster or KUBECONFIG): {e}")))?;
        let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        let identity = args.identity.clone().unwrap_or_else(|| format!("gate-agent-{}", std::process::id()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let lease_settings =
            LeaseSettings { call_timeout: args.kube_timeout, ..LeaseSettings::new(&args.lease, &identity) };
        lease_settings.check().map_err(|e| Failure::Usage(format!("--lease {}: {e}", args.lease)))?;
        let (leadership, election) =
            spawn_election(Api::namespaced(client.clone(), &ns), lease_settings, stopped(stop_rx.clone()));
        let settings = ControllerSettings {
            namespaces: args.watch_namespaces.clone(),
            install: gate_agent::gate::generate::Install {
                module_url: args.module_url.clone(),
                module_sha256: args.module_sha256.clone(),
                namespace: ns.clone(),
                service_account: args.service_account.clone(),
                pod_labels,
            },
            identity,
            poll: args.poll,
            resync: Duration::from_secs(30),
            kube_timeout: args.kube_timeout,
            tick: args.tick,
            fetch_timeout: args.fetch_timeout,
            discovery_interval: Duration::from_secs(10),
            snapshot_path: canary_core::config::DEFAULT_SNAPSHOT_PATH.into(),
            kill_path: canary_core::kill::DEFAULT_KILL_PATH.into(),
            rollout: Settings { kill_timeout: args.fetch_timeout, ..Settings::default() },
            plugin_kind: match args.plugin_kind {
                PluginKindArg::Auto => None,
                PluginKindArg::Wasmplugin => Some(PluginKind::WasmPlugin),
                PluginKindArg::Trafficextension => Some(PluginKind::TrafficExtension),
            },
            waypoint_stats_port: args.waypoint_stats_port,
        };
        let index = GateIndex::default();
        let api = gate_agent::gate::api::app(gate_agent::gate::api::GatesApi {
            index: index.clone(),
            leadership: leadership.clone(),
            token: args.token.as_deref().map(Arc::from),
        });
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Failure::Runtime(format!("--listen {}: {e}", args.listen)))?;
        let server = axum::serve(listener, api).with_graceful_shutdown(stopped(stop_rx.clone()));
        let server = tokio::spawn(async move { server.await });
        stop_on_signal(stop_tx.clone());
        tracing::info!(namespace = %ns, lease = %args.lease, watch = ?args.watch_namespaces, "controller starting");
        gate_agent::gate::controller::run(client, settings, leadership, index, stop_rx).await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
        let _ = server.await;
        Ok(())
    })
}

fn start_failure(e: StartError) -> Failure {
    match e {
        StartError::Router(_) => Failure::Runtime(e.to_string()),
        StartError::Mismatch { .. } | StartError::NoTargets => Failure::Usage(e.to_string()),
    }
}

/// Sends `true` on `stop` at SIGINT or SIGTERM (the API server and the loops drain on it).
fn stop_on_signal(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
}

/// SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn init_logs(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("GATE_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // kube warns "Server cert bypassed" on every connection when the kubeconfig skips TLS
    // verification; the agent says so once at start instead (gate_agent::mesh::client).
    if !std::env::var("GATE_AGENT_LOG").is_ok_and(|v| v.contains("kube_client"))
        && let Ok(quiet) = "kube_client::client::tls=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
