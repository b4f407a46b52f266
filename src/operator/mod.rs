//! The operator: the `StarRocksSink` controller (`starsink controller`).

pub mod certs;
pub mod controller;
pub mod inject;
pub mod load_rate;
pub mod manifests;
pub mod reconcile;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::runtime::events::Reporter;
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::api::resource::StoredSink;

/// A Kubernetes API call that failed, and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct KubeCallError {
    pub action: String,
    #[source]
    pub source: kube::Error,
}

/// Turns a failed API call into an error that says what it was for (`?` then makes it
/// the caller's error).
pub fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeCallError {
    let action = action.into();
    move |source| KubeCallError { action, source }
}
use controller::{check_crd, run_controller, Context, ControllerMetrics, Readiness, StartError};

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
    /// Where the admission webhook listens (HTTPS, POST /mutate). Every replica serves it.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// The Service in front of the webhook (its DNS names go into the certificate).
    #[arg(long, default_value = "starsink-webhook")]
    pub webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the controller keeps current.
    #[arg(long, default_value = "starsink")]
    pub webhook_config: String,
    /// The Secret (in $POD_NAMESPACE) holding the webhook's CA and certificate.
    #[arg(long, default_value = "starsink-webhook-tls")]
    pub tls_secret: String,
    /// Serve tls.crt/tls.key from this directory (cert-manager) instead of managing a CA.
    #[arg(long)]
    pub cert_dir: Option<std::path::PathBuf>,
    /// The loader image injected into pods.
    #[arg(long, env = "STARSINK_LOADER_IMAGE")]
    pub loader_image: Option<String>,
    /// The injected loader's default resources, as JSON (a Kubernetes
    /// ResourceRequirements), for sinks that set no `sidecar.resources`.
    #[arg(long, env = "STARSINK_LOADER_RESOURCES", value_parser = parse_resources)]
    pub loader_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// The controller's own Deployment (in $POD_NAMESPACE). The webhook's TLS Secret and
    /// the Lease, which the controller creates, are owned by it, so they are removed with
    /// it (`helm uninstall`). Unset: they are left behind.
    #[arg(long, env = "STARSINK_OWNER_DEPLOYMENT")]
    pub owner_deployment: Option<String>,
    /// The most loads per second a StarRocks table may get from the pods of the sinks
    /// that write to it before those sinks report `LoadRateOK=False` (StarRocks advises
    /// at least 5s between loads to a table: 0.2).
    #[arg(long, default_value_t = load_rate::DEFAULT_MAX_TABLE_LOAD_RATE, value_parser = positive_rate)]
    pub max_table_load_rate: f64,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "`{s}` is not a load rate; write loads per second above zero, e.g. 0.2"
        )),
    }
}

fn parse_resources(s: &str) -> Result<k8s_openapi::api::core::v1::ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| {
        format!("not a ResourceRequirements in JSON ({e}); e.g. {{\"requests\":{{\"cpu\":\"50m\",\"memory\":\"64Mi\"}},\"limits\":{{\"memory\":\"256Mi\"}}}}")
    })
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
    #[error("the controller needs its own namespace (for the Lease and the webhook's TLS Secret): set POD_NAMESPACE (the chart does) or --lease-namespace")]
    NoLeaseNamespace,
    #[error("leader election: {0}")]
    Lease(String),
    #[error("webhook: {0}")]
    Webhook(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// How long the controller may take to stop after SIGTERM or SIGINT, whatever it is
/// doing (waiting for the API server, a reconcile, the Lease): well inside the default
/// 30s grace period, so it is never killed.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// After a failed sink watch, how long without another failure before the cache counts as
/// synced again even if no event came (longer than the watcher's longest retry wait).
const WATCH_QUIET: Duration = Duration::from_secs(40);

/// Runs the controller until SIGTERM or SIGINT, then stops within [`STOP_BOUND`].
pub async fn run(args: ControllerArgs) -> Result<(), OperatorError> {
    let stop = CancellationToken::new();
    watch_signals(stop.clone()).map_err(OperatorError::Signals)?;
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = serve(args, stop.clone(), started.clone());
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => return result,
        _ = stop.cancelled() => {}
    }
    // Before start-up is over there is no Lease held and nothing to hand over: stop now.
    if !started.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("stopped during start-up");
        return Ok(());
    }
    match tokio::time::timeout(STOP_BOUND, work).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(bound = ?STOP_BOUND, "not stopped in time after the signal; exiting anyway");
            Ok(())
        }
    }
}

