//! The `StarRocksSink` controller on kube-runtime: it fetches what [`decide`] needs,
//! applies what it decides (ConfigMap and status by server-side apply, Events through a
//! `Recorder`), and retries with per-object exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use super::inject::InjectSettings;
use super::load_rate::{
    check_rate, rates_by_namespace, RateCheck, SinkLoad, DEFAULT_MAX_TABLE_LOAD_RATE,
};
use super::reconcile::{attached_pods, decide, decide_unreadable, outdated_pods, EventSpec, Next};
use super::{kube_err, KubeCallError};
use crate::api::pod_contract::{requested_sinks, HASH_ANNOTATION, INJECT_LABEL};
use crate::api::resource::StoredSink;
use crate::api::StarRocksSink;
use crate::telemetry::Histogram;

/// The field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "starsink-controller";
/// The CRD the controller needs.
pub const CRD_NAME: &str = "starrockssinks.starsink.io";
/// Labels of the ConfigMaps the controller owns.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=starsink";

/// How often a settled sink is reconciled again anyway (see `reconcile_sink`).
const RECHECK: Duration = Duration::from_secs(300);

/// Backoff after a failed reconcile, or while a sink waits for its Secret.
const MIN_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("StarRocksSink {0} has no namespace")]
    NoNamespace(String),
    #[error(transparent)]
    Kube(#[from] KubeCallError),
}

/// Reconcile counters, served on `/metrics`.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    ok: AtomicU64,
    error: AtomicU64,
    duration: Histogram,
    /// 1 while this replica runs the controller (it holds the Lease, or runs without
    /// leader election).
    leading: AtomicU64,
    /// Loads/s each namespace's sinks put on each table, as of the last reconcile.
    table_rates: Mutex<BTreeMap<(String, String, String), f64>>,
}

impl ControllerMetrics {
    fn observe(&self, ok: bool, took: Duration) {
        if ok { &self.ok } else { &self.error }.fetch_add(1, Relaxed);
        self.duration.observe(took.as_secs_f64());
    }

    fn set_table_rates(&self, rates: BTreeMap<(String, String, String), f64>) {
        *self.table_rates.lock().unwrap_or_else(|p| p.into_inner()) = rates;
    }

    pub fn render(&self) -> String {
        let total = "starsink_controller_reconciles_total";
        let duration = "starsink_controller_reconcile_duration_seconds";
        let rate = "starsink_controller_table_load_rate";
        let leader = "starsink_controller_leader";
        let mut out = crate::telemetry::Exposition::default();
        out.family(
            leader,
            "gauge",
            "1 while this replica reconciles (it holds the Lease); the others stand by.",
        )
        .sample(leader, &[], self.leading.load(Relaxed))
        .family(total, "counter", "Reconciles of StarRocksSinks, by result.")
            .sample(total, &[("result", "ok")], self.ok.load(Relaxed))
            .sample(total, &[("result", "error")], self.error.load(Relaxed))
            .family(duration, "histogram", "Time one reconcile took.")
            .histogram(duration, &[], &self.duration)
            .family(
                rate,
                "gauge",
                "Loads/s the attached pods of a namespace's sinks put on a StarRocks table (sum by database and table for the table's total; StarRocks advises at most 0.2).",
            );
        let rates = self.table_rates.lock().unwrap_or_else(|p| p.into_inner());
        for ((ns, db, table), value) in rates.iter() {
            let labels = [
                ("namespace", ns.as_str()),
                ("database", db),
                ("table", table),
            ];
            out.sample(rate, &labels, value);
        }
        out.finish()
    }
}

/// What `/readyz` reports: ready while the webhook's sink cache is synced with the API
/// server (the webhook answers from it).
#[derive(Debug)]
pub struct Readiness {
    served: Arc<AtomicBool>,
}

impl Readiness {
    /// Not ready until the sink cache has synced.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            served: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The flag `/readyz` answers from.
    pub fn served(&self) -> Arc<AtomicBool> {
        self.served.clone()
    }

