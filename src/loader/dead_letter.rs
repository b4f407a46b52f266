//! The dead-letter directory: batches StarRocks refused, each as the exact Stream Load
//! body (`<label>.json` or `<label>.csv`) with `<label>.reason.json` beside it. The loader
//! writes them; `starsink dead-letters list|replay` reads them back, so that once the
//! cause is fixed (a column added, a type widened) the batches load under their labels.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::api::{Format, LoaderConfig, SinkSpec};
use crate::stream_load::{deliver, Attempt, Delivered, LoadState, StreamLoadClient};

/// Replayed batches are moved here, inside the dead-letter directory.
pub const REPLAYED: &str = "replayed";

/// Why StarRocks refused a batch for good: what its reason file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub error_url: Option<String>,
    /// An earlier attempt may have committed: replay checks the label's state first.
    pub uncertain: bool,
    /// StarRocks committed the label counting other rows than were sent.
    pub miscounted: bool,
}

/// A `<label>.reason.json` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    pub sink: String,
    pub label: String,
    pub rows: u64,
    pub format: Format,
    pub reason: String,
    #[serde(default)]
    pub error_url: Option<String>,
    /// An earlier attempt may have committed: replay asks `get_load_state` first.
    #[serde(default)]
    pub may_be_committed: bool,
    /// StarRocks committed the label counting other rows than were sent: some rows may
    /// be missing. Replay leaves such a batch to a person.
    #[serde(default)]
    pub rows_miscounted: bool,
    /// When it was written (RFC 3339).
    pub at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot read the dead-letter directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] crate::api::config::ConfigError),
}

/// Writes a refused batch into `dir`; returns the body file's path. The body goes first,
/// so a reason file always has its batch beside it; both are synced (and the directory)
/// before this returns, so the spool may then forget the batch.
pub async fn write(
    dir: &Path,
    sink: &str,
    label: &str,
    format: Format,
    body: &Bytes,
    rows: u64,
    refusal: &Refusal,
) -> std::io::Result<PathBuf> {
    let reason = Reason {
        sink: sink.to_owned(),
        label: label.to_owned(),
        rows,
        format,
        reason: refusal.reason.clone(),
        error_url: refusal.error_url.clone(),
        may_be_committed: refusal.uncertain,
        rows_miscounted: refusal.miscounted,
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let text = serde_json::to_string(&reason).map_err(std::io::Error::other)?;
    let (dir, label, body) = (dir.to_owned(), label.to_owned(), body.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let data = dir.join(format!("{label}.{}", format.as_str()));
        write_synced(&data, &body)?;
        write_synced(&dir.join(format!("{label}.reason.json")), text.as_bytes())?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(data)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes `path` whole or not at all: a synced temporary file renamed into place.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let result = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match result.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// One batch found in a dead-letter directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub reason: Reason,
    /// The body file.
    pub data: PathBuf,
    /// The reason file.
    pub meta: PathBuf,
}

/// Files in a dead-letter directory that are not a readable batch, each with what is wrong.
pub type Skipped = Vec<(PathBuf, String)>;

/// What a dead-letter directory holds: its batches (oldest label first), and what was
/// skipped.
pub fn scan(dir: &Path) -> Result<(Vec<Found>, Skipped), DeadLetterError> {
    let read_dir = |source| DeadLetterError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let meta = entry.map_err(read_dir)?.path();
        let Some(label) = meta
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".reason.json"))
        else {
            continue;
        };
        let reason: Reason = match std::fs::read(&meta)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                problems.push((meta, format!("unreadable reason file: {e}")));
                continue;
            }
        };
        let data = dir.join(format!("{label}.{}", reason.format.as_str()));
        if !data.is_file() {
            problems.push((meta, format!("its batch {} is missing", data.display())));
            continue;
        }
        found.push(Found { reason, data, meta });
    }
    // Oldest first: by time, then by label as a number would sort (`_9` before `_10`).
    found.sort_by(|a, b| {
        let key = |f: &Found| {
            (
                f.reason.at.clone(),
                f.reason.label.len(),
                f.reason.label.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok((found, problems))
}

/// `starsink dead-letters list DIR`: one line per batch, then the problems.
pub fn list(dir: &Path) -> Result<String, DeadLetterError> {
    let (found, problems) = scan(dir)?;
    let mut out = String::from("LABEL\tSINK\tROWS\tFORMAT\tAT\tMAY-BE-COMMITTED\tREASON\n");
    for f in &found {
        let r = &f.reason;
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.label,
            r.sink,
            r.rows,
            r.format.as_str(),
            r.at,
            match (r.rows_miscounted, r.may_be_committed) {
                (true, _) => "rows-miscounted",
                (false, true) => "yes",
                (false, false) => "no",
            },
            r.reason.replace(['\n', '\t'], " ")
        ));
    }
    out.push_str(&format!(
        "{} batch(es), {} row(s)\n",
        found.len(),
        found.iter().map(|f| f.reason.rows).sum::<u64>()
    ));
    for (file, problem) in problems {
        out.push_str(&format!("skipped {}: {problem}\n", file.display()));
    }
    Ok(out)
}

/// How replaying one batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Committed now, under its label; its files moved to `replayed/`.
    Loaded,
    /// StarRocks had committed it already (an earlier attempt did); files moved too.
    AlreadyLoaded,
    /// Not loaded; its files stay. The text says why and what to do.
    NotLoaded(String),
}

