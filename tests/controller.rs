//! The real kube-runtime Controller with the real reconcile function, against the
//! in-process API emulator in `kube_api/`: a sink and its Secret become a ConfigMap and
//! `Ready=True`; losing the Secret, changing the spec and attaching pods show up in the
//! status as a user would see them with kubectl.

mod kube_api;
mod kube_rules;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kube::runtime::events::Reporter;
use kube_api::FakeApi;
use serde_json::{json, Value};
use starsink::operator::controller::{run_controller, Context, ControllerMetrics};
use tokio_util::sync::CancellationToken;

const SINKS: &str = "starsink.io/starrockssinks";
const WAIT: Duration = Duration::from_secs(10);

/// The real controller on `api`, until the token is cancelled; its metrics.
fn start_controller(
    api: &FakeApi,
) -> (
    Arc<ControllerMetrics>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let metrics = Arc::new(ControllerMetrics::default());
    let ctx = Context::new(
        api.client(),
        Reporter {
            controller: "starsink-test".into(),
            instance: None,
        },
        metrics.clone(),
    );
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let controller = tokio::spawn(run_controller(
        ctx,
        async move { stopping.cancelled().await },
    ));
    (metrics, stop, controller)
}

/// Stops a controller from [`start_controller`]; it must end promptly.
async fn stop_controller(stop: CancellationToken, controller: tokio::task::JoinHandle<()>) {
    stop.cancel();
    tokio::time::timeout(WAIT, controller)
        .await
        .expect("the controller stops on its shutdown signal")
        .unwrap();
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret() -> Value {
    json!({
        "metadata": {"name": "sr", "namespace": "shop"},
        "data": {"username": b64("loader"), "password": b64("pw")},
    })
}

fn sink(table: &str) -> Value {
    json!({
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "shop", "table": table},
            "credentialsSecretRef": {"name": "sr"},
        },
    })
}

fn pod(name: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop",
            "labels": {"starsink.io/inject": "true"},
            "annotations": {"starsink.io/sinks": "orders"},
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running"},
    })
}

