//! `starsink dead-letters list|replay`, through the real binary: batches StarRocks
//! refused are listed, then loaded under their own labels once the cause is fixed, and
//! a batch that may have committed is looked up before it is sent.

mod support;

use std::path::Path;
use std::process::Output;

use support::*;

fn row(id: u64) -> String {
    format!(r#"{{"id":{id}}}"#)
}

/// `starsink dead-letters ARGS`, run to its end.
async fn dead_letters(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .arg("dead-letters")
        .args(args)
        .output()
        .await
        .expect("run starsink dead-letters")
}

/// `starsink dead-letters replay DIR --config CONFIG`.
async fn replay(dir: &Path, config: &Path) -> Output {
    dead_letters(&[
        "replay",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Labels of the batches in `dir`, oldest first.
fn labels(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".reason.json").map(str::to_owned)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_listed_and_replayed_under_their_labels_once() {
    let sr = endpoint(Faults {
        refuse: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: replay\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                &format!(
                    "    deadLetterDir: {}\n    flush:\n      maxRows: 50\n      interval: 100ms\n",
                    dir.join("dlq").display()
                )
            )
        )
    })
    .await;
    write_lines(
        &loader.socket("orders"),
        &(0..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    let acc = loader.stop_expecting(3).await;
    assert_eq!(acc["dead_lettered"].as_u64(), Some(100), "{acc}");
    let dir = loader.dir.path().join("dlq");
    let config = loader.dir.path().join("loader.yaml");
    let dead = labels(&dir);
    assert_eq!(dead.len(), 2, "{dead:?}");

    let out = dead_letters(&["list", dir.to_str().unwrap()]).await;
    let listed = text(&out);
    assert!(out.status.success(), "{listed}");
    for label in &dead {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{label}\torders\t50\tjson\t"))),
            "{listed}"
        );
    }
    assert!(listed.contains("2 batch(es), 100 row(s)"), "{listed}");

    // While the cause is not fixed, a replay loads nothing and says why; the files stay.
    let out = replay(&dir, &config).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("StarRocks refused it again"),
        "{}",
        text(&out)
    );
    assert_eq!(labels(&dir), dead);

    // The second batch's commit was in doubt, and in fact StarRocks has it.
    let second = dir.join(format!("{}.reason.json", dead[1]));
    let mut reason: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&second).unwrap()).unwrap();
    reason["mayBeCommitted"] = true.into();
    std::fs::write(&second, reason.to_string()).unwrap();
    sr.set_faults(Faults::default());
    let sink: starsink::api::SinkSpec = serde_yaml::from_str(&format!(
        "name: orders\nsocket: /tmp/o.sock\nstarrocks:\n  feEndpoints: [\"{fe}\"]\n  database: shop\n  table: orders\n"
    ))
    .unwrap();
    let mut client = starsink::stream_load::StreamLoadClient::new(&sink).unwrap();
    let body = bytes::Bytes::from(std::fs::read(dir.join(format!("{}.json", dead[1]))).unwrap());
    let retry = starsink::api::RetrySpec::default();
    let committed =
        starsink::stream_load::deliver(&mut client, &dead[1], &body, 50, &retry, |_| {}).await;
    assert!(matches!(
        committed,
        starsink::stream_load::Delivered::Committed { .. }
    ));

    let out = replay(&dir, &config).await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("loaded {} (50 rows)", dead[0])),
        "{said}"
    );
    assert!(
        said.contains(&format!("already loaded {}", dead[1])),
        "{said}"
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100);
    let labels_loaded: Vec<String> = sr
        .state()
        .loads
        .iter()
        .filter(|l| l.status == "Success")
        .map(|l| l.label.clone())
        .collect();
    assert!(
        labels_loaded.contains(&dead[0]),
        "replayed under its own label: {labels_loaded:?}"
    );
    assert_eq!(labels(&dir.join("replayed")), dead);

    // A second replay finds nothing left to do.
    let out = replay(&dir, &config).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 batch(es) loaded or found loaded, 0 not loaded"),
        "{}",
        text(&out)
    );
}
