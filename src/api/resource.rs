//! The `StarRocksSink` custom resource (`starsink.io/v1alpha1`): what a user declares
//! with kubectl. Its spec shares the loader's own fields and types ([`Format`],
//! [`StarRocksSpec`], [`FlushSpec`], [`RetrySpec`], [`Acks`]);
//! [`StarRocksSinkSpec::to_sink_spec`] projects it onto the loader's [`SinkSpec`] (a test
//! below proves the two agree field by field, docs included), and
//! [`StarRocksSinkSpec::problems`] checks it with the loader's own [`validate_sink`], so
//! both reject the same things with the same words.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::borrow::Cow;

use kube::api::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::config::{validate_sink, ConfigIssue};
use super::pod_contract;
use super::sink::{Acks, FlushSpec, Format, RetrySpec, SinkSpec, SpoolSync, StarRocksSpec};
use super::units::{ByteSize, HumanDuration, DURATION_PATTERN};

/// A sink: records that pods write to a Unix socket are loaded into one StarRocks table.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "starsink.io",
    version = "v1alpha1",
    kind = "StarRocksSink",
    plural = "starrockssinks",
    singular = "starrockssink",
    shortname = "srs",
    namespaced,
    status = "StarRocksSinkStatus",
    doc = "A StarRocksSink: records that pods write, one per line, to a Unix socket are loaded into one StarRocks table by the starsink loader sidecar.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Database",
        type_ = "string",
        json_path = ".spec.starrocks.database"
    ),
    printcolumn(name = "Table", type_ = "string", json_path = ".spec.starrocks.table"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.attachedPods"),
    printcolumn(
        name = "Outdated",
        type_ = "integer",
        json_path = ".status.outdatedPods"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63")
        .message("metadata.name: a sink name is part of socket paths and load labels; use 1-63 characters of a-z, 0-9 and -, starting and ending with a letter or digit")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.columnSeparator) || (has(self.format) && self.format == 'csv')",
        "message": "columnSeparator only applies to format: csv; remove it or set format: csv",
        "fieldPath": ".columnSeparator",
    },
    // The rules that call duration() first check the value has the form the schema's
    // pattern admits: the API server runs CEL even on a value the pattern refused, and
    // duration() on it adds a second, confusing error (a type conversion to
    // google.protobuf.Duration) to the clear one.
    {
        "rule": format!("!has(self.flush) || !has(self.flush.interval) || !{} || duration(self.flush.interval) > duration('0s')", is_duration("self.flush.interval")),
        "message": "flush.interval must be more than zero; it bounds how long a record waits, e.g. 5s",
        "fieldPath": ".flush.interval",
    },
    {
        "rule": format!("!has(self.flush) || !has(self.flush.maxInterval) || !has(self.flush.interval) || !{} || !{} || duration(self.flush.maxInterval) >= duration(self.flush.interval)", is_duration("self.flush.interval"), is_duration("self.flush.maxInterval")),
        "message": "flush.maxInterval is below flush.interval; it is how far backpressure may widen the interval",
        "fieldPath": ".flush.maxInterval",
    },
    {
        "rule": "!has(self.acks) || self.acks != 'spooled' || has(self.spool)",
        "message": "`spooled` needs a spool to spool to; set spool, or use acks: committed",
        "fieldPath": ".acks",
    },
    {
        "rule": format!("!has(self.retry) || !has(self.retry.minBackoff) || !has(self.retry.maxBackoff) || !{} || !{} || duration(self.retry.maxBackoff) >= duration(self.retry.minBackoff)", is_duration("self.retry.minBackoff"), is_duration("self.retry.maxBackoff")),
        "message": "retry.maxBackoff is below retry.minBackoff",
        "fieldPath": ".retry.maxBackoff",
    },
]))]
pub struct StarRocksSinkSpec {
    /// How each line is read and sent: `json`, one JSON object per line; `csv`, one row
    /// per line.
    #[serde(default)]
    pub format: Format,
    /// CSV only: the column separator (default `,`), sent as `column_separator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_separator: Option<String>,
    /// Longer lines are rejected, never sent. Default: 1MiB, or less when
    /// `flush.maxBytes` is smaller, so that one record always fits in a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<ByteSize>,
    /// The StarRocks cluster, database and table, and the Stream Load headers. In a
    /// `StarRocksSink` the user and password come from `credentialsSecretRef`.
    pub starrocks: StarRocksSpec,
    /// When a batch is sealed and loaded: whichever limit comes first.
    #[serde(default)]
    pub flush: FlushSpec,
    /// How transient load failures are retried, always under the batch's one label.
    #[serde(default)]
    pub retry: RetrySpec,
    /// The Secret, in the sink's namespace, holding the StarRocks user and password.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// Keep accepted records on disk in the pod until StarRocks has them (see [`SpoolSpec`]).
    /// Unset: in memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolSpec>,
    /// What the loader writes back to producers on their connection: `none`, `spooled`
    /// (needs a spool) or `committed`.
    #[serde(default)]
    pub acks: Acks,
    /// Overrides for the loader sidecar of pods that use this sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
    /// TLS to StarRocks (`https://` FE endpoints, and BE redirects to `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SinkTlsSpec>,
}

