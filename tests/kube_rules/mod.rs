//! The Kubernetes API server's own object validation, for what starsink produces: a test
//! calls [`problems`] on an object (as JSON) and gets what a real server would refuse, as
//! `field.path: reason` lines. OpenAPI-schema checks (kubernetes-validate) do not catch
//! these: they are Go code in the API server, not schema.
//!
//! Every rule names where it comes from in Kubernetes (paths in kubernetes/kubernetes):
//! - `apimachinery/pkg/util/validation/validation.go`: the name formats
//!   (IsDNS1123Label, IsDNS1123Subdomain, IsValidPortName, IsQualifiedName,
//!   IsValidLabelValue, IsEnvVarName, IsConfigMapKey);
//! - `apimachinery/pkg/api/validation/objectmeta.go`: names, generateName, annotations;
//! - `apimachinery/pkg/apis/meta/v1/validation/validation.go`: labels;
//! - `pkg/apis/core/validation/validation.go`: pods, containers, volumes, probes,
//!   resources, ConfigMaps, Services (ValidatePodSpec, validateContainers,
//!   validateInitContainers, validateContainerPorts, ValidateVolumes, validateProbe,
//!   ValidateResourceRequirements, ValidateConfigMap, ValidateService);
//! - `pkg/apis/apps/validation/validation.go` and `pkg/apis/batch/validation/validation.go`:
//!   the pod template's restartPolicy and selector of Deployments, StatefulSets, Jobs;
//! - `staging/src/k8s.io/pod-security-admission/policy/`: the `restricted` profile.
#![allow(dead_code)]

use std::collections::BTreeSet;

use serde_json::Value;

/// Everything a real API server would refuse in `obj`, by field path.
pub fn problems(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let kind = obj["kind"].as_str().unwrap_or("");
    object_meta(&obj["metadata"], kind, "metadata", &mut out);
    match kind {
        "Pod" => pod_spec(&obj["spec"], "spec", &mut out),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            template(&obj["spec"], "spec", &mut out);
            if kind != "DaemonSet" || !obj["spec"]["template"]["spec"]["restartPolicy"].is_null() {
                // apps: only Always is allowed (ValidatePodTemplateSpecForReplicaSet & co).
                let rp = &obj["spec"]["template"]["spec"]["restartPolicy"];
                if !rp.is_null() && rp != "Always" {
                    out.push(format!(
                        "spec.template.spec.restartPolicy: Unsupported value: {rp}: supported values: \"Always\""
                    ));
                }
            }
        }
        "Job" => job(&obj["spec"], "spec", &mut out),
        "CronJob" => {
            let spec = &obj["spec"]["jobTemplate"]["spec"];
            job(spec, "spec.jobTemplate.spec", &mut out);
        }
        "ConfigMap" => config_map(obj, &mut out),
        "Secret" => data_keys(&obj["data"], "data", &mut out),
        "Service" => service(&obj["spec"], &mut out),
        _ => {}
    }
    out
}

/// [`problems`] of `obj`, plus the `restricted` Pod Security profile's for its pod spec.
pub fn problems_restricted(obj: &Value) -> Vec<String> {
    let mut out = problems(obj);
    if let Some((spec, path)) = pod_spec_of(obj) {
        restricted(spec, &path, &mut out);
    }
    out
}

/// The pod spec inside a Pod or a workload, with its path.
pub fn pod_spec_of(obj: &Value) -> Option<(&Value, String)> {
    match obj["kind"].as_str()? {
        "Pod" => Some((&obj["spec"], "spec".into())),
        "CronJob" => Some((
            &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            "spec.jobTemplate.spec.template.spec".into(),
        )),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some((
            &obj["spec"]["template"]["spec"],
            "spec.template.spec".into(),
        )),
        _ => None,
    }
}

// ---- name formats (apimachinery/pkg/util/validation/validation.go) ----

/// IsDNS1123Label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn dns_label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some(format!(
            "must be no more than 63 characters ({} given)",
            s.len()
        ));
    }
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    (!ok).then(|| "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into())
}

