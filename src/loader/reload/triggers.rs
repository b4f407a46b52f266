//! What makes the loader read its config again: SIGHUP, and a change to one of its files,
//! either an edit in place or a ConfigMap volume's atomic swap of its `..data` symlink
//! (the kubelet's sync, about a minute after the ConfigMap changed).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;

/// Events in a watched directory are taken as one change once none has come for this
/// long: an editor's several writes, or the kubelet's several renames...
const SETTLE: Duration = Duration::from_millis(200);
/// ...or once they have gone on for this long.
const SETTLE_AT_MOST: Duration = Duration::from_secs(2);

/// Why the config is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Files,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Files => "file change",
        }
    }
}

/// Watches the directories of `files` (a watch on a file itself would miss a symlink
/// swapped in its directory) and sends [`Trigger::Files`] on `tx` once a change in them
/// has settled, and once at the start (a change between the first read and the watch
/// would be missed otherwise). Only entries named like one of the files, or the
/// kubelet's own `..` entries, count; so does a queue overflow, which may have lost one.
/// Without inotify (its limits reached, say) the files are not watched and the error
/// says so; SIGHUP still reloads.
pub fn watch(files: &[PathBuf], tx: mpsc::Sender<Trigger>) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    let mask = WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::MODIFY;
    let mut names: Vec<OsString> = Vec::new();
    for file in files {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        inotify.watches().add(&dir, mask).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot watch {}: {e}", dir.display()))
        })?;
        if let Some(name) = file.file_name() {
            names.push(name.to_owned());
        }
    }
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    let _ = tx.try_send(Trigger::Files);
    tokio::spawn(async move {
        let counts = |event: &inotify::Event<OsString>| {
            event.mask.contains(inotify::EventMask::Q_OVERFLOW)
                || event.name.as_deref().is_some_and(|n| {
                    names.iter().any(|w| w == n) || n.as_encoded_bytes().starts_with(b"..")
                })
        };
        loop {
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the config files failed; they are no longer watched (SIGHUP still reloads)");
                    return;
                }
                None => return,
            };
            if !counts(&event) {
                continue;
            }
            // Settle: until the directory has been quiet for a moment, or for long
            // enough (another file there may be written all the time).
            let until = tokio::time::Instant::now() + SETTLE_AT_MOST;
            while let Ok(Some(Ok(_))) = tokio::time::timeout(SETTLE, events.next()).await {
                if tokio::time::Instant::now() >= until {
                    break;
                }
            }
            if tx.try_send(Trigger::Files).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    Ok(())
}
