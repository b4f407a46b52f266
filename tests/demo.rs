//! `starsink demo`, the README's first command, runs to the end and finds every record
//! loaded once, through a crash with StarRocks down and a replay.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_loads_every_record_once_through_a_crash_and_a_replay() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["demo", "--producers", "2", "--records", "500"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the demo did not finish within 120s")
        .expect("run starsink demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("loader exit: signal: 9"), "{stdout}");
    assert!(
        stdout.contains("rows in StarRocks:         2000 (0 duplicates, 0 missing)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("every record loaded exactly once"),
        "{stdout}"
    );
    // What it claims to show, it shows: the replay the second loader found in the spool
    // (its log, on stderr), and what an `ok` meant while StarRocks was down.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spool replay: loading what the last run left"),
        "{stderr}"
    );
    assert!(
        stdout.contains("`ok` means on disk in the spool"),
        "{stdout}"
    );
}
