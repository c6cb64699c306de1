//! The `os-proxy` command line: parses arguments and runs the proxy until killed. `main.rs` is
//! one call to [`main`], so test harnesses can link the same program under another name.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Node side of an A/B OS rollout: cordon, drain, drive os-agent, report"
)]
struct Args {
    /// The node this proxy runs on (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Namespace of the node's OSInstance and of the OS resources (the operator's); OS
    /// resources elsewhere are never used.
    #[arg(long, env = "OS_NAMESPACE", default_value = "os-upgrade-system")]
    namespace: String,
    /// os-agent's socket (a hostPath mount in the DaemonSet).
    #[arg(
        long,
        env = "AGENT_SOCKET",
        default_value = "/run/os-agent/os-agent.sock"
    )]
    agent_socket: PathBuf,
    /// Longest a drain may take, in seconds, before the upgrade fails without a reboot.
    #[arg(long, default_value_t = 600)]
    drain_timeout: u64,
    /// Grace period for each evicted pod, in seconds; default: the pod's own.
    #[arg(long)]
    pod_grace_seconds: Option<u32>,
    /// How often the node, its OSInstance and the agent are looked at, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
}

/// Parses the arguments and runs the proxy until killed. Exit status 2: no usable Kubernetes
/// client configuration; 1: the async runtime could not start.
pub fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("os-proxy: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let mut config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "os-proxy: no Kubernetes client configuration (in-cluster or KUBECONFIG): {e}"
            );
            return ExitCode::from(2);
        }
    };
    // A PodDisruptionBudget answers evictions with 429; the drain retries those itself with
    // its own backoff and deadline, so the client must not hold them for minutes first.
    config.default_retry = false;
    let client = match kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("os-proxy: building the Kubernetes client: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = crate::Config {
        node_name: args.node_name,
        namespace: args.namespace,
        agent_socket: args.agent_socket,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        pod_grace_seconds: args.pod_grace_seconds,
        poll_interval: Duration::from_millis(args.poll_interval_ms),
    };
    crate::run(client, cfg).await;
    ExitCode::SUCCESS
}
