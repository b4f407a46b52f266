//! The operator: the `StarRocksSink` controller (`starsink controller`).

pub mod certs;
pub mod controller;
pub mod inject;
pub mod manifests;
pub mod reconcile;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use kube::runtime::events::Reporter;
use kube::Client;
use tokio_util::sync::CancellationToken;

use controller::{check_crd, run_controller, Context, ControllerMetrics, StartError};

/// `starsink controller` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: $POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Reconcile without a Lease (only for a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
}

/// The Lease the replicas compete for.
pub const LEASE_NAME: &str = "starsink-controller";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API ({0}); run in a pod with a service account, or set KUBECONFIG")]
    Client(kube::Error),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Metrics(String),
    #[error("leader election needs the Lease's namespace: set POD_NAMESPACE (the chart does) or --lease-namespace, or pass --no-leader-election for a single replica")]
    NoLeaseNamespace,
    #[error("leader election: {0}")]
    Lease(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(args: ControllerArgs) -> Result<(), OperatorError> {
    let stop = CancellationToken::new();
    watch_signals(stop.clone()).map_err(OperatorError::Signals)?;
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    check_crd(&client).await?;

    let metrics = Arc::new(ControllerMetrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = crate::telemetry::bind(args.metrics_addr, "--metrics-addr")
        .await
        .map_err(OperatorError::Metrics)?;
    let render = metrics.clone();
    tokio::spawn(crate::telemetry::serve(
        listener,
        Arc::new(move || render.render()),
        ready.clone(),
        stop.clone(),
    ));
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(crate::loader::hostname);
    let ctx = Context::new(
        client.clone(),
        Reporter {
            controller: "starsink-controller".into(),
            instance: Some(identity.clone()),
        },
        metrics,
    );
    ready.store(true, Relaxed);
    tracing::info!(identity = %identity, "controller started");

    if args.no_leader_election {
        let stop = stop.clone();
        run_controller(ctx, async move { stop.cancelled().await }).await;
        return Ok(());
    }
    let namespace = args
        .lease_namespace
        .clone()
        .ok_or(OperatorError::NoLeaseNamespace)?;
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| OperatorError::Lease(e.to_string()))?;
    let (mut leader, task) = lease.watch().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = leader.wait_for(|is| *is) => if r.is_err() { break },
        }
        tracing::info!("leading: reconciling");
        let (mut lost, stopping) = (leader.clone(), stop.clone());
        run_controller(ctx.clone(), async move {
            tokio::select! {
                _ = lost.wait_for(|is| !*is) => {}
                _ = stopping.cancelled() => {}
            }
        })
        .await;
        if stop.is_cancelled() {
            break;
        }
        tracing::warn!("lost the lease; standing by");
    }
    // Dropping the receiver releases the Lease, so another replica takes over at once.
    drop(leader);
    let _ = task.await;
    Ok(())
}

fn watch_signals(stop: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; stopping");
        stop.cancel();
    });
    Ok(())
}
