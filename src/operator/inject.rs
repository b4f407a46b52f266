//! Sidecar injection as one pure function: a pod, the sinks of its namespace and the
//! injector's settings in; the pod with the loader attached (or a denial saying why) out.
//! The admission webhook turns the result into a JSON patch; `starsink inject` prints it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::pod_contract::{
    config_map_name, config_volume, content_hash, credentials_dir, credentials_volume,
    requested_sinks, sink_config_dir, socket_env_name, socket_path, tls_client_dir,
    tls_client_volume, tls_dir, tls_volume, CONFIG_KEY, INJECTED_ANNOTATION,
    INJECTED_HASH_ANNOTATION, LOADER, LOADER_UID, METRICS_PORT_NAME, ON_MISSING_ANNOTATION,
    POD_NAME_ENV, SINKS_ANNOTATION, SOCKETS_VOLUME, SOCKET_DIR, SPOOL_DIR, SPOOL_VOLUME,
    SPOOL_VOLUME_ANNOTATION,
};
use crate::api::resource::{CaSource, SpecError};
use crate::api::StarRocksSink;

/// Grace period Kubernetes gives a pod that sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The injector's own settings (from the chart, or `starsink inject` flags).
#[derive(Clone, Debug)]
pub struct InjectSettings {
    /// The loader image, unless a sink's `sidecar.image` says otherwise.
    pub image: String,
    /// The cluster's version, `(major, minor)`: native sidecars need 1.29.
    pub kube_version: (u32, u32),
    /// The loader's resources, unless a sink's `sidecar.resources` says otherwise.
    pub resources: Option<ResourceRequirements>,
    /// The port of the loader's `/metrics`, `/healthz` and `/readyz` (the startup probe).
    pub metrics_port: u16,
}

impl Default for InjectSettings {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/starsink/starsink:{}", env!("CARGO_PKG_VERSION")),
            kube_version: (1, 29),
            resources: Some(default_resources()),
            metrics_port: 9464,
        }
    }
}

/// The chart's default loader resources.
pub fn default_resources() -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// What injection did with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Injection {
    /// Left as it was, and why (no opt-in, already injected, no sink left to serve).
    Unchanged(String),
    /// The pod with the loader attached.
    Injected(Box<Pod>),
    /// The pod must not be admitted, and why (with the fix).
    Denied(String),
}

/// A denial for a pod that names a sink whose spec cannot be read (`unreadable`, by
/// name), unless the pod asks to start without missing sinks: such a sink is missing.
pub fn unreadable_sinks_denial(pod: &Pod, unreadable: &[(String, SpecError)]) -> Option<String> {
    if pod
        .annotations()
        .get(ON_MISSING_ANNOTATION)
        .map(String::as_str)
        == Some("skip")
    {
        return None;
    }
    let wanted = requested_sinks(pod);
    let broken: Vec<String> = unreadable
        .iter()
        .filter(|(name, _)| wanted.contains(name))
        .map(|(name, e)| format!("StarRocksSink {name} cannot be read ({e})"))
        .collect();
    (!broken.is_empty()).then(|| {
        format!(
            "{}; fix it (kubectl -n {ns} describe srs NAME shows the field), or annotate the pod {ON_MISSING_ANNOTATION}: skip to start it without that sink",
            broken.join("; "),
            ns = pod.namespace().unwrap_or_default()
        )
    })
}

/// Attaches the loader to `pod` for the sinks it asks for. `sinks` are the sinks that
/// exist (a sink in another namespace than the pod's is not a match).
pub fn inject(pod: &Pod, sinks: &[StarRocksSink], settings: &InjectSettings) -> Injection {
    match plan(pod, sinks, settings) {
        Ok(plan) => Injection::Injected(Box::new(apply(pod, &plan, settings))),
        Err(not_injected) => not_injected,
    }
}

/// What injecting a pod adds, decided once every check has passed.
struct Plan<'a> {
    /// The sinks, in the order the pod lists them.
    found: Vec<&'a StarRocksSink>,
    /// The loader runs as a native sidecar (Kubernetes 1.29 or later).
    native: bool,
    /// The pod's grace period, raised to the sinks' minimum.
    grace: i64,
    /// The spool volume's size (sum of the sinks' caps) and its name, if any sink spools.
    spool_bytes: u64,
    spool_volume: Option<String>,
    /// The spool volume is an emptyDir starsink adds (not the pod's own).
    add_spool_volume: bool,
}

