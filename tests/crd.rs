//! The StarRocksSink CRD: committed as generated, a valid apiextensions.k8s.io/v1 object
//! with a structural schema, and the examples under `examples/` pass it (and the loader's
//! own checks) while bad sinks fail with the field named.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::{json, Value};
use starsink::api::resource::crd_yaml;
use starsink::api::StarRocksSink;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema() -> Value {
    let crd = starsink::api::resource::crd();
    let v = &crd.spec.versions[0];
    serde_json::to_value(
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has an openAPIV3Schema"),
    )
    .unwrap()
}

/// Schema errors for `doc`, as `path: message` lines.
fn schema_errors(doc: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(&schema()).expect("the schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Messages of the CRD's CEL rules (`x-kubernetes-validations`) that `doc` breaks,
/// evaluated as the API server would.
fn cel_errors(doc: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn the_committed_crd_is_what_starsink_crd_prints() {
    let committed = std::fs::read_to_string(repo("crds/starrocks-sink.yaml"))
        .expect("crds/starrocks-sink.yaml is committed");
    assert!(
        committed == crd_yaml(),
        "crds/starrocks-sink.yaml is out of date with the Rust types; regenerate it with\n  cargo run -- crd > crds/starrocks-sink.yaml"
    );
}

#[test]
fn the_crd_is_a_valid_apiextensions_v1_object() {
    let text = std::fs::read_to_string(repo("crds/starrocks-sink.yaml")).unwrap();
    let raw: Value = serde_yaml::from_str(&text).expect("the CRD is YAML");
    // Round-tripping through the API type loses any field it does not define, so a
    // misspelt or misplaced key shows up as a difference.
    let typed: CustomResourceDefinition =
        serde_json::from_value(raw.clone()).expect("the CRD reads as a CustomResourceDefinition");
    assert_eq!(serde_json::to_value(&typed).unwrap(), raw);
    assert_eq!(raw["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(raw["kind"], "CustomResourceDefinition");
    assert_eq!(
        typed.metadata.name.as_deref(),
        Some("starrockssinks.starsink.io")
    );
    let spec = &typed.spec;
    assert_eq!(spec.group, "starsink.io");
    assert_eq!(spec.scope, "Namespaced");
    assert_eq!(spec.names.kind, "StarRocksSink");
    assert_eq!(
        spec.names.short_names.as_deref(),
        Some(&["srs".to_owned()][..])
    );
    let v = &spec.versions[0];
    assert_eq!(
        (v.name.as_str(), v.served, v.storage),
        ("v1alpha1", true, true)
    );
    assert!(v
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some());
    let columns: Vec<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Ready", "Database", "Table", "Pods", "Outdated", "Age"]
    );
}

/// Walks a schema node, collecting the places that break Kubernetes' structural-schema
/// rules: every node has a type (or is int-or-string / preserves unknown fields), no
/// `$ref`, and nothing but value validations inside `anyOf`/`allOf`/`oneOf`.
fn structural_problems(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    if obj.contains_key("$ref") {
        out.push(format!("{path}: $ref is not allowed"));
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_junctor {
        for k in [
            "type",
            "default",
            "nullable",
            "additionalProperties",
            "description",
        ] {
            if obj.contains_key(k) {
                out.push(format!("{path}: `{k}` inside anyOf/allOf/oneOf"));
            }
        }
    } else if !obj.contains_key("type") && !int_or_string && !preserve {
        out.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_problems(v, &format!("{path}.{k}"), in_junctor, out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), in_junctor, out);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(ap, &format!("{path}{{}}"), in_junctor, out);
    }
    for j in ["anyOf", "allOf", "oneOf"] {
        for (i, v) in obj
            .get(j)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            structural_problems(v, &format!("{path}.{j}[{i}]"), true, out);
        }
    }
}

#[test]
fn the_schema_is_structural() {
    let mut problems = Vec::new();
    structural_problems(&schema(), "", false, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Every `StarRocksSink` document under `examples/`, with its file name.
fn example_sinks() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("examples")).expect("examples/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap();
            if v["kind"] == "StarRocksSink" {
                out.push((path.display().to_string(), v));
            }
        }
    }
    out
}

#[test]
fn every_example_sink_passes_the_schema_and_the_loaders_checks() {
    let examples = example_sinks();
    assert!(examples.len() >= 2, "examples/ should hold sinks");
    for (file, doc) in examples {
        let errors = schema_errors(&doc);
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        let errors = cel_errors(&doc);
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        let sink: StarRocksSink = serde_json::from_value(doc).expect("the example reads");
        let name = sink.metadata.name.clone().unwrap();
        let problems = sink.spec.problems(&name);
        assert!(problems.is_empty(), "{file}: {problems:?}");
    }
}

/// A valid sink with `path` (slash-separated, under the object) set to `value`.
fn with(path: &str, value: Value) -> Value {
    let mut doc = example_sinks()
        .into_iter()
        .find(|(_, d)| d["metadata"]["name"] == "orders")
        .expect("the orders example")
        .1;
    let mut node = &mut doc;
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        node = &mut node[*p];
    }
    let last = parts[parts.len() - 1];
    if value.is_null() {
        node.as_object_mut().unwrap().remove(last);
    } else {
        node[last] = value;
    }
    doc
}

#[test]
fn bad_sinks_fail_the_schema_at_the_field() {
    let cases = [
        (
            "spec/starrocks/table",
            Value::from("orders-2024"),
            "/spec/starrocks/table",
        ),
        (
            "spec/starrocks/database",
            Value::from(""),
            "/spec/starrocks/database",
        ),
        ("spec/format", Value::from("parquet"), "/spec/format"),
        ("spec/flush/maxRows", Value::from(0), "/spec/flush/maxRows"),
        (
            "spec/flush/interval",
            Value::from("5"),
            "/spec/flush/interval",
        ),
        (
            "spec/flush/maxBytes",
            Value::from("64 furlongs"),
            "/spec/flush/maxBytes",
        ),
        (
            "spec/starrocks/feEndpoints",
            serde_json::json!(["ftp://fe:8030"]),
            "/spec/starrocks/feEndpoints/0",
        ),
        (
            "spec/starrocks/feEndpoints",
            serde_json::json!([]),
            "/spec/starrocks/feEndpoints",
        ),
        (
            "spec/starrocks/feEndpoints",
            serde_json::json!(["http://loader:pw@fe:8030"]),
            "/spec/starrocks/feEndpoints/0",
        ),
        ("spec/credentialsSecretRef", Value::Null, "/spec"),
    ];
    for (path, value, at) in cases {
        let errors = schema_errors(&with(path, value.clone()));
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{at}: "))),
            "{path} = {value}: expected an error at {at}, got {errors:#?}"
        );
    }
}

