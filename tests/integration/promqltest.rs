//! Prometheus's own PromQL tests, run through Prophet's engine under Prometheus 3's
//! semantics: the `.test` files of Prometheus 3.14 in `../shared/testdata/promqltest/`
//! (their README describes the format). Each file's `load` blocks become a
//! `MemorySource`; each `eval instant` case is evaluated at its time, each `eval range`
//! case as an instant evaluation at every step (which is what a rule does), and the
//! result is compared with the expected one as Prometheus's runner compares it: the same
//! series, values equal within a relative 1e-6 (NaN equal to NaN), in order where the
//! case says `expect ordered`; a case that says `expect fail` must fail.
//!
//! A case is skipped, with its reason, when it tests what an alerting rule over float
//! samples cannot meet: native histograms, Prometheus 3's experimental features (off by
//! default there), `@ <timestamp>` and negative offsets (refused in rules: a rule
//! evaluates the live stream), and range-vector or string results (a rule needs an
//! instant vector or a scalar). Annotations (`expect warn`, `expect info`) are not
//! checked: a rule has no place to show them; the results of such cases are.
//!
//! The figures per file are printed (`cargo test --test integration promqltest --
//! --nocapture`); the test fails on any case that applies and does not pass, except the
//! few in [`KNOWN_DEVIATIONS`], each with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use promql_parser::parser::{AtModifier, Expr, Offset, value::ValueType};
use promql_parser::util::visitor::{ExprVisitor, walk_expr};
use prophet::eval::promql::{self, EvalOptions, MemorySource, Semantics, Value};
use prophet::ingest::{STALE_NAN_BITS, Sample};
use prophet::labels::Labels;
use prophet::route::Selector;

/// Files whose every case exercises a feature that is off by default in Prometheus 3.
const EXPERIMENTAL_FILES: &[(&str, &str)] = &[
    ("fill-modifier.test", "experimental: fill modifiers"),
    (
        "extended_vectors.test",
        "experimental: anchored/smoothed selectors",
    ),
    ("info.test", "experimental: info()"),
    ("type_and_unit.test", "experimental: type and unit labels"),
    (
        "duration_expression.test",
        "experimental: duration expressions",
    ),
    ("start_timestamps.test", "experimental: start timestamps"),
];

/// Functions and aggregations behind `--enable-feature=promql-experimental-functions`
/// in Prometheus 3.14 that Prophet does not evaluate (`double_exponential_smoothing`,
/// also experimental there, is evaluated and tested).
const EXPERIMENTAL_FUNCTIONS: &[&str] = &[
    "limitk",
    "limit_ratio",
    "sort_by_label",
    "sort_by_label_desc",
    "mad_over_time",
    "first_over_time",
    "ts_of_min_over_time",
    "ts_of_max_over_time",
    "ts_of_last_over_time",
    "ts_of_first_over_time",
    "info",
];

/// Functions that read native histograms only.
const HISTOGRAM_FUNCTIONS: &[&str] = &[
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_quantiles",
    "trim_upper",
    "trim_lower",
];

const NATIVE: &str = "native histograms";
const EXPERIMENTAL: &str = "experimental functions or syntax";
const AT_TIMESTAMP: &str = "@ <timestamp> (refused in rules)";
const NEGATIVE_OFFSET: &str = "negative offset (refused in rules)";
const RANGE_RESULT: &str = "range-vector result (a rule needs an instant vector)";
const STRING_RESULT: &str = "string result (a rule needs an instant vector)";
const AT_IN_RANGE: &str = "@ start()/end() in a range query (a rule has no range)";

/// Cases that apply and do not pass, each with the reason it is left so: `(file, line of
/// the eval, reason)`. They count as skipped, under their reason.
const KNOWN_DEVIATIONS: &[(&str, usize, &str)] = &[
    ("functions.test", 523, INVALID_UTF8),
    ("name_label_dropping.test", 59, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 64, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 69, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 74, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 89, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 115, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 119, DELAYED_NAME_REMOVAL),
    ("name_label_dropping.test", 123, DELAYED_NAME_REMOVAL),
];