/// The sink's Ready condition as (status, reason), if any.
fn ready(api: &FakeApi) -> Option<(String, String)> {
    let s = api.get(SINKS, "shop", "orders")?;
    let c = s["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into()))
}

fn is_ready(api: &FakeApi, status: &str, reason: &str) -> bool {
    ready(api) == Some((status.into(), reason.into()))
}

fn config_map(api: &FakeApi) -> Option<Value> {
    api.get("core/configmaps", "shop", "starsink-orders")
}

fn status(api: &FakeApi) -> Value {
    api.get(SINKS, "shop", "orders").expect("the sink")["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_renders_config_reports_status_and_follows_changes() {
    let api = FakeApi::new();
    let (metrics, stop, controller) = start_controller(&api);

    // A Secret and a sink: the ConfigMap appears, owned by the sink, and Ready=True.
    api.put("core/secrets", secret());
    let created = api.put(SINKS, sink("orders"));
    api.wait_for("a ConfigMap and Ready=True", WAIT, |a| {
        config_map(a).is_some() && is_ready(a, "True", "Ready")
    })
    .await;
    let cm = config_map(&api).unwrap();
    assert_eq!(
        cm["metadata"]["ownerReferences"][0]["uid"],
        created["metadata"]["uid"]
    );
    assert_eq!(cm["metadata"]["ownerReferences"][0]["controller"], true);
    let hash = cm["metadata"]["annotations"]["starsink.io/config-hash"].clone();
    assert_eq!(status(&api)["configHash"], hash);
    assert_eq!(status(&api)["observedGeneration"], 1);
    let rendered: starsink::api::SinkSpec =
        serde_yaml::from_str(cm["data"]["sink.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(rendered.starrocks.user, "loader");
    assert_eq!(rendered.starrocks.table, "orders");
    api.wait_for("an Event saying Ready", WAIT, |a| {
        a.all("events.k8s.io/events")
            .iter()
            .any(|e| e["reason"] == "Ready")
    })
    .await;

    // Someone deletes the ConfigMap: the controller owns it and puts it back.
    api.delete("core/configmaps", "shop", "starsink-orders");
    api.wait_for("the ConfigMap recreated", WAIT, |a| config_map(a).is_some())
        .await;
    assert_eq!(
        config_map(&api).unwrap()["metadata"]["annotations"]["starsink.io/config-hash"],
        hash
    );

    // The Secret is deleted: Ready=False, SecretNotFound, and a Warning Event.
    api.delete("core/secrets", "shop", "sr");
    api.wait_for("Ready=False / SecretNotFound", WAIT, |a| {
        is_ready(a, "False", "SecretNotFound")
    })
    .await;
    api.wait_for("a Warning Event SecretNotFound", WAIT, |a| {
        a.all("events.k8s.io/events")
            .iter()
            .any(|e| e["reason"] == "SecretNotFound" && e["type"] == "Warning")
    })
    .await;
    assert!(
        config_map(&api).is_some(),
        "running loaders keep their config"
    );

    // It comes back: Ready again.
    api.put("core/secrets", secret());
    api.wait_for("Ready=True again", WAIT, |a| is_ready(a, "True", "Ready"))
        .await;

    // The spec changes: the ConfigMap follows, and so does observedGeneration.
    api.put(SINKS, sink("orders_v2"));
    api.wait_for(
        "the new table in the ConfigMap and generation 2 observed",
        WAIT,
        |a| {
            let st = status(a);
            st["observedGeneration"] == 2
                && config_map(a).is_some_and(|cm| {
                    cm["data"]["sink.yaml"]
                        .as_str()
                        .is_some_and(|y| y.contains("table: orders_v2"))
                        && cm["metadata"]["annotations"]["starsink.io/config-hash"]
                            == st["configHash"]
                })
        },
    )
    .await;
    assert_ne!(status(&api)["configHash"], hash);

    // Pods that opted in and run are counted.
    api.put("core/pods", pod("app-1"));
    api.wait_for("one attached pod", WAIT, |a| status(a)["attachedPods"] == 1)
        .await;
    api.put("core/pods", pod("app-2"));
    api.wait_for("two attached pods", WAIT, |a| {
        status(a)["attachedPods"] == 2
    })
    .await;
    api.delete("core/pods", "shop", "app-1");
    api.wait_for("one attached pod", WAIT, |a| status(a)["attachedPods"] == 1)
        .await;

    // Seven status changes (Ready, SecretNotFound, Ready, generation 2, then 1, 2 and 1
    // pods), seven writes: the controller's own writes (status, ConfigMap, Events) did
    // not make it write again.
    let status_writes = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH") && r.contains("/status?"))
        .count();
    assert_eq!(status_writes, 7, "{:#?}", api.requests());

    let text = metrics.render();
    let ok: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("starsink_controller_reconciles_total{result=\"ok\"} "))
        .and_then(|v| v.parse().ok())
        .expect("the reconcile counter");
    assert!(ok >= 7, "{ok} successful reconciles counted:\n{text}");
    assert!(text.contains("starsink_controller_reconcile_duration_seconds_count"));

    stop_controller(stop, controller).await;
}

fn named_sink(name: &str, spec_patch: Value) -> Value {
    let mut s = sink("orders");
    s["metadata"]["name"] = json!(name);
    for (k, v) in spec_patch.as_object().unwrap() {
        s["spec"][k] = v.clone();
    }
    s
}

fn condition(api: &FakeApi, name: &str) -> Option<(String, String, String)> {
    let s = api.get(SINKS, "shop", name)?;
    let c = s["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        c["status"].as_str()?.into(),
        c["reason"].as_str()?.into(),
        c["message"].as_str()?.into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_sink_is_reported_on_itself_and_every_other_sink_reconciles() {
    let api = FakeApi::new();
    api.put("core/secrets", secret());
    // Stored before the controller starts, as after a restart: its first list holds them.
    // A value the loader cannot read (an older schema let it through) ...
    api.put(
        SINKS,
        named_sink(
            "broken",
            json!({"maxRecordBytes": "99999999999999999999GiB"}),
        ),
    );
    // ... a null, as `kubectl apply --server-side` stores for a key left empty ...
    api.put(
        SINKS,
        named_sink("nulls", json!({"flush": {"maxBytes": null}})),
    );
    // ... and the longest name a sink may have, with a ConfigMap name and label to fit.
    let long = "a".repeat(63);
    api.put(SINKS, named_sink(&long, json!({})));
    api.put(SINKS, sink("orders"));

    let (_, stop, controller) = start_controller(&api);

    api.wait_for(
        "every readable sink Ready, the broken one InvalidSpec",
        WAIT,
        |a| {
            ["orders", "nulls", long.as_str()]
                .iter()
                .all(|n| condition(a, n).is_some_and(|c| c.0 == "True"))
                && condition(a, "broken").is_some_and(|c| c.1 == "InvalidSpec")
        },
    )
    .await;
    let (status, _, message) = condition(&api, "broken").unwrap();
    assert_eq!(status, "False");
    assert!(message.starts_with("spec.maxRecordBytes: "), "{message}");
    api.wait_for("a Warning Event naming the field", WAIT, |a| {
        a.all("events.k8s.io/events").iter().any(|e| {
            e["type"] == "Warning"
                && e["regarding"]["name"] == "broken"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("spec.maxRecordBytes"))
        })
    })
    .await;
    let nulls = api
        .get("core/configmaps", "shop", "starsink-nulls")
        .unwrap();
    let rendered: starsink::api::SinkSpec =
        serde_yaml::from_str(nulls["data"]["sink.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        rendered.flush.max_bytes,
        starsink::api::sink::defaults::max_bytes()
    );
    assert!(api
        .get("core/configmaps", "shop", "starsink-broken")
        .is_none());
    assert!(api
        .get("core/configmaps", "shop", &format!("starsink-{long}"))
        .is_some());
    assert!(api.refused().is_empty(), "{:?}", api.refused());

    // Fixed, it becomes Ready like the others.
    api.put(
        SINKS,
        named_sink("broken", json!({"maxRecordBytes": "1MiB"})),
    );
    api.wait_for("the fixed sink Ready", WAIT, |a| {
        condition(a, "broken").is_some_and(|c| c.0 == "True")
    })
    .await;
    stop_controller(stop, controller).await;
}

/// A sink's condition of `type_` as (status, reason, message), if any.
fn condition_of(api: &FakeApi, name: &str, type_: &str) -> Option<(String, String, String)> {
    let s = api.get(SINKS, "shop", name)?;
    let c = s["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.into(),
        c["reason"].as_str()?.into(),
        c["message"].as_str()?.into(),
    ))
}

fn pod_of(name: &str, sink: &str) -> Value {
    let mut p = pod(name);
    p["metadata"]["annotations"]["starsink.io/sinks"] = json!(sink);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_on_one_table_share_its_load_rate_and_both_say_when_it_is_too_frequent() {
    let api = FakeApi::new();
    api.put("core/secrets", secret());
    // Two sinks write shop.orders every 5s; a third writes another table.
    api.put(SINKS, named_sink("orders", json!({})));
    api.put(SINKS, named_sink("orders-b", json!({})));
    let mut clicks = named_sink("clicks", json!({}));
    clicks["spec"]["starrocks"]["table"] = json!("clicks");
    api.put(SINKS, clicks);
    api.put("core/pods", pod_of("a-1", "orders"));
    api.put("core/pods", pod_of("c-1", "clicks"));
    api.put("core/pods", pod_of("c-2", "clicks"));

    let (metrics, stop, controller) = start_controller(&api);
    let rate_is = |a: &FakeApi, name: &str, status: &str| {
        condition_of(a, name, "LoadRateOK").is_some_and(|c| c.0 == status)
    };

    // One pod every 5s is StarRocks' advice exactly: within it, for both sinks of the
    // table. The other table has its own rate (two pods: too frequent).
    api.wait_for(
        "shop.orders within the advice, shop.clicks not",
        WAIT,
        |a| {
            rate_is(a, "orders", "True")
                && rate_is(a, "orders-b", "True")
                && rate_is(a, "clicks", "False")
        },
    )
    .await;
    let (_, reason, message) = condition_of(&api, "orders", "LoadRateOK").unwrap();
    assert_eq!(reason, "WithinAdvice");
    assert!(
        message.contains("load shop.orders: 0.20 loads/s"),
        "{message}"
    );

    // A pod of the other sink tips the table over: both sinks say so, with the figures
    // and the interval that would fit, and a Warning Event.
    api.put("core/pods", pod_of("b-1", "orders-b"));
    api.wait_for("both sinks of shop.orders TooFrequent", WAIT, |a| {
        rate_is(a, "orders", "False") && rate_is(a, "orders-b", "False")
    })
    .await;
    let (_, reason, message) = condition_of(&api, "orders", "LoadRateOK").unwrap();
    assert_eq!(reason, "TooFrequent");
    assert!(
        message.contains("2 pod(s) of 2 sinks")
            && message.contains("0.40 loads/s")
            && message.contains("flush.interval to at least 10s on each of these sinks"),
        "{message}"
    );
    api.wait_for("a Warning Event TooFrequent", WAIT, |a| {
        a.all("events.k8s.io/events")
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "TooFrequent")
    })
    .await;
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            r#"starsink_controller_table_load_rate{namespace="shop",database="shop",table="orders"} 0.4"#
        ),
        "{rendered}"
    );

    // The pod goes: the table is within the advice again, for both.
    api.delete("core/pods", "shop", "b-1");
    api.wait_for("both sinks of shop.orders back to True", WAIT, |a| {
        rate_is(a, "orders", "True") && rate_is(a, "orders-b", "True")
    })
    .await;
    assert!(api.refused().is_empty(), "{:?}", api.refused());
    stop_controller(stop, controller).await;
}

#[tokio::test]
async fn without_the_crd_the_controller_refuses_to_start_and_says_how_to_install_it() {
    let api = FakeApi::new();
    let err = starsink::operator::controller::check_crd(&api.client())
        .await
        .expect_err("no CRD is installed");
    let msg = err.to_string();
    assert!(
        msg.contains("kubectl apply --server-side -f crds/starrocks-sink.yaml")
            && msg.contains("starsink crd | kubectl apply"),
        "{msg}"
    );
    api.put(
        "apiextensions.k8s.io/customresourcedefinitions",
        json!({"metadata": {"name": "starrockssinks.starsink.io"}}),
    );
    starsink::operator::controller::check_crd(&api.client())
        .await
        .expect("the CRD is there now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_binary_takes_the_lease_reconciles_and_lets_go_on_sigterm() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let api = FakeApi::new();
    api.put(
        "apiextensions.k8s.io/customresourcedefinitions",
        json!({"metadata": {"name": "starrockssinks.starsink.io"}}),
    );
    api.put("core/secrets", secret());
    api.put(SINKS, sink("orders"));
    let server = api.serve_http().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApi::kubeconfig(&server, dir.path());
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let log = dir.path().join("controller.log");
    let webhook_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The controller's own Deployment, named by --owner-deployment as the chart does.
    let deployment = api.put(
        "apps/deployments",
        json!({"metadata": {"name": "starsink", "namespace": "starsink-system"}}),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["controller", "--metrics-addr"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{webhook_port}"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "starsink-system")
        .env("POD_NAME", "controller-0")
        .env("STARSINK_OWNER_DEPLOYMENT", "starsink")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink controller");
    let lease_holder = |a: &FakeApi| {
        a.get(
            "coordination.k8s.io/leases",
            "starsink-system",
            "starsink-controller",
        )
        .map(|l| l["spec"]["holderIdentity"].clone())
    };
    api.wait_for("the Lease held by controller-0", WAIT, |a| {
        lease_holder(a) == Some(json!("controller-0"))
    })
    .await;
    api.wait_for("Ready=True from the leader", WAIT, |a| {
        is_ready(a, "True", "Ready") && config_map(a).is_some()
    })
    .await;

    // The webhook configuration is created after the controller started (helm creates it
    // after the Deployment): its caBundle is set at once, not at the next renewal check.
    api.wait_for("the webhook TLS Secret", WAIT, |a| {
        a.get("core/secrets", "starsink-system", "starsink-webhook-tls")
            .is_some()
    })
    .await;
    api.put(
        "admissionregistration.k8s.io/mutatingwebhookconfigurations",
        kube_api::webhook_configuration("starsink"),
    );
    api.wait_for("the webhook TLS Secret and caBundle", WAIT, |a| {
        a.get("core/secrets", "starsink-system", "starsink-webhook-tls")
            .is_some()
            && a.get(
                "admissionregistration.k8s.io/mutatingwebhookconfigurations",
                "",
                "starsink",
            )
            .is_some_and(|c| c["webhooks"][0]["clientConfig"]["caBundle"].is_string())
    })
    .await;

    let ca_patch = api
        .requests()
        .into_iter()
        .find(|r| r.starts_with("PATCH /apis/admissionregistration.k8s.io"))
        .expect("a caBundle patch");
    assert!(
        ca_patch.contains("fieldManager=starsink-controller"),
        "{ca_patch}"
    );
    // What the controller created goes with its Deployment at uninstall.
    let owned_by_deployment = |obj: Option<Value>| {
        obj.is_some_and(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter().any(|r| {
                        r["uid"] == deployment["metadata"]["uid"] && r["kind"] == "Deployment"
                    })
                })
        })
    };
    api.wait_for("the Lease owned by the Deployment", WAIT, |a| {
        owned_by_deployment(a.get(
            "coordination.k8s.io/leases",
            "starsink-system",
            "starsink-controller",
        ))
    })
    .await;
    assert!(owned_by_deployment(api.get(
        "core/secrets",
        "starsink-system",
        "starsink-webhook-tls"
    )));

    kill(
        Pid::from_raw(child.id().expect("running") as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the controller exits on SIGTERM")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit {status:?}; log:\n{text}");
    assert!(
        lease_holder(&api).is_some_and(|h| h.is_null()),
        "the Lease is released at exit, so another replica takes over at once: {:?}",
        lease_holder(&api)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_controller_even_while_the_api_server_does_not_answer() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use tokio::io::AsyncReadExt;

    // An API server that accepts connections and reads requests, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", silent.local_addr().unwrap());
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel::<()>(16);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut conn, _)) = silent.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = seen_tx.try_send(());
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApi::kubeconfig(&server, dir.path());
    let port = |()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["controller", "--metrics-addr"])
        .arg(format!("127.0.0.1:{}", port(())))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{}", port(())))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "starsink-system")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink controller");
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the controller calls the API server");
    kill(
        Pid::from_raw(child.id().expect("running") as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    // STOP_BOUND, plus room for a loaded machine; the kubelet's default grace is 30s.
    let bound = starsink::operator::STOP_BOUND + Duration::from_secs(10);
    let status = tokio::time::timeout(bound, child.wait())
        .await
        .expect("the controller exits after SIGTERM without being killed")
        .unwrap();
    assert!(status.code().is_some(), "exited by itself: {status:?}");
}

/// `pod` as the webhook admits it for `sink` (both JSON), with the default injector.
fn injected(pod: Value, sink: &Value) -> Value {
    use starsink::operator::inject::{inject, InjectSettings, Injection};
    let mut typed = sink.clone();
    typed["apiVersion"] = json!("starsink.io/v1alpha1");
    typed["kind"] = json!("StarRocksSink");
    let sinks = [serde_json::from_value(typed).expect("a sink")];
    let pod = serde_json::from_value(pod).expect("a pod");
    match inject(&pod, &sinks, &InjectSettings::default()) {
        Injection::Injected(p) => {
            let mut v = serde_json::to_value(&*p).unwrap();
            v["status"] = json!({"phase": "Running"});
            v
        }
        other => panic!("not injected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_whose_loader_predates_a_sidecar_change_are_counted_until_they_are_replaced() {
    let api = FakeApi::new();
    api.put("core/secrets", secret());
    let before = sink("orders");
    api.put(SINKS, before.clone());
    api.put("core/pods", injected(pod("a-1"), &before));
    api.put("core/pods", injected(pod("a-2"), &before));
    let (_, stop, controller) = start_controller(&api);
    let outdated = |a: &FakeApi, n: i64, flag: &str| {
        a.get(SINKS, "shop", "orders")
            .is_some_and(|s| s["status"]["outdatedPods"] == n)
            && condition_of(a, "orders", "PodsUpToDate").is_some_and(|c| c.0 == flag)
    };
    api.wait_for("2 pods, none outdated", WAIT, |a| {
        outdated(a, 0, "True")
            && a.get(SINKS, "shop", "orders").unwrap()["status"]["attachedPods"] == 2
    })
    .await;

    // The sink's sidecar gets more memory: the running loaders do not have it.
    let mut after = before.clone();
    after["spec"]["sidecar"] = json!({"resources": {"limits": {"memory": "1Gi"}}});
    api.put(SINKS, after.clone());
    api.wait_for("both pods outdated", WAIT, |a| outdated(a, 2, "False"))
        .await;
    let (_, reason, message) = condition_of(&api, "orders", "PodsUpToDate").unwrap();
    assert_eq!(reason, "Outdated");
    assert!(
        message.contains("pod/a-1 (1)") && message.contains("kubectl delete pod a-1 a-2 -n shop"),
        "{message}"
    );

    // Replaced by pods injected now: back to 0.
    api.delete("core/pods", "shop", "a-1");
    api.delete("core/pods", "shop", "a-2");
    api.put("core/pods", injected(pod("b-1"), &after));
    api.wait_for("the new pod current", WAIT, |a| outdated(a, 0, "True"))
        .await;
    assert!(api.refused().is_empty(), "{:?}", api.refused());
    stop_controller(stop, controller).await;
}
