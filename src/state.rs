//! The state file: the on-disk container that lets windows and detector state outlive a
//! restart, and its atomic write. It owns the format (header, checksum, payload encoding)
//! and never what is in it: callers hand it any serde payload, and decide what to save and
//! how to map it back onto the rules they run.
//!
//! # Format
//! ```text
//! offset  size  field
//!      0     8  magic  b"PROPHETS"
//!      8     4  format version, u32 little-endian (FORMAT_VERSION)
//!     12     8  payload length in bytes, u64 little-endian
//!     20     8  xxh3-64 (unseeded) of the payload, u64 little-endian
//!     28     n  payload: JSON (serde_json)
//! ```
//! JSON keeps the file inspectable with `tail -c +29 FILE | jq`. JSON numbers cannot carry
//! NaN or ±Inf, and serde_json's default float parsing may miss the last bit, so sample
//! values and counts are written as their IEEE-754 bits with [`f64_bits`]: Prometheus's
//! staleness marker is one NaN bit pattern and must come back as exactly that one.
//!
//! A file that is missing is no state; a file that is not ours, from another format
//! version, truncated, corrupt or undecodable is an error naming the file and the fault,
//! for the caller to report and ignore. No input bytes make loading panic.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

/// The first bytes of every state file.
pub const MAGIC: [u8; 8] = *b"PROPHETS";

/// The layout of the header and of every payload type saved in it. Bump it whenever a
/// payload type changes incompatibly: files of other versions are refused as a whole.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// What went wrong saving or loading a state file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} state file {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{path} is not a Prophet state file: it does not start with \"PROPHETS\"")]
    NotState { path: PathBuf },
    #[error("{path} was written by state format {found}, this Prophet reads {supported}")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} is truncated: {needed} bytes expected, {found} present")]
    Truncated {
        path: PathBuf,
        needed: u64,
        found: u64,
    },
    #[error("{path} is corrupt: {found} bytes, but its header announces {needed}")]
    TrailingBytes {
        path: PathBuf,
        needed: u64,
        found: u64,
    },
    #[error("{path} is corrupt: payload checksum {found:#018x}, header says {stored:#018x}")]
    Checksum {
        path: PathBuf,
        stored: u64,
        found: u64,
    },
    #[error("{path} holds a payload this Prophet cannot decode: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot encode the state for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl StateError {
    /// A short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::NotState { .. } => "not_state",
            Self::Version { .. } => "version",
            Self::Truncated { .. } | Self::TrailingBytes { .. } => "truncated",
            Self::Checksum { .. } => "checksum",
            Self::Decode { .. } => "decode",
            Self::Encode { .. } => "encode",
        }
    }

    /// Whether the file exists but cannot be used (as opposed to an I/O failure): the
    /// caller reports it and starts without state.
    pub fn is_unusable_file(&self) -> bool {
        !matches!(self, Self::Io { .. } | Self::Encode { .. })
    }
}

/// The temporary file a save writes before renaming it over `path`: `path` with `.tmp`
/// appended, in the same directory (a rename is atomic only within one file system).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `payload` to `path` atomically: to [`temp_path`] first, flushed to disk, then
/// renamed over `path`, so a crash at any point leaves either the old file or the new one,
/// never a mix. The directory is synced afterwards where the platform allows it, so the
/// rename itself survives a power loss; a file system that cannot sync directories is not
/// an error.
pub fn save<T: serde::Serialize>(path: &Path, payload: &T) -> Result<(), StateError> {
    let body = serde_json::to_vec(payload).map_err(|source| StateError::Encode {
        path: path.to_owned(),
        source,
    })?;
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[20..28].copy_from_slice(&xxh3_64(&body).to_le_bytes());

    let temp = temp_path(path);
    let io = |action, source| StateError::Io {
        path: temp.clone(),
        action,
        source,
    };
    let written = File::create(&temp)
        .map_err(|e| io("create", e))
        .and_then(|mut file| {
            file.write_all(&header)
                .and_then(|()| file.write_all(&body))
                .map_err(|e| io("write", e))?;
            file.sync_all().map_err(|e| io("sync", e))
        });
    if let Err(e) = written {
        // Best effort: a leftover temporary file is harmless, the next save truncates it.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fs::rename(&temp, path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        action: "rename the temporary file over",
        source,
    })?;
    sync_parent(path);
    Ok(())
}

/// Syncs the directory holding `path`, so that a rename into it is durable. Only Unix can
/// open a directory for syncing, and some file systems refuse; either way the data itself
/// is already on disk, so failures are ignored.
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Reads the payload saved at `path`. `Ok(None)` if there is no file; an error naming the
/// file and the fault if it is not a state file of this format, is truncated or corrupt,
/// or its payload does not decode as `T`.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                action: "read",
                source,
            });
        }
    };
    let payload = payload(path, &bytes)?;
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|source| StateError::Decode {
            path: path.to_owned(),
            source,
        })
}