/// Prometheus's runner turns on delayed `__name__` removal
/// (`EnableDelayedNameRemoval: true`; `--enable-feature=promql-delayed-name-removal`,
/// off by default): functions and `by (__name__)` still see the name that `rate` will
/// drop. A Prometheus 3 as shipped drops it at once, as Prophet does: these cases then
/// fail with "vector cannot contain metrics with the same labelset" or group by a name
/// already gone, in Prometheus as in Prophet.
const DELAYED_NAME_REMOVAL: &str = "delayed __name__ removal (promql-delayed-name-removal, off by default; Prometheus's runner turns it on)";

/// Go reads `"\xff"` as the byte 0xFF, an invalid UTF-8 label name that
/// `label_replace` refuses; promql-parser (Rust strings are UTF-8) reads it as U+00FF,
/// a valid name. A rule's text is UTF-8 YAML and cannot hold the byte.
const INVALID_UTF8: &str = "\\xff as a label name (Go: an invalid byte; promql-parser: U+00FF)";

type LabelMap = BTreeMap<String, String>;

/// One point of a series' expanded values.
#[derive(Debug, Clone, Copy)]
enum Point {
    Float(f64),
    Missing,
    Histogram,
}

#[derive(Debug)]
enum Eval {
    Instant(i64),
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Debug)]
struct Case {
    expr: String,
    eval: Eval,
    expect_fail: bool,
    /// `expect fail msg: ...`: the error's exact text; `regex: ...`: a pattern it matches.
    fail_message: Option<String>,
    fail_regex: Option<String>,
    ordered: bool,
    range_vector: bool,
    string: bool,
    /// Expected series: labels (empty for a scalar) and their points (one per step).
    expected: Vec<(LabelMap, Vec<Point>)>,
}

#[derive(Debug)]
enum Outcome {
    Pass,
    Skip(&'static str),
    Fail(String),
}

/// The loaded data: float samples per series, and the series that hold native
/// histograms (a series with both is listed in both).
#[derive(Default)]
struct Store {
    floats: BTreeMap<LabelMap, Vec<Sample>>,
    histograms: BTreeSet<LabelMap>,
}

impl Store {
    fn source(&self) -> MemorySource {
        let mut source = MemorySource::default();
        for (labels, samples) in &self.floats {
            let mut samples = samples.clone();
            samples.sort_by_key(|s| s.timestamp_ms);
            samples.dedup_by_key(|s| s.timestamp_ms);
            source.push(
                Labels::from_pairs(labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                samples,
            );
        }
        source
    }
}

#[test]
fn prometheus_3_test_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/promqltest");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "the Prometheus 3.14 test files are missing"
    );

    let mut report = String::new();
    let mut failures = Vec::new();
    let (mut all_pass, mut all_skip, mut all_fail) = (0, 0, 0);
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let outcomes = run_file(&name, &text);
        let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut pass, mut fail) = (0, 0);
        for (line, outcome) in &outcomes {
            match outcome {
                Outcome::Pass => pass += 1,
                Outcome::Skip(reason) => *skipped.entry(reason).or_default() += 1,
                Outcome::Fail(why) => {
                    match KNOWN_DEVIATIONS
                        .iter()
                        .find(|(f, l, _)| *f == name && l == line)
                    {
                        Some((_, _, reason)) => {
                            *skipped.entry(reason).or_default() += 1;
                        }
                        None => {
                            fail += 1;
                            failures.push(format!("{name}:{line}: {why}"));
                        }
                    }
                }
            }
        }
        let skip: usize = skipped.values().sum();
        all_pass += pass;
        all_skip += skip;
        all_fail += fail;
        let reasons: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
        writeln!(
            report,
            "{name:<26} passed {pass:>4}  skipped {skip:>4}  failed {fail:>3}{}",
            if reasons.is_empty() {
                String::new()
            } else {
                format!("  ({})", reasons.join("; "))
            }
        )
        .unwrap();
    }
    writeln!(
        report,
        "{:<26} passed {all_pass:>4}  skipped {all_skip:>4}  failed {all_fail:>3}",
        "total"
    )
    .unwrap();
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} cases of Prometheus's own tests that apply to rules over float samples fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runner must have run something: a parser that skipped everything would pass.
    assert!(all_pass >= 700, "only {all_pass} cases passed");
}

