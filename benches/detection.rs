//! Anomaly detection scored the way the Numenta Anomaly Benchmark (NAB) scores detectors.
//!
//! Every data file of the NAB kit in `../shared/testdata/nab/` (34 files, 67 labelled
//! anomaly windows) is replayed, one series per file, through the real evaluator: each
//! row becomes a remote-write 1.0 request (encoded from the prost types, decoded by
//! `ingest`, routed by the evaluator's router) applied at its own timestamp, exactly as
//! `prophet run` would judge it. A row is a detection where the rule *trips* (a verdict
//! change to tripped), the only moment a remediation acts; the results are written in
//! the scorer's format (`anomaly_score` 1.0 there, 0.0 elsewhere) under
//! `target/nab/<detector>/`, and `score.py` (the kit's reimplementation of NAB's
//! scorer, standard library Python) scores them at its default threshold. One
//! configuration per detector for the whole set: nothing is tuned per file.
//!
//! Printed per detector, beside the published detectors' scores on the same files
//! (`published.md`): the normalised score per profile and per category, the windows
//! found and missed and the false positives; false trips per series per 100 days on
//! data without incidents (the `artificialNoAnomaly` files, and the rows of the real
//! files outside every anomaly window); the evaluator's time per sample (`apply` of the
//! one-row batches, batch building excluded); and the heap a series' window and detector
//! state hold once its history is full (counted by this binary's allocator).
//!
//! Run: `cargo bench --bench detection` (about a minute per detector in a release build;
//! the `seasonal` rows take longer). `DETECTORS=name,name` keeps only those rows;
//! `NAB_DIR` points at another copy of the kit.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::compile_all;
use prophet::eval::{Change, Evaluator};
use prophet::ingest::{self, Limits, Protocol};
use prophet::proto::v1;
use prophet::route::{Batch, Router};
use prost::Message;

/// Counts the bytes the process holds on the heap, to measure a series' state.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The detectors compared: a name and the `spec.detection` (and `for`, or what it does)
/// of its rule. The first rows are the configurations issue 14 found wanting; `default`
/// is what `detection: {}` gets in a rule that alerts, `default-unattended` in one that
/// restarts without approval.
const DETECTORS: &[(&str, &str)] = &[
    (
        "zscore-k3-1h-noclear",
        "detection: {algorithm: zscore, clearAfter: 0s}",
    ),
    (
        "mad-k3-1h-noclear",
        "detection: {algorithm: mad, clearAfter: 0s}",
    ),
    (
        "zscore-k5-8h-noclear",
        "detection: {algorithm: zscore, sensitivity: 5, window: 8h, clearAfter: 0s}",
    ),
    ("zscore-k3-1h", "detection: {algorithm: zscore}"),
    ("mad-k3-1h", "detection: {algorithm: mad}"),
    (
        "zscore-k5-8h",
        "detection: {algorithm: zscore, sensitivity: 5, window: 8h}",
    ),
    ("seasonal-k3-1h", "detection: {algorithm: seasonal}"),
    (
        "seasonal-k3-3d",
        "detection: {algorithm: seasonal, window: 3d}",
    ),
    (
        "seasonal-k3-3d-clear12h",
        "detection: {algorithm: seasonal, window: 3d, clearAfter: 12h}",
    ),
    (
        "likelihood-k2.5",
        "detection: {algorithm: likelihood, sensitivity: 2.5}",
    ),
    (
        "likelihood-k3.5",
        "detection: {algorithm: likelihood, sensitivity: 3.5}",
    ),
    (
        "likelihood-k3-clear1h",
        "detection: {algorithm: likelihood, clearAfter: 1h}",
    ),
    // Settings for `restart`, where a false trip costs more than a late one.
    (
        "likelihood-k5-for30m",
        "detection: {algorithm: likelihood, sensitivity: 5}\n  for: 30m",
    ),
    (
        "likelihood-k3-for1h",
        "detection: {algorithm: likelihood}\n  for: 1h",
    ),
    (
        "likelihood-k4-for1h",
        "detection: {algorithm: likelihood, sensitivity: 4}\n  for: 1h",
    ),
    ("default", "detection: {}"),
    // The default of a rule that restarts or scales without approval.
    (
        "default-unattended",
        "detection: {}\n  remediation: {type: restart, cooldownSeconds: 0}",
    ),
    // The same held band for the simple detectors, which is why they keep their defaults.
    (
        "zscore-k6-for15m",
        "detection: {algorithm: zscore, sensitivity: 6}\n  for: 15m",
    ),
    (
        "mad-k6-for15m",
        "detection: {algorithm: mad, sensitivity: 6}\n  for: 15m",
    ),
];

