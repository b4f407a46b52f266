//! Reconcile decisions as a pure function: a sink, its Secret and the pods that use it
//! in; the ConfigMap the loader should read, the status to report and the event to
//! publish out. The controller only fetches the inputs and applies the outputs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::load_rate::RateCheck;
use crate::api::resource::{SpecError, StoredSink};
use crate::api::{StarRocksSink, StarRocksSinkStatus};

use crate::api::pod_contract::{
    config_map_name, content_hash, requested_sinks, CONFIG_KEY, HASH_ANNOTATION, SINK_LABEL,
};

/// Why a sink is (not) ready; the `reason` of its `Ready` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Ready,
    InvalidSpec,
    SecretNotFound,
    SecretKeyMissing,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyMissing => "SecretKeyMissing",
        }
    }
}

/// The condition that says whether the sink's table is loaded no more often than
/// StarRocks advises, counting every sink that writes to it.
pub const LOAD_RATE_OK: &str = "LoadRateOK";
/// Its reasons.
pub const RATE_WITHIN_ADVICE: &str = "WithinAdvice";
pub const RATE_TOO_FREQUENT: &str = "TooFrequent";

/// What to do after this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing to wait for: a watched change will bring the sink back.
    AwaitChange,
    /// Try again with the per-object backoff (the Secret may appear).
    Backoff,
}

/// A Kubernetes Event to publish about the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The outcome of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The ConfigMap the loader should read; `None` leaves the last good one in place,
    /// so running loaders keep working while the sink is broken.
    pub config_map: Option<ConfigMap>,
    /// The status to write; `None` when it would not change (no write, no loop on the
    /// controller's own updates).
    pub status: Option<StarRocksSinkStatus>,
    /// Published only when the Ready condition's status or reason changes.
    pub event: Option<EventSpec>,
    /// Published when the LoadRateOK condition turns False (a Warning) or True again.
    pub rate_event: Option<EventSpec>,
    pub next: Next,
}

/// Decides what a sink needs. `pods` are the pods of the sink's namespace; those that
/// opted in, list this sink and run count as attached. `rate` is the check of its
/// table's load rate ([`super::load_rate::check_rate`]), reported as `LoadRateOK`;
/// `outdated` the attached pods whose loader injection would attach otherwise now
/// ([`outdated_pods`]), reported as `outdatedPods` and `PodsUpToDate`.
pub fn decide(
    sink: &StarRocksSink,
    secret: Option<&Secret>,
    pods: &[Pod],
    (rate, outdated): (Option<&RateCheck>, &[&Pod]),
    now: Timestamp,
) -> Decision {
    let name = sink.name_any();
    let checked = check(sink, secret).map(|user| config_map(sink, &name, &user));
    let old = sink.status.clone().unwrap_or_default();
    let mut decision = conclude(
        sink.meta().generation,
        old.clone(),
        attached_pods(pods, &name),
        checked,
        now,
    );
    let generation = sink.meta().generation;
    let mut status = decision.status.take().unwrap_or_else(|| old.clone());
    if let Some(rate) = rate {
        let (with_rate, event) = with_load_rate(status, rate, generation, now);
        status = with_rate;
        decision.rate_event = event;
    }
    let namespace = sink.namespace().unwrap_or_default();
    let status = with_outdated(status, outdated, &namespace, generation, now);
    decision.status = (status != old).then_some(status);
    decision
}

/// The condition type that says whether every attached pod runs the loader injection
/// would attach now.
pub const PODS_UP_TO_DATE: &str = "PodsUpToDate";

/// Attached pods (see [`attached_pods`]) whose loader injection would attach otherwise
/// now ([`super::inject::outdated`]); `sinks` are the sinks of their namespace.
pub fn outdated_pods<'a>(
    pods: &'a [Pod],
    sink: &str,
    sinks: &[StarRocksSink],
    settings: &super::inject::InjectSettings,
) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| requested_sinks(p).iter().any(|s| s == sink))
        .filter(|p| super::inject::outdated(p, sinks, settings))
        .collect()
}

