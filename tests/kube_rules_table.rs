//! The test validator (`kube_rules`) against cases whose verdict a real API server gave:
//! each bad object is refused at the field the server names, and the good one passes. A
//! validator that let these through would let the bugs it exists for through too.

mod kube_rules;

use serde_json::{json, Value};

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
}

fn app() -> Value {
    json!({"name": "app", "image": "app:1"})
}

/// `(what, object, the field the refusal names)`; `None`: accepted.
fn cases() -> Vec<(&'static str, Value, Option<&'static str>)> {
    let long_label = "x".repeat(64);
    let long_volume = format!("starsink-credentials-{}", "a".repeat(43));
    vec![
        ("a plain pod", pod(json!({"containers": [app()]})), None),
        (
            "a port name of 16 characters",
            pod(
                json!({"containers": [{"name": "app", "image": "a", "ports": [{"name": "starsink-metrics", "containerPort": 9464}]}]}),
            ),
            Some("spec.containers[0].ports[0].name"),
        ),
        (
            "a port name used twice in the pod",
            pod(json!({
                "initContainers": [{"name": "side", "image": "a", "restartPolicy": "Always", "ports": [{"name": "http", "containerPort": 1}]}],
                "containers": [{"name": "app", "image": "a", "ports": [{"name": "http", "containerPort": 2}]}],
            })),
            Some("spec.containers[0].ports[0].name"),
        ),
        (
            "a volume name of 64 characters",
            pod(json!({"containers": [app()], "volumes": [{"name": long_volume, "emptyDir": {}}]})),
            Some("spec.volumes[0].name"),
        ),
        (
            "two containers with one name",
            pod(
                json!({"initContainers": [{"name": "app", "image": "a", "restartPolicy": "Always"}], "containers": [app()]}),
            ),
            Some("spec.containers[0].name"),
        ),
        (
            "a mount of a volume the pod does not have",
            pod(
                json!({"containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}),
            ),
            Some("spec.containers[0].volumeMounts[0].name"),
        ),
        (
            "a subPathExpr that climbs out of its volume",
            pod(
                json!({"containers": [{"name": "app", "image": "a", "volumeMounts": [{"name": "v", "mountPath": "/x", "subPathExpr": "../$(POD)"}]}], "volumes": [{"name": "v", "emptyDir": {}}]}),
            ),
            Some("spec.containers[0].volumeMounts[0].subPathExpr"),
        ),
        (
            "a startupProbe on an init container that is not a sidecar",
            pod(
                json!({"initContainers": [{"name": "init", "image": "a", "startupProbe": {"httpGet": {"port": 1}}}], "containers": [app()]}),
            ),
            Some("spec.initContainers[0].startupProbe"),
        ),
        (
            "a startupProbe on a native sidecar",
            pod(
                json!({"initContainers": [{"name": "side", "image": "a", "restartPolicy": "Always", "startupProbe": {"httpGet": {"port": 1}}}], "containers": [app()]}),
            ),
            None,
        ),
        (
            "restartPolicy on an app container",
            pod(json!({"containers": [{"name": "app", "image": "a", "restartPolicy": "Always"}]})),
            Some("spec.containers[0].restartPolicy"),
        ),
        (
            "a request above its limit",
            pod(
                json!({"containers": [{"name": "app", "image": "a", "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}}]}),
            ),
            Some("spec.containers[0].resources.requests[memory]"),
        ),
        (
            "an env var name with a space",
            pod(
                json!({"containers": [{"name": "app", "image": "a", "env": [{"name": "A B", "value": "1"}]}]}),
            ),
            Some("spec.containers[0].env[0].name"),
        ),
        (
            "a label value of 64 characters",
            json!({"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"starsink.io/sink": long_label}}}),
            Some("metadata.labels[starsink.io/sink]"),
        ),
        (
            "a ConfigMap key with a slash",
            json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a/b": "x"}}),
            Some("data[a/b]"),
        ),
        (
            "a Job whose pods restart Always",
            json!({"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [app()]}}}}),
            Some("spec.template.spec.restartPolicy"),
        ),
        (
            "a Service with two unnamed ports",
            json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}, {"port": 2}]}}),
            Some("spec.ports[0].name"),
        ),
    ]
}

#[test]
fn the_validator_refuses_what_the_api_server_refuses_at_the_same_field() {
    for (what, obj, field) in cases() {
        let found = kube_rules::problems(&obj);
        match field {
            None => assert!(found.is_empty(), "{what}: refused {found:?}"),
            Some(f) => assert!(
                found.iter().any(|p| p.starts_with(&format!("{f}:"))),
                "{what}: expected a refusal at {f}, got {found:?}"
            ),
        }
    }
}

#[test]
fn restricted_refuses_a_container_that_may_escalate() {
    let p = pod(json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "a", "securityContext": {"capabilities": {"drop": ["ALL"]}}}],
    }));
    let found = kube_rules::problems_restricted(&p);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("allowPrivilegeEscalation"), "{found:?}");
}

#[test]
fn name_formats_follow_apimachinery() {
    assert!(kube_rules::port_name("starsink-http").is_none());
    assert!(kube_rules::port_name("a--b").is_some());
    assert!(kube_rules::port_name("1234").is_some(), "needs a letter");
    assert!(kube_rules::dns_label(&"a".repeat(63)).is_none());
    assert!(kube_rules::dns_label("A").is_some());
    assert!(kube_rules::dns_subdomain("starsink-orders.v1").is_none());
    assert!(kube_rules::env_var_name("STARSINK_SOCKET_3D_PARTY").is_none());
    assert!(kube_rules::env_var_name("3D").is_some());
    assert!(kube_rules::qualified_name("starsink.io/inject").is_none());
}