const PROFILES: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];
const CATEGORIES: [&str; 4] = [
    "artificialWithAnomaly",
    "realAdExchange",
    "realTraffic",
    "realTweets",
];
const DAY_MS: f64 = 86_400_000.0;

fn kit() -> PathBuf {
    std::env::var_os("NAB_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/nab"),
        PathBuf::from,
    )
}

/// Milliseconds since the epoch of a NAB timestamp, `YYYY-MM-DD HH:MM:SS[.ffffff]`, read
/// as UTC.
fn parse_time(text: &str) -> i64 {
    let number = |range: std::ops::Range<usize>| -> i64 {
        text.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("timestamp {text:?}"))
    };
    let (y, m, d) = (number(0..4), number(5..7), number(8..10));
    let (hh, mm, ss) = (number(11..13), number(14..16), number(17..19));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1_000
}

/// One NAB data file: its rows' timestamps (as written and in ms) and values.
struct DataFile {
    name: String,
    stamps: Vec<String>,
    times: Vec<i64>,
    values: Vec<f64>,
    /// Anomaly windows, in ms, both ends inclusive.
    windows: Vec<(i64, i64)>,
}

fn load(kit: &Path) -> Vec<DataFile> {
    let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &std::fs::read_to_string(kit.join("labels.json")).expect("the NAB kit's labels.json"),
    )
    .expect("labels.json");
    labels
        .into_iter()
        .map(|(name, windows)| {
            let text = std::fs::read_to_string(kit.join("data").join(&name)).expect("a data file");
            let (mut stamps, mut times, mut values) = (Vec::new(), Vec::new(), Vec::new());
            for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
                let (stamp, value) = line.split_once(',').expect("timestamp,value");
                times.push(parse_time(stamp));
                stamps.push(stamp.to_owned());
                values.push(value.trim().parse().expect("a number"));
            }
            let windows = windows
                .iter()
                .map(|(a, b)| (parse_time(a), parse_time(b)))
                .collect();
            DataFile {
                name,
                stamps,
                times,
                values,
                windows,
            }
        })
        .collect()
}

/// The rule a detector row runs over the one series of a file: the row's detection (and
/// anything else of its spec), alerting unless the row says what it does.
fn rule_yaml(detection: &str) -> String {
    let remediation = if detection.contains("remediation:") {
        ""
    } else {
        "\n  remediation: {type: alert, cooldownSeconds: 0}"
    };
    format!(
        "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: nab, namespace: default}}\nspec:\n  metric: nab_value\n  {detection}{remediation}\n"
    )
}

/// The request carrying one row, routed into a batch received at the row's time.
fn batch(router: &Router, request: &mut v1::WriteRequest, at_ms: i64, value: f64) -> Batch {
    request.timeseries[0].samples[0] = v1::Sample {
        value,
        timestamp: at_ms,
    };
    let body = request.encode_to_vec();
    let mut batch = Batch::new(Instant::now(), at_ms, usize::MAX);
    ingest::decode(Protocol::V1, &body, &Limits::default(), at_ms, |s| {
        router.route(s, &mut batch)
    })
    .expect("a valid request");
    batch
}

/// What replaying one file through one rule gave.
struct Replay {
    /// Per row: whether the rule tripped at it.
    trips: Vec<bool>,
    elapsed: Duration,
    /// Heap held by the evaluator (its one rule and series, and the router) once the
    /// file was replayed.
    bytes: isize,
}