/// The status with `outdatedPods` and the `PodsUpToDate` condition from `outdated`,
/// whose message names their workloads and how to restart them.
fn with_outdated(
    mut status: StarRocksSinkStatus,
    outdated: &[&Pod],
    namespace: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> StarRocksSinkStatus {
    status.outdated_pods = i32::try_from(outdated.len()).unwrap_or(i32::MAX);
    let (flag, reason, message) = if outdated.is_empty() {
        (
            "True",
            "UpToDate",
            "every attached pod runs the loader injection attaches now".to_owned(),
        )
    } else {
        ("False", "Outdated", outdated_message(outdated, namespace))
    };
    set_condition(
        &mut status,
        PODS_UP_TO_DATE,
        (flag, reason, message),
        generation,
        now,
    );
    status
}

/// Sets condition `type_` to `(status, reason, message)`; its transition time moves only
/// when its status does.
fn set_condition(
    status: &mut StarRocksSinkStatus,
    type_: &str,
    (flag, reason, message): (&str, &str, String),
    generation: Option<i64>,
    now: Timestamp,
) {
    let old = status.conditions.iter().find(|c| c.type_ == type_);
    let condition = Condition {
        type_: type_.into(),
        status: flag.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: match old {
            Some(c) if c.status == flag => c.last_transition_time.clone(),
            _ => Time(now),
        },
    };
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(condition);
}

/// Which pods are behind, by workload, and the command that restarts each.
fn outdated_message(outdated: &[&Pod], namespace: &str) -> String {
    let mut by_workload: BTreeMap<String, usize> = BTreeMap::new();
    for pod in outdated {
        *by_workload.entry(workload(pod)).or_default() += 1;
    }
    let listed: Vec<String> = by_workload
        .iter()
        .map(|(w, n)| format!("{w} ({n})"))
        .collect();
    let restartable = |w: &str| {
        matches!(
            w.split_once('/'),
            Some(("deployment" | "statefulset" | "daemonset", _))
        )
    };
    let mut fixes: Vec<String> = by_workload
        .keys()
        .filter(|w| restartable(w))
        .map(|w| format!("kubectl rollout restart {w} -n {namespace}"))
        .collect();
    // Anything else is replaced pod by pod (deleting a Job would end the job).
    let pods: Vec<String> = outdated
        .iter()
        .filter(|p| !restartable(&workload(p)))
        .map(|p| p.name_any())
        .collect();
    if !pods.is_empty() {
        fixes.push(format!(
            "kubectl delete pod {} -n {namespace} (a Job or ReplicaSet makes new ones; a bare pod must be created again)",
            pods.join(" ")
        ));
    }
    format!(
        "{} pod(s) run a loader injected before the sink's sidecar, spool or grace settings, or the injector's image or resources, changed: {}; starsink restarts no pod by itself: {}",
        outdated.len(),
        listed.join(", "),
        fixes.join("; ")
    )
}

/// The workload that owns a pod, as `kind/name`: a Deployment through its ReplicaSet
/// (whose name is the Deployment's and the pod's `pod-template-hash`), else the
/// controlling owner, else the pod itself.
fn workload(pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = pod.labels().get("pod-template-hash");
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => format!("deployment/{deployment}"),
                None => format!("replicaset/{}", o.name),
            }
        }
        Some(o) => format!("{}/{}", o.kind.to_ascii_lowercase(), o.name),
        None => format!("pod/{}", pod.name_any()),
    }
}

/// The status with its `LoadRateOK` condition set from `rate`, and the Event to publish
/// when that condition flips (or first appears False).
fn with_load_rate(
    mut status: StarRocksSinkStatus,
    rate: &RateCheck,
    generation: Option<i64>,
    now: Timestamp,
) -> (StarRocksSinkStatus, Option<EventSpec>) {
    let old = status.conditions.iter().find(|c| c.type_ == LOAD_RATE_OK);
    let (reason, flag) = if rate.ok {
        (RATE_WITHIN_ADVICE, "True")
    } else {
        (RATE_TOO_FREQUENT, "False")
    };
    let flipped = match old {
        Some(c) => c.status != flag,
        None => !rate.ok,
    };
    let said = (flag, reason, rate.message.clone());
    set_condition(&mut status, LOAD_RATE_OK, said, generation, now);
    let event = flipped.then(|| EventSpec {
        warning: !rate.ok,
        reason,
        note: rate.message.clone(),
    });
    (status, event)
}