/// IsDNS1123Subdomain: at most 253; dot-separated DNS-1123 labels (each without the
/// 63 limit applied separately by this function in Go; only the whole is bounded).
pub fn dns_subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some(format!(
            "must be no more than 253 characters ({} given)",
            s.len()
        ));
    }
    let ok = !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    (!ok).then(|| "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into())
}

/// IsValidPortName (IANA_SVC_NAME): at most 15 of `[a-z0-9-]`, at least one letter, no
/// `--`, not starting or ending with `-`.
pub fn port_name(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") {
        return Some("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must not begin or end with a hyphen".into());
    }
    None
}

/// The name part of a qualified name or a label value: at most 63 of `[A-Za-z0-9-_.]`,
/// starting and ending alphanumeric.
fn qualified_name_part(s: &str) -> bool {
    s.len() <= 63
        && !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// IsQualifiedName: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if let Some(e) = dns_subdomain(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    (!qualified_name_part(name)).then(|| "name part must consist of alphanumeric characters, '-', '_' or '.', must start and end with an alphanumeric character, and must be no more than 63 characters".into())
}

/// IsValidLabelValue: empty, or a qualified name's name part (so at most 63).
pub fn label_value(s: &str) -> Option<String> {
    (!s.is_empty() && !qualified_name_part(s)).then(|| {
        format!(
            "must be no more than 63 characters, alphanumeric, '-', '_' or '.', starting and ending alphanumeric ({} given)",
            s.len()
        )
    })
}

/// IsEnvVarName: `[-._a-zA-Z][-._a-zA-Z0-9]*`. (1.30+ can relax this behind
/// RelaxedEnvironmentVariableValidation; the strict form is what every version takes.)
pub fn env_var_name(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    (!ok).then(|| "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit".into())
}

/// IsConfigMapKey: at most 253 of `[-._a-zA-Z0-9]`, not `.` or `..` (or starting `..`).
pub fn config_map_key(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && s != "."
        && !s.starts_with("..");
    (!ok).then(|| "a valid config key must consist of alphanumeric characters, '-', '_' or '.', at most 253, and must not be '.' or start with '..'".into())
}

fn push(out: &mut Vec<String>, path: &str, value: &str, err: Option<String>) {
    if let Some(e) = err {
        out.push(format!("{path}: Invalid value: {value:?}: {e}"));
    }
}

// ---- object meta (objectmeta.go, meta/v1/validation) ----

fn object_meta(meta: &Value, kind: &str, path: &str, out: &mut Vec<String>) {
    // Namespaces and Services are DNS-1123/1035 labels; most kinds are subdomains
    // (ValidateNamespaceName, ValidateServiceName, NameIsDNSSubdomain).
    let name_rule: fn(&str) -> Option<String> = match kind {
        "Namespace" | "Service" => dns_label,
        _ => dns_subdomain,
    };
    match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(n), _) => push(out, &format!("{path}.name"), n, name_rule(n)),
        // generateName is checked as a prefix: the name rule on it with the trailing '-'
        // allowed (a generated suffix follows).
        (None, Some(g)) => {
            let g = g.trim_end_matches('-');
            push(out, &format!("{path}.generateName"), g, name_rule(g));
        }
        (None, None) => {}
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            push(out, &format!("{path}.labels"), k, qualified_name(k));
            let v = v.as_str().unwrap_or("");
            push(out, &format!("{path}.labels[{k}]"), v, label_value(v));
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            push(out, &format!("{path}.annotations"), k, qualified_name(k));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        // TotalAnnotationSizeLimitB
        if total > 256 * 1024 {
            out.push(format!(
                "{path}.annotations: Too long: must have at most 262144 bytes"
            ));
        }
    }
}

// ---- workloads ----

fn template(spec: &Value, path: &str, out: &mut Vec<String>) {
    let t = &spec["template"];
    object_meta(
        &t["metadata"],
        "",
        &format!("{path}.template.metadata"),
        out,
    );
    // ValidateDeploymentSpec & co: the selector must match the template's labels.
    if let Some(sel) = spec["selector"]["matchLabels"].as_object() {
        for (k, v) in sel {
            if t["metadata"]["labels"][k] != *v {
                out.push(format!(
                    "{path}.template.metadata.labels: Invalid value: `selector` does not match template `labels` ({k})"
                ));
            }
        }
    }
    pod_spec(&t["spec"], &format!("{path}.template.spec"), out);
}