/// Sets `path` to `value` and checks that the CRD's CEL rules (when `cel`) and the check
/// the loader and controller share both refuse it, the latter at `key` with `words`.
fn refused(path: &str, value: Value, key: &str, words: &str, cel: bool) {
    let doc = with(path, value.clone());
    if cel {
        let errors = cel_errors(&doc);
        assert!(
            errors.iter().any(|e| e.contains(words)),
            "{path} = {value}: no CEL rule said {words:?}: {errors:?}"
        );
    }
    let sink: StarRocksSink = serde_json::from_value(doc).unwrap();
    let name = sink.metadata.name.clone().unwrap();
    let problems = sink.spec.problems(&name);
    assert!(
        problems
            .iter()
            .any(|p| p.key == key && p.message.contains(words)),
        "{path} = {value}: expected {key}: ...{words}..., got {problems:?}"
    );
}

#[test]
fn rules_that_span_fields_are_cel_in_the_crd_and_the_same_words_in_rust() {
    // These pass the schema's types and patterns; CEL and the shared check refuse them.
    refused(
        "spec/flush/interval",
        "0s".into(),
        "spec.flush.interval",
        "more than zero",
        true,
    );
    refused(
        "spec/columnSeparator",
        ";".into(),
        "spec.columnSeparator",
        "only applies to format: csv",
        true,
    );
    refused(
        "spec/retry",
        serde_json::json!({"minBackoff": "10s", "maxBackoff": "1s"}),
        "spec.retry.maxBackoff",
        "below retry.minBackoff",
        true,
    );
    refused(
        "spec/flush",
        serde_json::json!({"interval": "2m", "maxInterval": "30s"}),
        "spec.flush.maxInterval",
        "below flush.interval",
        true,
    );
    refused(
        "spec/acks",
        "spooled".into(),
        "spec.acks",
        "`spooled` needs a spool to spool to",
        true,
    );
    for both_or_neither in [
        serde_json::json!({"ca": {"configMap": "ca", "secret": "ca"}}),
        serde_json::json!({"ca": {"key": "ca.pem"}}),
    ] {
        refused(
            "spec/tls",
            both_or_neither,
            "spec.tls.ca",
            "name either a configMap or a secret",
            true,
        );
    }
    refused(
        "metadata/name",
        "Orders.v2".into(),
        "metadata.name",
        "use 1-63 characters of a-z, 0-9 and -",
        true,
    );
}