/// Runs every `eval` of one file; `(line, outcome)` per case.
fn run_file(name: &str, text: &str) -> Vec<(usize, Outcome)> {
    // Prometheus's runner: trimmed lines, comments blank; a blank line ends a block.
    let lines: Vec<&str> = text
        .lines()
        .map(|l| {
            let l = l.trim();
            if l.starts_with('#') { "" } else { l }
        })
        .collect();
    if let Some((_, reason)) = EXPERIMENTAL_FILES.iter().find(|(f, _)| *f == name) {
        return lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("eval"))
            .map(|(i, _)| (i + 1, Outcome::Skip(reason)))
            .collect();
    }
    let mut store = Store::default();
    let mut source = MemorySource::default();
    let mut outcomes = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let block_end = (i + 1..lines.len())
            .find(|&j| lines[j].is_empty() || is_command(lines[j]))
            .unwrap_or(lines.len());
        let body = &lines[i + 1..block_end];
        if line == "clear" {
            store = Store::default();
            source = MemorySource::default();
        } else if let Some(rest) = line.strip_prefix("load") {
            let (nhcb, interval) = match rest.strip_prefix("_with_nhcb") {
                Some(interval) => (true, interval),
                None => (false, rest),
            };
            let interval = parse_duration(interval.trim())
                .unwrap_or_else(|| panic!("{name}:{}: load interval", i + 1));
            // A series defined twice in one block keeps its last definition, as in
            // Prometheus's runner; blocks add to each other.
            let mut block = BTreeMap::new();
            for (k, def) in body.iter().enumerate() {
                load_series(&mut store, &mut block, def, interval, nhcb)
                    .unwrap_or_else(|e| panic!("{name}:{}: {e}", i + k + 2));
            }
            for (labels, samples) in block {
                store.floats.entry(labels).or_default().extend(samples);
            }
            source = store.source();
        } else if line.starts_with("eval") {
            let case = parse_case(line, body).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1));
            let outcome = run_case(&store, &source, &case);
            if std::env::var_os("PROMQLTEST_SHOW_SKIPS").is_some()
                && let Outcome::Skip(reason) = &outcome
            {
                println!("{name}:{}: skipped ({reason}): {}", i + 1, case.expr);
            }
            outcomes.push((i + 1, outcome));
        } else if !line.is_empty() {
            panic!("{name}:{}: unknown command {line:?}", i + 1);
        }
        i = block_end;
    }
    outcomes
}

fn is_command(line: &str) -> bool {
    line == "clear" || line.starts_with("load") || line.starts_with("eval")
}

/// `<series> <values>` of a `load` block, into `block` (its float samples) and `store`
/// (whether it holds native histograms).
fn load_series(
    store: &mut Store,
    block: &mut BTreeMap<LabelMap, Vec<Sample>>,
    def: &str,
    interval: i64,
    nhcb: bool,
) -> Result<(), String> {
    let (labels, values) = split_series(def)?;
    let labels = parse_labels(labels)?;
    let points = parse_points(values)?;
    let mut samples = Vec::new();
    for (k, point) in points.iter().enumerate() {
        let timestamp_ms = k as i64 * interval;
        match point {
            Point::Float(value) => samples.push(Sample {
                timestamp_ms,
                value: *value,
            }),
            Point::Missing => {}
            Point::Histogram => {
                store.histograms.insert(labels.clone());
            }
        }
    }
    // `load_with_nhcb` also loads each classic histogram as a native histogram with
    // custom buckets, named without the `_bucket` suffix.
    if nhcb
        && let Some(name) = labels.get("__name__")
        && let Some(base) = name.strip_suffix("_bucket")
    {
        let mut converted = labels.clone();
        converted.remove("le");
        converted.insert("__name__".into(), base.into());
        store.histograms.insert(converted);
    }
    block.insert(labels, samples);
    Ok(())
}