fn job(spec: &Value, path: &str, out: &mut Vec<String>) {
    template(spec, path, out);
    // batch validation: a Job's pods must run to completion.
    let rp = spec["template"]["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("");
    if rp != "OnFailure" && rp != "Never" {
        out.push(format!(
            "{path}.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
        ));
    }
}

// ---- pod spec (pkg/apis/core/validation/validation.go) ----

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn pod_spec(spec: &Value, path: &str, out: &mut Vec<String>) {
    // ValidateVolumes: unique DNS-1123 label names, one source each.
    let mut volumes = BTreeSet::new();
    for (i, v) in list(&spec["volumes"]).iter().enumerate() {
        let name = v["name"].as_str().unwrap_or("");
        let p = format!("{path}.volumes[{i}].name");
        push(out, &p, name, dns_label(name));
        if !volumes.insert(name.to_owned()) {
            out.push(format!("{p}: Duplicate value: {name:?}"));
        }
        let sources = v
            .as_object()
            .map_or(0, |o| o.keys().filter(|k| *k != "name").count());
        if sources != 1 {
            out.push(format!(
                "{path}.volumes[{i}]: Invalid value: must specify exactly 1 volume type"
            ));
        }
    }
    // Pod restartPolicy (validateRestartPolicy).
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            out.push(format!("{path}.restartPolicy: Unsupported value: {rp:?}"));
        }
    }
    if let Some(g) = spec["terminationGracePeriodSeconds"].as_i64() {
        if g < 0 {
            out.push(format!(
                "{path}.terminationGracePeriodSeconds: must be >= 0"
            ));
        }
    }
    // Container names are unique across init and app containers, and port names across
    // the pod (ContainerPort.name: "unique within the pod", core/v1 types.go).
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, c) in list(&spec["initContainers"]).iter().enumerate() {
        let p = format!("{path}.initContainers[{i}]");
        container(c, &p, &volumes, &mut names, &mut ports, out);
        // validateInitContainers: restartPolicy may only be Always (a sidecar); an init
        // container that is not a sidecar may have no probes and no lifecycle.
        let sidecar = c["restartPolicy"] == "Always";
        if !c["restartPolicy"].is_null() && !sidecar {
            out.push(format!(
                "{p}.restartPolicy: Unsupported value: {}: supported values: \"Always\"",
                c["restartPolicy"]
            ));
        }
        if !sidecar {
            for f in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if !c[f].is_null() {
                    out.push(format!("{p}.{f}: Forbidden: may not be set for init containers without restartPolicy=Always"));
                }
            }
        }
    }
    if list(&spec["containers"]).is_empty() {
        out.push(format!("{path}.containers: Required value"));
    }
    for (i, c) in list(&spec["containers"]).iter().enumerate() {
        let p = format!("{path}.containers[{i}]");
        container(c, &p, &volumes, &mut names, &mut ports, out);
        // validateContainers: restartPolicy is for init containers only.
        if !c["restartPolicy"].is_null() {
            out.push(format!(
                "{p}.restartPolicy: Forbidden: may not be set for non-init containers"
            ));
        }
    }
}