/// How the loaders of a sink check StarRocks' certificates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkTlsSpec {
    /// The CA certificates (PEM) to trust, from a key of a ConfigMap or a Secret in the
    /// sink's namespace, mounted into the loader (a change reaches running loaders).
    /// Unset: the loader image's system bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSource>,
    /// The name the certificates must be issued for, when it is not the host in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Check no certificate at all (the credentials and rows can then be read on the way).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Follow a redirect from `https://` to plain `http://`.
    #[serde(default)]
    pub allow_http_redirect: bool,
    /// A `kubernetes.io/tls` Secret (keys `tls.crt`, `tls.key`) in the sink's namespace
    /// whose certificate the loaders present, for a StarRocks or proxy that asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_cert_secret: Option<String>,
}

/// Where a sink's CA certificates come from: one of `configMap` or `secret`, and the key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.configMap) != has(self.secret)",
    "message": CA_SOURCE_RULE
}]))]
pub struct CaSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// The key holding the PEM.
    #[serde(default = "default_ca_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// What the CRD's CEL rule on `tls.ca` and [`StarRocksSinkSpec::problems`] both say.
const CA_SOURCE_RULE: &str = "name either a configMap or a secret, not both";

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// A `StarRocksSink` as the API server stores it, its spec not yet decoded: what the
/// controller and the webhook watch and cache. Decoding a list of [`StarRocksSink`]s fails
/// as a whole on one spec that cannot be read (a value an older schema let through, a
/// `null`); with this type each sink is decoded on its own ([`StoredSink::decode`]), so a
/// bad one is reported on itself and every other sink keeps working.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredSink {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub status: serde_json::Value,
}

/// Why a stored sink's spec cannot be read: the field, and what is wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The field's path in the resource, e.g. `spec.flush.maxBytes`.
    pub field: String,
    pub message: String,
}

impl kube::Resource for StoredSink {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        StarRocksSink::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        StarRocksSink::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        StarRocksSink::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        StarRocksSink::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl StoredSink {
    /// The sink with its spec decoded. A `null` anywhere in the spec counts as the key
    /// being absent (its default applies): `kubectl apply --server-side` stores one for a
    /// key left empty. The status is read leniently: it is the controller's own.
    pub fn decode(&self) -> Result<StarRocksSink, SpecError> {
        let spec: StarRocksSinkSpec =
            serde_path_to_error::deserialize(without_nulls(self.spec.clone())).map_err(|e| {
                let path = e.path().to_string();
                SpecError {
                    field: if path == "." {
                        "spec".into()
                    } else {
                        format!("spec.{path}")
                    },
                    message: e.into_inner().to_string(),
                }
            })?;
        Ok(StarRocksSink {
            metadata: self.metadata.clone(),
            spec,
            status: Some(self.status()),
        })
    }