/// Splits `metric{labels} values` (or `{labels} values`, `metric values`) where the
/// series description ends: after the closing brace, else at the first blank.
fn split_series(def: &str) -> Result<(&str, &str), String> {
    let brace = def.find('{');
    let blank = def.find(char::is_whitespace).unwrap_or(def.len());
    let end = match brace {
        Some(open) if open < blank => {
            let mut quote: Option<char> = None;
            let mut escaped = false;
            let mut close = None;
            for (k, c) in def[open..].char_indices() {
                if let Some(q) = quote {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q != '`' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                } else if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                } else if c == '}' {
                    close = Some(open + k + 1);
                    break;
                }
            }
            close.ok_or_else(|| format!("no closing brace in {def:?}"))?
        }
        _ => blank,
    };
    Ok((&def[..end], def[end..].trim()))
}

/// `metric{name="value", ...}` as a label map (the metric name as `__name__`; labels
/// with an empty value left out, as Prometheus stores none).
fn parse_labels(text: &str) -> Result<LabelMap, String> {
    let mut labels = LabelMap::new();
    let (name, rest) = match text.find('{') {
        Some(open) => (&text[..open], &text[open + 1..]),
        None => (text, "}"),
    };
    if !name.is_empty() {
        labels.insert("__name__".into(), name.into());
    }
    let mut rest = rest.trim_start();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            if !after.trim().is_empty() {
                return Err(format!("text after the labels of {text:?}"));
            }
            break;
        }
        let (key, after) = if rest.starts_with(['"', '\'', '`']) {
            parse_string(rest)?
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        };
        let after = after.trim_start();
        // `{"metric.name"}`: a quoted name alone is the metric name.
        if after.starts_with([',', '}']) {
            labels.insert("__name__".into(), key);
            rest = after.strip_prefix(',').unwrap_or(after);
            continue;
        }
        let after = after
            .strip_prefix('=')
            .ok_or_else(|| format!("no = after {key:?} in {text:?}"))?;
        let (value, after) = parse_string(after.trim_start())?;
        if !value.is_empty() {
            labels.insert(key, value);
        }
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

/// A quoted string (`"..."` or `'...'` with Go's escapes, or a raw `` `...` ``) at the
/// start of `text`, and what follows it.
fn parse_string(text: &str) -> Result<(String, &str), String> {
    let mut chars = text.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('"' | '\'' | '`'))) => q,
        _ => return Err(format!("expected a quoted string at {text:?}")),
    };
    let mut out = String::new();
    while let Some((k, c)) = chars.next() {
        if c == quote {
            return Ok((out, &text[k + 1..]));
        }
        if c != '\\' || quote == '`' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next().ok_or("unterminated escape")?;
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            'x' | 'u' | 'U' => {
                let len = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..len).filter_map(|_| chars.next().map(|x| x.1)).collect();
                let code = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                out.push(char::from_u32(code).ok_or("invalid escape")?);
            }
            other => out.push(other),
        }
    }
    Err(format!("unterminated string {text:?}"))
}