/// Checks the header of a whole file and returns its payload.
fn payload<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], StateError> {
    let path = || path.to_owned();
    let found = bytes.len() as u64;
    // A file cut inside the magic is judged by what is there: a prefix of ours is
    // truncated, anything else is not ours.
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(StateError::NotState { path: path() });
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(StateError::Truncated {
            path: path(),
            needed: HEADER_LEN as u64,
            found,
        });
    };
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or([0; 4]));
    if version != FORMAT_VERSION {
        return Err(StateError::Version {
            path: path(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let needed = (HEADER_LEN as u64).saturating_add(word(12));
    if found < needed {
        return Err(StateError::Truncated {
            path: path(),
            needed,
            found,
        });
    }
    if found > needed {
        return Err(StateError::TrailingBytes {
            path: path(),
            needed,
            found,
        });
    }
    let stored = word(20);
    let computed = xxh3_64(body);
    if stored != computed {
        return Err(StateError::Checksum {
            path: path(),
            stored,
            found: computed,
        });
    }
    Ok(body)
}

/// `#[serde(with = "crate::state::f64_bits")]`: an `f64` as its IEEE-754 bits in a `u64`,
/// so NaN payloads (the staleness marker), ±Inf and -0.0 come back bit for bit.
pub mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        u64::deserialize(deserializer).map(f64::from_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::STALE_NAN_BITS;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Payload {
        name: String,
        value: Bits,
        values: Vec<Bits>,
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Bits(#[serde(with = "f64_bits")] f64);

    impl PartialEq for Bits {
        fn eq(&self, other: &Self) -> bool {
            self.0.to_bits() == other.0.to_bits()
        }
    }

    fn payload() -> Payload {
        Payload {
            name: "checkout-slo".into(),
            value: Bits(f64::from_bits(STALE_NAN_BITS)),
            values: [
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -0.0,
                0.1 + 0.2,
                f64::MIN_POSITIVE / 3.0,
                f64::MAX,
            ]
            .into_iter()
            .map(Bits)
            .collect(),
        }
    }

    fn saved() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prophet.state");
        save(&path, &payload()).unwrap();
        (dir, path)
    }

    #[test]
    fn round_trips_floats_bit_for_bit_and_leaves_no_temporary_file() {
        let (dir, path) = saved();
        let back: Payload = load(&path).unwrap().unwrap();
        assert_eq!(back, payload());
        assert_eq!(back.value.0.to_bits(), STALE_NAN_BITS);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["prophet.state"]);
    }

    #[test]
    fn a_missing_file_is_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let loaded: Option<Payload> = load(&dir.path().join("absent")).unwrap();
        assert!(loaded.is_none());
    }

    #[test]
    fn a_save_replaces_the_previous_file_whole() {
        let (_dir, path) = saved();
        save(&path, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), Some(vec![1, 2, 3]));
        // A crash between writing the temporary file and the rename leaves the old file.
        fs::write(temp_path(&path), b"half-written").unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), Some(vec![1, 2, 3]));
        save(&path, &vec![4u32]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path).unwrap(), Some(vec![4]));
    }

    fn error_for(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prophet.state");
        fs::write(&path, bytes).unwrap();
        let error = load::<Payload>(&path).unwrap_err();
        assert!(error.is_unusable_file(), "{error}");
        let message = error.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        message
    }

    #[test]
    fn each_fault_is_named() {
        let (_dir, path) = saved();
        let good = fs::read(&path).unwrap();

        let message = error_for(b"{\"json\": \"but not ours\"}");
        assert!(message.contains("not a Prophet state file"), "{message}");

        let mut old = good.clone();
        old[8..12].copy_from_slice(&7u32.to_le_bytes());
        let message = error_for(&old);
        assert!(
            message.contains(&format!(
                "written by state format 7, this Prophet reads {FORMAT_VERSION}"
            )),
            "{message}"
        );

        let message = error_for(&good[..good.len() - 1]);
        assert!(message.contains("truncated"), "{message}");
        let message = error_for(&good[..5]);
        assert!(message.contains("truncated"), "{message}");

        let mut longer = good.clone();
        longer.push(b'\n');
        let message = error_for(&longer);
        assert!(message.contains("corrupt"), "{message}");

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        let message = error_for(&flipped);
        assert!(message.contains("checksum"), "{message}");

        // A well-formed file holding something else.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.state");
        save(&other, &"a string").unwrap();
        let message = load::<Payload>(&other).unwrap_err().to_string();
        assert!(message.contains("cannot decode"), "{message}");
    }

    #[test]
    fn no_bytes_make_loading_panic() {
        let (dir, path) = saved();
        let good = fs::read(&path).unwrap();
        let target = dir.path().join("mangled.state");
        let try_load = |bytes: &[u8]| {
            fs::write(&target, bytes).unwrap();
            load::<Payload>(&target)
        };
        for len in 0..good.len() {
            assert!(try_load(&good[..len]).is_err(), "truncated to {len}");
        }
        for bit in 0..good.len() * 8 {
            let mut flipped = good.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(try_load(&flipped).is_err(), "bit {bit} flipped");
        }
        // Random bytes, with and without a valid header in front of them.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..500 {
            let len = (next() % 512) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert!(try_load(&body).is_err());
            let mut framed = Vec::from(MAGIC);
            framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            framed.extend_from_slice(&(body.len() as u64).to_le_bytes());
            framed.extend_from_slice(&xxh3_64(&body).to_le_bytes());
            framed.extend_from_slice(&body);
            assert!(try_load(&framed).is_err(), "round {round}");
        }
    }

    /// Saves and loads `payload` in `dir`, printing bytes on disk and times.
    fn measure<T>(dir: &Path, what: &str, payload: &T) -> T
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        use std::time::Instant;
        let path = dir.join(format!("{what}.state"));
        let started = Instant::now();
        save(&path, payload).unwrap();
        let saved = started.elapsed();
        let bytes = fs::metadata(&path).unwrap().len();
        let started = Instant::now();
        let back = load::<T>(&path).unwrap().unwrap();
        let loaded = started.elapsed();
        println!(
            "{what}: {:.2} MB on disk, save {:.1} ms (fsync included), load {:.1} ms",
            bytes as f64 / 1e6,
            saved.as_secs_f64() * 1e3,
            loaded.as_secs_f64() * 1e3,
        );
        back
    }

    /// Sizes and times of the two payloads that matter: one 30-day SLO with every minute
    /// used, and 10 000 windows of 20 samples with cAdvisor's 13 labels.
    #[test]
    #[ignore = "measurement: cargo test --release --lib state::tests::sizes_and_times -- --ignored --nocapture"]
    fn sizes_and_times() {
        use std::time::Instant;

        use crate::eval::{SliCounter, SliShape, SloDetector, SloSpec, default_tiers};
        use crate::window::{SelectorWindows, WindowSpec};

        let dir = tempfile::tempdir().unwrap();
        let period_ms = 30 * 24 * 3_600_000;
        let spec = SloSpec {
            target: 0.999,
            period_ms,
            tiers: default_tiers(period_ms),
            budget_threshold: 0.1,
            shape: SliShape::Ratio,
        };
        // 100 pods' request and error counters, every minute of 30 days and one more.
        let mut slo = SloDetector::new(spec.clone());
        let pods = 100u32;
        for minute in 0..=30 * 24 * 60i64 {
            let at = minute * 60_000 + 7_000;
            for pod in 0..pods {
                let total = (minute * (600 + i64::from(pod))) as f64;
                let errors = (minute * (1 + i64::from(pod) % 3) + minute % 17) as f64;
                slo.observe(SliCounter::Total, pod, at, total);
                slo.observe(SliCounter::Bad, pod, at, errors);
            }
        }
        let started = Instant::now();
        let exported = slo.export();
        let exported_in = started.elapsed();
        let back = measure(dir.path(), "slo-30d", &exported);
        let started = Instant::now();
        let restored = SloDetector::import(spec, back, |_, id| Some(id)).unwrap();
        println!(
            "  export {:.1} ms, import {:.1} ms",
            exported_in.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
        let now = (30 * 24 * 60) * 60_000;
        assert_eq!(restored.state(now), slo.state(now));

        let mut windows = SelectorWindows::new(WindowSpec {
            retention_ms: 20 * 15_000,
            idle_ms: 300_000,
            series_limit: 10_000,
            reclaim_ms: i64::MAX,
            label_bytes_limit: usize::MAX,
        });
        let mut label_bytes = 0;
        for i in 0..10_000 {
            let mut pairs = crate::synth::series_labels(i % 20, i / 20);
            // cAdvisor's real `id` is the container's cgroup path, about 100 bytes longer
            // than synth's: with it a series has the ~426 B of label text measured in
            // clusters.
            if let Some((_, id)) = pairs.iter_mut().find(|(n, _)| n == "id") {
                id.push_str(&format!(
                    ".slice/cri-containerd-{:064x}.scope",
                    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)
                ));
            }
            label_bytes += pairs.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
            let labels = crate::labels::Labels::from_pairs(pairs.iter().map(|(n, v)| (&**n, &**v)));
            let id = windows
                .get_or_insert(labels.hash_with_seed(1), labels.as_canonical())
                .unwrap();
            for k in 0..20i64 {
                let value = 1.7e9 + (i as f64) * 1024.37 + (k as f64) * 0.731;
                let sample = crate::ingest::Sample {
                    timestamp_ms: 1_700_000_000_000 + k * 15_000,
                    value,
                };
                windows.insert(id, sample, i64::MAX);
            }
        }
        println!(
            "windows: 10000 series x 20 samples, {} B of label text per series",
            label_bytes / 10_000
        );
        let started = Instant::now();
        let exported = windows.export();
        let exported_in = started.elapsed();
        let back = measure(dir.path(), "windows-10k", &exported);
        let started = Instant::now();
        let mut restored = SelectorWindows::new(windows.spec());
        let mapping = restored.import(back, 1, i64::MAX);
        println!(
            "  export {:.1} ms, import {:.1} ms",
            exported_in.as_secs_f64() * 1e3,
            started.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(mapping.len(), 10_000);
    }
}
