//! Admission review latency, in process: a typical pod (two app containers, two sinks)
//! through `Webhook::review`, bytes in to bytes out, as the HTTPS handler calls it.
//!
//! ```text
//! cargo bench --bench webhook
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use starsink::operator::inject::InjectSettings;
use starsink::operator::manifests::read_sinks;
use starsink::operator::webhook::{ReviewResult, Webhook, WebhookMetrics};

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
    let sinks = read_sinks(
        &std::fs::read_to_string(fixtures.join("sinks.yaml")).expect("sinks"),
        "sinks.yaml",
    )
    .expect("sinks parse");
    let pod: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(fixtures.join("02-multi-container.yaml")).expect("pod"),
    )
    .expect("pod parses");
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
        },
    })
    .to_string()
    .into_bytes();
    let webhook = Webhook {
        sinks: Arc::new(sinks),
        settings: InjectSettings::default(),
        metrics: Arc::new(WebhookMetrics::default()),
    };
    let (rounds, warmup) = if smoke { (200, 20) } else { (20_000, 2_000) };
    for _ in 0..warmup {
        webhook.review(&body);
    }
    let mut times: Vec<Duration> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let (_, result) = webhook.review(&body);
        times.push(t.elapsed());
        assert_eq!(result, ReviewResult::Injected);
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    if smoke {
        println!("smoke run (not under `cargo bench`): the figures below mean nothing");
    }
    println!(
        "webhook review, {} rounds, request {} bytes: p50 {:?}, p99 {:?}, max {:?}",
        rounds,
        body.len(),
        pct(0.50),
        pct(0.99),
        times[times.len() - 1]
    );
}
