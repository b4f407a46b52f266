//! The Helm chart, the Dockerfile and the GitHub workflows, checked with the real tools
//! that scripts/install-tools puts in `.tools/`: helm (lint, template),
//! kubernetes-validate (strict, every built-in kind), hadolint and actionlint; and every
//! rendered object against the API server's own object validation (`kube_rules`).

mod kube_rules;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tool(name: &str) -> PathBuf {
    let path = [".tools/bin", ".tools/venv/bin"]
        .iter()
        .map(|d| repo(d).join(name))
        .find(|p| p.exists());
    path.unwrap_or_else(|| {
        panic!("{name} is missing from .tools/; ./scripts/test installs it (scripts/install-tools)")
    })
}

/// Runs a tool; returns (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value sets rendered besides the defaults.
fn value_sets() -> Vec<Option<PathBuf>> {
    let mut sets = vec![None];
    for name in [
        "cert-manager",
        "network-policy",
        "custom-resources",
        "monitoring",
    ] {
        sets.push(Some(repo(&format!("tests/fixtures/chart/{name}.yaml"))));
    }
    sets
}

fn helm_template(values: Option<&Path>) -> String {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "starsink"])
        .arg(repo("charts/starsink"))
        .args(["--namespace", "starsink-system", "--include-crds"]);
    if let Some(v) = values {
        cmd.arg("--values").arg(v);
    }
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "helm template {values:?} failed:\n{err}");
    out
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn helm_lint_strict_passes_for_every_value_set() {
    for values in value_sets() {
        let mut cmd = Command::new(tool("helm"));
        cmd.args(["lint", "--strict"]).arg(repo("charts/starsink"));
        if let Some(v) = &values {
            cmd.arg("--values").arg(v);
        }
        let (ok, out, err) = run(&mut cmd);
        assert!(ok, "helm lint --strict {values:?}:\n{out}{err}");
    }
}

#[test]
fn every_rendered_object_is_valid_kubernetes() {
    // Kinds whose schemas belong to other projects' CRDs; kubernetes-validate only knows
    // built-in kinds, so these are checked for their required fields below.
    const FOREIGN: [&str; 5] = [
        "Certificate",
        "Issuer",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, values) in value_sets().iter().enumerate() {
        let rendered = helm_template(values.as_deref());
        let file = dir.path().join(format!("render-{i}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        let (ok, out, err) = run(Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", "1.33.0"])
            .arg(&file));
        let text = format!("{out}{err}");
        assert!(ok && !text.contains("ERROR"), "{values:?}:\n{text}");
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                FOREIGN.iter().any(|k| line.contains(&format!("kind {k} "))),
                "{values:?}: unexpected warning {line}"
            );
        }
        for doc in documents(&rendered) {
            let kind = doc["kind"].as_str().unwrap_or("");
            let refused = kube_rules::problems_restricted(&doc);
            assert!(
                refused.is_empty(),
                "{values:?}: a real API server (restricted namespace) would refuse {kind} {}: {refused:?}",
                doc["metadata"]["name"]
            );
            if FOREIGN.contains(&kind) {
                assert!(
                    doc["metadata"]["name"].is_string() && doc["spec"].is_object(),
                    "{kind} lacks metadata.name or spec: {doc}"
                );
            }
        }
    }
}

#[test]
fn the_controller_accepts_the_arguments_the_chart_gives_it() {
    for values in value_sets() {
        let docs = documents(&helm_template(values.as_deref()));
        let container = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        // clap refuses unknown flags and bad values even with --help.
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_starsink"))
            .args(&args)
            .arg("--help"));
        assert!(
            ok,
            "{values:?}: starsink rejects the chart's arguments {args:?}:\n{err}"
        );
    }
}

