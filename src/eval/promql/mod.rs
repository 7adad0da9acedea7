//! PromQL evaluation over in-memory series: a pure, deterministic engine that gives the
//! same answers as Prometheus's instant queries, 3.x's or 2.x's ([`Semantics`]):
//! selectors with `offset` and `@`, subqueries, every function but the native-histogram
//! ones, every aggregation, arithmetic, comparison and set operators with one-to-one and
//! many-to-one matching.
//! Series come from a [`SeriesSource`]; nothing here reads a clock, does I/O or keeps
//! state between evaluations.
//!
//! [`check`] walks an expression once at load time and names the first part the engine
//! cannot evaluate, so a rule is reported invalid when it is loaded, not when it first
//! runs. `tests/integration/promql_oracle.rs` compares the engine with a real Prometheus
//! 2.42, `tests/integration/promqltest.rs` with Prometheus 3.14's `.test` files.
//!
//! # `ml_forecast`
//! promql-parser refuses unknown function names at parse time. [`parse`] registers
//! `ml_forecast(<vector>, <scalar>)` with the parser (a process-wide registry, done once)
//! before parsing, so `ml_forecast(sum(rate(x[5m])), 1h)` parses (`1h` is a number of
//! seconds to promql-parser) and [`check`] accepts it; evaluating it is the caller's job.
//! [`split_ml_forecast`] instead splits the text without parsing, for callers that want
//! the inner expression on its own.
//!
//! # Size limits
//! [`parse`] first measures the text ([`check_size`]: length, nesting depth, parts) and
//! refuses it unparsed past [`size::MAX_BYTES`], [`size::MAX_DEPTH`] or
//! [`size::MAX_PARTS`]: parsing, evaluating, cloning and dropping an expression tree all
//! recurse over it, so a tree deep enough to overflow a stack must never be built.

mod aggregate;
mod binary;
mod check;
mod engine;
mod functions;
mod go_regex;
mod go_time;
mod gosort;
pub mod size;
mod source;
mod value;

pub use check::{check, check_with};
pub use engine::evaluate;
pub use size::{TooLarge, check_size};
pub use source::{MemorySource, SeriesSamples, SeriesSource};
pub use value::Value;

use std::sync::Once;

use promql_parser::parser::{Expr, Function, register_extra_functions, value::ValueType};

/// The name of the forecast pseudo-function that rules may wrap an expression in.
pub const ML_FORECAST: &str = "ml_forecast";

/// Which Prometheus's PromQL an expression means (`--promql-semantics`). The two differ
/// where Prometheus 3 changed PromQL (its migration guide, "PromQL"):
/// - range selectors, subquery ranges and the lookback of instant selectors: closed,
///   `[t - range, t]`, under 2; left-open, `(t - range, t]`, under 3 (a sample exactly at
///   `t - range` is left out);
/// - the `.` of a regular expression (matchers, `label_replace`) matches a newline under
///   3 only;
/// - `holt_winters` is refused under 3, where Prometheus 3 knows it only as
///   `double_exponential_smoothing`; both names are accepted under 2;
/// - `sum`, `avg`, `sum_over_time` and `avg_over_time` add with Kahan compensation under
///   3 (Prometheus 2.50 and later), plainly under 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantics {
    /// Prometheus 2.x, as checked against Prometheus 2.42.
    V2,
    /// Prometheus 3.x, as checked against Prometheus 3.14's own test files.
    #[default]
    V3,
}

impl Semantics {
    /// The first sample time a window ending at `end_ms` and reaching `range_ms` back
    /// leaves out: everything after it is in (the source's start is exclusive).
    pub fn range_start_exclusive(self, end_ms: i64, range_ms: i64) -> i64 {
        let start = end_ms.saturating_sub(range_ms);
        match self {
            Semantics::V2 => start.saturating_sub(1),
            Semantics::V3 => start,
        }
    }
}

impl std::str::FromStr for Semantics {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "2" => Ok(Semantics::V2),
            "3" => Ok(Semantics::V3),
            other => Err(format!(
                "{other:?} is no PromQL semantics: 3 (Prometheus 3.x, the default) or 2 (Prometheus 2.x)"
            )),
        }
    }
}

impl std::fmt::Display for Semantics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Semantics::V2 => "2",
            Semantics::V3 => "3",
        })
    }
}

/// Options of one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    /// Prometheus 2's or 3's PromQL.
    pub semantics: Semantics,
    /// How far back an instant selector looks for a series' newest sample
    /// (Prometheus's `--query.lookback-delta`, 5 minutes by default).
    pub lookback_ms: i64,
    /// The step of a subquery that names none (`x[1h:]`): Prometheus takes its global
    /// `evaluation_interval`, 1 minute unless configured.
    pub subquery_step_ms: i64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            semantics: Semantics::default(),
            lookback_ms: 5 * 60 * 1000,
            subquery_step_ms: 60 * 1000,
        }
    }
}