fn container(
    c: &Value,
    path: &str,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    ports: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let name = c["name"].as_str().unwrap_or("");
    push(out, &format!("{path}.name"), name, dns_label(name));
    if !names.insert(name.to_owned()) {
        out.push(format!("{path}.name: Duplicate value: {name:?}"));
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        out.push(format!("{path}.image: Required value"));
    }
    for (j, port) in list(&c["ports"]).iter().enumerate() {
        let p = format!("{path}.ports[{j}]");
        if let Some(n) = port["name"].as_str() {
            push(out, &format!("{p}.name"), n, port_name(n));
            if !ports.insert(n.to_owned()) {
                out.push(format!("{p}.name: Duplicate value: {n:?}"));
            }
        }
        let n = port["containerPort"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&n) {
            out.push(format!(
                "{p}.containerPort: Invalid value: {n}: must be between 1 and 65535, inclusive"
            ));
        }
    }
    for (j, e) in list(&c["env"]).iter().enumerate() {
        let n = e["name"].as_str().unwrap_or("");
        push(out, &format!("{path}.env[{j}].name"), n, env_var_name(n));
    }
    // validateVolumeMounts: each names a volume of the pod; mount paths unique.
    let mut paths = BTreeSet::new();
    for (j, m) in list(&c["volumeMounts"]).iter().enumerate() {
        let n = m["name"].as_str().unwrap_or("");
        if !volumes.contains(n) {
            out.push(format!("{path}.volumeMounts[{j}].name: Not found: {n:?}"));
        }
        // validateVolumeMounts: subPath and subPathExpr exclude each other, and either is
        // a relative path that does not climb out (`..`).
        if !m["subPath"].is_null() && !m["subPathExpr"].is_null() {
            out.push(format!("{path}.volumeMounts[{j}].subPathExpr: Invalid value: subPathExpr and subPath are mutually exclusive"));
        }
        for f in ["subPath", "subPathExpr"] {
            if let Some(sp) = m[f].as_str() {
                if sp.starts_with('/') || sp.split('/').any(|part| part == "..") {
                    out.push(format!("{path}.volumeMounts[{j}].{f}: Invalid value: {sp:?}: must be a relative path without '..'"));
                }
            }
        }
        let mp = m["mountPath"].as_str().unwrap_or("");
        if mp.is_empty() {
            out.push(format!(
                "{path}.volumeMounts[{j}].mountPath: Required value"
            ));
        } else if !paths.insert(mp.trim_end_matches('/').to_owned()) {
            out.push(format!(
                "{path}.volumeMounts[{j}].mountPath: Invalid value: {mp:?}: must be unique"
            ));
        }
    }
    for f in ["livenessProbe", "readinessProbe", "startupProbe"] {
        probe(&c[f], f, &format!("{path}.{f}"), out);
    }
    resources(&c["resources"], &format!("{path}.resources"), out);
}

/// validateProbe: exactly one handler; liveness and startup need successThreshold 1;
/// periods and thresholds positive.
fn probe(p: &Value, which: &str, path: &str, out: &mut Vec<String>) {
    if p.is_null() {
        return;
    }
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"]
        .iter()
        .filter(|h| !p[**h].is_null())
        .count();
    if handlers != 1 {
        out.push(format!(
            "{path}: Invalid value: must specify exactly 1 handler type"
        ));
    }
    if which != "readinessProbe" && p["successThreshold"].as_i64().is_some_and(|n| n != 1) {
        out.push(format!("{path}.successThreshold: Invalid value: must be 1"));
    }
    for f in [
        "periodSeconds",
        "failureThreshold",
        "timeoutSeconds",
        "successThreshold",
    ] {
        if p[f].as_i64().is_some_and(|n| n < 1) {
            out.push(format!(
                "{path}.{f}: Invalid value: must be greater than or equal to 1"
            ));
        }
    }
    if let Some(port) = p["httpGet"]["port"].as_str() {
        push(out, &format!("{path}.httpGet.port"), port, port_name(port));
    }
}

/// ValidateResourceRequirements: every request is at most its limit.
fn resources(r: &Value, path: &str, out: &mut Vec<String>) {
    let Some(requests) = r["requests"].as_object() else {
        return;
    };
    for (name, q) in requests {
        let limit = &r["limits"][name];
        if limit.is_null() {
            continue;
        }
        match (quantity(q), quantity(limit)) {
            (Some(req), Some(lim)) if req > lim => out.push(format!(
                "{path}.requests[{name}]: Invalid value: {q}: must be less than or equal to {name} limit of {limit}"
            )),
            (None, _) => out.push(format!("{path}.requests[{name}]: Invalid value: {q}: not a quantity")),
            (_, None) => out.push(format!("{path}.limits[{name}]: Invalid value: {limit}: not a quantity")),
            _ => {}
        }
    }
}