#[test]
fn the_defaults_render_a_hardened_highly_available_controller_and_a_narrow_webhook() {
    let docs = documents(&helm_template(None));
    let deploy = find(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));

    let hook = &find(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["starsink.io/inject"],
        "true"
    );
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(
        excluded["values"],
        serde_json::json!(["kube-system", "starsink-system"])
    );
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate");

    assert_eq!(
        find(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1,
        "a budget that lets one replica go at a time never blocks a drain"
    );
    // Write access to Secrets and the webhook configuration is limited to the one object.
    let role = find(&docs, "Role");
    let update = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verbs"] == serde_json::json!(["update"]))
        .unwrap();
    assert_eq!(
        update["resourceNames"],
        serde_json::json!(["starsink-webhook-tls"])
    );
    let cluster = find(&docs, "ClusterRole");
    let webhook_rule = cluster["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "mutatingwebhookconfigurations")
        .unwrap();
    assert_eq!(
        webhook_rule["resourceNames"],
        serde_json::json!(["starsink"])
    );
}

#[test]
fn one_replica_gets_no_disruption_budget_that_would_block_every_drain() {
    let (ok, out, err) = run(Command::new(tool("helm"))
        .args(["template", "starsink"])
        .arg(repo("charts/starsink"))
        .args(["--set", "replicaCount=1"]));
    assert!(ok, "{err}");
    let docs = documents(&out);
    assert!(docs.iter().all(|d| d["kind"] != "PodDisruptionBudget"));
    assert!(docs.iter().any(|d| d["kind"] == "Deployment"));
}

#[test]
fn a_typo_in_the_values_is_refused_with_the_key() {
    let (ok, _, err) = run(Command::new(tool("helm"))
        .args(["template", "starsink"])
        .arg(repo("charts/starsink"))
        .args(["--set", "replicaCont=3"]));
    assert!(!ok, "a misspelt value must fail");
    assert!(err.contains("replicaCont"), "{err}");
    let (ok, _, err) = run(Command::new(tool("helm"))
        .args(["template", "starsink"])
        .arg(repo("charts/starsink"))
        .args(["--set", "webhook.failurePolicy=Sometimes"]));
    assert!(!ok && err.contains("failurePolicy"), "{err}");
}

#[test]
fn the_chart_carries_the_same_crd_as_crds() {
    let top = std::fs::read_to_string(repo("crds/starrocks-sink.yaml")).unwrap();
    let chart = std::fs::read_to_string(repo("charts/starsink/crds/starrocks-sink.yaml")).unwrap();
    assert!(
        top == chart,
        "charts/starsink/crds/starrocks-sink.yaml differs from crds/; copy it:\n  cp crds/starrocks-sink.yaml charts/starsink/crds/"
    );
}

#[test]
fn the_chart_versions_follow_the_crate() {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("charts/starsink/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert!(chart["kubeVersion"].as_str().unwrap().ends_with("-0"));
}

#[test]
fn the_workflows_pass_actionlint_and_release_what_the_readme_says() {
    let workflows: Vec<PathBuf> = std::fs::read_dir(repo(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(workflows.len() >= 2, "ci and release: {workflows:?}");
    let (ok, out, err) = run(Command::new(tool("actionlint")).args(&workflows));
    assert!(ok, "actionlint:\n{out}{err}");
    let release = std::fs::read_to_string(repo(".github/workflows/release.yml")).unwrap();
    for part in [
        "linux/amd64,linux/arm64",
        "helm push",
        "crds/starrocks-sink.yaml",
        "Secrets:",
    ] {
        assert!(release.contains(part), "release.yml lacks {part}");
    }
    let ci = std::fs::read_to_string(repo(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains("run: .ci/run"), "CI runs the test command");
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_pinned_and_unprivileged() {
    let dockerfile = repo("Dockerfile");
    let (ok, out, err) = run(Command::new(tool("hadolint")).arg(&dockerfile));
    assert!(ok, "hadolint:\n{out}{err}");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    for image in &froms {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && !tag.contains('/') && tag != "latest",
            "base image {image} must have a pinned tag"
        );
    }
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "root" && uid != "0", "the image runs as {user}");
    assert!(text.contains("cargo build --profile dist --locked"));
    // The build script, which links with packed relocations, is part of the image's build.
    assert!(text.contains("COPY build.rs ./"));
    assert!(text.contains("/src/target/dist/starsink /usr/local/bin/starsink"));
    assert!(text.contains(r#"ENTRYPOINT ["/usr/local/bin/starsink"]"#));
    assert!(repo(".dockerignore").exists());
}

#[test]
fn the_binary_packs_its_relative_relocations_where_glibc_loads_them() {
    // `build.rs` links with DT_RELR when the build machine's glibc is 2.36 or later (as
    // in the image): without it the dynamic loader reads every relative relocation at
    // start, and an idle sidecar keeps them resident. An older glibc cannot load it.
    let glibc = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .expect("getconf");
    let glibc = String::from_utf8_lossy(&glibc.stdout);
    let version: Vec<u32> = glibc
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse().expect("a glibc version"))
        .collect();
    let binary = env!("CARGO_BIN_EXE_starsink");
    let (ok, out, err) = run(Command::new("readelf").args(["--dynamic", binary]));
    assert!(ok, "readelf:\n{err}");
    assert_eq!(
        out.contains("(RELR)"),
        version[..] >= [2, 36][..],
        "{binary}, built with {}: packed relocations (DT_RELR) exactly from glibc 2.36 on\n{out}",
        glibc.trim()
    );
}

#[test]
fn the_binary_needs_no_math_library() {
    // `pow` is defined in the crate (src/lib.rs): loading libm.so for tokio's one call
    // kept about 0.5 MiB resident in every idle sidecar. A dependency that calls another
    // libm function brings it back; define that one too, or weigh the cost.
    let binary = env!("CARGO_BIN_EXE_starsink");
    let (ok, out, err) = run(Command::new("readelf").args(["--dynamic", binary]));
    assert!(ok, "readelf:\n{err}");
    let needed: Vec<&str> = out.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(!needed.is_empty(), "{out}");
    assert!(
        !needed.iter().any(|l| l.contains("libm.so")),
        "{binary} needs libm.so:\n{}",
        needed.join("\n")
    );
}

#[test]
fn the_alerts_select_the_jobs_the_chart_monitors_give_by_default() {
    // The Prometheus Operator names a PodMonitor's job `<namespace>/<name>` and a
    // ServiceMonitor's job after the Service it scrapes (their `jobLabel` docs).
    let docs = documents(&helm_template(Some(&repo(
        "tests/fixtures/chart/monitoring.yaml",
    ))));
    let rules = serde_json::to_string(&find(&docs, "PrometheusRule")["spec"]).unwrap();
    let pods = &find(&docs, "PodMonitor")["metadata"];
    let loader_job = format!(
        "{}/{}",
        pods["namespace"].as_str().unwrap(),
        pods["name"].as_str().unwrap()
    );
    let selector = &find(&docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"];
    let scraped: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|d| {
            let labels = &d["metadata"]["labels"];
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &labels[k] == v)
        })
        .filter(|d| {
            d["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "metrics")
        })
        .collect();
    assert_eq!(scraped.len(), 1, "the ServiceMonitor scrapes one Service");
    let controller_job = scraped[0]["metadata"]["name"].as_str().unwrap();
    for job in [loader_job.as_str(), controller_job] {
        assert!(
            rules.contains(&format!(r#"job=~\"{job}\""#)),
            "the rules never select job {job}: {rules}"
        );
    }
}