/// The expanding notation of `promtool test rules`: `1 2+3x4 _ _x3 stale 5x2 {{...}}`.
fn parse_points(text: &str) -> Result<Vec<Point>, String> {
    let mut points = Vec::new();
    for token in tokens(text) {
        if token.contains("{{") {
            // A native histogram, possibly expanded (`{{...}}x3`, `{{...}}+{{...}}x3`).
            let count = token
                .rsplit_once("}}")
                .and_then(|(_, tail)| tail.strip_prefix('x'))
                .and_then(|n| n.parse::<usize>().ok())
                .map_or(1, |n| n + 1);
            points.extend(std::iter::repeat_n(Point::Histogram, count));
            continue;
        }
        if token == "_" {
            points.push(Point::Missing);
            continue;
        }
        if token == "stale" {
            points.push(Point::Float(f64::from_bits(STALE_NAN_BITS)));
            continue;
        }
        if let Some(n) = token.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad token {token:?}"))?;
            points.extend(std::iter::repeat_n(Point::Missing, n));
            continue;
        }
        let (body, times) = match token.rsplit_once('x') {
            Some((body, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (body, Some(n.parse::<usize>().map_err(|e| e.to_string())?))
            }
            _ => (token, None),
        };
        let Some(times) = times else {
            points.push(Point::Float(
                parse_float(body).ok_or_else(|| format!("bad value {token:?}"))?,
            ));
            continue;
        };
        // `a+bxn`, `a-bxn` or `axn` (`a+0xn`): n+1 values. The operator is the first
        // sign that is neither leading nor an exponent's.
        let bytes = body.as_bytes();
        let split = (1..bytes.len())
            .find(|&k| matches!(bytes[k], b'+' | b'-') && !matches!(bytes[k - 1], b'e' | b'E'));
        let (start, step) = match split {
            Some(k) => {
                let step = parse_float(&body[k + 1..]).ok_or(format!("bad step {token:?}"))?;
                let step = if bytes[k] == b'-' { -step } else { step };
                (
                    parse_float(&body[..k]).ok_or(format!("bad start {token:?}"))?,
                    step,
                )
            }
            None => (
                parse_float(body).ok_or(format!("bad value {token:?}"))?,
                0.0,
            ),
        };
        // Prometheus adds the step repeatedly (rounding as it goes), as here.
        let mut value = start;
        for _ in 0..=times {
            points.push(Point::Float(value));
            value += step;
        }
    }
    Ok(points)
}

/// Whitespace-separated tokens, a `{{...}}` (with its blanks) kept in one.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut depth = 0;
    let bytes = text.as_bytes();
    for (k, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            _ => {}
        }
        if b.is_ascii_whitespace() && depth == 0 {
            if let Some(s) = start.take() {
                out.push(&text[s..k]);
            }
        } else if start.is_none() {
            start = Some(k);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// A float as Go's `strconv.ParseFloat` reads the test files' values.
fn parse_float(text: &str) -> Option<f64> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    match digits.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => return Some(sign * f64::INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if !digits.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    digits.parse::<f64>().ok().map(|v| sign * v)
}

/// A Prometheus duration (`1h30m`, `10s53ms`), or a number of seconds; in milliseconds.
fn parse_duration(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Some((seconds * 1000.0).round() as i64);
    }
    let (sign, text) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let mut total = 0i64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    Some(sign * total)
}

/// An `eval` line and its block: expectations and expected series.
fn parse_case(line: &str, body: &[&str]) -> Result<Case, String> {
    let (command, rest) = line.split_once(' ').ok_or("empty eval")?;
    let mut expect_fail = command == "eval_fail";
    let mut ordered = command == "eval_ordered";
    let rest = rest.trim_start();
    let (eval, expr) = if let Some(rest) = rest.strip_prefix("instant") {
        let rest = rest
            .trim_start()
            .strip_prefix("at")
            .ok_or("no `at`")?
            .trim_start();
        let (at, expr) = rest
            .split_once(char::is_whitespace)
            .ok_or("no expression")?;
        (
            Eval::Instant(parse_duration(at).ok_or(format!("bad time {at:?}"))?),
            expr,
        )
    } else if let Some(rest) = rest.strip_prefix("range") {
        let words: Vec<&str> = rest.trim_start().splitn(7, char::is_whitespace).collect();
        match words.as_slice() {
            ["from", start, "to", end, "step", step, expr] => (
                Eval::Range {
                    start: parse_duration(start).ok_or("bad start")?,
                    end: parse_duration(end).ok_or("bad end")?,
                    step: parse_duration(step).ok_or("bad step")?,
                },
                *expr,
            ),
            _ => return Err(format!("bad range eval {line:?}")),
        }
    } else {
        return Err(format!("bad eval {line:?}"));
    };
    let mut case = Case {
        expr: expr.trim().to_owned(),
        eval,
        expect_fail: false,
        fail_message: None,
        fail_regex: None,
        ordered: false,
        range_vector: false,
        string: false,
        expected: Vec::new(),
    };
    for def in body {
        if let Some(expect) = def.strip_prefix("expect ") {
            let expect = expect.trim_start();
            if let Some(rest) = expect.strip_prefix("fail") {
                expect_fail = true;
                let rest = rest.trim_start();
                if let Some(msg) = rest.strip_prefix("msg:") {
                    case.fail_message = Some(msg.trim().to_owned());
                } else if let Some(re) = rest.strip_prefix("regex:") {
                    case.fail_regex = Some(re.trim().to_owned());
                }
            } else if expect.starts_with("ordered") {
                ordered = true;
            } else if expect.starts_with("range vector") {
                case.range_vector = true;
            } else if expect.starts_with("string") {
                case.string = true;
            }
            // warn, info, no_warn, no_info: annotations, not checked.
            continue;
        }
        if def.starts_with("expected_fail_") {
            expect_fail = true;
            continue;
        }
        let first = tokens(def).first().copied().unwrap_or_default();
        if parse_float(first).is_some() || first.starts_with("{{") {
            // A scalar result.
            case.expected.push((LabelMap::new(), parse_points(def)?));
            continue;
        }
        let (labels, values) = split_series(def)?;
        case.expected
            .push((parse_labels(labels)?, parse_points(values)?));
    }
    case.expect_fail = expect_fail;
    case.ordered = ordered;
    Ok(case)
}