/// Decides for a stored sink whose spec cannot be decoded: not Ready, reason
/// `InvalidSpec`, naming the field; its last good ConfigMap stays.
pub fn decide_unreadable(
    stored: &StoredSink,
    error: &SpecError,
    pods: &[Pod],
    now: Timestamp,
) -> Decision {
    let name = stored.name_any();
    let message = format!(
        "{error}; the loader cannot read this value: fix {} (kubectl -n {} edit srs {name})",
        error.field,
        stored.namespace().unwrap_or_default()
    );
    conclude(
        stored.metadata.generation,
        stored.status(),
        attached_pods(pods, &name),
        Err((Reason::InvalidSpec, message)),
        now,
    )
}

/// The status, event and next step, given the outcome of the checks: the ConfigMap to
/// apply, or why the sink is not ready.
fn conclude(
    generation: Option<i64>,
    old: StarRocksSinkStatus,
    attached: i32,
    checked: Result<ConfigMap, (Reason, String)>,
    now: Timestamp,
) -> Decision {
    let (reason, message, config_map, next) = match checked {
        Ok(cm) => (
            Reason::Ready,
            format!(
                "loader config is in ConfigMap {} (hash {})",
                cm.name_any(),
                hash_of(&cm).unwrap_or_default()
            ),
            Some(cm),
            Next::AwaitChange,
        ),
        Err((reason, message)) => {
            let next = match reason {
                Reason::InvalidSpec => Next::AwaitChange,
                _ => Next::Backoff,
            };
            (reason, message, None, next)
        }
    };

    let old_ready = old.conditions.iter().find(|c| c.type_ == "Ready");
    let ready = ready_condition(old_ready, reason, &message, generation, now);
    let flipped = old_ready.is_none_or(|c| c.status != ready.status);
    let mut conditions: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .cloned()
        .collect();
    conditions.push(ready);
    let config_hash = match &config_map {
        Some(cm) => hash_of(cm),
        None => old.config_hash.clone(),
    };
    let status = StarRocksSinkStatus {
        observed_generation: generation,
        conditions,
        attached_pods: attached,
        outdated_pods: old.outdated_pods,
        config_hash,
    };
    let event =
        (flipped || old_ready.is_some_and(|c| c.reason != reason.as_str())).then(|| EventSpec {
            warning: reason != Reason::Ready,
            reason: reason.as_str(),
            note: message,
        });
    Decision {
        config_map,
        status: (status != old).then_some(status),
        event,
        rate_event: None,
        next,
    }
}

/// The content hash a ConfigMap carries.
fn hash_of(cm: &ConfigMap) -> Option<String> {
    cm.metadata
        .annotations
        .as_ref()?
        .get(HASH_ANNOTATION)
        .cloned()
}