/// `starsink dead-letters replay DIR --config FILE`: loads each batch with the settings
/// of the sink it came from, under its own label, one at a time. A batch that may have
/// committed is first looked up with `get_load_state`. Each batch gets `timeout` for
/// transient failures. Returns each label with its outcome.
pub async fn replay(
    dir: &Path,
    config: &LoaderConfig,
    timeout: Duration,
    mut progress: impl FnMut(&Found, &Replayed),
) -> Result<Vec<(String, Replayed)>, DeadLetterError> {
    let (found, problems) = scan(dir)?;
    let mut out = Vec::new();
    for (file, problem) in problems {
        tracing::warn!(file = %file.display(), "skipped: {problem}");
    }
    for batch in found {
        let outcome = match config.sinks.iter().find(|s| s.name == batch.reason.sink) {
            None => Replayed::NotLoaded(format!(
                "sink {} is not in the config; pass the config that has it",
                batch.reason.sink
            )),
            Some(sink) => replay_one(dir, &batch, sink, timeout).await,
        };
        progress(&batch, &outcome);
        out.push((batch.reason.label.clone(), outcome));
    }
    Ok(out)
}

async fn replay_one(dir: &Path, batch: &Found, sink: &SinkSpec, timeout: Duration) -> Replayed {
    let r = &batch.reason;
    if r.rows_miscounted {
        return Replayed::NotLoaded(format!(
            "StarRocks committed its label counting other rows than were sent; compare the table with {} and load what is missing by hand",
            batch.data.display()
        ));
    }
    if sink.format != r.format {
        return Replayed::NotLoaded(format!(
            "sink {} now takes {}, the batch is {}",
            sink.name,
            sink.format.as_str(),
            r.format.as_str()
        ));
    }
    let body = match std::fs::read(&batch.data) {
        Ok(b) => Bytes::from(b),
        Err(e) => return Replayed::NotLoaded(format!("cannot read {}: {e}", batch.data.display())),
    };
    let mut client = match StreamLoadClient::new(sink) {
        Ok(c) => c,
        Err(e) => return Replayed::NotLoaded(e),
    };
    if r.may_be_committed {
        match client.load_state(&r.label).await {
            Ok(LoadState::Committed) => return moved(dir, batch, Replayed::AlreadyLoaded),
            Ok(LoadState::Pending) => {
                return Replayed::NotLoaded(
                    "StarRocks still runs a load under this label; replay again later".into(),
                )
            }
            Ok(LoadState::Aborted | LoadState::Unknown) => {}
            Err(e) => {
                return Replayed::NotLoaded(format!(
                    "it may have committed, and its label's state cannot be read: {e}"
                ))
            }
        }
    }
    let mut last = String::new();
    let delivered = tokio::time::timeout(
        timeout,
        deliver(&mut client, &r.label, &body, r.rows, &sink.retry, |a| {
            if let Attempt::Transient(why) | Attempt::Uncertain(why) = a {
                last = why.clone();
            }
        }),
    )
    .await;
    match delivered {
        Ok(Delivered::Committed { .. }) => moved(dir, batch, Replayed::Loaded),
        Ok(Delivered::Refused { reason, .. }) => {
            Replayed::NotLoaded(format!("StarRocks refused it again: {reason}"))
        }
        Err(_) => Replayed::NotLoaded(format!(
            "not loaded within {timeout:?}; last failure: {last}"
        )),
    }
}

