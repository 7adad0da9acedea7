//! Following files for changes (credentials, certificates), so that a rotation needs no
//! restart. The folders holding the files are checked every so often with the rules
//! folder's signature (names, sizes, times, link targets): a mounted Secret changes by
//! swapping its `..data` link, which a watch on the file itself would miss, since the
//! file's own path is a link that never changes.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::standalone::{EntrySignature, folder_signature};

/// What the followed files look like now: each folder's entries, and each file as seen
/// through its links (a file outside the folder it is linked from still counts).
fn signature(files: &[PathBuf]) -> Vec<(PathBuf, Vec<EntrySignature>)> {
    let mut folders: Vec<PathBuf> = files
        .iter()
        .map(|file| match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    folders.sort();
    folders.dedup();
    let mut signature: Vec<(PathBuf, Vec<EntrySignature>)> = folders
        .into_iter()
        .map(|folder| {
            let entries = folder_signature(&folder);
            (folder, entries)
        })
        .collect();
    for file in files {
        let metadata = std::fs::metadata(file).ok();
        signature.push((
            file.clone(),
            vec![(
                file.as_os_str().to_owned(),
                metadata.as_ref().map(|m| m.len()),
                metadata.and_then(|m| m.modified().ok()),
                std::fs::canonicalize(file).ok(),
            )],
        ));
    }
    signature
}

/// Calls `changed` whenever one of `files` (or the folder holding it) changes, checked
/// every `every`, until `stop` is set. `what` names the files in logs.
pub async fn follow(
    what: &'static str,
    files: Vec<PathBuf>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut changed: impl FnMut() + Send,
) {
    if files.is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = signature(&files);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let now = signature(&files);
        if now != seen {
            seen = now;
            tracing::debug!(what, files = ?files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(), "files changed; re-reading");
            changed();
        }
    }
}