    pub fn cache_synced(&self, synced: bool) {
        self.served.store(synced, Relaxed);
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<ControllerMetrics>,
    /// Consecutive failures (or waits) per sink; cleared by a reconcile that settles.
    failures: Mutex<HashMap<ObjectRef<StoredSink>, u32>>,
    /// Every sink, as the running controller's reflector holds them (set when it starts):
    /// the other sinks on a sink's table count toward its load rate.
    sinks: Mutex<Option<Store<StoredSink>>>,
    /// The most loads/s a table may get before its sinks are `LoadRateOK=False`.
    max_table_load_rate: f64,
    /// What the webhook injects: attached pods whose loader differs are outdated.
    inject: InjectSettings,
}

impl Context {
    pub fn new(client: Client, reporter: Reporter, metrics: Arc<ControllerMetrics>) -> Arc<Self> {
        Self::with_max_table_load_rate(client, reporter, metrics, DEFAULT_MAX_TABLE_LOAD_RATE)
    }

    /// The same context, with `--max-table-load-rate` in place of StarRocks' 0.2.
    pub fn with_max_table_load_rate(
        client: Client,
        reporter: Reporter,
        metrics: Arc<ControllerMetrics>,
        rate: f64,
    ) -> Arc<Self> {
        Self::with_settings(client, reporter, metrics, rate, InjectSettings::default())
    }

    /// The same context, with the webhook's injection settings (its image, resources and
    /// Kubernetes version), against which attached pods are checked for being current.
    pub fn with_settings(
        client: Client,
        reporter: Reporter,
        metrics: Arc<ControllerMetrics>,
        rate: f64,
        inject: InjectSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            sinks: Mutex::new(None),
            max_table_load_rate: rate,
            inject,
        })
    }

    fn sink_store(&self) -> Option<Store<StoredSink>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The readable sinks of `sink`'s namespace, `sink` as it is now among them: what
    /// injection looks pods' sinks up in.
    fn namespace_sinks(&self, sink: &StarRocksSink) -> Vec<StarRocksSink> {
        let ns = sink.namespace();
        let mut sinks: Vec<StarRocksSink> = self
            .sink_store()
            .map(|store| store.state())
            .unwrap_or_default()
            .iter()
            .filter(|s| s.namespace() == ns && s.name_any() != sink.name_any())
            .filter_map(|s| s.decode().ok())
            .collect();
        sinks.push(sink.clone());
        sinks
    }

    /// The check of `stored`'s table load rate, `attached` pods being its own fresh
    /// count and the other sinks' their last reported `attachedPods`; also refreshes
    /// `starsink_controller_table_load_rate`.
    fn load_rate(&self, stored: &StoredSink, attached: i32) -> Option<RateCheck> {
        let own = SinkLoad::of(stored, attached)?;
        let mut all: Vec<SinkLoad> = self
            .sink_store()
            .map(|store| {
                store
                    .state()
                    .iter()
                    .filter(|s| ObjectRef::from_obj(s.as_ref()) != ObjectRef::from_obj(stored))
                    .filter_map(|s| SinkLoad::of(s, s.status().attached_pods))
                    .collect()
            })
            .unwrap_or_default();
        let check = check_rate(&own, &all, self.max_table_load_rate);
        all.push(own);
        self.metrics.set_table_rates(rates_by_namespace(&all));
        Some(check)
    }

    /// The next backoff for `sink`: doubling from 2s, capped at 5m.
    fn backoff(&self, sink: &StoredSink) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(ObjectRef::from_obj(sink)).or_insert(0);
        *n = n.saturating_add(1);
        backoff_after(*n)
    }

    fn settled(&self, sink: &StoredSink) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ObjectRef::from_obj(sink));
    }
}

/// The wait after `n` consecutive failures (n >= 1).
pub fn backoff_after(n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1).min(16));
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Reconciles one sink; see [`decide`] for what it decides. A sink whose spec cannot be
/// decoded is reported on itself ([`decide_unreadable`]); it never stops the others.
pub async fn reconcile(sink: Arc<StoredSink>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_sink(&sink, &ctx).await;
    ctx.metrics.observe(result.is_ok(), started.elapsed());
    result
}

