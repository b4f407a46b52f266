//! `starsink inject`: runs [`inject`] over the pods and pod templates of multi-document
//! YAML (Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs). Other
//! documents, and pods that are left unchanged, are passed through byte for byte.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::inject::{inject, InjectSettings, Injection};
use crate::api::StarRocksSink;

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{doc}: {message}")]
    Document { doc: String, message: String },
    #[error("{file}: {message}")]
    SinkFile { file: String, message: String },
}

/// Splits YAML text into documents at `---` lines, keeping each document's own text.
fn documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

/// Reads the `StarRocksSink` documents of a sink file.
pub fn read_sinks(text: &str, file: &str) -> Result<Vec<StarRocksSink>, InjectError> {
    let mut out = Vec::new();
    for (i, doc) in documents(text).into_iter().enumerate() {
        let err = |message: String| InjectError::SinkFile {
            file: format!("{file} (document {})", i + 1),
            message,
        };
        let value: Value = match serde_yaml::from_str(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => return Err(err(format!("not YAML: {e}"))),
        };
        if value["kind"] != "StarRocksSink" {
            return Err(err(format!(
                "expected kind StarRocksSink, found {}",
                value["kind"]
            )));
        }
        let sink: StarRocksSink = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        out.push(sink);
    }
    Ok(out)
}

/// Where a kind keeps its pod template, as a JSON pointer.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the loader into every pod and pod template of `text`.
pub fn inject_manifests(
    text: &str,
    sinks: &[StarRocksSink],
    settings: &InjectSettings,
) -> Result<String, InjectError> {
    let out = documents(text)
        .iter()
        .enumerate()
        .map(|(i, doc)| inject_document(i + 1, doc, sinks, settings))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(join(&out))
}

/// Document `n` of a manifest: as it is (not a kind with a pod, or its pod left
/// unchanged), or with the loader in its pod or pod template.
fn inject_document(
    n: usize,
    doc: &str,
    sinks: &[StarRocksSink],
    settings: &InjectSettings,
) -> Result<String, InjectError> {
    let mut value: Value = serde_yaml::from_str(doc).map_err(|e| InjectError::Document {
        doc: format!("document {n}"),
        message: format!("not YAML: {e}"),
    })?;
    let kind = value["kind"].as_str().unwrap_or("").to_owned();
    let name = value["metadata"]["name"]
        .as_str()
        .or(value["metadata"]["generateName"].as_str())
        .unwrap_or("")
        .to_owned();
    let fail = |message: String| InjectError::Document {
        doc: format!("document {n} ({kind} {name})"),
        message,
    };
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(doc.to_string());
    };
    let namespace = value["metadata"]["namespace"].clone();
    let field = if pointer.is_empty() {
        "the pod".to_owned()
    } else {
        pointer.trim_start_matches('/').replace('/', ".")
    };
    let Some(template) = value.pointer_mut(pointer) else {
        return Err(fail(format!("{field} is missing")));
    };
    let mut pod_value = template.clone();
    if !pointer.is_empty() && !namespace.is_null() {
        pod_value["metadata"]["namespace"] = namespace;
    }
    let pod: Pod = serde_json::from_value(pod_value).map_err(|e| fail(format!("{field}: {e}")))?;
    match inject(&pod, sinks, settings) {
        Injection::Unchanged(_) => Ok(doc.to_string()),
        Injection::Denied(why) => Err(fail(why)),
        Injection::Injected(injected) => {
            let injected = serde_json::to_value(*injected).map_err(|e| fail(e.to_string()))?;
            *template = if pointer.is_empty() {
                injected
            } else {
                as_template(injected)
            };
            serde_yaml::to_string(&value).map_err(|e| fail(e.to_string()))
        }
    }
}

/// An injected pod as a pod template: a template carries no namespace, apiVersion, kind
/// or status of its own.
fn as_template(mut pod: Value) -> Value {
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("namespace");
    }
    if let Some(o) = pod.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        o.remove("status");
    }
    pod
}

fn join(docs: &[String]) -> String {
    let mut text = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("---\n");
        }
        text.push_str(d);
    }
    text
}

/// Parses `--kube-version` (`1.30`, `v1.28.3`, `1.29+`).
pub fn parse_kube_version(v: &str) -> Result<(u32, u32), String> {
    let t = v.trim().trim_start_matches('v');
    let mut parts = t.split('.');
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts
        .next()
        .map(|p| p.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!(
            "`{v}` is not a Kubernetes version; write it like 1.30"
        )),
    }
}