/// The checks, in order; each may stop injection, saying why (`Unchanged` or `Denied`).
fn plan<'a>(
    pod: &Pod,
    sinks: &'a [StarRocksSink],
    settings: &InjectSettings,
) -> Result<Plan<'a>, Injection> {
    let wanted = requested_sinks(pod);
    if wanted.is_empty() {
        return Err(Injection::Unchanged(
            "no opt-in: needs the label starsink.io/inject: \"true\" and the annotation starsink.io/sinks".into(),
        ));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Injection::Denied("the pod has no spec".into()));
    };
    if pod.annotations().contains_key(INJECTED_ANNOTATION) && has_container(spec, LOADER) {
        return Err(Injection::Unchanged("already injected".into()));
    }
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(unnamed)".into());
    let found = look_up(pod, &wanted, sinks, &pod_name)?;
    let native = settings.kube_version >= (1, 29);
    runs_here(spec, settings, native, &pod_name)?;
    let (spool_bytes, spool_volume, add_spool_volume) = spool(pod, spec, &found, &pod_name)?;
    no_name_taken(spec, &found, add_spool_volume, &pod_name)?;
    Ok(Plan {
        grace: grace_period(spec, &found),
        found,
        native,
        spool_bytes,
        spool_volume,
        add_spool_volume,
    })
}

fn has_container(spec: &PodSpec, name: &str) -> bool {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == name)
}