fn replay(yaml: &str, file: &DataFile) -> Replay {
    // The first row of each timestamp: a repeated one is a duplicate to the evaluator.
    let mut row_at: BTreeMap<i64, usize> = BTreeMap::new();
    for (row, t) in file.times.iter().enumerate() {
        row_at.entry(*t).or_insert(row);
    }
    let mut trips = vec![false; file.times.len()];
    let rules = compile_all(yaml);
    // Allocated before the evaluator, so as not to count as its memory.
    let before = HELD.load(Ordering::Relaxed);
    let mut evaluator = Evaluator::new(rules, 10);
    let router = evaluator.router(7);
    let mut request = v1::WriteRequest {
        timeseries: vec![v1::TimeSeries {
            labels: [("__name__", "nab_value"), ("namespace", "default")]
                .into_iter()
                .map(|(name, value)| v1::Label {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
            samples: vec![v1::Sample::default()],
            ..Default::default()
        }],
        metadata: Vec::new(),
    };
    let mut elapsed = Duration::ZERO;
    for (&at_ms, &value) in file.times.iter().zip(&file.values) {
        let batch = batch(&router, &mut request, at_ms, value);
        let start = Instant::now();
        let outcome = evaluator.apply(&batch);
        elapsed += start.elapsed();
        for verdict in outcome.verdicts {
            // A rule judged at steps (a seasonal band) trips at a step, which reads the
            // newest row at or before it: that row is the detection. (Matched to row
            // times only, the trips of the tweets, stamped at :53 seconds past the
            // minute, were all lost.)
            if verdict.change == Change::Tripped
                && let Some((_, &row)) = row_at.range(..=verdict.sample_time_ms).next_back()
            {
                trips[row] = true;
            }
        }
    }
    let bytes = HELD.load(Ordering::Relaxed) - before;
    drop(evaluator);
    Replay {
        trips,
        elapsed,
        bytes,
    }
}

fn write_results(dir: &Path, file: &DataFile, trips: &[bool]) {
    let path = dir.join(&file.name);
    std::fs::create_dir_all(path.parent().expect("a category folder")).expect("results folder");
    let mut out = String::from("timestamp,anomaly_score\n");
    for (stamp, tripped) in file.stamps.iter().zip(trips) {
        out.push_str(stamp);
        out.push_str(if *tripped { ",1.0\n" } else { ",0.0\n" });
    }
    std::fs::write(path, out).expect("a results file");
}

/// False trips per series per 100 days: trips outside every anomaly window, over the time
/// the files spend outside them; for the files without anomalies, and for the real ones.
#[derive(Default)]
struct Quiet {
    trips: usize,
    days: f64,
}

impl Quiet {
    fn add(&mut self, other: Quiet) {
        self.trips += other.trips;
        self.days += other.days;
    }

    fn per_100_days(&self) -> f64 {
        if self.days > 0.0 {
            100.0 * self.trips as f64 / self.days
        } else {
            0.0
        }
    }
}

fn quiet(file: &DataFile, trips: &[bool]) -> Quiet {
    let inside = |t: i64| file.windows.iter().any(|(a, b)| (*a..=*b).contains(&t));
    let mut quiet = Quiet::default();
    for (i, t) in file.times.iter().enumerate() {
        if inside(*t) {
            continue;
        }
        quiet.trips += usize::from(trips[i]);
        if let Some(next) = file.times.get(i + 1)
            && !inside(*next)
        {
            quiet.days += (next - t) as f64 / DAY_MS;
        }
    }
    quiet
}

/// The published detectors' rows of `published.md`'s tables: (detector, cells).
fn published(kit: &Path, heading: &str) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(kit.join("published.md")).unwrap_or_default();
    let Some(from) = text.find(heading) else {
        return Vec::new();
    };
    text[from..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

fn main() {
    let kit = kit();
    let files = load(&kit);
    let rows: usize = files.iter().map(|f| f.times.len()).sum();
    let only: Option<Vec<String>> = std::env::var("DETECTORS")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/nab");
    println!(
        "NAB kit {}: {} files, {rows} rows; results under {}",
        kit.display(),
        files.len(),
        out.display()
    );
    let mut profile_table = Vec::new();
    let mut category_table = Vec::new();
    let mut cost_table = Vec::new();
    for &(name, detection) in DETECTORS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        let yaml = rule_yaml(detection);
        let dir = out.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let mut elapsed = Duration::ZERO;
        let (mut no_anomaly, mut real) = (Quiet::default(), Quiet::default());
        let mut tweets_bytes = 0isize;
        for file in &files {
            let replayed = replay(&yaml, file);
            elapsed += replayed.elapsed;
            if file.name.starts_with("realTweets/") {
                tweets_bytes = tweets_bytes.max(replayed.bytes);
            }
            // The artificial files with anomalies count towards neither quiet figure.
            let q = quiet(file, &replayed.trips);
            if file.name.starts_with("artificialNoAnomaly/") {
                no_anomaly.add(q);
            } else if file.name.starts_with("real") {
                real.add(q);
            }
            write_results(&dir, file, &replayed.trips);
        }
        let json = dir.join("scores.json");
        let status = Command::new("python3")
            .arg(kit.join("score.py"))
            .arg(&dir)
            .arg("--json")
            .arg(&json)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3 runs score.py");
        assert!(status.success(), "score.py failed on {}", dir.display());
        let scores: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("scores.json"))
                .expect("score.py's JSON");
        let overall = &scores["overall"];
        let score = |v: &serde_json::Value, profile: &str| {
            v["scores"][profile]["score"]
                .as_f64()
                .map_or("n/a".to_owned(), |s| format!("{s:.2}"))
        };
        let mut cells: Vec<String> = PROFILES.iter().map(|p| score(overall, p)).collect();
        cells.extend(["tp", "fn", "fp"].map(|k| overall[k].to_string()));
        profile_table.push((name.to_owned(), cells));
        let mut cells: Vec<String> = CATEGORIES
            .iter()
            .map(|c| score(&scores["categories"][c], "standard"))
            .collect();
        cells.push(format!(
            "{} FP",
            scores["categories"]["artificialNoAnomaly"]["fp"]
        ));
        category_table.push((name.to_owned(), cells));
        cost_table.push((
            name.to_owned(),
            vec![
                format!("{:.2}", no_anomaly.per_100_days()),
                format!("{:.2}", real.per_100_days()),
                format!("{:.0}", elapsed.as_nanos() as f64 / rows as f64),
                format!("{:.0}", rows as f64 / elapsed.as_secs_f64()),
                format!("{:.1}", tweets_bytes as f64 / 1024.0),
            ],
        ));
        eprintln!("{name}: done");
    }
    print_table(
        "Per profile (normalised: null 0, perfect 100; TP/FN windows, FP detections, standard threshold)",
        &["detector", "standard", "low_FP", "low_FN", "TP", "FN", "FP"],
        &profile_table,
        &published(&kit, "## Per profile"),
    );
    print_table(
        "Per category, standard profile",
        &[
            "detector",
            "artificialWithAnomaly",
            "realAdExchange",
            "realTraffic",
            "realTweets",
            "artificialNoAnomaly",
        ],
        &category_table,
        &published(&kit, "## Per category"),
    );
    print_table(
        "False trips per series per 100 days (outside every anomaly window), cost",
        &[
            "detector",
            "no-anomaly files",
            "real files, quiet rows",
            "ns/sample",
            "samples/s",
            "KiB/series (55-day 5m tweets)",
        ],
        &cost_table,
        &[],
    );
}

fn print_table(
    title: &str,
    header: &[&str],
    ours: &[(String, Vec<String>)],
    theirs: &[(String, Vec<String>)],
) {
    println!("\n{title}\n");
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (name, cells) in ours {
        println!("| **{name}** | {} |", cells.join(" | "));
    }
    for (name, cells) in theirs {
        let cells: Vec<&str> = cells
            .iter()
            .take(header.len() - 1)
            .map(String::as_str)
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