/// A resource quantity's value (apimachinery/pkg/api/resource/quantity.go suffixes).
pub fn quantity(v: &Value) -> Option<f64> {
    if let Some(n) = v.as_f64() {
        return Some(n);
    }
    let s = v.as_str()?;
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

// ---- ConfigMap, Secret, Service ----

fn config_map(obj: &Value, out: &mut Vec<String>) {
    data_keys(&obj["data"], "data", out);
    data_keys(&obj["binaryData"], "binaryData", out);
    // ValidateConfigMap: data and binaryData together at most 1 MiB (core.MaxSecretSize).
    let size: usize = ["data", "binaryData"]
        .iter()
        .filter_map(|f| obj[*f].as_object())
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > 1024 * 1024 {
        out.push("data: Too long: must have at most 1048576 bytes".into());
    }
}

fn data_keys(data: &Value, path: &str, out: &mut Vec<String>) {
    for k in data.as_object().into_iter().flat_map(|m| m.keys()) {
        push(out, &format!("{path}[{k}]"), k, config_map_key(k));
    }
}

/// ValidateService: port names are DNS-1123 labels, unique, required with 2+ ports.
fn service(spec: &Value, out: &mut Vec<String>) {
    let ports = list(&spec["ports"]);
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        match p["name"].as_str() {
            Some(n) => {
                push(out, &format!("spec.ports[{i}].name"), n, dns_label(n));
                if !names.insert(n) {
                    out.push(format!("spec.ports[{i}].name: Duplicate value: {n:?}"));
                }
            }
            None if ports.len() > 1 => out.push(format!("spec.ports[{i}].name: Required value")),
            None => {}
        }
        if let Some(t) = p["targetPort"].as_str() {
            push(out, &format!("spec.ports[{i}].targetPort"), t, port_name(t));
        }
    }
}

// ---- Pod Security `restricted` (pod-security-admission/policy) ----

/// The checks of the `restricted` profile (latest) for a pod spec.
fn restricted(spec: &Value, path: &str, out: &mut Vec<String>) {
    let pod = &spec["securityContext"];
    // restricted_volumes: only these volume types.
    const ALLOWED: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for (i, v) in list(&spec["volumes"]).iter().enumerate() {
        let kinds = v.as_object().into_iter().flat_map(|o| o.keys());
        for k in kinds.filter(|k| *k != "name") {
            if !ALLOWED.contains(&k.as_str()) {
                out.push(format!(
                    "{path}.volumes[{i}]: restricted forbids {k} volumes"
                ));
            }
        }
    }
    let containers = list(&spec["initContainers"])
        .iter()
        .map(|c| ("initContainers", c))
        .chain(list(&spec["containers"]).iter().map(|c| ("containers", c)));
    for (field, c) in containers {
        let sc = &c["securityContext"];
        let who = format!("{path}.{field}[{}]", c["name"].as_str().unwrap_or("?"));
        if sc["allowPrivilegeEscalation"] != false {
            out.push(format!(
                "{who}: restricted needs allowPrivilegeEscalation=false"
            ));
        }
        let drop = list(&sc["capabilities"]["drop"]);
        if !drop.iter().any(|x| x == "ALL") {
            out.push(format!(
                "{who}: restricted needs capabilities.drop=[\"ALL\"]"
            ));
        }
        if list(&sc["capabilities"]["add"])
            .iter()
            .any(|x| x != "NET_BIND_SERVICE")
        {
            out.push(format!(
                "{who}: restricted allows adding only NET_BIND_SERVICE"
            ));
        }
        let non_root = if sc["runAsNonRoot"].is_null() {
            &pod["runAsNonRoot"]
        } else {
            &sc["runAsNonRoot"]
        };
        if non_root != true {
            out.push(format!("{who}: restricted needs runAsNonRoot=true"));
        }
        if sc["runAsUser"] == 0 || (sc["runAsUser"].is_null() && pod["runAsUser"] == 0) {
            out.push(format!("{who}: restricted forbids runAsUser=0"));
        }
        if sc["privileged"] == true {
            out.push(format!("{who}: restricted forbids privileged"));
        }
        let seccomp = if sc["seccompProfile"].is_null() {
            &pod["seccompProfile"]
        } else {
            &sc["seccompProfile"]
        };
        if seccomp["type"] != "RuntimeDefault" && seccomp["type"] != "Localhost" {
            out.push(format!(
                "{who}: restricted needs seccompProfile.type RuntimeDefault or Localhost"
            ));
        }
    }
}