async fn reconcile_sink(stored: &StoredSink, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = stored.name_any();
    let ns = stored
        .namespace()
        .ok_or_else(|| ReconcileError::NoNamespace(name.clone()))?;
    let client = &ctx.client;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{INJECT_LABEL}=true")))
        .await
        .map_err(kube_err(format!("listing pods in {ns}")))?
        .items;
    let decision = match stored.decode() {
        Ok(sink) => {
            let secret_name = &sink.spec.credentials_secret_ref.name;
            let secret = Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(secret_name)
                .await
                .map_err(kube_err(format!("reading Secret {ns}/{secret_name}")))?;
            let rate = ctx.load_rate(stored, attached_pods(&pods, &name));
            let here = ctx.namespace_sinks(&sink);
            let outdated = outdated_pods(&pods, &name, &here, &ctx.inject);
            let checks = (rate.as_ref(), outdated.as_slice());
            decide(&sink, secret.as_ref(), &pods, checks, Timestamp::now())
        }
        Err(e) => decide_unreadable(stored, &e, &pods, Timestamp::now()),
    };
    if let Some(cm) = &decision.config_map {
        apply_config_map(client, &ns, &name, cm).await?;
    }
    if let Some(status) = &decision.status {
        write_status(client, &ns, &name, status).await?;
    }
    for ev in decision.event.iter().chain(&decision.rate_event) {
        publish(ctx, stored, ev).await;
    }
    Ok(match decision.next {
        Next::AwaitChange => {
            ctx.settled(stored);
            // Looked at again now and then even without a change of its own: its
            // LoadRateOK depends on the other sinks of its table, whose changes reach it
            // through a second watch that may see them before the controller's store.
            Action::requeue(RECHECK)
        }
        Next::Backoff => Action::requeue(ctx.backoff(stored)),
    })
}

/// Applies the sink's ConfigMap, unless the one stored already says the same.
async fn apply_config_map(
    client: &kube::Client,
    ns: &str,
    sink: &str,
    cm: &ConfigMap,
) -> Result<(), ReconcileError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let cm_name = cm.name_any();
    let current = api
        .get_opt(&cm_name)
        .await
        .map_err(kube_err(format!("reading ConfigMap {ns}/{cm_name}")))?;
    if same_config(current.as_ref(), cm) {
        return Ok(());
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&cm_name, &params, &Patch::Apply(cm))
        .await
        .map_err(kube_err(format!("applying ConfigMap {ns}/{cm_name}")))?;
    tracing::info!(sink = %sink, namespace = %ns, configmap = %cm_name, "loader config applied");
    Ok(())
}

