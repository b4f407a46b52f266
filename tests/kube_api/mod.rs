//! An in-process Kubernetes API emulator, good enough to run a real kube-runtime
//! `Controller` against: objects with uid, resourceVersion and generation; LIST with
//! equality label selectors; WATCH from a resourceVersion (replaying what happened since)
//! with live events filtered by namespace and labels; GET with `NotFound` Status; server-
//! side apply of whole objects and of `/status`; POST (Events). The test drives it by
//! putting and deleting objects as kubectl would, and awaits conditions on what the
//! controller wrote. Every write a client makes passes the API server's own object
//! validation first (`kube_rules`: names, label values, ConfigMap keys, pod rules), and is
//! refused with 422 as a real server would refuse it.
#![allow(dead_code)]

use super::kube_rules;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::watch;

/// One change, kept so a WATCH from an older resourceVersion can be replayed.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// resource ("core/secrets", "starsink.io/starrockssinks") -> (namespace, name) -> object
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    log: Vec<Change>,
    /// Every request as "METHOD path?query", for assertions on what the controller did.
    requests: Vec<String>,
    /// Writes refused by the API server's validation, with why.
    refused: Vec<String>,
}

/// The emulator; clone it freely.
#[derive(Clone)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
    /// Held across each read-modify-write (a PATCH, a PUT, a test's put), so writes are
    /// atomic as they are in the API server: a status write never reverts a spec change.
    writes: Arc<Mutex<()>>,
    /// Bumped on every change, so watches and tests can await one.
    changed: watch::Sender<u64>,
}

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// A parsed API path.
#[derive(Debug)]
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("core".to_owned(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (resource, name, status) = match rest {
        [r] => (*r, None, false),
        [r, n] => (*r, Some((*n).to_owned()), false),
        [r, n, "status"] => (*r, Some((*n).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        resource: format!("{group}/{resource}"),
        namespace,
        name,
        status,
    })
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `obj` matches an equality-only label selector (`a=b,c=d`).
fn matches_labels(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k.trim_end_matches('=')] == v,
        None => obj["metadata"]["labels"].get(term).is_some(),
    })
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "core/secrets" => ("v1", "Secret"),
        "core/configmaps" => ("v1", "ConfigMap"),
        "core/pods" => ("v1", "Pod"),
        "starsink.io/starrockssinks" => ("starsink.io/v1alpha1", "StarRocksSink"),
        "events.k8s.io/events" => ("events.k8s.io/v1", "Event"),
        "coordination.k8s.io/leases" => ("coordination.k8s.io/v1", "Lease"),
        "apps/deployments" => ("apps/v1", "Deployment"),
        "admissionregistration.k8s.io/mutatingwebhookconfigurations" => (
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
        ),
        "apiextensions.k8s.io/customresourcedefinitions" => {
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        }
        _ => ("v1", "Unknown"),
    }
}