    /// The status the controller last wrote, or an empty one.
    pub fn status(&self) -> StarRocksSinkStatus {
        serde_json::from_value(self.status.clone()).unwrap_or_default()
    }
}

/// `value` with every `null` member of an object removed, at any depth.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// A CEL test that `field` holds what the schema admits as a duration ([`DURATION_PATTERN`],
/// not empty), so `duration(field)` cannot fail.
fn is_duration(field: &str) -> String {
    format!("({field} != '' && {field}.matches('{DURATION_PATTERN}'))")
}

/// A sink's spool in the pod. The injector gives the loader an `emptyDir` volume for it
/// (sized to the spools' caps): it survives loader restarts and crashes, not the pod's
/// deletion. Annotate the pod `starsink.io/spool-volume: NAME` to spool on a volume of
/// its own instead (e.g. a StatefulSet's persistent volume claim).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpoolSpec {
    /// Disk cap; when the spool is full, producers' writes wait. At least twice
    /// `flush.maxBytes`.
    #[serde(default = "super::sink::defaults::spool_max_bytes")]
    pub max_bytes: ByteSize,
    /// When spooled records are synced to disk: `always`, `interval` (100ms or 4MiB) or
    /// `never` (the kernel decides).
    #[serde(default)]
    pub sync: SpoolSync,
}

/// A Secret with the StarRocks credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the user name.
    #[serde(default = "default_user_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub user_key: String,
    /// The key holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub password_key: String,
}

fn default_user_key() -> String {
    "username".into()
}

fn default_password_key() -> String {
    "password".into()
}

/// Per-sink overrides for the loader sidecar.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// The loader image (default: the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The loader container's resources (default: the chart's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The least `terminationGracePeriodSeconds` a pod using this sink gets, so the
    /// loader has time to flush at shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_grace_period: Option<HumanDuration>,
}

/// What the controller last saw and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StarRocksSinkStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether pods can use this sink now, and if not, why.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Running pods whose loader serves this sink.
    #[serde(default)]
    pub attached_pods: i32,
    /// Of those, pods whose loader is not what injection would attach now (the sink's
    /// `sidecar` or `spool`, or the injector's image or resources, changed since they
    /// started): they need a restart, which starsink never does by itself.
    #[serde(default)]
    pub outdated_pods: i32,
    /// Hash of the rendered loader config (the ConfigMap's `starsink.io/config-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// The loader's keys that the resource spells otherwise, each with the resource's key:
/// a problem the loader's checks find is reported where the user wrote the value.
const RESOURCE_KEYS: [(&str, &str); 4] = [
    ("spec.name", "metadata.name"),
    ("spec.spoolDir", "spec.spool"),
    ("spec.spoolSync", "spec.spool.sync"),
    ("spec.spoolMaxBytes", "spec.spool.maxBytes"),
];