#[test]
fn what_neither_schema_nor_cel_says_the_shared_rust_check_does() {
    refused(
        "spec/flush/maxBytes",
        100.into(),
        "spec.flush.maxBytes",
        "too small",
        false,
    );
    refused(
        "spec/spool",
        serde_json::json!({"maxBytes": "64MiB"}),
        "spec.spool.maxBytes",
        "cannot hold the two batches",
        false,
    );
    refused(
        "spec/starrocks/properties",
        serde_json::json!({"label": "x"}),
        "spec.starrocks.properties.label",
        "cannot be set",
        false,
    );
}

#[test]
fn values_the_loader_cannot_read_are_refused_by_the_schema_alone() {
    // Each passed the old schema (unbounded digits) and then broke every reader of the
    // sink list. Refused by the schema, they get one error each, and no CEL error on top.
    let cases = [
        (
            "spec/retry/warnAfter",
            json!("99999999999999999999h"),
            "/spec/retry/warnAfter",
        ),
        ("spec/flush/interval", json!("5"), "/spec/flush/interval"),
        ("spec/flush/interval", json!("1.5s"), "/spec/flush/interval"),
        ("spec/retry/minBackoff", json!(""), "/spec/retry/minBackoff"),
        (
            "spec/maxRecordBytes",
            json!("99999999999999999999GiB"),
            "/spec/maxRecordBytes",
        ),
        (
            "spec/flush/maxBytes",
            json!(99_999_999_999_999_999u64),
            "/spec/flush/maxBytes",
        ),
        (
            "spec/flush/maxRows",
            json!(99_999_999_999_999_999u64),
            "/spec/flush/maxRows",
        ),
    ];
    for (path, value, at) in cases {
        let doc = with(path, value.clone());
        let errors = schema_errors(&doc);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{at}: "))),
            "{path} = {value}: expected a schema error at {at}, got {errors:#?}"
        );
        let cel = cel_errors(&doc);
        assert!(cel.is_empty(), "{path} = {value}: CEL added {cel:?}");
    }
}

#[test]
fn every_cel_duration_call_is_guarded_by_the_schemas_own_pattern() {
    let rules = schema()["properties"]["spec"]["x-kubernetes-validations"].clone();
    let pattern = starsink::api::units::DURATION_PATTERN;
    let mut calls = 0;
    for rule in rules.as_array().unwrap() {
        let rule = rule["rule"].as_str().unwrap();
        for arg in rule.split("duration(self.").skip(1) {
            let field = format!("self.{}", &arg[..arg.find(')').unwrap()]);
            let guard = format!("!({field} != '' && {field}.matches('{pattern}')) ||");
            assert!(rule.contains(&guard), "{field} unguarded in {rule}");
            calls += 1;
        }
    }
    assert_eq!(calls, 5);
}

#[test]
fn the_schema_has_no_nullable_field_and_no_format_the_server_warns_about() {
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        match node {
            Value::Object(m) => {
                if m.contains_key("nullable") {
                    out.push(format!("{path}: nullable"));
                }
                if let Some(f) = m.get("format").and_then(Value::as_str) {
                    // The formats apiextensions-apiserver knows (k8s.io/kube-openapi
                    // pkg/validation/strfmt, plus int32/int64/float/double/byte).
                    let known = [
                        "int32",
                        "int64",
                        "float",
                        "double",
                        "byte",
                        "date",
                        "date-time",
                        "duration",
                        "uri",
                        "email",
                        "hostname",
                        "ipv4",
                        "ipv6",
                        "cidr",
                        "mac",
                        "uuid",
                        "password",
                        "binary",
                    ];
                    if !known.contains(&f) {
                        out.push(format!("{path}: format {f}"));
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{path}/{k}"), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, path, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&schema(), "", &mut found);
    assert!(found.is_empty(), "{found:#?}");
}