/// Everything the controller does, until `stop`; `started` is set once start-up is over.
async fn serve(
    args: ControllerArgs,
    stop: CancellationToken,
    started: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), OperatorError> {
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    check_crd(&client).await?;

    let metrics = Arc::new(ControllerMetrics::default());
    let webhook_metrics = Arc::new(webhook::WebhookMetrics::default());
    let readiness = Readiness::new();
    let listener = crate::telemetry::bind(args.metrics_addr, "--metrics-addr")
        .await
        .map_err(OperatorError::Metrics)?;
    let resolver = Arc::new(webhook::CertResolver::default());
    let exposed = (metrics.clone(), webhook_metrics.clone(), resolver.clone());
    tokio::spawn(crate::telemetry::serve(
        listener,
        Arc::new(move || exposed.0.render() + &exposed.1.render() + &exposed.2.render()),
        readiness.served(),
        stop.clone(),
    ));
    let owner = owner_reference(&client, &args).await;
    let settings = start_webhook(
        &client,
        &args,
        owner.clone(),
        (webhook_metrics, resolver),
        readiness.clone(),
        stop.clone(),
    )
    .await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(crate::loader::hostname);
    let ctx = Context::with_settings(
        client.clone(),
        Reporter {
            controller: "starsink-controller".into(),
            instance: Some(identity.clone()),
        },
        metrics,
        args.max_table_load_rate,
        settings,
    );
    started.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(identity = %identity, "controller started");

    if args.no_leader_election {
        run_controller(ctx, async move { stop.cancelled().await }).await;
        return Ok(());
    }
    lead(&client, &args, ctx, identity, owner, stop).await
}

/// Runs the controller while this replica holds the Lease, standing by while another
/// does, until `stop`; then gives the Lease up so another replica takes over at once.
async fn lead(
    client: &Client,
    args: &ControllerArgs,
    ctx: Arc<Context>,
    identity: String,
    owner: Option<OwnerReference>,
    stop: CancellationToken,
) -> Result<(), OperatorError> {
    let namespace = args
        .lease_namespace
        .clone()
        .ok_or(OperatorError::NoLeaseNamespace)?;
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(namespace.clone())
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| OperatorError::Lease(e.to_string()))?;
    if let Some(owner) = &owner {
        own_lease(client, &namespace, owner).await;
    }
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

/// Starts the admission webhook on this replica: its own sink cache (a reflector, so no
/// API call per review), the cluster version, TLS (managed or from `--cert-dir`), and
/// the HTTPS server, all stopped by `stop`. Returns its injection settings.
async fn start_webhook(
    client: &Client,
    args: &ControllerArgs,
    owner: Option<OwnerReference>,
    (metrics, resolver): (Arc<webhook::WebhookMetrics>, Arc<webhook::CertResolver>),
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> Result<inject::InjectSettings, OperatorError> {
    let sinks = watch_sinks(client, readiness, stop.clone());
    let settings = inject_settings(client, args).await?;
    start_tls(client, args, owner, resolver.clone(), &stop).await?;
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|e| {
            OperatorError::Webhook(format!(
                "--webhook-addr {}: cannot listen ({e}); pick a free address",
                args.webhook_addr
            ))
        })?;
    let hook = Arc::new(webhook::Webhook {
        sinks: Arc::new(sinks),
        settings: settings.clone(),
        metrics,
    });
    tokio::spawn(webhook::serve(
        listener,
        webhook::tls_config(resolver),
        hook,
        stop,
    ));
    Ok(settings)
}