impl StarRocksSinkSpec {
    /// The loader's settings for this sink in a pod: the fields both declare are copied
    /// as they are; the socket, the password file and the spool directory are the pod
    /// contract's paths ([`pod_contract`]); `user` is what the credentials Secret gives.
    /// Every field is named here, so a field added to either type does not compile until
    /// this says what becomes of it.
    pub fn to_sink_spec(&self, name: &str, user: &str) -> SinkSpec {
        let StarRocksSinkSpec {
            format,
            column_separator,
            max_record_bytes,
            starrocks,
            flush,
            retry,
            credentials_secret_ref,
            spool,
            acks,
            sidecar: _,
            tls,
        } = self;
        let mut starrocks = starrocks.clone();
        starrocks.user = user.to_owned();
        starrocks.password = None;
        starrocks.password_env = None;
        starrocks.password_file =
            Some(pod_contract::password_file(name, &credentials_secret_ref.password_key).into());
        starrocks.tls = tls.as_ref().map(|t| crate::api::sink::TlsSpec {
            ca_file: t
                .ca
                .as_ref()
                .map(|_| pod_contract::tls_ca_file(name).into()),
            server_name: t.server_name.clone(),
            cert_file: t
                .client_cert_secret
                .as_ref()
                .map(|_| format!("{}/tls.crt", pod_contract::tls_client_dir(name)).into()),
            key_file: t
                .client_cert_secret
                .as_ref()
                .map(|_| format!("{}/tls.key", pod_contract::tls_client_dir(name)).into()),
            insecure_skip_verify: t.insecure_skip_verify,
            allow_http_redirect: t.allow_http_redirect,
        });
        SinkSpec {
            name: name.to_owned(),
            socket: pod_contract::socket_path(name).into(),
            // Only the pod's containers share the emptyDir, and apps and loader often run
            // as different users.
            socket_mode: "0666".into(),
            max_connections: super::sink::defaults::max_connections(),
            max_unfinished_bytes: None,
            format: *format,
            column_separator: column_separator.clone(),
            max_record_bytes: *max_record_bytes,
            starrocks,
            flush: *flush,
            retry: *retry,
            dead_letter_dir: None,
            spool_dir: spool.as_ref().map(|_| pod_contract::spool_dir(name).into()),
            spool_sync: spool.as_ref().map(|s| s.sync).unwrap_or_default(),
            spool_max_bytes: spool
                .as_ref()
                .map_or_else(super::sink::defaults::spool_max_bytes, |s| s.max_bytes),
            acks: *acks,
        }
    }

    /// Everything wrong with this sink, in the loader's words, keyed by the resource's
    /// field paths (`spec.starrocks.table`, `metadata.name`).
    pub fn problems(&self, name: &str) -> Vec<ConfigIssue> {
        let mut issues: Vec<ConfigIssue> = validate_sink(&self.to_sink_spec(name, "user"), "spec")
            .into_iter()
            .map(|mut issue| {
                if let Some((_, ours)) = RESOURCE_KEYS.iter().find(|(k, _)| *k == issue.key) {
                    issue.key = (*ours).into();
                }
                issue
            })
            .collect();
        // The CRD's CEL rule on `tls.ca`, for what reaches injection without the API
        // server (`starsink inject`, a sink stored under an older CRD).
        if let Some(ca) = self.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            if ca.config_map.is_some() == ca.secret.is_some() {
                issues.push(ConfigIssue::new("spec.tls.ca", CA_SOURCE_RULE.to_owned()));
            }
        }
        issues
    }
}

/// The CustomResourceDefinition, as the API server should store it: derived from the
/// types, then [`tighten`]ed.
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = StarRocksSink::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            tighten(schema);
        }
    }
    crd
}