/// What in an expression decides whether a case applies to rules over float samples.
#[derive(Default)]
struct Parts {
    selectors: Vec<Selector>,
    experimental: bool,
    histogram_function: bool,
    at_timestamp: bool,
    at_start_end: bool,
    negative_offset: bool,
}

impl Parts {
    fn modifiers(&mut self, at: Option<&AtModifier>, offset: Option<&Offset>) {
        match at {
            Some(AtModifier::At(_)) => self.at_timestamp = true,
            Some(AtModifier::Start | AtModifier::End) => self.at_start_end = true,
            None => {}
        }
        if let Some(Offset::Neg(d)) = offset
            && !d.is_zero()
        {
            self.negative_offset = true;
        }
    }
}

impl ExprVisitor for Parts {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => {
                self.modifiers(vs.at.as_ref(), vs.offset.as_ref());
                self.selectors.push(Selector::from_promql(vs));
            }
            Expr::MatrixSelector(ms) => {
                self.modifiers(ms.vs.at.as_ref(), ms.vs.offset.as_ref());
                self.selectors.push(Selector::from_promql(&ms.vs));
            }
            Expr::Subquery(sq) => self.modifiers(sq.at.as_ref(), sq.offset.as_ref()),
            Expr::Call(call) => {
                let name = call.func.name;
                // promql-parser marks Prometheus's experimental functions; Prophet
                // evaluates `double_exponential_smoothing`, which is tested.
                self.experimental |= EXPERIMENTAL_FUNCTIONS.contains(&name)
                    || (call.func.experimental && name != "double_exponential_smoothing");
                self.histogram_function |= HISTOGRAM_FUNCTIONS.contains(&name);
            }
            Expr::Aggregate(agg) => {
                let op = agg.op.to_string();
                self.experimental |= EXPERIMENTAL_FUNCTIONS.contains(&op.as_str());
                if let Some(param) = &agg.param {
                    let _ = walk_expr(self, param);
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier
                    && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
                {
                    self.experimental = true;
                }
            }
            _ => {}
        }
        Ok(true)
    }

    fn post_visit(&mut self, _: &Expr) -> Result<bool, ()> {
        Ok(true)
    }
}

