//! The chart's alerts and Grafana dashboard in a real Prometheus (Debian's, installed by
//! scripts/install-tools). It scrapes real loaders and real controllers, some healthy and
//! some with one fault each (StarRocks down, a refused batch, a full spool, a damaged
//! spool, a loader gone; a controller gone, one that cannot take the Lease and serves a
//! certificate about to expire), evaluates the PrometheusRule exactly as `helm template`
//! renders it (checked by `promtool check rules` first), and is asked through its own
//! HTTP API which alerts fire and what every dashboard query returns.

mod kube_api;
mod kube_rules;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube_api::FakeApi;
use serde_json::{json, Value};
use support::*;

/// The rules' range and hold time, short so that a test sees them fire. The chart's
/// defaults (10m, 5m) are the same expressions with longer ranges. The hold time must
/// outlast Prometheus' start-up, when no target has been scraped yet (its discovery hands
/// targets over up to 5s after start): longer, and the absent controller fires then.
const WINDOW: &str = "20s";
const FOR: &str = "10s";
const LOADER_JOB: &str = "starsink-loaders";
const WAIT: Duration = Duration::from_secs(90);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// One object the chart renders from `template` with the monitoring values on and the
/// test's jobs, window and hold time.
fn helm_render(template: &str) -> Value {
    let helm = repo(".tools/bin/helm");
    assert!(
        helm.exists(),
        "helm is missing from .tools/; ./scripts/test installs it"
    );
    let out = std::process::Command::new(helm)
        .args(["template", "starsink"])
        .arg(repo("charts/starsink"))
        .args(["--namespace", "starsink-system", "--show-only", template])
        .args(["--set", "metrics.prometheusRule.enabled=true"])
        .args(["--set", "metrics.dashboard.enabled=true"])
        .args(["--set-string"])
        .arg(format!(
            "metrics.prometheusRule.loaderJob={LOADER_JOB},metrics.prometheusRule.controllerJob=starsink-controller.*,metrics.prometheusRule.window={WINDOW},metrics.prometheusRule.for={FOR}"
        ))
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::from_slice(&out.stdout).expect("one YAML object")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A percent-encoded query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus with its own config and storage in a temp dir, killed on drop.
struct Prometheus {
    _child: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Checks `rules` with promtool, then starts Prometheus scraping `jobs` (name and
    /// loopback ports) every second and evaluating the rules every second.
    async fn start(rules: &Value, jobs: &[(&str, Vec<u16>)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rule_file = dir.path().join("starsink.rules.yaml");
        std::fs::write(&rule_file, serde_yaml::to_string(rules).unwrap()).unwrap();
        let check = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rule_file)
            .output()
            .expect("promtool is installed by scripts/install-tools");
        assert!(
            check.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let scrape: Vec<Value> = jobs
            .iter()
            .map(|(job, ports)| {
                let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
                json!({"job_name": job, "static_configs": [{"targets": targets}]})
            })
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [rule_file],
            "scrape_configs": scrape,
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml::to_string(&config).unwrap()).unwrap();
        let port = free_port();
        let child = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus is installed by scripts/install-tools");
        let prometheus = Prometheus {
            _child: child,
            port,
            dir,
        };
        wait_until("Prometheus to be ready", WAIT, || async {
            http_get_quiet(port, "/-/ready").await == Some(200)
        })
        .await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data` of an API answer.
    async fn api(&self, path: &str) -> Value {
        let (status, body) = get(self.port, path).await.unwrap_or_default();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            status == 200 && v["status"] == "success",
            "GET {path}: {status} {body}\nPrometheus log:\n{}",
            self.log()
        );
        v["data"].clone()
    }

    /// The result vector of an instant query.
    async fn query(&self, q: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(q)))
            .await;
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

/// (alertname, instance) for a loader's alert, (alertname, job) for a controller's.
fn who(labels: &Value) -> (String, String) {
    let name = labels["alertname"].as_str().unwrap_or("").to_owned();
    let by = if labels["job"] == LOADER_JOB {
        labels["instance"].as_str()
    } else {
        labels["job"].as_str()
    };
    (name, by.unwrap_or("").to_owned())
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked): status and body, or None
/// while nothing listens.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

/// The status of `GET path`, or None while nothing listens.
async fn http_get_quiet(port: u16, path: &str) -> Option<u16> {
    get(port, path).await.map(|(status, _)| status)
}

/// A one-sink loader config (sink `orders`) with a metrics port.
fn loader_config(dir: &Path, fe: &str, extra: &str) -> String {
    format!(
        "labelPrefix: mon\nshutdownTimeout: 3s\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
        sink_yaml("orders", &dir.join("orders.sock"), fe, extra)
    )
}

const FAST_RETRY: &str = "    retry:\n      minBackoff: 20ms\n      maxBackoff: 200ms\n";

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"pad":"{}"}}"#, "x".repeat(80))
}

fn rows(from: u64, to: u64) -> Vec<String> {
    (from..to).map(row).collect()
}

/// A real controller process against `api`; `args` are added to its command line.
/// Returns it once its metrics answer, with its metrics port.
async fn controller(
    api: &FakeApi,
    dir: &Path,
    name: &str,
    args: &[String],
) -> (tokio::process::Child, u16) {
    api.put(
        "apiextensions.k8s.io/customresourcedefinitions",
        json!({"metadata": {"name": "starrockssinks.starsink.io"}}),
    );
    let server = api.serve_http().await;
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = FakeApi::kubeconfig(&server, &dir);
    let metrics_port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["controller", "--metrics-addr"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--webhook-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "starsink-system")
        .env("POD_NAME", name)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("controller.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink controller");
    wait_until(&format!("controller {name}'s metrics"), WAIT, || async {
        http_get_quiet(metrics_port, "/metrics").await == Some(200)
    })
    .await;
    (child, metrics_port)
}

/// A sink, its Secret and an attached pod, so the controller has something to reconcile
/// and a table load rate to report.
fn put_a_sink(api: &FakeApi) {
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    api.put(
        "core/secrets",
        json!({
            "metadata": {"name": "sr", "namespace": "shop"},
            "data": {"username": b64("loader"), "password": b64("pw")},
        }),
    );
    api.put(
        "starsink.io/starrockssinks",
        json!({
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {
                "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "shop", "table": "orders"},
                "credentialsSecretRef": {"name": "sr"},
            },
        }),
    );
    api.put(
        "core/pods",
        json!({
            "metadata": {
                "name": "orders-api-0", "namespace": "shop",
                "labels": {"starsink.io/inject": "true"},
                "annotations": {"starsink.io/sinks": "orders"},
            },
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": {"phase": "Running"},
        }),
    );
}

/// A `--cert-dir` whose certificate expires in two days (as one cert-manager failed to
/// renew would).
fn expiring_cert_dir(dir: &Path) -> PathBuf {
    let certs = dir.join("expiring-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["starsink-webhook".into()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(certs.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(certs.join("tls.key"), key.serialize_pem()).unwrap();
    certs
}

/// A Lease held for an hour by a replica that is gone: the controller stands by.
fn lease_held_elsewhere(api: &FakeApi) {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    api.put(
        "coordination.k8s.io/leases",
        json!({
            "metadata": {"name": "starsink-controller", "namespace": "starsink-system"},
            "spec": {
                "holderIdentity": "controller-elsewhere",
                "leaseDurationSeconds": 3600,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }),
    );
}

/// Writes rows to `socket` without waiting: a producer whose writes may be held.
fn produce_in_background(socket: PathBuf, n: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(mut s) = tokio::net::UnixStream::connect(&socket).await else {
            return;
        };
        for id in 0..n {
            if s.write_all(format!("{}\n", row(id)).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Every target expression of the dashboard, with Grafana's variables as "All" and a
/// rate interval that covers the test.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let json = dashboard["data"]["starsink.json"]
        .as_str()
        .expect("the ConfigMap holds starsink.json");
    let dash: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let q = expr
                .replace("$namespace", ".*")
                .replace("$sink", ".*")
                .replace("$__rate_interval", "5m")
                .replace("$__range", "10m");
            out.push((panel["title"].as_str().unwrap_or("").to_owned(), q));
        }
    }
    out
}

/// The loaders: one healthy, one per fault; and the endpoints they load into.
struct Loaders {
    healthy: Loader,
    /// StarRocks down: its FE refuses connections.
    down: Loader,
    /// StarRocks refuses every batch: dead-lettered.
    refused: Loader,
    /// StarRocks down and a 128 KiB spool.
    spool_full: Loader,
    /// StarRocks down until its spool is damaged, then up.
    damaged: Loader,
    /// Started on a spool with a damaged segment (damage found at start).
    predamaged: Loader,
    /// Killed once scraped.
    gone: Loader,
    recovering: DevEndpoint,
    _endpoints: [DevEndpoint; 2],
}

impl Loaders {
    async fn start() -> Loaders {
        let sr = endpoint(Faults::default()).await;
        let refusing = endpoint(Faults {
            refuse: 1.0,
            ..Faults::default()
        })
        .await;
        let recovering = down_endpoint().await;
        let (fe, dead) = (sr.fe_url(), dead_address());
        let (refusing_fe, recovering_fe) = (refusing.fe_url(), recovering.fe_url());
        let flush = "    flush:\n      interval: 200ms\n";
        let spool = |d: &Path| d.join("spool").display().to_string();
        Loaders {
            healthy: Loader::start(|d| loader_config(d, &fe, flush)).await,
            down: Loader::start(|d| loader_config(d, &dead, &format!("{flush}{FAST_RETRY}"))).await,
            refused: Loader::start(|d| {
                let extra = format!(
                    "    deadLetterDir: {}\n    flush:\n      maxRows: 100\n      interval: 100ms\n",
                    d.join("dead-letters").display()
                );
                loader_config(d, &refusing_fe, &extra)
            })
            .await,
            spool_full: Loader::start(|d| {
                let extra = format!(
                    "    spoolDir: {}\n    spoolMaxBytes: 128KiB\n    flush:\n      maxBytes: 64KiB\n      interval: 100ms\n{FAST_RETRY}",
                    spool(d)
                );
                loader_config(d, &dead, &extra)
            })
            .await,
            damaged: Loader::start(|d| {
                let extra = format!(
                    "    spoolDir: {}\n    flush:\n      maxRows: 100\n      interval: 1h\n{FAST_RETRY}",
                    spool(d)
                );
                loader_config(d, &recovering_fe, &extra)
            })
            .await,
            predamaged: Loader::start(|d| {
                std::fs::create_dir_all(d.join("spool")).unwrap();
                let segment = d.join("spool").join(format!("{:020}.seg", 1));
                std::fs::write(segment, b"not a segment header, written by something else").unwrap();
                loader_config(d, &fe, &format!("    spoolDir: {}\n", spool(d)))
            })
            .await,
            gone: Loader::start(|d| loader_config(d, &fe, flush)).await,
            recovering,
            _endpoints: [sr, refusing],
        }
    }

    fn ports(&self) -> Vec<u16> {
        [
            &self.healthy,
            &self.down,
            &self.refused,
            &self.spool_full,
            &self.damaged,
            &self.predamaged,
            &self.gone,
        ]
        .map(Loader::metrics_port)
        .to_vec()
    }

    /// Steady traffic to the healthy loader, a little to the others, the spool damaged
    /// and StarRocks back for `damaged`. Returns the producers still writing.
    async fn produce_and_damage(&self) -> [tokio::task::JoinHandle<()>; 2] {
        let steady_socket = self.healthy.socket("orders");
        let steady = tokio::spawn(async move {
            let mut id = 0;
            loop {
                write_lines(&steady_socket, &rows(id, id + 20)).await;
                id += 20;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        write_lines(&self.down.socket("orders"), &rows(0, 10)).await;
        write_lines(&self.refused.socket("orders"), &rows(0, 100)).await;
        let filling = produce_in_background(self.spool_full.socket("orders"), 5000);
        write_lines(&self.damaged.socket("orders"), &rows(0, 1000)).await;
        let sealed = r#"starsink_flushes_total{sink="orders",trigger="rows"}"#;
        let port = self.damaged.metrics_port();
        wait_until("ten spooled batches", WAIT, || async {
            metric_at(port, sealed).await >= 10.0
        })
        .await;
        damage_row_in_spool(&self.damaged.dir.path().join("spool"), 850);
        self.recovering.set_faults(Faults::default());
        [steady, filling]
    }
}

/// The controllers, each its own job: one healthy; one standing by (the Lease is held
/// elsewhere) and serving a certificate that expires in two days; one to be killed.
struct Controllers {
    _healthy: [tokio::process::Child; 2],
    _standby: tokio::process::Child,
    gone: tokio::process::Child,
    jobs: [(&'static str, Vec<u16>); 3],
}

impl Controllers {
    async fn start(dir: &Path) -> Controllers {
        let healthy_api = FakeApi::new();
        put_a_sink(&healthy_api);
        let (healthy, healthy_port) = controller(&healthy_api, dir, "controller-0", &[]).await;
        // Healthy means settled: controller-0 leads before Prometheus looks.
        wait_until("controller-0 to lead", WAIT, || async {
            get(healthy_port, "/metrics")
                .await
                .is_some_and(|(_, m)| m.contains("\nstarsink_controller_leader{} 1\n"))
        })
        .await;
        // A second replica of the healthy release: it stands by while controller-0 leads.
        let (replica, replica_port) = controller(&healthy_api, dir, "controller-0b", &[]).await;
        let standby_api = FakeApi::new();
        put_a_sink(&standby_api);
        lease_held_elsewhere(&standby_api);
        let cert_dir = expiring_cert_dir(dir);
        let standby_args = ["--cert-dir".to_owned(), cert_dir.display().to_string()];
        let (standby, standby_port) =
            controller(&standby_api, dir, "controller-1", &standby_args).await;
        let no_election = ["--no-leader-election".to_owned()];
        let (gone, gone_port) =
            controller(&FakeApi::new(), dir, "controller-2", &no_election).await;
        Controllers {
            _healthy: [healthy, replica],
            _standby: standby,
            gone,
            jobs: [
                ("starsink-controller", vec![healthy_port, replica_port]),
                ("starsink-controller-standby", vec![standby_port]),
                ("starsink-controller-gone", vec![gone_port]),
            ],
        }
    }
}

/// What must fire: (alertname, loader instance or controller job).
fn expected_alerts(l: &Loaders) -> BTreeSet<(String, String)> {
    let instance = |l: &Loader| format!("127.0.0.1:{}", l.metrics_port());
    [
        ("StarsinkLoadsFailing", instance(&l.down)),
        ("StarsinkRecordsDeadLettered", instance(&l.refused)),
        ("StarsinkSpoolFilling", instance(&l.spool_full)),
        ("StarsinkProducersHeld", instance(&l.spool_full)),
        ("StarsinkRecordsLost", instance(&l.damaged)),
        ("StarsinkRecordsLost", instance(&l.predamaged)),
        ("StarsinkLoaderNotReady", instance(&l.gone)),
        (
            "StarsinkControllerNotReconciling",
            "starsink-controller-standby".into(),
        ),
        (
            "StarsinkControllerNotReconciling",
            "starsink-controller-gone".into(),
        ),
        (
            "StarsinkWebhookCertificateExpiring",
            "starsink-controller-standby".into(),
        ),
    ]
    .into_iter()
    .map(|(a, w)| (a.to_owned(), w))
    .collect()
}

/// Waits until Prometheus has scraped `port` of `job` successfully.
async fn await_scraped(prometheus: &Prometheus, job: &str, port: u16) {
    let q = format!(r#"up{{job="{job}",instance="127.0.0.1:{port}"}} == 1"#);
    wait_until(&format!("{job} 127.0.0.1:{port} scraped"), WAIT, || async {
        !prometheus.query(&q).await.is_empty()
    })
    .await;
}

/// Alerts a rule may also raise as a side effect of a fault, beside the expected ones:
/// StarRocks down (or down until the spool is damaged) is also loads failing.
fn tolerated_alerts(l: &Loaders) -> BTreeSet<(String, String)> {
    let instance = |l: &Loader| format!("127.0.0.1:{}", l.metrics_port());
    [
        ("StarsinkLoadsFailing", instance(&l.spool_full)),
        ("StarsinkLoadsFailing", instance(&l.damaged)),
    ]
    .into_iter()
    .map(|(a, w)| (a.to_owned(), w))
    .collect()
}

/// Waits until every alert of `expected` has fired (each some time in the last 10
/// minutes, so one that fired and cleared counts); then no other alert may have fired but
/// the `tolerated`.
async fn await_fired(
    prometheus: &Prometheus,
    expected: &BTreeSet<(String, String)>,
    tolerated: &BTreeSet<(String, String)>,
) {
    let fired = || async {
        let q = r#"max_over_time(ALERTS{alertstate="firing"}[10m])"#;
        let series = prometheus.query(q).await;
        series
            .iter()
            .map(|s| who(&s["metric"]))
            .collect::<BTreeSet<_>>()
    };
    let mut last = BTreeSet::new();
    let all_fired = tokio::time::timeout(WAIT, async {
        loop {
            last = fired().await;
            if expected.is_subset(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        all_fired.is_ok(),
        "not every alert fired.\nexpected: {expected:#?}\nfired: {last:#?}"
    );
    let unexpected: Vec<_> = last
        .difference(expected)
        .filter(|a| !tolerated.contains(*a))
        .collect();
    assert!(
        unexpected.is_empty(),
        "alerts that should not have fired: {unexpected:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alert_fires_on_its_fault_and_never_for_the_healthy_and_every_dashboard_query_has_data(
) {
    let rules = helm_render("templates/prometheusrule.yaml");
    let dashboard = helm_render("templates/dashboard.yaml");
    let work = tempfile::tempdir().unwrap();
    let loaders = Loaders::start().await;
    let mut controllers = Controllers::start(work.path()).await;
    let mut jobs = vec![(LOADER_JOB, loaders.ports())];
    jobs.extend(controllers.jobs.iter().cloned());
    let prometheus = Prometheus::start(&rules["spec"], &jobs).await;

    let producers = loaders.produce_and_damage().await;
    await_scraped(&prometheus, LOADER_JOB, loaders.gone.metrics_port()).await;
    await_scraped(
        &prometheus,
        "starsink-controller-gone",
        controllers.jobs[2].1[0],
    )
    .await;
    loaders.gone.signal(nix::sys::signal::Signal::SIGKILL);
    controllers.gone.kill().await.unwrap();
    let (expected, tolerated) = (expected_alerts(&loaders), tolerated_alerts(&loaders));
    await_fired(&prometheus, &expected, &tolerated).await;

    // Once the healthy loader and controller have been judged over a whole window and
    // hold time, no alert about them has ever fired. (One may have been pending while
    // Prometheus started: the first scrape of one replica can come before the other's.)
    let healthy = format!("127.0.0.1:{}", loaders.healthy.metrics_port());
    let a_window_ago = format!(r#"up{{instance="{healthy}"}} offset 35s"#);
    wait_until("a window of the healthy loader's history", WAIT, || async {
        !prometheus.query(&a_window_ago).await.is_empty()
    })
    .await;
    let judged = format!(
        r#"count_over_time(ALERTS{{alertstate="firing",instance="{healthy}"}}[10m]) or count_over_time(ALERTS{{alertstate="firing",job="starsink-controller"}}[10m])"#
    );
    let against_healthy = prometheus.query(&judged).await;
    assert!(
        against_healthy.is_empty(),
        "alerts about the healthy loader or controller: {against_healthy:#?}"
    );

    for (panel, q) in dashboard_queries(&dashboard) {
        let result = prometheus.query(&q).await;
        assert!(
            !result.is_empty(),
            "the dashboard's panel {panel:?} has no data: {q}"
        );
    }
    for p in producers {
        p.abort();
    }
}