/// The Ready condition for `reason`; its transition time moves only when its status flips.
fn ready_condition(
    old: Option<&Condition>,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if reason == Reason::Ready {
        "True"
    } else {
        "False"
    };
    let last_transition_time = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.as_str().into(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The spec is valid and the Secret holds both keys: the user name. Otherwise the
/// reason and a message naming the field or key and the fix.
fn check(sink: &StarRocksSink, secret: Option<&Secret>) -> Result<String, (Reason, String)> {
    let name = sink.name_any();
    let problems = sink.spec.problems(&name);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err((Reason::InvalidSpec, list.join("; ")));
    }
    let r = &sink.spec.credentials_secret_ref;
    let ns = sink.namespace().unwrap_or_default();
    let Some(secret) = secret else {
        return Err((
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{} (spec.credentialsSecretRef.name) does not exist; create it: kubectl -n {ns} create secret generic {} --from-literal={}=USER --from-literal={}=PASSWORD",
                r.name, r.name, r.user_key, r.password_key
            ),
        ));
    };
    let value = |key: &str| -> Option<Vec<u8>> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return Some(v.0.clone());
        }
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.clone().into_bytes())
    };
    let missing = |key: &str, field: &str| {
        (
            Reason::SecretKeyMissing,
            format!(
                "Secret {ns}/{} has no key `{key}` (spec.credentialsSecretRef.{field}); add it or point {field} at the key that holds it",
                r.name
            ),
        )
    };
    let user = value(&r.user_key).ok_or_else(|| missing(&r.user_key, "userKey"))?;
    value(&r.password_key).ok_or_else(|| missing(&r.password_key, "passwordKey"))?;
    let user = String::from_utf8(user).map_err(|_| {
        (
            Reason::SecretKeyMissing,
            format!(
                "Secret {ns}/{} key `{}` is not UTF-8 text; store the user name as text",
                r.name, r.user_key
            ),
        )
    })?;
    let user = user.trim().to_owned();
    if user.is_empty() || user.contains(':') {
        return Err((
            Reason::SecretKeyMissing,
            format!(
                "Secret {ns}/{} key `{}` holds no usable user name (empty, or contains ':')",
                r.name, r.user_key
            ),
        ));
    }
    Ok(user)
}

/// The sink's loader settings as a ConfigMap owned by the sink (garbage-collected with
/// it), with a hash of its content.
fn config_map(sink: &StarRocksSink, name: &str, user: &str) -> ConfigMap {
    let spec = sink.spec.to_sink_spec(name, user);
    let yaml = serde_yaml::to_string(&spec)
        .unwrap_or_else(|e| unreachable!("a SinkSpec always serialises: {e}"));
    let hash = content_hash(yaml.as_bytes());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(name)),
            namespace: sink.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), "starsink".into()),
                (SINK_LABEL.into(), name.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(HASH_ANNOTATION.into(), hash)])),
            owner_references: sink.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CONFIG_KEY.into(), yaml)])),
        ..ConfigMap::default()
    }
}