fn run_case(store: &Store, source: &MemorySource, case: &Case) -> Outcome {
    if case.range_vector {
        return Outcome::Skip(RANGE_RESULT);
    }
    if case.string {
        return Outcome::Skip(STRING_RESULT);
    }
    if case
        .expected
        .iter()
        .any(|(_, points)| points.iter().any(|p| matches!(p, Point::Histogram)))
    {
        return Outcome::Skip(NATIVE);
    }
    let expr = match promql::parse_with(&case.expr, Semantics::V3) {
        Ok(expr) => expr,
        Err(e) => {
            // promql-parser's messages are its own, not Go's: not compared.
            return if case.expect_fail {
                Outcome::Pass
            } else if ["histogram_", "</", ">/"]
                .iter()
                .any(|w| case.expr.contains(w))
            {
                // `</` and `>/` trim native histograms.
                Outcome::Skip(NATIVE)
            } else if uses_experimental_syntax(&case.expr) {
                Outcome::Skip(EXPERIMENTAL)
            } else {
                Outcome::Fail(format!("{}: does not parse: {e}", case.expr))
            };
        }
    };
    let mut parts = Parts::default();
    let _ = walk_expr(&mut parts, &expr);
    if parts.experimental {
        return Outcome::Skip(EXPERIMENTAL);
    }
    if parts.histogram_function
        || parts.selectors.iter().any(|s| {
            store.histograms.iter().any(|labels| {
                s.groups.iter().any(|group| {
                    group
                        .iter()
                        .all(|m| m.is_match(labels.get(&m.name).map_or("", String::as_str)))
                })
            })
        })
    {
        return Outcome::Skip(NATIVE);
    }
    if parts.at_timestamp {
        return Outcome::Skip(AT_TIMESTAMP);
    }
    if parts.negative_offset {
        return Outcome::Skip(NEGATIVE_OFFSET);
    }
    match expr.value_type() {
        ValueType::Matrix => return Outcome::Skip(RANGE_RESULT),
        ValueType::String => return Outcome::Skip(STRING_RESULT),
        ValueType::Vector | ValueType::Scalar => {}
    }
    let times: Vec<i64> = match case.eval {
        Eval::Instant(at) => vec![at],
        Eval::Range { start, end, step } => {
            if parts.at_start_end {
                return Outcome::Skip(AT_IN_RANGE);
            }
            (0..)
                .map(|k| start + k * step.max(1))
                .take_while(|&t| t <= end)
                .collect()
        }
    };
    let opts = EvalOptions {
        semantics: Semantics::V3,
        ..EvalOptions::default()
    };
    let mut problems = Vec::new();
    for (k, &at) in times.iter().enumerate() {
        let got: Vec<(LabelMap, f64)> = match promql::evaluate(&expr, at, source, &opts) {
            Ok(Value::Vector(v)) => v
                .into_iter()
                .map(|(labels, value)| {
                    let map = labels
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect();
                    (map, value)
                })
                .collect(),
            Ok(Value::Scalar(v)) => vec![(LabelMap::new(), v)],
            Ok(other) => {
                return Outcome::Fail(format!("{}: returned a {}", case.expr, other.type_name()));
            }
            Err(e) => {
                if case.expect_fail {
                    return failed_as_expected(case, &e.to_string());
                }
                return Outcome::Fail(format!("{} at {at} ms: {e}", case.expr));
            }
        };
        if case.expect_fail {
            continue;
        }
        let want: Vec<(&LabelMap, f64)> = case
            .expected
            .iter()
            .filter_map(|(labels, points)| match points.get(k) {
                Some(Point::Float(v)) => Some((labels, *v)),
                _ => None,
            })
            .collect();
        if let Some(problem) = compare(&got, &want, case.ordered) {
            problems.push(format!("at {at} ms: {problem}"));
        }
    }
    if case.expect_fail {
        return Outcome::Fail(format!("{}: expected to fail, did not", case.expr));
    }
    if problems.is_empty() {
        Outcome::Pass
    } else {
        problems.truncate(3);
        Outcome::Fail(format!("{}: {}", case.expr, problems.join("; ")))
    }
}

/// A case that had to fail did: its message must be Prometheus's, where the case gives
/// it (a message in quotes is compared without them).
fn failed_as_expected(case: &Case, error: &str) -> Outcome {
    if let Some(want) = &case.fail_message {
        let want = want.trim_matches('"');
        if error != want {
            return Outcome::Fail(format!(
                "{}: failed with {error:?}, Prometheus with {want:?}",
                case.expr
            ));
        }
    }
    if let Some(pattern) = &case.fail_regex {
        let pattern = pattern.trim_matches('"');
        let re = regex::Regex::new(pattern).expect("the case's regex");
        if !re.is_match(error) {
            return Outcome::Fail(format!(
                "{}: failed with {error:?}, which does not match {pattern:?}",
                case.expr
            ));
        }
    }
    Outcome::Pass
}