/// Moves a loaded batch's files into `replayed/`, so that a second replay skips it.
fn moved(dir: &Path, batch: &Found, outcome: Replayed) -> Replayed {
    let into = dir.join(REPLAYED);
    let result = std::fs::create_dir_all(&into).and_then(|()| {
        for file in [&batch.data, &batch.meta] {
            std::fs::rename(file, into.join(file.file_name().unwrap_or_default()))?;
        }
        Ok(())
    });
    match result {
        Ok(()) => outcome,
        Err(e) => Replayed::NotLoaded(format!(
            "loaded, but its files could not be moved to {}: {e} (a second replay finds its label committed and loads nothing twice)",
            into.display()
        )),
    }
}

/// `starsink dead-letters ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Lists the batches in a dead-letter directory: label, sink, rows, when, why.
    List {
        /// The dead-letter directory (by default `<spoolDir>/dead-letter`, or without a
        /// spool `dead-letter/<sink>` beside the socket).
        dir: PathBuf,
    },
    /// Loads the batches in a dead-letter directory, once their cause is fixed: each with
    /// its sink's settings from the config, under its own label (a batch that may have
    /// committed is looked up first). Loaded batches move to `replayed/`.
    Replay {
        /// The dead-letter directory.
        dir: PathBuf,
        /// The loader config that has the batches' sinks.
        #[arg(long, short)]
        config: PathBuf,
        /// How long each batch may keep failing for a transient reason.
        #[arg(long, default_value = "1m")]
        timeout: crate::api::HumanDuration,
    },
}

/// `starsink dead-letters ...`: 0 when everything listed or loaded, 1 when a batch was
/// not loaded, 2 when the directory or the config cannot be read.
pub async fn run(command: Command) -> i32 {
    match command {
        Command::List { dir } => match list(&dir) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                tracing::error!("{e}");
                crate::loader::shutdown::EXIT_CONFIG
            }
        },
        Command::Replay {
            dir,
            config,
            timeout,
        } => {
            let config = match LoaderConfig::assemble(Some(&config), &[], None, None) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    return crate::loader::shutdown::EXIT_CONFIG;
                }
            };
            let report = |batch: &Found, outcome: &Replayed| {
                let (label, rows) = (&batch.reason.label, batch.reason.rows);
                match outcome {
                    Replayed::Loaded => println!("loaded {label} ({rows} rows)"),
                    Replayed::AlreadyLoaded => {
                        println!(
                            "already loaded {label} ({rows} rows): StarRocks committed it before"
                        )
                    }
                    Replayed::NotLoaded(why) => println!("not loaded {label}: {why}"),
                }
            };
            match replay(&dir, &config, timeout.0, report).await {
                Ok(outcomes) => {
                    let failed = outcomes
                        .iter()
                        .filter(|(_, o)| matches!(o, Replayed::NotLoaded(_)))
                        .count();
                    println!(
                        "{} batch(es) loaded or found loaded, {failed} not loaded",
                        outcomes.len() - failed
                    );
                    i32::from(failed > 0)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    crate::loader::shutdown::EXIT_CONFIG
                }
            }
        }
    }
}