fn status_response(code: StatusCode, reason: &str, message: String) -> Response<ResponseBody> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn json_response(code: StatusCode, v: &Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(v.to_string())).boxed_unsync();
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(body)
        .expect("a valid response")
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            store: Arc::new(Mutex::new(Store::default())),
            writes: Arc::new(Mutex::new(())),
            changed: watch::channel(0).0,
        }
    }

    /// A kube `Client` whose every request this emulator answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object as a user would (kubectl apply): `metadata.generation`
    /// moves when anything but status and metadata changes. Returns the stored object.
    pub fn put(&self, resource: &str, obj: Value) -> Value {
        let _write = self.write_lock();
        self.put_unlocked(resource, obj)
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_unlocked(&self, resource: &str, mut obj: Value) -> Value {
        let (api_version, kind) = kind_of(resource);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().expect("a name").to_owned();
        let mut st = self.store();
        let old = st
            .objects
            .get(resource)
            .and_then(|m| m.get(&(ns.clone(), name.clone())))
            .cloned();
        st.rv += 1;
        let rv = st.rv;
        let spec_of = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        let (uid, generation, created) = match &old {
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let g = if spec_of(old) == spec_of(&obj) {
                    g
                } else {
                    g + 1
                };
                (
                    old["metadata"]["uid"].clone(),
                    g,
                    old["metadata"]["creationTimestamp"].clone(),
                )
            }
            None => (json!(format!("uid-{rv}")), 1, json!("2026-11-24T00:00:00Z")),
        };
        if obj.get("status").is_none() {
            if let Some(s) = old.as_ref().and_then(|o| o.get("status")) {
                obj["status"] = s.clone();
            }
        }
        obj["metadata"]["uid"] = uid;
        obj["metadata"]["generation"] = json!(generation);
        obj["metadata"]["creationTimestamp"] = created;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects
            .entry(resource.to_owned())
            .or_default()
            .insert((ns, name), obj.clone());
        st.log.push(Change {
            rv,
            resource: resource.to_owned(),
            kind: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
        });
        drop(st);
        self.changed.send_replace(rv);
        obj
    }

    /// Stores what a client wrote, unless the API server's own object validation
    /// (`kube_rules`) refuses it: then 422 Invalid, as a real server answers.
    fn write(&self, resource: &str, mut obj: Value, code: StatusCode) -> Response<ResponseBody> {
        let (api_version, kind) = kind_of(resource);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let problems = kube_rules::problems(&obj);
        if !problems.is_empty() {
            self.store().refused.push(problems.join("; "));
            return status_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{kind} is invalid: {}", problems.join(", ")),
            );
        }
        json_response(code, &self.put_unlocked(resource, obj))
    }

    /// What the emulator refused to store, as the API server's validation messages.
    pub fn refused(&self) -> Vec<String> {
        self.store().refused.clone()
    }

    /// Deletes an object, as `kubectl delete` would.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        let _write = self.write_lock();
        let mut st = self.store();
        let Some(mut obj) = st
            .objects
            .get_mut(resource)
            .and_then(|m| m.remove(&(namespace.to_owned(), name.to_owned())))
        else {
            return;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Change {
            rv,
            resource: resource.to_owned(),
            kind: "DELETED",
            object: obj,
        });
        drop(st);
        self.changed.send_replace(rv);
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store()
            .objects
            .get(resource)
            .and_then(|m| m.get(&(namespace.to_owned(), name.to_owned())))
            .cloned()
    }

    /// Every object of `resource`.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        self.store()
            .objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Requests seen so far, as "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        self.store().requests.clone()
    }

    /// Waits until `check` holds for the emulator's state; panics with `what` after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&FakeApi) -> bool) {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(within, async {
            loop {
                if check(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() {
            panic!(
                "timed out after {within:?} waiting for {what}; requests seen:\n{}",
                self.requests().join("\n")
            );
        }
    }

    async fn handle(&self, req: Request<Body>) -> Response<ResponseBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let q = req.uri().query().unwrap_or("").to_owned();
        self.store().requests.push(format!("{method} {path}?{q}"));
        if path == "/version" {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0-emulated", "platform": "linux/amd64"}),
            );
        }
        let Some(t) = parse_path(&path) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {path}"),
            );
        };
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let merge = content_type.contains("merge-patch");
        let json_patch = content_type.contains("json-patch");
        // No strategic-merge list semantics are emulated: for the objects here (Leases,
        // Events) a strategic merge patch is a merge patch.
        let body = match req.into_body().collect_bytes().await {
            Ok(b) => b,
            Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        match (method, &t.name) {
            (Method::GET, None) if query(&q, "watch").as_deref() == Some("true") => {
                self.watch(&t, &q)
            }
            (Method::GET, None) => self.list(&t, &q),
            (Method::GET, Some(name)) => {
                match self.get(&t.resource, t.namespace.as_deref().unwrap_or(""), name) {
                    Some(obj) => json_response(StatusCode::OK, &obj),
                    None => status_response(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.resource),
                    ),
                }
            }
            (Method::PATCH, Some(name)) if merge => self.merge(&t, name, &body),
            (Method::PATCH, Some(name)) if json_patch => self.json_patch(&t, name, &body),
            (Method::PUT, Some(name)) => self.replace(&t, name, &body),
            (Method::PATCH, Some(name)) => self.apply(&t, name, &body),
            (Method::POST, None) => {
                let _write = self.write_lock();
                let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if let Some(name) = obj["metadata"]["name"].as_str() {
                    if self
                        .get(&t.resource, t.namespace.as_deref().unwrap_or(""), name)
                        .is_some()
                    {
                        return status_response(
                            StatusCode::CONFLICT,
                            "AlreadyExists",
                            format!("{} \"{name}\" already exists", t.resource),
                        );
                    }
                }
                if obj["metadata"]["name"].is_null() {
                    let prefix = obj["metadata"]["generateName"].as_str().unwrap_or("obj-");
                    obj["metadata"]["name"] = json!(format!("{prefix}{}", self.store().rv + 1));
                }
                obj["metadata"]["namespace"] = json!(t.namespace.clone().unwrap_or_default());
                self.write(&t.resource, obj, StatusCode::CREATED)
            }
            (m, _) => status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} is not emulated"),
            ),
        }
    }

    fn list(&self, t: &Target, q: &str) -> Response<ResponseBody> {
        let selector = query(q, "labelSelector");
        let st = self.store();
        let items: Vec<Value> = st
            .objects
            .get(&t.resource)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches_labels(v, selector.as_deref()))
                    .collect()
            })
            .unwrap_or_default();
        let (api_version, kind) = kind_of(&t.resource);
        json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            }),
        )
    }

    /// Streams changes after `resourceVersion`: first those already logged, then live ones.
    fn watch(&self, t: &Target, q: &str) -> Response<ResponseBody> {
        let since: u64 = query(q, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query(q, "labelSelector");
        let resource = t.resource.clone();
        let namespace = t.namespace.clone();
        let api = self.clone();
        let rx = self.changed.subscribe();
        let stream = futures::stream::unfold((since, rx), move |(mut seen, mut rx)| {
            let (api, resource, namespace, selector) = (
                api.clone(),
                resource.clone(),
                namespace.clone(),
                selector.clone(),
            );
            async move {
                loop {
                    // One snapshot: what is sent and how far `seen` moves must agree, or
                    // a change logged in between would be skipped.
                    let pending: Vec<Change> = {
                        let store = api.store();
                        if let Some(last) = store.log.last() {
                            let pending = store
                                .log
                                .iter()
                                .filter(|c| c.rv > seen && c.resource == resource)
                                .cloned()
                                .collect();
                            seen = seen.max(last.rv);
                            pending
                        } else {
                            Vec::new()
                        }
                    };
                    let lines: Vec<u8> = pending
                        .iter()
                        .filter(|c| {
                            namespace.as_ref().is_none_or(|ns| {
                                c.object["metadata"]["namespace"].as_str() == Some(ns)
                            })
                        })
                        .filter(|c| matches_labels(&c.object, selector.as_deref()))
                        .flat_map(|c| {
                            let mut l = json!({"type": c.kind, "object": c.object})
                                .to_string()
                                .into_bytes();
                            l.push(b'\n');
                            l
                        })
                        .collect();
                    if !lines.is_empty() {
                        return Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from(lines))),
                            (seen, rx),
                        ));
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        let body: Pin<Box<dyn futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>> =
            Box::pin(stream);
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(body.fuse())))
            .expect("a valid response")
    }

    /// Server-side apply, simplified: the applied fields are merged into the stored object
    /// (no field ownership, so no conflicts); on `/status` only the status is taken.
    fn apply(&self, t: &Target, name: &str, body: &[u8]) -> Response<ResponseBody> {
        let _write = self.write_lock();
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "patch is not JSON".into(),
            );
        };
        let ns = t.namespace.clone().unwrap_or_default();
        let current = self.get(&t.resource, &ns, name);
        if t.status {
            let Some(mut obj) = current else {
                return status_response(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.resource),
                );
            };
            obj["status"] = patch["status"].clone();
            return json_response(StatusCode::OK, &self.put_status(&t.resource, obj));
        }
        let mut obj = current.unwrap_or_else(|| json!({}));
        merge_patch(&mut obj, &patch);
        obj["metadata"]["namespace"] = json!(ns);
        obj["metadata"]["name"] = json!(name);
        self.write(&t.resource, obj, StatusCode::OK)
    }

    /// A JSON merge patch (RFC 7386), as the event recorder sends for a repeated Event.
    fn merge(&self, t: &Target, name: &str, body: &[u8]) -> Response<ResponseBody> {
        let _write = self.write_lock();
        let ns = t.namespace.clone().unwrap_or_default();
        let (Some(mut obj), Ok(patch)) = (
            self.get(&t.resource, &ns, name),
            serde_json::from_slice::<Value>(body),
        ) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", t.resource),
            );
        };
        merge_patch(&mut obj, &patch);
        self.write(&t.resource, obj, StatusCode::OK)
    }

    /// PUT: replaces the object if the caller's resourceVersion is the stored one.
    fn replace(&self, t: &Target, name: &str, body: &[u8]) -> Response<ResponseBody> {
        let _write = self.write_lock();
        let ns = t.namespace.clone().unwrap_or_default();
        let Ok(obj) = serde_json::from_slice::<Value>(body) else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
        };
        let Some(current) = self.get(&t.resource, &ns, name) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", t.resource),
            );
        };
        let wanted = &obj["metadata"]["resourceVersion"];
        if !wanted.is_null() && *wanted != current["metadata"]["resourceVersion"] {
            return status_response(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version"
                    .into(),
            );
        }
        self.write(&t.resource, obj, StatusCode::OK)
    }

    /// A JSON patch (RFC 6902).
    fn json_patch(&self, t: &Target, name: &str, body: &[u8]) -> Response<ResponseBody> {
        let _write = self.write_lock();
        let ns = t.namespace.clone().unwrap_or_default();
        let (Some(mut obj), Ok(patch)) = (
            self.get(&t.resource, &ns, name),
            serde_json::from_slice::<json_patch::Patch>(body),
        ) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{name} not found"),
            );
        };
        if let Err(e) = json_patch::patch(&mut obj, &patch) {
            return status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
        }
        self.write(&t.resource, obj, StatusCode::OK)
    }

    /// Stores a status change: new resourceVersion, same generation.
    fn put_status(&self, resource: &str, obj: Value) -> Value {
        let gen = obj["metadata"]["generation"].clone();
        let mut stored = self.put_unlocked(resource, obj);
        if stored["metadata"]["generation"] != gen {
            // `put` bumps generation on spec changes only; a status write never changes spec.
            stored["metadata"]["generation"] = gen;
        }
        stored
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(o) = target.as_object_mut() {
                o.remove(k);
            }
        } else {
            merge_patch(&mut target[k.as_str()], v);
        }
    }
}

impl FakeApi {
    /// Serves the emulator over HTTP/1.1 on a loopback port, for a real `starsink` process
    /// (through a kubeconfig). Returns the server URL.
    pub async fn serve_http(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the emulator");
        let addr = listener.local_addr().expect("address");
        let api = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let api = api.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let req = Request::from_parts(parts, Body::from(bytes));
                                Ok::<_, Infallible>(api.handle(req).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// Writes a kubeconfig pointing at `server` into `dir`; returns its path.
    pub fn kubeconfig(server: &str, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

/// A MutatingWebhookConfiguration as the chart installs it, without a caBundle yet.
pub fn webhook_configuration(name: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.starsink.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {
                "service": {"name": "starsink-webhook", "namespace": "starsink-system", "path": "/mutate"},
            },
        }],
    })
}