/// The webhook's sink cache, kept by a reflector until `stop`. `readiness` follows the
/// cache's sync: set when a list completes, cleared when the watch fails, so a replica
/// whose cache is stale is taken out of the Service instead of answering from it.
fn watch_sinks(
    client: &Client,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> kube::runtime::reflector::Store<StoredSink> {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};

    let (store, writer) = reflector::store();
    let sinks = reflector::reflector(
        writer,
        watcher(
            kube::Api::<StoredSink>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    tokio::spawn(async move {
        // A failed watch is resumed from where it was, without a new list (only a 410
        // re-lists), so no InitDone follows: the cache counts as synced again on the next
        // event, or once WATCH_QUIET passes without another error (the watcher's backoff
        // retries well within it).
        tokio::pin!(sinks);
        let mut listed = false;
        let mut failed_at: Option<tokio::time::Instant> = None;
        loop {
            let quiet = failed_at.map(|t| t + WATCH_QUIET);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(quiet.unwrap_or_else(tokio::time::Instant::now)), if quiet.is_some() => {
                    failed_at = None;
                    readiness.cache_synced(listed);
                }
                event = sinks.next() => match event {
                    None => return,
                    Some(Ok(e)) => {
                        listed |= matches!(e, watcher::Event::InitDone);
                        if listed && (failed_at.take().is_some() || matches!(e, watcher::Event::InitDone)) {
                            readiness.cache_synced(true);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "sink watch failed; not ready until it works again");
                        failed_at = Some(tokio::time::Instant::now());
                        readiness.cache_synced(false);
                    }
                },
            }
        }
    });
    store
}

/// The injector's settings: the cluster's version (native sidecars from 1.29), and the
/// loader image and resources the flags give.
async fn inject_settings(
    client: &Client,
    args: &ControllerArgs,
) -> Result<inject::InjectSettings, OperatorError> {
    let version = client
        .apiserver_version()
        .await
        .map_err(OperatorError::Client)?;
    let kube_version =
        manifests::parse_kube_version(&format!("{}.{}", version.major, version.minor))
            .map_err(OperatorError::Webhook)?;
    let mut settings = inject::InjectSettings {
        kube_version,
        ..inject::InjectSettings::default()
    };
    if let Some(image) = &args.loader_image {
        settings.image = image.clone();
    }
    if let Some(resources) = &args.loader_resources {
        settings.resources = Some(resources.clone());
    }
    tracing::info!(kubernetes = %format!("{}.{}", kube_version.0, kube_version.1), native_sidecars = kube_version >= (1, 29), "webhook settings");
    Ok(settings)
}

/// The webhook's certificate: read from `--cert-dir` (and watched), or managed in a
/// Secret and renewed before it expires; `resolver` serves it. A managed one is in place
/// when this returns.
async fn start_tls(
    client: &Client,
    args: &ControllerArgs,
    owner: Option<OwnerReference>,
    resolver: Arc<webhook::CertResolver>,
    stop: &CancellationToken,
) -> Result<(), OperatorError> {
    if let Some(dir) = &args.cert_dir {
        let every = std::time::Duration::from_secs(10);
        tokio::spawn(tls::watch_dir(
            dir.clone(),
            resolver.clone(),
            every,
            stop.clone(),
        ));
        return Ok(());
    }
    let namespace = args
        .lease_namespace
        .clone()
        .ok_or(OperatorError::NoLeaseNamespace)?;
    let opts = tls::TlsOptions {
        namespace,
        secret: args.tls_secret.clone(),
        webhook_config: args.webhook_config.clone(),
        service: args.webhook_service.clone(),
        validity: certs::Validity::default(),
        owner,
    };
    tls::ensure(client, &opts, &resolver)
        .await
        .map_err(|e| OperatorError::Webhook(e.to_string()))?;
    tokio::spawn(tls::run(client.clone(), opts, resolver, stop.clone()));
    Ok(())
}

/// An owner reference to the controller's Deployment, when `--owner-deployment` names
/// one that can be read. Without it the controller still works; what it creates is only
/// left behind at uninstall, which is logged.
async fn owner_reference(client: &Client, args: &ControllerArgs) -> Option<OwnerReference> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Resource;
    let name = args.owner_deployment.as_ref()?;
    let namespace = args.lease_namespace.as_ref()?;
    match kube::Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(d) => d.controller_owner_ref(&()).map(|mut o| {
            // Owned, not controlled: the Deployment controller must not adopt them.
            o.controller = None;
            o
        }),
        Err(e) => {
            tracing::warn!(deployment = %name, namespace = %namespace, error = %e, "cannot read the controller's Deployment; the TLS Secret and the Lease will not be removed with it");
            None
        }
    }
}

/// Puts `owner` on the Lease, so it is deleted with the controller's Deployment.
async fn own_lease(client: &Client, namespace: &str, owner: &OwnerReference) {
    use k8s_openapi::api::coordination::v1::Lease;
    let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
    let params = kube::api::PatchParams {
        field_manager: Some(controller::FIELD_MANAGER.into()),
        ..kube::api::PatchParams::default()
    };
    if let Err(e) = kube::Api::<Lease>::namespaced(client.clone(), namespace)
        .patch(LEASE_NAME, &params, &kube::api::Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, "cannot set the Lease's owner; it will be left behind at uninstall");
    }
}

fn watch_signals(stop: CancellationToken) -> std::io::Result<()> {
    let mut signals = crate::signals::Terminations::install("send SIGTERM to stop")?;
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(signal = name, "signal received; stopping");
        stop.cancel();
    });
    Ok(())
}