/// The sinks the pod names, found in its namespace; a missing one denies the pod unless
/// it is annotated to skip missing sinks.
fn look_up<'a>(
    pod: &Pod,
    wanted: &[String],
    sinks: &'a [StarRocksSink],
    pod_name: &str,
) -> Result<Vec<&'a StarRocksSink>, Injection> {
    let namespace = pod.namespace();
    let mut found: Vec<&StarRocksSink> = Vec::new();
    let mut missing = Vec::new();
    for name in wanted {
        let sink = sinks.iter().find(|s| {
            s.name_any() == *name
                && (s.namespace().is_none() || namespace.is_none() || s.namespace() == namespace)
        });
        match sink {
            Some(s) if !found.iter().any(|f| f.name_any() == *name) => found.push(s),
            Some(_) => {}
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let ns = namespace.unwrap_or_else(|| "default".into());
    let skip = pod
        .annotations()
        .get(ON_MISSING_ANNOTATION)
        .map(String::as_str)
        == Some("skip");
    if !skip {
        let list = missing.join(", ");
        return Err(Injection::Denied(format!(
            "pod {pod_name}: StarRocksSink {list} not found in namespace {ns}; create it (see examples/starrocks-sink.yaml: kubectl -n {ns} apply -f SINK.yaml), or remove it from the {SINKS_ANNOTATION} annotation; to start the pod without missing sinks, annotate it {ON_MISSING_ANNOTATION}: skip"
        )));
    }
    if found.is_empty() {
        return Err(Injection::Unchanged(format!(
            "none of the sinks {} exists in namespace {ns} ({ON_MISSING_ANNOTATION}: skip)",
            wanted.join(", ")
        )));
    }
    Ok(found)
}

/// Native sidecars (restartPolicy: Always in initContainers) need Kubernetes 1.29; an
/// older API server drops the field and the pod would hang in Init forever. Without
/// them, a pod that runs to completion would never complete.
fn runs_here(
    spec: &PodSpec,
    settings: &InjectSettings,
    native: bool,
    pod_name: &str,
) -> Result<(), Injection> {
    let runs_to_completion = matches!(
        spec.restart_policy.as_deref(),
        Some("Never") | Some("OnFailure")
    );
    if !native && runs_to_completion {
        return Err(Injection::Denied(format!(
            "pod {pod_name} runs to completion (restartPolicy {}), and this cluster ({}.{}) has no native sidecars: a loader container would keep it running forever; upgrade to Kubernetes 1.29 or later, or remove the starsink.io/inject label",
            spec.restart_policy.as_deref().unwrap_or(""),
            settings.kube_version.0,
            settings.kube_version.1
        )));
    }
    Ok(())
}

/// Sinks with a spool share one volume: the pod's own when it names one, else an
/// emptyDir sized to their caps (plus a tenth: segments are freed in steps). Returns
/// the caps' sum, the volume's name, and whether starsink adds it.
fn spool(
    pod: &Pod,
    spec: &PodSpec,
    found: &[&StarRocksSink],
    pod_name: &str,
) -> Result<(u64, Option<String>, bool), Injection> {
    let spool_bytes: u64 = found
        .iter()
        .filter_map(|s| s.spec.spool.as_ref())
        .map(|sp| sp.max_bytes.0)
        .sum();
    let own_spool_volume = pod.annotations().get(SPOOL_VOLUME_ANNOTATION).cloned();
    if let Some(name) = &own_spool_volume {
        if !spec.volumes.iter().flatten().any(|v| &v.name == name) {
            return Err(Injection::Denied(format!(
                "pod {pod_name}: annotation {SPOOL_VOLUME_ANNOTATION} names volume {name}, which the pod does not have; add that volume or remove the annotation"
            )));
        }
    }
    let spool_volume = (spool_bytes > 0).then(|| {
        own_spool_volume
            .clone()
            .unwrap_or_else(|| SPOOL_VOLUME.to_owned())
    });
    let add = spool_volume.is_some() && own_spool_volume.is_none();
    Ok((spool_bytes, spool_volume, add))
}

/// Names and paths starsink adds must not be taken: volumes, the loader container, the
/// socket directory's mount and the socket environment variables.
fn no_name_taken(
    spec: &PodSpec,
    found: &[&StarRocksSink],
    add_spool_volume: bool,
    pod_name: &str,
) -> Result<(), Injection> {
    let volume_names: Vec<String> = std::iter::once(SOCKETS_VOLUME.to_owned())
        .chain(add_spool_volume.then(|| SPOOL_VOLUME.to_owned()))
        .chain(found.iter().flat_map(|s| {
            let n = s.name_any();
            [
                config_volume(&n),
                credentials_volume(&n),
                tls_volume(&n),
                tls_client_volume(&n),
            ]
        }))
        .collect();
    for v in spec.volumes.iter().flatten() {
        if volume_names.contains(&v.name) {
            return Err(Injection::Denied(format!(
                "pod {pod_name}: it already has a volume named {}, which starsink needs for the loader; rename that volume",
                v.name
            )));
        }
    }
    if has_container(spec, LOADER) {
        return Err(Injection::Denied(format!(
            "pod {pod_name}: it already has a container named {LOADER}, which starsink needs for the loader; rename that container"
        )));
    }
    for c in &spec.containers {
        if let Some(m) = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == SOCKET_DIR)
        {
            return Err(Injection::Denied(format!(
                "pod {pod_name}: container {} already mounts {} at {SOCKET_DIR}, where starsink puts the sockets; move that mount",
                c.name, m.name
            )));
        }
        for s in found {
            let env = socket_env_name(&s.name_any());
            if c.env.iter().flatten().any(|e| e.name == env) {
                return Err(Injection::Denied(format!(
                    "pod {pod_name}: container {} already sets {env}, which starsink sets to the socket path; remove it",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

/// The pod's grace period, raised to the sinks' minimum (the loader gets it less a
/// margin for the kubelet's own work).
fn grace_period(spec: &PodSpec, found: &[&StarRocksSink]) -> i64 {
    let min_grace = found
        .iter()
        .filter_map(|s| s.spec.sidecar.as_ref()?.min_grace_period)
        .map(|d| i64::try_from(d.0.as_secs()).unwrap_or(i64::MAX))
        .max()
        .unwrap_or(0);
    spec.termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(min_grace)
}

/// The pod with the loader attached as `plan` says: the annotation, the grace period,
/// the volumes, the socket mount and variables in every app container, and the loader.
fn apply(pod: &Pod, plan: &Plan<'_>, settings: &InjectSettings) -> Pod {
    let grace = plan.grace;
    let shutdown_secs = shutdown_budget(grace);
    let mut out = pod.clone();
    let names: Vec<String> = plan.found.iter().map(|s| s.name_any()).collect();
    out.annotations_mut()
        .insert(INJECTED_ANNOTATION.into(), names.join(","));
    let Some(spec) = out.spec.as_mut() else {
        return out;
    };
    if spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        != grace
    {
        spec.termination_grace_period_seconds = Some(grace);
    }

    add_volumes(spec, plan);
    mount_sockets(spec, &names);
    attach_loader(spec, plan, settings, shutdown_secs);
    let hash = injected_hash(spec, &names, grace);
    out.annotations_mut()
        .insert(INJECTED_HASH_ANNOTATION.into(), hash);
    out
}

/// The names of the volumes injection adds for `sinks` (the spool's only when it adds
/// that volume).
fn injected_volume_names(sinks: &[String]) -> Vec<String> {
    let per_sink = sinks.iter().flat_map(|n| {
        [
            config_volume(n),
            credentials_volume(n),
            tls_volume(n),
            tls_client_volume(n),
        ]
    });
    [SOCKETS_VOLUME.to_owned(), SPOOL_VOLUME.to_owned()]
        .into_iter()
        .chain(per_sink)
        .collect()
}

/// The hash of what injection added to `spec` for `sinks`: the loader container, the
/// volumes it added, and the grace period it decided on.
fn injected_hash(spec: &PodSpec, sinks: &[String], grace: i64) -> String {
    let names = injected_volume_names(sinks);
    let loader = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == LOADER);
    let volumes: Vec<&Volume> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| names.contains(&v.name))
        .collect();
    let parts = serde_json::json!({
        "loader": loader,
        "volumes": volumes,
        "grace": grace,
    });
    content_hash(parts.to_string().as_bytes())
}

/// Whether `pod`, injected earlier, runs a loader other than injection would attach
/// now (the sinks' `sidecar`, `spool` or grace settings, or the injector's image or
/// resources changed since): what injection would add to the pod without its loader is
/// hashed and compared with the hash recorded at admission. A pod that asks for a loader
/// and has none (admitted while the webhook was down, say), or was injected before the
/// hash was recorded, counts as outdated. The API server's defaults on the running pod
/// do not count: both hashes are of injection's own output. A pod whose injected sinks
/// are not all in `sinks` (not cached yet, or unreadable) is not judged.
pub fn outdated(pod: &Pod, sinks: &[StarRocksSink], settings: &InjectSettings) -> bool {
    let annotations = pod.annotations();
    let Some(injected) = annotations.get(INJECTED_ANNOTATION) else {
        return !requested_sinks(pod).is_empty();
    };
    let ns = pod.namespace();
    let known = |name: &str| {
        sinks
            .iter()
            .any(|s| s.name_any() == name && s.namespace() == ns)
    };
    if !injected.split(',').filter(|n| !n.is_empty()).all(known) {
        return false;
    }
    let Some(recorded) = annotations.get(INJECTED_HASH_ANNOTATION) else {
        return true;
    };
    match inject(&without_loader(pod), sinks, settings) {
        Injection::Injected(now) => {
            now.annotations().get(INJECTED_HASH_ANNOTATION) != Some(recorded)
        }
        // A sink gone or unreadable: the pod is not told to restart into a denial.
        Injection::Unchanged(_) | Injection::Denied(_) => false,
    }
}

/// `pod` as it was before injection, as far as injection's checks can tell: without
/// the loader, the volumes, mounts and variables injection adds, and its annotations.
fn without_loader(pod: &Pod) -> Pod {
    let mut out = pod.clone();
    let sinks = requested_sinks(pod);
    let volumes = injected_volume_names(&sinks);
    let envs: Vec<String> = sinks.iter().map(|n| socket_env_name(n)).collect();
    for key in [INJECTED_ANNOTATION, INJECTED_HASH_ANNOTATION] {
        out.annotations_mut().remove(key);
    }
    let Some(spec) = out.spec.as_mut() else {
        return out;
    };
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| c.name != LOADER);
    }
    spec.containers.retain(|c| c.name != LOADER);
    if let Some(v) = spec.volumes.as_mut() {
        v.retain(|v| !volumes.contains(&v.name));
    }
    for c in &mut spec.containers {
        if let Some(m) = c.volume_mounts.as_mut() {
            m.retain(|m| m.name != SOCKETS_VOLUME);
        }
        if let Some(e) = c.env.as_mut() {
            e.retain(|e| !envs.contains(&e.name));
        }
    }
    out
}

/// The pod's new volumes: the sockets' emptyDir, the spool's (unless the pod has its
/// own), and each sink's ConfigMap and credentials Secret.
fn add_volumes(spec: &mut PodSpec, plan: &Plan<'_>) {
    let (found, spool_bytes, add_spool_volume) =
        (&plan.found, plan.spool_bytes, plan.add_spool_volume);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: SOCKETS_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    if add_spool_volume {
        volumes.push(Volume {
            name: SPOOL_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    (spool_bytes.saturating_add(spool_bytes / 10)).to_string(),
                )),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    for s in found {
        let n = s.name_any();
        volumes.push(Volume {
            name: config_volume(&n),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&n),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        volumes.push(Volume {
            name: credentials_volume(&n),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.spec.credentials_secret_ref.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        if let Some(ca) = tls_ca(s) {
            volumes.push(ca_volume(&n, ca));
        }
        if let Some(secret) = client_cert(s) {
            volumes.push(Volume {
                name: tls_client_volume(&n),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_owned()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
}

/// The sink's client certificate Secret, when it names one.
fn client_cert(sink: &StarRocksSink) -> Option<&str> {
    sink.spec.tls.as_ref()?.client_cert_secret.as_deref()
}

/// The sink's CA source, when it names one.
fn tls_ca(sink: &StarRocksSink) -> Option<&CaSource> {
    sink.spec.tls.as_ref()?.ca.as_ref()
}

/// The volume of a sink's CA certificates: the one key of its ConfigMap or Secret, as
/// `ca.crt` (where `starrocks.tls.caFile` points).
fn ca_volume(sink: &str, ca: &CaSource) -> Volume {
    let items = Some(vec![KeyToPath {
        key: ca.key.clone(),
        path: "ca.crt".into(),
        ..KeyToPath::default()
    }]);
    let mut volume = Volume {
        name: tls_volume(sink),
        ..Volume::default()
    };
    match (&ca.config_map, &ca.secret) {
        (Some(name), _) => {
            volume.config_map = Some(ConfigMapVolumeSource {
                name: name.clone(),
                items,
                ..ConfigMapVolumeSource::default()
            })
        }
        (None, secret) => {
            volume.secret = Some(SecretVolumeSource {
                secret_name: secret.clone(),
                items,
                ..SecretVolumeSource::default()
            })
        }
    }
    volume
}

/// Every app container gets the socket directory and one `STARSINK_SOCKET_<SINK>` each.
fn mount_sockets(spec: &mut PodSpec, names: &[String]) {
    for c in spec.containers.iter_mut() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: SOCKETS_VOLUME.into(),
                mount_path: SOCKET_DIR.into(),
                ..VolumeMount::default()
            });
        let env = c.env.get_or_insert_with(Vec::new);
        for n in names {
            env.push(EnvVar {
                name: socket_env_name(n),
                value: Some(socket_path(n)),
                ..EnvVar::default()
            });
        }
    }
}

/// The loader container, with the spool volume (in the pod's own directory of it), as
/// a native sidecar or a plain container.
fn attach_loader(
    spec: &mut PodSpec,
    plan: &Plan<'_>,
    settings: &InjectSettings,
    shutdown_secs: i64,
) {
    let (found, native, spool_volume) = (&plan.found, plan.native, &plan.spool_volume);
    let mut loader = loader_container(found, settings, shutdown_secs, native);
    if let (Some(name), Some(mounts)) = (spool_volume.clone(), loader.volume_mounts.as_mut()) {
        // Each pod spools in a directory of its own on the volume (`<volume>/<pod name>`),
        // so replicas that share a volume never meet in one spool; a StatefulSet's pod
        // finds its own again after a restart.
        mounts.push(VolumeMount {
            name,
            mount_path: SPOOL_DIR.into(),
            sub_path_expr: Some(format!("$({POD_NAME_ENV})")),
            ..VolumeMount::default()
        });
        loader.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: POD_NAME_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    if native {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(loader);
    } else {
        spec.containers.push(loader);
    }
}

/// The loader's `shutdownTimeout` for a pod grace period: the grace period minus a
/// margin of a sixth (1s to 5s), and at least 1s.
pub fn shutdown_budget(grace_seconds: i64) -> i64 {
    let margin = (grace_seconds / 6).clamp(1, 5);
    (grace_seconds - margin).max(1)
}

fn loader_container(
    sinks: &[&StarRocksSink],
    settings: &InjectSettings,
    shutdown_secs: i64,
    native: bool,
) -> Container {
    let sidecar = |f: fn(&crate::api::SidecarSpec) -> bool| {
        sinks
            .iter()
            .filter_map(|s| s.spec.sidecar.as_ref())
            .find(|sc| f(sc))
    };
    let image = sidecar(|sc| sc.image.is_some())
        .and_then(|sc| sc.image.clone())
        .unwrap_or_else(|| settings.image.clone());
    let resources = sidecar(|sc| sc.resources.is_some())
        .and_then(|sc| sc.resources.clone())
        .or_else(|| settings.resources.clone());
    let (args, mounts) = loader_args_and_mounts(sinks, settings, shutdown_secs);
    Container {
        name: LOADER.into(),
        image: Some(image),
        args: Some(args),
        restart_policy: native.then(|| "Always".into()),
        volume_mounts: Some(mounts),
        resources,
        ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: i32::from(settings.metrics_port),
            ..Default::default()
        }]),
        // Passes once every socket listens, so (as a native sidecar) the apps start after.
        startup_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(settings.metrics_port)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        security_context: Some(restricted_security_context()),
        ..Container::default()
    }
}

/// The loader's arguments (one `--sink-file` per sink) and its mounts: the sockets, and
/// each sink's ConfigMap and credentials.
fn loader_args_and_mounts(
    sinks: &[&StarRocksSink],
    settings: &InjectSettings,
    shutdown_secs: i64,
) -> (Vec<String>, Vec<VolumeMount>) {
    let mut args: Vec<String> = vec!["--log-format".into(), "json".into(), "loader".into()];
    let mut mounts = vec![VolumeMount {
        name: SOCKETS_VOLUME.into(),
        mount_path: SOCKET_DIR.into(),
        ..VolumeMount::default()
    }];
    let read_only = |name: String, mount_path: String| VolumeMount {
        name,
        mount_path,
        read_only: Some(true),
        ..VolumeMount::default()
    };
    for s in sinks {
        let n = s.name_any();
        args.push("--sink-file".into());
        args.push(format!("{}/{CONFIG_KEY}", sink_config_dir(&n)));
        mounts.push(read_only(config_volume(&n), sink_config_dir(&n)));
        mounts.push(read_only(credentials_volume(&n), credentials_dir(&n)));
        if tls_ca(s).is_some() {
            mounts.push(read_only(tls_volume(&n), tls_dir(&n)));
        }
        if client_cert(s).is_some() {
            mounts.push(read_only(tls_client_volume(&n), tls_client_dir(&n)));
        }
    }
    args.extend([
        "--shutdown-timeout".into(),
        format!("{shutdown_secs}s"),
        "--metrics-addr".into(),
        format!("0.0.0.0:{}", settings.metrics_port),
    ]);
    (args, mounts)
}

/// What the Pod Security `restricted` profile asks of a container: non-root, no
/// privilege escalation, no capabilities, the runtime's seccomp profile.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(LOADER_UID),
        run_as_group: Some(LOADER_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// Each check of [`plan`] on its own: what lets a pod through, what leaves it unchanged,
/// and what denies it (the goldens in `tests/fixtures/inject` show whole pods).
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_pod(extra: serde_json::Value) -> Pod {
        let mut pod = json!({
            "metadata": {
                "name": "app", "namespace": "shop",
                "labels": {"starsink.io/inject": "true"},
                "annotations": {"starsink.io/sinks": "orders"},
            },
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        });
        merge(&mut pod, extra);
        serde_json::from_value(pod).expect("a pod")
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn mk_sink(name: &str, namespace: &str, extra: serde_json::Value) -> StarRocksSink {
        let mut sink = json!({
            "apiVersion": "starsink.io/v1alpha1", "kind": "StarRocksSink",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "d", "table": "t"},
                "credentialsSecretRef": {"name": "sr"},
            },
        });
        merge(&mut sink["spec"], extra);
        serde_json::from_value(sink).expect("a sink")
    }

    fn spec(pod: &Pod) -> &PodSpec {
        pod.spec.as_ref().expect("a spec")
    }

    fn denial(r: Result<impl std::fmt::Debug, Injection>) -> String {
        match r {
            Err(Injection::Denied(why)) => why,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    /// `pod` injected with `sinks` and `settings`, as the API server then stores it:
    /// with defaults added to what the webhook returned.
    fn admitted(pod: &Pod, sinks: &[StarRocksSink], settings: &InjectSettings) -> Pod {
        let Injection::Injected(pod) = inject(pod, sinks, settings) else {
            panic!("injected")
        };
        let mut value = serde_json::to_value(&*pod).unwrap();
        for list in ["initContainers", "containers"] {
            for c in value["spec"][list].as_array_mut().into_iter().flatten() {
                c["imagePullPolicy"] = json!("IfNotPresent");
                c["terminationMessagePath"] = json!("/dev/termination-log");
            }
        }
        for v in value["spec"]["volumes"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if v.get("configMap").is_some() {
                v["configMap"]["defaultMode"] = json!(420);
            }
        }
        value["spec"]["dnsPolicy"] = json!("ClusterFirst");
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_pod_is_outdated_when_injection_would_attach_another_loader_now() {
        let settings = InjectSettings::default();
        let sinks = [mk_sink(
            "orders",
            "shop",
            json!({"spool": {"maxBytes": "1Gi"}}),
        )];
        let running = admitted(&mk_pod(json!({})), &sinks, &settings);
        assert!(
            !outdated(&running, &sinks, &settings),
            "nothing changed: the API server's defaults do not count"
        );
        let changes: [(&str, Vec<StarRocksSink>, InjectSettings); 5] = [
            (
                "the sink's sidecar resources",
                vec![mk_sink(
                    "orders",
                    "shop",
                    json!({"spool": {"maxBytes": "1Gi"}, "sidecar": {"resources": {"limits": {"memory": "1Gi"}}}}),
                )],
                settings.clone(),
            ),
            (
                "the sink's sidecar image",
                vec![mk_sink(
                    "orders",
                    "shop",
                    json!({"spool": {"maxBytes": "1Gi"}, "sidecar": {"image": "mirror/starsink:1"}}),
                )],
                settings.clone(),
            ),
            (
                "the spool's size",
                vec![mk_sink(
                    "orders",
                    "shop",
                    json!({"spool": {"maxBytes": "2Gi"}}),
                )],
                settings.clone(),
            ),
            (
                "the grace period the sink needs",
                vec![mk_sink(
                    "orders",
                    "shop",
                    json!({"spool": {"maxBytes": "1Gi"}, "sidecar": {"minGracePeriod": "120s"}}),
                )],
                settings.clone(),
            ),
            (
                "the injector's image",
                sinks.to_vec(),
                InjectSettings {
                    image: "ghcr.io/starsink/starsink:next".into(),
                    ..settings.clone()
                },
            ),
        ];
        for (what, sinks_now, settings_now) in changes {
            assert!(outdated(&running, &sinks_now, &settings_now), "{what}");
        }
        // What the ConfigMap carries reaches the loader without a restart.
        let flush = [mk_sink(
            "orders",
            "shop",
            json!({"spool": {"maxBytes": "1Gi"}, "flush": {"interval": "30s"}, "starrocks": {"table": "t2"}}),
        )];
        assert!(!outdated(&running, &flush, &settings));
        // Injected by a release that recorded no hash, or asking for a loader and
        // admitted without one: outdated. A sink of the pod not known: not judged.
        let mut older = running.clone();
        older.annotations_mut().remove(INJECTED_HASH_ANNOTATION);
        assert!(outdated(&older, &sinks, &settings));
        assert!(outdated(&mk_pod(json!({})), &sinks, &settings));
        assert!(!outdated(&running, &[], &settings));
        // `starsink inject` output, applied as it is (no grace period set), then stored
        // with the API server's default of 30s: the same.
        let Injection::Injected(printed) = inject(&mk_pod(json!({})), &sinks, &settings) else {
            panic!("injected")
        };
        let mut stored = (*printed).clone();
        if let Some(spec) = stored.spec.as_mut() {
            spec.termination_grace_period_seconds.get_or_insert(30);
        }
        assert!(!outdated(&stored, &sinks, &settings));
    }

    #[test]
    fn look_up_finds_the_named_sinks_in_the_pods_namespace_once_each() {
        let sinks = [
            mk_sink("orders", "other", json!({})),
            mk_sink("orders", "shop", json!({})),
            mk_sink("clicks", "shop", json!({})),
        ];
        let pod = mk_pod(json!({}));
        let wanted = [
            "clicks".to_owned(),
            "orders".to_owned(),
            "clicks".to_owned(),
        ];
        let found = look_up(&pod, &wanted, &sinks, "app").expect("found");
        let found: Vec<_> = found
            .iter()
            .map(|s| (s.name_any(), s.namespace().unwrap_or_default()))
            .collect();
        assert_eq!(
            found,
            [
                ("clicks".into(), "shop".into()),
                ("orders".into(), "shop".into())
            ]
        );
    }

    #[test]
    fn look_up_denies_a_missing_sink_unless_the_pod_says_skip() {
        let sinks = [mk_sink("orders", "shop", json!({}))];
        let wanted = ["orders".to_owned(), "nope".to_owned()];
        let why = denial(look_up(&mk_pod(json!({})), &wanted, &sinks, "app"));
        assert!(
            why.contains("StarRocksSink nope not found in namespace shop"),
            "{why}"
        );
        assert!(
            why.contains(ON_MISSING_ANNOTATION),
            "names the way out: {why}"
        );

        let skip = mk_pod(json!({"metadata": {"annotations": {ON_MISSING_ANNOTATION: "skip"}}}));
        let found = look_up(&skip, &wanted, &sinks, "app").expect("skips the missing one");
        assert_eq!(found.len(), 1);
        let none = look_up(&skip, &["nope".to_owned()], &sinks, "app");
        assert!(matches!(none, Err(Injection::Unchanged(_))), "{none:?}");
    }

    #[test]
    fn runs_here_refuses_only_pods_that_complete_on_a_cluster_without_native_sidecars() {
        let old = InjectSettings {
            kube_version: (1, 28),
            ..InjectSettings::default()
        };
        for (policy, native, ok) in [
            (None, false, true),
            (Some("Always"), false, true),
            (Some("Never"), false, false),
            (Some("OnFailure"), false, false),
            (Some("Never"), true, true),
        ] {
            let pod = mk_pod(json!({"spec": {"restartPolicy": policy}}));
            let r = runs_here(spec(&pod), &old, native, "app");
            assert_eq!(r.is_ok(), ok, "{policy:?} native={native}: {r:?}");
            if !ok {
                assert!(denial(r).contains("upgrade to Kubernetes 1.29"));
            }
        }
    }

    #[test]
    fn spool_sums_the_caps_and_uses_the_pods_own_volume_only_if_it_has_it() {
        let spooled = mk_sink("orders", "shop", json!({"spool": {"maxBytes": "1GiB"}}));
        let spooled2 = mk_sink("clicks", "shop", json!({"spool": {"maxBytes": "512MiB"}}));
        let memory = mk_sink("views", "shop", json!({}));
        let pod = mk_pod(json!({}));
        let all = [&spooled, &spooled2, &memory];
        let (bytes, volume, add) = spool(&pod, spec(&pod), &all, "app").expect("ok");
        assert_eq!(bytes, (1 << 30) + (512 << 20));
        assert_eq!((volume.as_deref(), add), (Some(SPOOL_VOLUME), true));

        let none = spool(&pod, spec(&pod), &[&memory], "app").expect("ok");
        assert_eq!(none, (0, None, false));

        let own = mk_pod(json!({
            "metadata": {"annotations": {SPOOL_VOLUME_ANNOTATION: "data"}},
            "spec": {"volumes": [{"name": "data", "emptyDir": {}}]},
        }));
        let (_, volume, add) = spool(&own, spec(&own), &[&spooled], "app").expect("ok");
        assert_eq!((volume.as_deref(), add), (Some("data"), false));

        let missing =
            mk_pod(json!({"metadata": {"annotations": {SPOOL_VOLUME_ANNOTATION: "data"}}}));
        let why = denial(spool(&missing, spec(&missing), &[&spooled], "app"));
        assert!(
            why.contains("names volume data, which the pod does not have"),
            "{why}"
        );
    }

    #[test]
    fn no_name_taken_denies_each_name_and_path_starsink_adds() {
        let sink = mk_sink("orders", "shop", json!({}));
        let cases = [
            (
                json!({"volumes": [{"name": SOCKETS_VOLUME, "emptyDir": {}}]}),
                "a volume named starsink-sockets",
            ),
            (
                json!({"volumes": [{"name": config_volume("orders"), "emptyDir": {}}]}),
                "a volume named starsink-config-orders",
            ),
            (
                json!({"volumes": [{"name": SPOOL_VOLUME, "emptyDir": {}}]}),
                "a volume named starsink-spool",
            ),
            (
                json!({"containers": [{"name": LOADER, "image": "x"}]}),
                "a container named starsink-loader",
            ),
            (
                json!({"initContainers": [{"name": LOADER, "image": "x"}]}),
                "a container named starsink-loader",
            ),
            (
                json!({"containers": [{"name": "app", "image": "app", "volumeMounts": [{"name": "v", "mountPath": "/var/run/starsink/"}]}]}),
                "mounts v at /var/run/starsink",
            ),
            (
                json!({"containers": [{"name": "app", "image": "app", "env": [{"name": "STARSINK_SOCKET_ORDERS", "value": "x"}]}]}),
                "already sets STARSINK_SOCKET_ORDERS",
            ),
        ];
        for (pod_spec, expected) in cases {
            let pod = mk_pod(json!({"spec": pod_spec}));
            let why = denial(no_name_taken(spec(&pod), &[&sink], true, "app"));
            assert!(why.contains(expected), "{expected}: {why}");
        }
        let plain = mk_pod(json!({"spec": {"volumes": [{"name": SPOOL_VOLUME, "emptyDir": {}}]}}));
        assert!(
            no_name_taken(spec(&plain), &[&sink], false, "app").is_ok(),
            "the spool volume's name is free to use when starsink adds none"
        );
    }

    #[test]
    fn the_grace_period_is_the_pods_raised_to_the_largest_sink_minimum() {
        let short = mk_sink("a", "shop", json!({"sidecar": {"minGracePeriod": "45s"}}));
        let long = mk_sink("b", "shop", json!({"sidecar": {"minGracePeriod": "2m"}}));
        let plain = mk_sink("c", "shop", json!({}));
        for (pod_grace, sinks, expected) in [
            (None, vec![&plain], DEFAULT_GRACE_SECONDS),
            (Some(10), vec![&plain], 10),
            (Some(10), vec![&short], 45),
            (None, vec![&short, &long], 120),
            (Some(300), vec![&short, &long], 300),
        ] {
            let pod = mk_pod(json!({"spec": {"terminationGracePeriodSeconds": pod_grace}}));
            assert_eq!(grace_period(spec(&pod), &sinks), expected, "{pod_grace:?}");
        }
    }

    #[test]
    fn plan_leaves_pods_without_the_opt_in_or_already_injected_unchanged() {
        let sinks = [mk_sink("orders", "shop", json!({}))];
        let settings = InjectSettings::default();
        let no_label = mk_pod(json!({"metadata": {"labels": {"starsink.io/inject": "false"}}}));
        let r = plan(&no_label, &sinks, &settings).map(|_| ());
        assert!(matches!(r, Err(Injection::Unchanged(_))), "{r:?}");

        let Injection::Injected(injected) = inject(&mk_pod(json!({})), &sinks, &settings) else {
            panic!("the plain pod is injected");
        };
        let again = plan(&injected, &sinks, &settings).map(|_| ());
        assert!(
            matches!(again, Err(Injection::Unchanged(ref why)) if why == "already injected"),
            "{again:?}"
        );
    }
}
