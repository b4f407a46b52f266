//! Injection over a corpus of realistic manifests (tests/fixtures/inject), each with its
//! expected result: `NN-name.out.yaml` when injected (or passed through), or
//! `NN-name.denied.txt` when refused. Every output is validated against the Kubernetes
//! OpenAPI schema with `kubernetes-validate` (installed by scripts/install-tools), against
//! the API server's own object validation (`kube_rules`: name lengths, port names, probes
//! per container kind, ...), against Pod Security "restricted" where the input met it, and
//! injected again to show nothing changes.
//!
//! After an intended change, regenerate the expected files with
//! `STARSINK_UPDATE_GOLDEN=1 cargo test --test inject` and review the diff.

mod kube_rules;

use std::path::{Path, PathBuf};

use serde_json::Value;
use starsink::operator::inject::InjectSettings;
use starsink::operator::manifests::{inject_manifests, parse_kube_version, read_sinks};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.ends_with(".yaml") && !name.ends_with(".out.yaml") && name != "sinks.yaml"
        })
        .collect();
    cases.sort();
    cases
}

/// The settings a case runs with: `# kube-version: X` in its first line, else 1.30.
fn settings(text: &str) -> InjectSettings {
    let version = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# kube-version: "))
        .unwrap_or("1.30");
    InjectSettings {
        image: "ghcr.io/starsink/starsink:test".into(),
        kube_version: parse_kube_version(version).unwrap(),
        ..InjectSettings::default()
    }
}

fn sinks() -> Vec<starsink::api::StarRocksSink> {
    let path = dir().join("sinks.yaml");
    read_sinks(&std::fs::read_to_string(&path).unwrap(), "sinks.yaml").unwrap()
}

fn expected_path(case: &Path, injected: bool) -> PathBuf {
    let stem = case.file_stem().unwrap().to_str().unwrap();
    dir().join(if injected {
        format!("{stem}.out.yaml")
    } else {
        format!("{stem}.denied.txt")
    })
}

/// Runs every case; returns (case, output or denial).
fn run_all() -> Vec<(PathBuf, Result<String, String>)> {
    let sinks = sinks();
    cases()
        .into_iter()
        .map(|case| {
            let text = std::fs::read_to_string(&case).unwrap();
            let out = inject_manifests(&text, &sinks, &settings(&text)).map_err(|e| e.to_string());
            (case, out)
        })
        .collect()
}

#[test]
fn every_case_matches_its_expected_result() {
    let update = std::env::var_os("STARSINK_UPDATE_GOLDEN").is_some();
    let all = run_all();
    assert!(all.len() >= 12, "the corpus should hold at least 12 cases");
    let mut mismatches = Vec::new();
    for (case, out) in all {
        let (path, text) = match &out {
            Ok(t) => (expected_path(&case, true), t.clone()),
            Err(e) => (expected_path(&case, false), format!("{e}\n")),
        };
        let other = expected_path(&case, out.is_err());
        if update {
            std::fs::write(&path, &text).unwrap();
            let _ = std::fs::remove_file(&other);
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == text => {}
            Ok(expected) => mismatches.push(format!(
                "{}: differs from {}\n--- expected\n{expected}\n--- got\n{text}",
                case.display(),
                path.display()
            )),
            Err(_) => mismatches.push(format!(
                "{}: expected {} (the case now {}), which does not exist",
                case.display(),
                path.display(),
                if out.is_ok() { "injects" } else { "is denied" }
            )),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}\n\nIf the change is intended: STARSINK_UPDATE_GOLDEN=1 cargo test --test inject, then review the diff.",
        mismatches.join("\n\n")
    );
}

#[test]
fn injecting_an_injected_manifest_changes_nothing() {
    let sinks = sinks();
    for (case, out) in run_all() {
        let Ok(once) = out else { continue };
        let text = std::fs::read_to_string(&case).unwrap();
        let twice = inject_manifests(&once, &sinks, &settings(&text)).unwrap();
        assert_eq!(
            twice,
            once,
            "{}: injecting twice changed it",
            case.display()
        );
    }
}