/// Two fixes to the generated schema, applied to every node:
/// - no `nullable`: for a field that is not nullable the API server prunes a `null`
///   (what `kubectl apply --server-side` stores for a key left empty) and applies the
///   default, where `nullable: true` kept it and the controller could not read it;
/// - no `format: uint64` (or `uint32`, ...): the API server knows only `int32` and
///   `int64` and warns on every apply; the bounds are `minimum`/`maximum` instead.
pub fn tighten(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    if schema
        .format
        .as_deref()
        .is_some_and(|f| f.starts_with("uint"))
    {
        schema.format = None;
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => std::slice::from_mut(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(v) => v.as_mut_slice(),
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        );
    for child in children {
        tighten(child);
    }
}

/// The CustomResourceDefinition as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&crd())
        .unwrap_or_else(|e| unreachable!("a CRD always serialises: {e}"));
    format!("# Generated by `starsink crd`; do not edit. Regenerate: cargo run -- crd > crds/starrocks-sink.yaml\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(spec: serde_json::Value) -> StoredSink {
        serde_json::from_value(json!({
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec() -> serde_json::Value {
        json!({
            "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "shop", "table": "orders"},
            "credentialsSecretRef": {"name": "sr"},
        })
    }

    #[test]
    fn a_null_counts_as_absent_and_gets_the_default() {
        let mut s = spec();
        s["flush"] = json!({"maxBytes": null, "interval": "1s"});
        s["maxRecordBytes"] = json!(null);
        let sink = stored(s).decode().expect("decodes");
        assert_eq!(
            sink.spec.flush.max_bytes,
            super::super::sink::defaults::max_bytes()
        );
        assert_eq!(sink.spec.flush.interval, HumanDuration::from_secs(1));
        assert_eq!(sink.spec.max_record_bytes, None);
    }

    #[test]
    fn a_value_the_loader_cannot_read_names_its_field() {
        let cases = [
            (
                "retry",
                json!({"warnAfter": "99999999999999999999h"}),
                "spec.retry.warnAfter",
            ),
            (
                "maxRecordBytes",
                json!("99999999999999999999GiB"),
                "spec.maxRecordBytes",
            ),
            ("flush", json!({"maxRows": -1}), "spec.flush.maxRows"),
            ("starrocks", json!({"database": "shop"}), "spec.starrocks"),
        ];
        for (key, value, field) in cases {
            let mut s = spec();
            s[key] = value;
            let err = stored(s).decode().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn a_status_that_cannot_be_read_is_an_empty_one() {
        let mut s = stored(spec());
        s.status = json!({"attachedPods": "many"});
        assert_eq!(
            s.decode().unwrap().status,
            Some(StarRocksSinkStatus::default())
        );
    }

    /// The resource's fields the loader has no field for, and why.
    const RESOURCE_ONLY: [(&str, &str); 4] = [
        (
            "credentialsSecretRef",
            "becomes starrocks.user and starrocks.passwordFile",
        ),
        ("spool", "becomes spoolDir, spoolSync and spoolMaxBytes"),
        ("sidecar", "read by injection, not by the loader"),
        (
            "tls",
            "becomes starrocks.tls, its CA mounted from a ConfigMap or Secret",
        ),
    ];
    /// The loader's fields the resource has no field for, and what the projection sets.
    const LOADER_ONLY: [(&str, &str); 9] = [
        ("name", "metadata.name"),
        ("socket", "the pod contract's socket path"),
        (
            "socketMode",
            "0666: apps and loader share the pod's socket volume",
        ),
        ("maxConnections", "the default"),
        ("maxUnfinishedBytes", "the default"),
        ("deadLetterDir", "the default, on the spool's volume"),
        ("spoolDir", "from spool"),
        ("spoolSync", "from spool.sync"),
        ("spoolMaxBytes", "from spool.maxBytes"),
    ];

    fn properties<T: JsonSchema>() -> serde_json::Map<String, serde_json::Value> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).expect("a schema");
        schema["properties"]
            .as_object()
            .expect("properties")
            .clone()
    }

    #[test]
    fn the_loader_and_the_resource_declare_each_shared_field_alike_docs_included() {
        let loader = properties::<SinkSpec>();
        let resource = properties::<StarRocksSinkSpec>();
        for (key, schema) in &resource {
            if RESOURCE_ONLY.iter().any(|(k, _)| k == key) {
                assert!(!loader.contains_key(key), "{key} is in both; share it");
                continue;
            }
            assert_eq!(
                loader.get(key),
                Some(schema),
                "spec.{key}: the loader's field must have the resource's type, default and doc comment (or be listed in RESOURCE_ONLY with the reason)"
            );
        }
        for key in loader.keys() {
            assert!(
                resource.contains_key(key) || LOADER_ONLY.iter().any(|(k, _)| k == key),
                "the loader's {key} is neither in the resource nor in LOADER_ONLY; say what the projection sets it to"
            );
        }
        for (key, _) in LOADER_ONLY {
            assert!(
                loader.contains_key(key),
                "LOADER_ONLY names {key}, which the loader has not"
            );
        }
    }

    #[test]
    fn the_projection_copies_every_shared_field_and_maps_the_rest() {
        let spec = json!({
            "format": "csv",
            "columnSeparator": "|",
            "maxRecordBytes": "2KiB",
            "starrocks": {
                "feEndpoints": ["http://a:8030", "http://b:8030"], "database": "shop", "table": "orders",
                "columns": "a,b", "properties": {"timezone": "UTC"}, "requestTimeout": "7s",
                "rewriteLoopbackRedirect": true,
            },
            "flush": {"interval": "3s", "maxBytes": "8MiB", "maxRows": 77},
            "retry": {"minBackoff": "1s", "maxBackoff": "9s", "warnAfter": "1h"},
            "credentialsSecretRef": {"name": "sr", "passwordKey": "pw"},
            "spool": {"maxBytes": "2GiB", "sync": "always"},
            "acks": "committed",
            "tls": {"ca": {"secret": "sr-ca", "key": "root.pem"}, "serverName": "fe.internal",
                    "allowHttpRedirect": true, "clientCertSecret": "loader-cert"},
        });
        let resource: StarRocksSinkSpec = serde_json::from_value(spec.clone()).expect("a spec");
        let loader = serde_json::to_value(resource.to_sink_spec("orders", "writer")).unwrap();
        let defaults = serde_json::to_value(
            StarRocksSinkSpec::deserialize(&json!({
                "starrocks": {"feEndpoints": ["http://x:1"], "database": "d", "table": "t"},
                "credentialsSecretRef": {"name": "x"},
            }))
            .unwrap(),
        )
        .unwrap();
        let shared = properties::<StarRocksSinkSpec>();
        for key in shared
            .keys()
            .filter(|k| !RESOURCE_ONLY.iter().any(|(r, _)| r == k))
        {
            assert_ne!(
                spec[key], defaults[key],
                "the test must set {key} away from its default"
            );
            let mut theirs = resource_value(&resource, key);
            if key == "starrocks" {
                theirs["user"] = json!("writer");
                theirs["passwordFile"] = json!("/etc/starsink/credentials/orders/pw");
                theirs["tls"] = json!({"caFile": "/etc/starsink/tls/orders/ca.crt",
                    "serverName": "fe.internal", "insecureSkipVerify": false,
                    "allowHttpRedirect": true,
                    "certFile": "/etc/starsink/tls-client/orders/tls.crt",
                    "keyFile": "/etc/starsink/tls-client/orders/tls.key"});
            }
            assert_eq!(loader[key], theirs, "{key}");
        }
        assert_eq!(loader["socket"], json!("/var/run/starsink/orders.sock"));
        assert_eq!(loader["spoolDir"], json!("/var/lib/starsink/spool/orders"));
        assert_eq!(loader["spoolSync"], json!("always"));
        assert_eq!(
            loader["spoolMaxBytes"],
            serde_json::to_value(ByteSize::gib(2)).unwrap()
        );
    }

    fn resource_value(spec: &StarRocksSinkSpec, key: &str) -> serde_json::Value {
        serde_json::to_value(spec).unwrap()[key].clone()
    }

    #[test]
    fn a_problem_is_named_where_the_resource_spells_it() {
        let mut spec: StarRocksSinkSpec = serde_json::from_value(spec()).unwrap();
        spec.spool = Some(SpoolSpec {
            max_bytes: ByteSize(1),
            sync: SpoolSync::Interval,
        });
        let keys: Vec<String> = spec
            .problems("Bad_Name")
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert!(keys.contains(&"metadata.name".to_owned()), "{keys:?}");
        assert!(keys.contains(&"spec.spool.maxBytes".to_owned()), "{keys:?}");
    }
}
