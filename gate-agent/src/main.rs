//! gate-agent: judges the canary from canary-filter snapshots and moves its weight.
//!
//! `gate-agent run` reads the rollout spec, resumes the rollout from the filter's durable
//! configuration, serves the HTTP API and runs the control loop until SIGINT or SIGTERM.
//! `check-spec` and `check-config` validate files without running anything.
//!
//! Exit codes: 0 done, 1 a runtime failure (e.g. the configuration cannot be read), 64 a bad flag,
//! spec or configuration (the message names the field).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gate_agent::api::{self, ApiState, StatusView};
use gate_agent::control::{Controller, Settings, StartError};
use gate_agent::notify::{NoNotifier, Notifier, WebhookNotifier};
use gate_agent::router::FileRouter;
use gate_agent::source::HttpSource;
use gate_agent::spec::{Spec, parse_duration};
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
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The rollout spec (YAML or JSON, Flagger-style fields).
    #[arg(long, env = "GATE_AGENT_SPEC")]
    spec: PathBuf,
    /// A proxy's snapshot listener, host:port; repeat (or comma-separate) for several proxies.
    #[arg(long = "target", env = "GATE_AGENT_TARGETS", value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// The ECDS file Envoy watches; the agent writes the weight there (new file, rename).
    #[arg(long, env = "GATE_AGENT_CONFIG_FILE")]
    config_file: PathBuf,
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
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Cmd::CheckSpec { file } => check_spec(&file),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Run(args) => run(*args),
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

fn check_config(file: &PathBuf) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Runtime(format!("{}: cannot read: {e}", file.display())))?;
    canary_core::config::parse(&bytes).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    println!("{}: ok", file.display());
    Ok(())
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
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Runtime(format!("tokio runtime: {e}")))?;
    runtime.block_on(async move {
        match &args.webhook {
            Some(url) => {
                let notifier = WebhookNotifier::new(url, Duration::from_secs(5))
                    .map_err(|e| Failure::Usage(format!("--webhook {url}: {e}")))?;
                serve(args, spec, notifier).await
            }
            None => serve(args, spec, NoNotifier).await,
        }
    })
}

async fn serve<N: Notifier + 'static>(args: RunArgs, spec: Spec, notifier: N) -> Result<(), Failure> {
    let source = HttpSource::new(&args.snapshot_path, &args.kill_path, args.fetch_timeout)
        .map_err(|e| Failure::Runtime(format!("HTTP client: {e}")))?;
    let settings = Settings {
        targets: args.targets.clone(),
        staleness: args.staleness,
        kill_timeout: args.fetch_timeout,
        ..Settings::default()
    };
    let (status_tx, status_rx) = watch::channel(StatusView::default());
    let router = FileRouter::new(&args.config_file);
    let controller = Controller::start(spec, Arc::new(source), router, Arc::new(notifier), settings, status_tx)
        .await
        .map_err(|e| match e {
        StartError::Router(_) => Failure::Runtime(e.to_string()),
        StartError::Mismatch { .. } | StartError::NoTargets => Failure::Usage(e.to_string()),
    })?;

    let (command_tx, command_rx) = mpsc::channel(16);
    let state = ApiState { status: status_rx, commands: command_tx, token: args.token.as_deref().map(Arc::from) };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Runtime(format!("--listen {}: {e}", args.listen)))?;
    let bound = listener.local_addr().map_err(|e| Failure::Runtime(format!("--listen {}: {e}", args.listen)))?;
    if let Some(path) = &args.listen_address_file {
        std::fs::write(path, bound.to_string())
            .map_err(|e| Failure::Runtime(format!("--listen-address-file {}: {e}", path.display())))?;
    }
    tracing::info!(listen = %bound, targets = ?args.targets, config = %args.config_file.display(), "serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let server = axum::serve(listener, api::app(state)).with_graceful_shutdown(stopped(stop_rx.clone()));
    let server = tokio::spawn(async move { server.await });
    let control = tokio::spawn(controller.run(args.tick, command_rx, stopped(stop_rx)));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = control.await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Runtime(format!("API server: {e}"))),
        Err(e) => Err(Failure::Runtime(format!("API server task: {e}"))),
    }
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATE_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