#[test]
fn every_injected_manifest_is_valid_kubernetes() {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing; ./scripts/test installs it (scripts/install-tools)",
        tool.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (case, out) in run_all() {
        if let Ok(text) = out {
            // kubernetes-validate names each resource by metadata.name and stops on a
            // pod that only has generateName (valid for the API server); give it one.
            let mut doc: Value = serde_yaml::from_str(&text).unwrap();
            if doc["metadata"]["name"].is_null() {
                let generated = format!("{}x1", doc["metadata"]["generateName"].as_str().unwrap());
                doc["metadata"]["name"] = Value::from(generated);
            }
            let f = dir.path().join(case.file_name().unwrap());
            std::fs::write(&f, serde_yaml::to_string(&doc).unwrap()).unwrap();
            files.push(f);
        }
    }
    let out = std::process::Command::new(&tool)
        .args(["--strict", "--kubernetes-version", "1.30.0", "--no-warn"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate refused:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod spec inside a manifest (a Pod, or a workload's template).
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn output(name: &str) -> Value {
    let (_, out) = run_all()
        .into_iter()
        .find(|(c, _)| c.file_name().unwrap().to_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no case {name}"));
    serde_yaml::from_str(&out.unwrap_or_else(|e| panic!("{name} was denied: {e}"))).unwrap()
}

fn denial(name: &str) -> String {
    let (_, out) = run_all()
        .into_iter()
        .find(|(c, _)| c.file_name().unwrap().to_str().unwrap().starts_with(name))
        .unwrap();
    out.expect_err("a denial")
}

fn loader(spec: &Value) -> Value {
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "starsink-loader")
        .cloned()
        .expect("a loader container")
}

fn shutdown_timeout(spec: &Value) -> String {
    let args: Vec<String> = serde_json::from_value(loader(spec)["args"].clone()).unwrap();
    let i = args.iter().position(|a| a == "--shutdown-timeout").unwrap();
    args[i + 1].clone()
}

#[test]
fn the_loader_is_the_last_native_sidecar_so_a_mesh_proxy_outlives_it() {
    let out = output("03-");
    let init = pod_spec(&out)["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["istio-init", "istio-proxy", "starsink-loader"]);
    assert_eq!(init[2]["restartPolicy"], "Always");
    assert_eq!(init[2]["startupProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn before_1_29_the_loader_is_a_plain_container_and_jobs_are_refused() {
    let spec = pod_spec(&output("15-")).clone();
    assert!(spec["initContainers"].is_null());
    let l = loader(&spec);
    assert!(l["restartPolicy"].is_null(), "{l}");
    let why = denial("16-");
    assert!(why.contains("1.29") && why.contains("forever"), "{why}");
}

#[test]
fn every_app_container_gets_the_sockets_and_one_variable_per_sink() {
    let out = output("02-");
    for c in pod_spec(&out)["containers"].as_array().unwrap() {
        let env: Vec<(&str, &str)> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap(),
                    e["value"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert!(env.contains(&("STARSINK_SOCKET_ORDERS", "/var/run/starsink/orders.sock")));
        assert!(env.contains(&(
            "STARSINK_SOCKET_BILLING_EVENTS",
            "/var/run/starsink/billing-events.sock"
        )));
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "starsink-sockets" && m["mountPath"] == "/var/run/starsink"));
    }
}

#[test]
fn the_shutdown_budget_follows_the_grace_period_and_a_sink_can_raise_it() {
    // Absent (30s by default), raised to billing-events' 45s minimum.
    let spec = pod_spec(&output("08-")).clone();
    assert_eq!(spec["terminationGracePeriodSeconds"], 45);
    assert_eq!(shutdown_timeout(&spec), "40s");
    let spec = pod_spec(&output("09-")).clone();
    assert_eq!(spec["terminationGracePeriodSeconds"], 5);
    assert_eq!(shutdown_timeout(&spec), "4s");
    let spec = pod_spec(&output("10-")).clone();
    assert_eq!(spec["terminationGracePeriodSeconds"], 300);
    assert_eq!(shutdown_timeout(&spec), "295s");
    let spec = pod_spec(&output("01-")).clone();
    assert!(
        spec["terminationGracePeriodSeconds"].is_null(),
        "left at the default"
    );
    assert_eq!(shutdown_timeout(&spec), "25s");
}

/// What a real API server would refuse in a manifest, with Pod Security "restricted".
fn restricted_violations(doc: &Value) -> Vec<String> {
    kube_rules::problems_restricted(doc)
}

#[test]
fn every_output_passes_the_api_servers_own_validation() {
    let mut refused = Vec::new();
    for (case, out) in run_all() {
        let input: Value = serde_yaml::from_str(&std::fs::read_to_string(&case).unwrap()).unwrap();
        let before = kube_rules::problems(&input);
        assert!(
            before.is_empty(),
            "{}: the fixture itself: {before:?}",
            case.display()
        );
        let Ok(text) = out else { continue };
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        for p in kube_rules::problems(&doc) {
            refused.push(format!("{}: {p}", case.display()));
        }
    }
    assert!(
        refused.is_empty(),
        "a real API server would refuse:\n{}",
        refused.join("\n")
    );
}

#[test]
fn long_sink_names_give_names_that_fit_and_stay_apart() {
    let out = output("20-");
    assert!(kube_rules::problems(&out).is_empty());
    let spec = pod_spec(&out);
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes.len(), 7, "{volumes:?}");
    let unique: std::collections::BTreeSet<_> = volumes.iter().collect();
    assert_eq!(unique.len(), volumes.len(), "{volumes:?}");
    assert!(volumes.iter().all(|v| v.len() <= 63), "{volumes:?}");
    // The socket paths and variables keep the whole sink name: only Kubernetes names
    // are cut.
    let long = "events-from-the-checkout-service-in-the-eu-west-region-2024-aaa";
    let app = &spec["containers"][0];
    assert!(app["env"].as_array().unwrap().iter().any(|e| e["name"]
        == format!("STARSINK_SOCKET_{}", long.to_uppercase().replace('-', "_"))
        && e["value"] == format!("/var/run/starsink/{long}.sock")));
}

#[test]
fn a_restricted_pod_stays_restricted_with_the_loader() {
    let case = dir().join("11-restricted-pss.yaml");
    let input: Value = serde_yaml::from_str(&std::fs::read_to_string(case).unwrap()).unwrap();
    assert!(
        restricted_violations(&input).is_empty(),
        "the fixture itself"
    );
    let out = output("11-");
    let v = restricted_violations(&out);
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(
        loader(pod_spec(&out))["securityContext"]["readOnlyRootFilesystem"],
        true
    );
}

#[test]
fn denials_say_what_to_do() {
    let why = denial("04-");
    assert!(
        why.contains("volume named starsink-sockets") && why.contains("rename"),
        "{why}"
    );
    let why = denial("13-");
    assert!(
        why.contains("clickz")
            && why.contains("namespace shop")
            && why.contains("starsink.io/on-missing-sink: skip"),
        "{why}"
    );
    // With the opt-out, the pod starts with the sinks that exist.
    let out = output("14-");
    assert_eq!(
        out["metadata"]["annotations"]["starsink.io/injected"],
        "orders"
    );
}

#[test]
fn pods_without_the_opt_in_pass_through_byte_for_byte() {
    let case = dir().join("12-no-opt-in.yaml");
    let text = std::fs::read_to_string(&case).unwrap();
    let out = inject_manifests(&text, &sinks(), &settings(&text)).unwrap();
    assert_eq!(out, text);
}