/// Running pods that opted in and list `sink`.
pub fn attached_pods(pods: &[Pod], sink: &str) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| requested_sinks(p).iter().any(|s| s == sink))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pod_contract::{INJECT_LABEL, SINKS_ANNOTATION};
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn sink(generation: i64, table: &str) -> StarRocksSink {
        serde_json::from_value(json!({
            "apiVersion": "starsink.io/v1alpha1",
            "kind": "StarRocksSink",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u-1", "generation": generation},
            "spec": {
                "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "shop", "table": table},
                "credentialsSecretRef": {"name": "sr"},
            },
        }))
        .unwrap()
    }

    fn secret(keys: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("sr".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            data: Some(
                keys.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn good_secret() -> Secret {
        secret(&[("username", "loader"), ("password", "pw")])
    }

    fn pod(name: &str, sinks: &str, phase: &str, opted_in: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "shop",
                "labels": if opted_in { json!({INJECT_LABEL: "true"}) } else { json!({}) },
                "annotations": {SINKS_ANNOTATION: sinks},
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A pod owned by `kind/owner` (controller), with `pod-template-hash` when given.
    fn owned(name: &str, kind: &str, owner: &str, hash: Option<&str>) -> Pod {
        let mut p = pod(name, "orders", "Running", true);
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: owner.into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        if let Some(h) = hash {
            p.labels_mut().insert("pod-template-hash".into(), h.into());
        }
        p
    }

    #[test]
    fn outdated_pods_are_counted_by_workload_with_the_command_that_restarts_each() {
        let pods = [
            owned("api-1", "ReplicaSet", "orders-api-5d8f7", Some("5d8f7")),
            owned("api-2", "ReplicaSet", "orders-api-5d8f7", Some("5d8f7")),
            owned("ledger-0", "StatefulSet", "ledger", None),
            owned("import-x", "Job", "import", None),
            pod("bare", "orders", "Running", true),
        ];
        let outdated: Vec<&Pod> = pods.iter().collect();
        let status = with_outdated(
            StarRocksSinkStatus::default(),
            &outdated,
            "shop",
            Some(3),
            t(0),
        );
        assert_eq!(status.outdated_pods, 5);
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            (PODS_UP_TO_DATE, "False", "Outdated")
        );
        for part in [
            "5 pod(s)",
            "deployment/orders-api (2)",
            "statefulset/ledger (1)",
            "kubectl rollout restart deployment/orders-api -n shop",
            "kubectl rollout restart statefulset/ledger -n shop",
            "kubectl delete pod import-x bare -n shop",
        ] {
            assert!(c.message.contains(part), "{part} in {}", c.message);
        }
        // Replaced: back to 0 and True, with a new transition time.
        let status = with_outdated(status, &[], "shop", Some(3), t(60));
        assert_eq!(status.outdated_pods, 0);
        let c = &status.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "UpToDate"));
        assert_eq!(c.last_transition_time, Time(t(60)));
        assert_eq!(status.conditions.len(), 1);
    }

    /// Runs `decide` and stores the status it wrote, as the API server would.
    fn step(s: &mut StarRocksSink, secret: Option<&Secret>, pods: &[Pod], now: i64) -> Decision {
        let d = decide(s, secret, pods, (None, &[]), t(now));
        if let Some(status) = &d.status {
            s.status = Some(status.clone());
        }
        d
    }

    fn ready(s: &StarRocksSink) -> Condition {
        s.status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
            .cloned()
            .expect("a Ready condition")
    }

    #[test]
    fn a_valid_sink_gets_its_config_map_and_becomes_ready() {
        let mut s = sink(1, "orders");
        let d = step(&mut s, Some(&good_secret()), &[], 0);
        let cm = d.config_map.expect("a ConfigMap");
        assert_eq!(cm.metadata.name.as_deref(), Some("starsink-orders"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StarRocksSink", "orders", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        let yaml = &cm.data.as_ref().unwrap()[CONFIG_KEY];
        let rendered: crate::api::SinkSpec = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(rendered.name, "orders");
        assert_eq!(rendered.starrocks.user, "loader");
        assert_eq!(
            rendered.socket.to_str(),
            Some("/var/run/starsink/orders.sock")
        );
        assert_eq!(
            rendered
                .starrocks
                .password_file
                .as_deref()
                .and_then(|p| p.to_str()),
            Some("/etc/starsink/credentials/orders/password")
        );
        assert!(
            !yaml.contains("pw"),
            "the password must not be in the ConfigMap"
        );
        let hash = &cm.metadata.annotations.as_ref().unwrap()[HASH_ANNOTATION];
        assert_eq!(hash, &content_hash(yaml.as_bytes()));
        assert_eq!(
            hash,
            &crate::loader::metrics::config_hash(&rendered),
            "a loader running this ConfigMap shows its hash in starsink_config_info"
        );
        let status = s.status.clone().unwrap();
        assert_eq!(status.config_hash.as_ref(), Some(hash));
        assert_eq!(status.observed_generation, Some(1));
        let c = ready(&s);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Ready"));
        assert_eq!(
            d.event.map(|e| (e.warning, e.reason)),
            Some((false, "Ready"))
        );
        assert_eq!(d.next, Next::AwaitChange);
    }

    #[test]
    fn nothing_changed_means_no_status_write_and_no_event() {
        let mut s = sink(1, "orders");
        step(&mut s, Some(&good_secret()), &[], 0);
        let again = step(&mut s, Some(&good_secret()), &[], 60);
        assert_eq!(again.status, None);
        assert_eq!(again.event, None);
        assert!(
            again.config_map.is_some(),
            "the desired ConfigMap is still known"
        );
    }

    #[test]
    fn an_invalid_spec_is_not_ready_with_the_field_named_and_no_config() {
        let mut s = sink(1, "orders-2024");
        let d = step(&mut s, Some(&good_secret()), &[], 0);
        assert!(d.config_map.is_none());
        let c = ready(&s);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(c.message.contains("spec.starrocks.table"), "{}", c.message);
        assert!(c.message.contains("orders-2024"), "{}", c.message);
        assert_eq!(
            d.event.map(|e| (e.warning, e.reason)),
            Some((true, "InvalidSpec"))
        );
        assert_eq!(d.next, Next::AwaitChange);
    }

    #[test]
    fn a_missing_secret_says_how_to_create_it_and_retries() {
        let mut s = sink(1, "orders");
        let d = step(&mut s, None, &[], 0);
        let c = ready(&s);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretNotFound")
        );
        assert!(
            c.message
                .contains("kubectl -n shop create secret generic sr"),
            "{}",
            c.message
        );
        assert_eq!(d.next, Next::Backoff);
        assert!(d.config_map.is_none());
    }

    #[test]
    fn a_missing_key_names_the_key_and_the_field() {
        let mut s = sink(1, "orders");
        step(&mut s, Some(&secret(&[("username", "loader")])), &[], 0);
        let c = ready(&s);
        assert_eq!(c.reason, "SecretKeyMissing");
        assert!(
            c.message.contains("`password`") && c.message.contains("passwordKey"),
            "{}",
            c.message
        );
        step(&mut s, Some(&secret(&[("password", "pw")])), &[], 0);
        assert!(ready(&s).message.contains("`username`"));
    }

    #[test]
    fn a_secret_added_later_makes_the_sink_ready_and_flips_the_transition_time() {
        let mut s = sink(1, "orders");
        step(&mut s, None, &[], 0);
        let before = ready(&s);
        // Still missing a minute later: same condition, same transition time, no event.
        let d = step(&mut s, None, &[], 60);
        assert_eq!(d.event, None);
        assert_eq!(ready(&s).last_transition_time, before.last_transition_time);
        let d = step(&mut s, Some(&good_secret()), &[], 120);
        let after = ready(&s);
        assert_eq!(after.status, "True");
        assert_eq!(after.last_transition_time, Time(t(120)));
        assert_eq!(d.event.map(|e| e.reason), Some("Ready"));
    }

    #[test]
    fn a_broken_secret_keeps_the_last_config_and_hash() {
        let mut s = sink(1, "orders");
        step(&mut s, Some(&good_secret()), &[], 0);
        let hash = s.status.as_ref().unwrap().config_hash.clone();
        let d = step(&mut s, None, &[], 10);
        assert!(d.config_map.is_none(), "running loaders keep their config");
        assert_eq!(s.status.as_ref().unwrap().config_hash, hash);
        assert_eq!(
            d.event.map(|e| (e.warning, e.reason)),
            Some((true, "SecretNotFound"))
        );
    }

    #[test]
    fn a_spec_update_changes_the_config_and_observed_generation_follows() {
        let mut s = sink(1, "orders");
        let first = step(&mut s, Some(&good_secret()), &[], 0)
            .config_map
            .unwrap();
        let mut updated = sink(2, "orders_v2");
        updated.status = s.status.clone();
        let d = step(&mut updated, Some(&good_secret()), &[], 10);
        let second = d.config_map.unwrap();
        assert_ne!(first.data, second.data);
        assert_ne!(first.metadata.annotations, second.metadata.annotations);
        let st = updated.status.clone().unwrap();
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(ready(&updated).observed_generation, Some(2));
        // Still Ready: the transition time stays, and no event is sent.
        assert_eq!(ready(&updated).last_transition_time, Time(t(0)));
        assert_eq!(d.event, None);
    }

    #[test]
    fn attached_pods_are_running_opted_in_pods_that_list_the_sink() {
        let pods = [
            pod("a", "orders", "Running", true),
            pod("b", "clicks, orders", "Running", true),
            pod("c", "orders", "Pending", true),
            pod("d", "orders", "Running", false),
            pod("e", "orders-archive", "Running", true),
        ];
        assert_eq!(attached_pods(&pods, "orders"), 2);
        let mut s = sink(1, "orders");
        step(&mut s, Some(&good_secret()), &pods, 0);
        assert_eq!(s.status.as_ref().unwrap().attached_pods, 2);
        // A pod going away is a status change, though not a Ready change.
        let d = step(&mut s, Some(&good_secret()), &pods[1..], 10);
        assert_eq!(d.status.map(|st| st.attached_pods), Some(1));
        assert_eq!(d.event, None);
    }

    #[test]
    fn an_unreadable_spec_is_invalid_with_the_field_named_and_keeps_the_last_config() {
        let mut s = sink(1, "orders");
        step(&mut s, Some(&good_secret()), &[], 0);
        let hash = s.status.as_ref().unwrap().config_hash.clone();
        let mut stored: StoredSink =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        stored.metadata.generation = Some(2);
        stored.spec["retry"] = json!({"warnAfter": "99999999999999999999h"});
        let err = stored.decode().expect_err("unreadable");
        let d = decide_unreadable(&stored, &err, &[pod("a", "orders", "Running", true)], t(10));
        assert!(d.config_map.is_none(), "running loaders keep their config");
        let status = d.status.expect("a status write");
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            c.message.starts_with("spec.retry.warnAfter: "),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("kubectl -n shop edit srs orders"),
            "{}",
            c.message
        );
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(status.config_hash, hash);
        assert_eq!(status.attached_pods, 1);
        let e = d.event.expect("a Warning event");
        assert!(e.warning && e.reason == "InvalidSpec" && e.note.contains("spec.retry.warnAfter"));
        assert_eq!(d.next, Next::AwaitChange);
    }

    #[test]
    fn requested_sinks_need_the_opt_in_label() {
        assert_eq!(
            requested_sinks(&pod("a", " orders ,clicks,", "Running", true)),
            ["orders", "clicks"]
        );
        assert!(requested_sinks(&pod("a", "orders", "Running", false)).is_empty());
    }

    #[test]
    fn load_rate_ok_flips_with_an_event_and_keeps_its_transition_time_while_it_holds() {
        let ok = RateCheck {
            ok: true,
            message: "1 pod(s) load shop.orders every 5s: 0.20 loads/s".into(),
        };
        let too_often = RateCheck {
            ok: false,
            message: "2 pod(s) ...; set flush.interval to at least 10s".into(),
        };
        let rate = |status, check: &RateCheck, at| with_load_rate(status, check, Some(1), t(at));
        let cond = |s: &StarRocksSinkStatus| {
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == LOAD_RATE_OK)
                .cloned();
            c.expect("a LoadRateOK condition")
        };
        // First seen within the advice: a condition, no event.
        let (s1, e1) = rate(StarRocksSinkStatus::default(), &ok, 10);
        let c = cond(&s1);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", RATE_WITHIN_ADVICE)
        );
        assert_eq!(e1, None);
        // Too frequent: False, a Warning, a new transition time.
        let (s2, e2) = rate(s1.clone(), &too_often, 20);
        let c = cond(&s2);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", RATE_TOO_FREQUENT)
        );
        assert_eq!(c.last_transition_time, Time(t(20)));
        let e2 = e2.expect("a Warning");
        assert!(e2.warning && e2.reason == RATE_TOO_FREQUENT && e2.note == too_often.message);
        // Still too frequent later: no new event, the transition time stays.
        let (s3, e3) = rate(s2, &too_often, 30);
        let c = cond(&s3);
        assert_eq!((c.last_transition_time.clone(), e3), (Time(t(20)), None));
        // Back within: a Normal event. The Ready condition is left alone throughout.
        let (s4, e4) = rate(s3, &ok, 40);
        assert_eq!(
            e4.map(|e| (e.warning, e.reason)),
            Some((false, RATE_WITHIN_ADVICE))
        );
        assert_eq!(
            s4.conditions
                .iter()
                .filter(|c| c.type_ == LOAD_RATE_OK)
                .count(),
            1
        );
    }
}
