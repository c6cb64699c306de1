//! The `os-operator` command line: parses arguments and calls into the library. `main.rs` is
//! one call to [`main`], so test harnesses can link the same program under another name.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The cluster side of the A/B OS rollout: reads OS resources, starts nodes through their
/// OSInstances a few at a time, and stops when nodes fail.
#[derive(Parser)]
#[command(name = "os-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the OS and OSInstance CustomResourceDefinitions as YAML (deploy/crds.yaml).
    Crds,
    /// Run the controller. Connects with the in-cluster service account, or $KUBECONFIG /
    /// ~/.kube/config outside a cluster. Log level from RUST_LOG (default info).
    Controller(ControllerArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// The one namespace of the OS and OSInstance resources. Every proxy takes its OS from
    /// there too, so an OS anywhere else upgrades nothing.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "os-upgrade-system")]
    namespace: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "os-upgrade-system")]
    lease_namespace: String,
    #[arg(long, default_value = "os-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader's Lease stays valid without renewal; a standby replica takes over
    /// after this long when the leader dies.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between renewals of a held Lease.
    #[arg(long, default_value_t = 5)]
    renew_every: u64,
    /// Seconds between attempts of a standby replica to take the Lease.
    #[arg(long, default_value_t = 2)]
    retry_every: u64,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Seconds between full passes when nothing changes.
    #[arg(long, default_value_t = 60)]
    resync: u64,
    /// Milliseconds to gather changes into one pass.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => print_crds(),
        Command::Controller(args) => controller(args),
    }
}

fn print_crds() -> ExitCode {
    let yaml = match crate::crd::crds_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("os-operator: cannot render the CRDs as YAML: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(yaml.as_bytes()) {
        eprintln!("os-operator: cannot write the CRDs to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "os-operator".into());
    format!("{host}-{}", std::process::id())
}

fn controller(args: ControllerArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = crate::controller::Config {
        namespace: Some(args.namespace),
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity: args.identity.unwrap_or_else(default_identity),
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_every: Duration::from_secs(args.renew_every),
        retry_every: Duration::from_secs(args.retry_every),
        listen: args.listen,
        resync: Duration::from_secs(args.resync),
        debounce: Duration::from_millis(args.debounce_ms),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("os-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "os-operator: cannot configure the Kubernetes client (no in-cluster service \
                     account and no usable kubeconfig): {e}"
                );
                return ExitCode::FAILURE;
            }
        };
        match crate::controller::run(client, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "os-operator stopped");
                ExitCode::FAILURE
            }
        }
    })
}