/// Why an expression cannot be evaluated. The messages of the runtime errors are
/// Prometheus's own, so that a rule author sees what Prometheus would have said.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The expression uses a part of PromQL this engine does not implement.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// An operand had a type the operation does not accept (the parser normally refuses
    /// these already).
    #[error("{0}")]
    Type(String),
    /// Two elements of one result have the same labels, for example after a function
    /// dropped the metric name of `a{x="1"}` and `b{x="1"}`.
    #[error("vector cannot contain metrics with the same labelset")]
    DuplicateLabelset,
    /// One-to-one matching found two series with the same matching labels on one side.
    #[error(
        "found duplicate series for the match group {group} on the {side} hand-side of the \
         operation: [{first}, {second}];many-to-many matching not allowed: matching labels \
         must be unique on one side"
    )]
    ManyToMany {
        group: String,
        side: &'static str,
        first: String,
        second: String,
    },
    /// One-to-one matching would give two results for the same match group.
    #[error(
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    )]
    MultipleMatches,
    /// `group_left`/`group_right` gave two results with the same labels for one match
    /// group.
    #[error("multiple matches for labels: grouping labels must ensure unique matches")]
    GroupingNotUnique,
    /// A function refused its arguments at run time (an invalid regular expression or
    /// label name, a smoothing factor out of range), in Prometheus's words.
    #[error("{0}")]
    Function(String),
    /// The `k` of `topk`/`bottomk` does not fit a 64-bit integer (or is NaN).
    #[error("Scalar value {0} overflows int64")]
    Overflow(f64),
}

/// Makes `ml_forecast(<vector>, <scalar>)` (and Prometheus 2.x's `holt_winters`) known
/// to promql-parser. Idempotent and cheap after the first call; the registry is
/// process-wide.
pub fn register_functions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let forecast = Function::new(
            ML_FORECAST,
            vec![ValueType::Vector, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        // Fails only if the name were a built-in PromQL function, which it is not; then
        // the built-in would be parsed instead and `check` would judge it.
        if let Err(error) = register_extra_functions(vec![forecast]) {
            tracing::warn!(%error, "cannot register ml_forecast with the PromQL parser");
        }
        // Prometheus 2.x's name for `double_exponential_smoothing`, which promql-parser
        // (following Prometheus 3) no longer knows; rules written for 2.x use it.
        let holt_winters = Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        if let Err(error) = register_extra_functions(vec![holt_winters]) {
            tracing::warn!(%error, "cannot register holt_winters with the PromQL parser");
        }
    });
}

/// Parses PromQL text with Prometheus 3's meaning: see [`parse_with`].
pub fn parse(text: &str) -> Result<Expr, String> {
    parse_with(text, Semantics::default())
}

/// Parses PromQL text, with `ml_forecast` and `holt_winters` known to the parser, and
/// regex matchers compiled with Go's meaning under `semantics` (see [`go_regex`]). Text
/// over the size limits ([`check_size`]) is refused before the parser sees it.
/// `holt_winters` parses under both semantics; [`check_with`] refuses it under 3, with
/// the reason.
pub fn parse_with(text: &str, semantics: Semantics) -> Result<Expr, String> {
    check_size(text).map_err(|too_large| format!("the expression is {too_large}"))?;
    register_functions();
    let mut expr = promql_parser::parser::parse(text)?;
    go_regex::go_matchers(&mut expr, semantics);
    Ok(expr)
}

/// Splits `ml_forecast(<expr>, <horizon>)` into the texts of `<expr>` and `<horizon>`,
/// trimmed, without parsing either. `None` if the text is not one such call as a whole.
/// The comma that ends `<expr>` is the last one at nesting depth zero outside string
/// literals, so commas inside `<expr>` (in `topk(2, x)` or `{a="x,y"}`) are skipped.
pub fn split_ml_forecast(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim().strip_prefix(ML_FORECAST)?.trim_start();
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut split = None;
    for (i, c) in inner.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                // The closing parenthesis stripped above belonged to something inside.
                if depth < 0 {
                    return None;
                }
            }
            ',' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    if depth != 0 || quote.is_some() {
        return None;
    }
    let at = split?;
    let (expr, horizon) = (inner[..at].trim(), inner[at + 1..].trim());
    (!expr.is_empty() && !horizon.is_empty()).then_some((expr, horizon))
}

#[cfg(test)]
mod tests;