/// Writes the sink's status with server-side apply, under the controller's field manager.
async fn write_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: &crate::api::StarRocksSinkStatus,
) -> Result<(), ReconcileError> {
    let patch = serde_json::json!({
        "apiVersion": StoredSink::api_version(&()),
        "kind": StoredSink::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<StoredSink>::namespaced(client.clone(), ns)
        .patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .map_err(kube_err(format!("writing the status of {ns}/{name}")))?;
    Ok(())
}

/// Publishes an Event on the sink. An Event is a courtesy: failing to publish one never
/// fails the reconcile.
async fn publish(ctx: &Context, stored: &StoredSink, ev: &EventSpec) {
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.into(),
        note: Some(truncate(&ev.note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let (name, ns) = (stored.name_any(), stored.namespace().unwrap_or_default());
    if let Err(e) = ctx.recorder.publish(&event, &stored.object_ref(&())).await {
        tracing::warn!(sink = %name, namespace = %ns, error = %e, "could not publish an Event");
    }
    tracing::info!(sink = %name, namespace = %ns, reason = ev.reason, note = %ev.note, "Ready changed");
}

/// Retries a failed reconcile with the sink's own backoff.
pub fn error_policy(sink: Arc<StoredSink>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let wait = ctx.backoff(&sink);
    tracing::warn!(sink = %sink.name_any(), namespace = %sink.namespace().unwrap_or_default(), error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Whether the ConfigMap in the cluster already is what we would apply.
fn same_config(current: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    let Some(current) = current else {
        return false;
    };
    let hash = |cm: &ConfigMap| {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HASH_ANNOTATION))
            .cloned()
    };
    current.data == desired.data
        && hash(current) == hash(desired)
        && desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| current.owner_references().iter().any(|c| c.uid == o.uid))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The sinks whose credentials are in `secret` (read from the stored spec, so a sink
/// whose spec is otherwise unreadable still follows its Secret).
pub fn sinks_using_secret(
    sinks: &Store<StoredSink>,
    secret: &Secret,
) -> Vec<ObjectRef<StoredSink>> {
    let ns = secret.namespace();
    let name = secret.name_any();
    sinks
        .state()
        .iter()
        .filter(|s| {
            s.namespace() == ns && s.spec["credentialsSecretRef"]["name"].as_str() == Some(&name)
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The other sinks that write to `sink`'s table: a change of its pods changes their
/// table's load rate too.
pub fn sinks_on_the_same_table(
    sinks: &Store<StoredSink>,
    sink: &StoredSink,
) -> Vec<ObjectRef<StoredSink>> {
    let Some(table) = SinkLoad::of(sink, 0).map(|s| s.table) else {
        return Vec::new();
    };
    let me = ObjectRef::from_obj(sink);
    sinks
        .state()
        .iter()
        .filter(|s| SinkLoad::of(s, 0).is_some_and(|l| l.table == table))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .filter(|r| *r != me)
        .collect()
}

/// The sinks a pod asks for, in its namespace.
pub fn sinks_of_pod(pod: &Pod) -> Vec<ObjectRef<StoredSink>> {
    let Some(ns) = pod.namespace() else {
        return Vec::new();
    };
    requested_sinks(pod)
        .iter()
        .map(|s| ObjectRef::new(s).within(&ns))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the StarRocksSink CRD ({CRD_NAME}) is not installed; install it with:\n  kubectl apply --server-side -f crds/starrocks-sink.yaml\nor, from the binary:\n  starsink crd | kubectl apply --server-side -f -")]
    CrdMissing,
    #[error("cannot check for the StarRocksSink CRD ({CRD_NAME}): {0}; the controller needs `get` on customresourcedefinitions")]
    CrdCheck(kube::Error),
}

/// Fails with the install command when the CRD is missing.
pub async fn check_crd(client: &Client) -> Result<(), StartError> {
    match Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(CRD_NAME)
        .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StartError::CrdMissing),
        Err(e) => Err(StartError::CrdCheck(e)),
    }
}

/// Runs the controller until `until` resolves: watches sinks, the ConfigMaps it owns,
/// Secrets (mapped to the sinks that use them) and opted-in pods (for the pod counts).
pub async fn run_controller(
    ctx: Arc<Context>,
    until: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let metrics = ctx.metrics.clone();
    metrics.leading.store(1, Relaxed);
    let controller = Controller::new(
        Api::<StoredSink>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    *ctx.sinks.lock().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());
    let tables = store.clone();
    controller
        .owns(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().labels(MANAGED_BY),
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            move |secret| sinks_using_secret(&store, &secret),
        )
        .watches(
            Api::<StoredSink>::all(client.clone()),
            watcher::Config::default(),
            move |sink| sinks_on_the_same_table(&tables, &sink),
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&format!("{INJECT_LABEL}=true")),
            |pod| sinks_of_pod(&pod),
        )
        .graceful_shutdown_on(until)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match &result {
                // A failing watch is retried by the watcher; it is not a reason to take the
                // webhook out of its Service (readiness follows the webhook's own cache).
                Err(e @ kube::runtime::controller::Error::QueueError(_)) => {
                    tracing::warn!(error = %e, "a controller watch failed; retrying")
                }
                Err(e) => tracing::debug!(error = %e, "controller event"),
                Ok(_) => {}
            }
            futures::future::ready(())
        })
        .await;
    metrics.leading.store(0, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn long_event_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1000);
        assert!(t.len() <= 1000 + "…".len());
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short", 1000), "short");
    }
}