/// Syntax of Prometheus 3's experimental features that promql-parser does not parse.
fn uses_experimental_syntax(text: &str) -> bool {
    [
        "anchored",
        "smoothed",
        "fill(",
        "fill_left",
        "fill_right",
        "step()",
        "range()",
    ]
    .iter()
    .any(|w| text.contains(w))
        || EXPERIMENTAL_FUNCTIONS.iter().any(|f| text.contains(f))
}

/// Prometheus's test comparison: the same series, values almost equal (relative 1e-6,
/// NaN equal to NaN), in order if asked.
fn compare(got: &[(LabelMap, f64)], want: &[(&LabelMap, f64)], ordered: bool) -> Option<String> {
    let show = |l: &LabelMap| format!("{l:?}");
    if got.len() != want.len() {
        let got: Vec<String> = got
            .iter()
            .map(|(l, v)| format!("{} {v}", show(l)))
            .collect();
        let want: Vec<String> = want
            .iter()
            .map(|(l, v)| format!("{} {v}", show(l)))
            .collect();
        return Some(format!("got {got:?}, want {want:?}"));
    }
    if ordered {
        for ((gl, gv), (wl, wv)) in got.iter().zip(want) {
            if gl != *wl || !almost_equal(*gv, *wv) {
                return Some(format!(
                    "in order: got {} {gv}, want {} {wv}",
                    show(gl),
                    show(wl)
                ));
            }
        }
        return None;
    }
    let got: BTreeMap<&LabelMap, f64> = got.iter().map(|(l, v)| (l, *v)).collect();
    for (labels, want) in want {
        match got.get(labels) {
            None => return Some(format!("missing {}", show(labels))),
            Some(&v) if !almost_equal(v, *want) => {
                return Some(format!("{}: got {v}, want {want}", show(labels)));
            }
            Some(_) => {}
        }
    }
    None
}

/// `almost.Equal` of Prometheus's `util/almost`, with the test runner's epsilon.
fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 1e-6;
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < EPSILON * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

#[test]
fn the_runner_reads_the_notation() {
    let floats = |text: &str| -> Vec<f64> {
        parse_points(text)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Point::Float(v) => v,
                Point::Missing => -999.0,
                Point::Histogram => -111.0,
            })
            .collect()
    };
    assert_eq!(
        floats("1 2+3x2 _ _x2 4x1"),
        [1.0, 2.0, 5.0, 8.0, -999.0, -999.0, -999.0, 4.0, 4.0]
    );
    assert_eq!(floats("1e-3+1e-3x1 -2-1x1"), [1e-3, 2e-3, -2.0, -3.0]);
    assert_eq!(
        floats("{{schema:0 sum:1}}x2 5"),
        [-111.0, -111.0, -111.0, 5.0]
    );
    assert!(f64::from_bits(STALE_NAN_BITS).to_bits() == floats("stale")[0].to_bits());
    assert_eq!(parse_duration("10s53ms"), Some(10_053));
    assert_eq!(parse_duration("1m30s"), Some(90_000));
    assert_eq!(parse_duration("100"), Some(100_000));
    let labels = parse_labels(r#"m{a="x,}", "b.c"='y\n'}"#).unwrap();
    assert_eq!(labels["__name__"], "m");
    assert_eq!(labels["a"], "x,}");
    assert_eq!(labels["b.c"], "y\n");
    assert_eq!(
        parse_labels(r#"{"my.metric"}"#).unwrap()["__name__"],
        "my.metric"
    );
    assert_eq!(
        split_series(r#"m{a="} 1"} 1 2"#).unwrap(),
        (r#"m{a="} 1"}"#, "1 2")
    );
    assert!(almost_equal(1.0, 1.0 + 1e-9));
    assert!(!almost_equal(1.0, 1.0001));
    assert!(almost_equal(f64::NAN, f64::NAN));
}
