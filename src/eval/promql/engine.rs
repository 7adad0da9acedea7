//! The evaluator's core: walks the expression tree at one instant, selects series from
//! the source the way Prometheus does (lookback and staleness for instant selectors,
//! ranges for range selectors, `offset` and `@`: closed ranges and lookback under 2.x's
//! semantics, left-open under 3.x's), evaluates subqueries step by step, and hands
//! operators, functions and aggregations to their own files.

use std::time::{Duration, SystemTime};

use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};

use super::functions::Window;
use super::source::{SeriesSamples, SeriesSource};
use super::value::{Value, compare_labels, drop_metric_name, ensure_unique};
use super::{EvalError, EvalOptions, Semantics, aggregate, binary, check_with, functions};
use crate::ingest::{Sample, is_stale_marker};
use crate::labels::{Labels, LabelsMap};
use crate::route::Selector;

/// Evaluates `expr` as a Prometheus instant query at `at_ms` (milliseconds since the
/// Unix epoch) over the series of `source`. Runs [`check`] first, so an unsupported part
/// is an error even where evaluation would not reach it.
pub fn evaluate<S: SeriesSource + ?Sized>(
    expr: &Expr,
    at_ms: i64,
    source: &S,
    opts: &EvalOptions,
) -> Result<Value, EvalError> {
    check_with(expr, opts.semantics)?;
    Engine {
        source,
        opts: *opts,
        query_ms: at_ms,
    }
    .eval(expr, at_ms)
}

/// One evaluation in progress.
pub(super) struct Engine<'a, S: SeriesSource + ?Sized> {
    source: &'a S,
    opts: EvalOptions,
    /// The query's time, which `@ start()` and `@ end()` stand for in an instant query.
    query_ms: i64,
}

/// A vector: one value per series.
pub(super) type Vector = Vec<(Labels, f64)>;

impl<S: SeriesSource + ?Sized> Engine<'_, S> {
    /// Prometheus 2's or 3's PromQL.
    pub(super) fn semantics(&self) -> Semantics {
        self.opts.semantics
    }

    /// Evaluates `expr` at `ts`.
    pub(super) fn eval(&self, expr: &Expr, ts: i64) -> Result<Value, EvalError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(vector) => {
                    // Like arithmetic, negation drops the metric name.
                    let out: Vector = vector
                        .into_iter()
                        .map(|(labels, v)| (drop_metric_name(&labels), -v))
                        .collect();
                    ensure_unique(&out)?;
                    Ok(Value::Vector(out))
                }
                other => Err(EvalError::Type(format!(
                    "unary expression only allowed on expressions of type scalar or vector, got: {}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant_vector(vs, ts))),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(self.range_vector(ms, ts))),
            Expr::Aggregate(a) => aggregate::eval(self, a, ts),
            Expr::Binary(b) => binary::eval(self, b, ts),
            Expr::Call(c) => functions::eval(self, c, ts),
            Expr::Subquery(sq) => Ok(Value::Matrix(self.subquery(sq, ts)?)),
            Expr::Extension(_) => Err(EvalError::Unsupported("an extension expression".into())),
        }
    }

    /// Evaluates `expr` and requires a scalar (function and aggregation parameters).
    pub(super) fn eval_scalar(&self, expr: &Expr, ts: i64) -> Result<f64, EvalError> {
        match self.eval(expr, ts)? {
            Value::Scalar(v) => Ok(v),
            other => Err(EvalError::Type(format!(
                "expected type scalar, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates `expr` and requires an instant vector.
    pub(super) fn eval_vector(&self, expr: &Expr, ts: i64) -> Result<Vector, EvalError> {
        match self.eval(expr, ts)? {
            Value::Vector(v) => Ok(v),
            other => Err(EvalError::Type(format!(
                "expected type instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// The time a selector reads at: its `@` time if it has one, else `ts`, moved back
    /// by its offset.
    pub(super) fn selector_time(&self, vs: &VectorSelector, ts: i64) -> i64 {
        self.modified_time(vs.at.as_ref(), vs.offset.as_ref(), ts)
    }

    /// `ts` under an `@` and an `offset` modifier: the `@` time if there is one (in an
    /// instant query, `start()` and `end()` are both the query's time), moved back by the
    /// offset.
    fn modified_time(&self, at: Option<&AtModifier>, offset: Option<&Offset>, ts: i64) -> i64 {
        let base = match at {
            None => ts,
            Some(AtModifier::Start | AtModifier::End) => self.query_ms,
            Some(AtModifier::At(time)) => system_time_ms(*time),
        };
        let offset = match offset {
            None => 0,
            Some(Offset::Pos(d)) => duration_ms(*d),
            Some(Offset::Neg(d)) => -duration_ms(*d),
        };
        base.saturating_sub(offset)
    }

    /// Each matching series' newest sample at or before the selector's time and no more
    /// than the lookback before it, unless that sample is a staleness marker. The
    /// lookback's start is inclusive in Prometheus 2.x (`t < refTime - lookback` is what
    /// excludes a sample) and exclusive in 3.x.
    pub(super) fn instant_vector(&self, vs: &VectorSelector, ts: i64) -> Vector {
        self.instant_samples(vs, ts)
            .into_iter()
            .map(|(labels, sample)| (labels, sample.value))
            .collect()
    }

    /// [`Self::instant_vector`] with each sample's own time, for `timestamp()`.
    pub(super) fn instant_samples(&self, vs: &VectorSelector, ts: i64) -> Vec<(Labels, Sample)> {
        let end = self.selector_time(vs, ts);
        let start = self
            .opts
            .semantics
            .range_start_exclusive(end, self.opts.lookback_ms);
        let selector = Selector::from_promql(vs);
        let mut newest = self.source.select_latest(&selector.groups, start, end);
        for (labels, _) in &mut newest {
            // Prometheus treats a label with an empty value as no label: a series sent as
            // `{shard=""}` must not carry `shard` into any result.
            if let Some(clean) = labels.without_empty_values() {
                *labels = clean;
            }
        }
        if !newest.is_sorted_by(|a, b| compare_labels(&a.0, &b.0).is_le()) {
            newest.sort_by(|a, b| compare_labels(&a.0, &b.0));
        }
        newest
            .into_iter()
            .filter(|(_, sample)| !is_stale_marker(sample.value))
            .collect()
    }

    /// A subquery's matrix: the inner expression evaluated at every multiple of the
    /// step (the subquery's own, else [`EvalOptions::subquery_step_ms`]) in
    /// `[t - range, t]` (2.x; `(t - range, t]` in 3.x), `t` the subquery's time (`@` and
    /// `offset` applied), each series' values gathered into its samples. As Prometheus's `SubqueryExpr` evaluation: the
    /// steps are aligned to the epoch, not to `t`.
    pub(super) fn subquery(
        &self,
        sq: &SubqueryExpr,
        ts: i64,
    ) -> Result<Vec<SeriesSamples>, EvalError> {
        let end = self.modified_time(sq.at.as_ref(), sq.offset.as_ref(), ts);
        let step = sq
            .step
            .map(duration_ms)
            .filter(|&s| s > 0)
            .unwrap_or(self.opts.subquery_step_ms)
            .max(1);
        let earliest = end.saturating_sub(duration_ms(sq.range));
        // Go's integer division truncates towards zero, as Rust's does.
        let mut at = step * (earliest / step);
        let before = match self.opts.semantics {
            Semantics::V2 => at < earliest,
            Semantics::V3 => at <= earliest,
        };
        if before {
            at = at.saturating_add(step);
        }
        let mut index: LabelsMap<usize> = LabelsMap::default();
        let mut series: Vec<SeriesSamples> = Vec::new();
        while at <= end {
            let elements = match self.eval(&sq.expr, at)? {
                Value::Vector(v) => v,
                Value::Scalar(v) => vec![(Labels::from_pairs([]), v)],
                other => {
                    return Err(EvalError::Type(format!(
                        "subquery is only allowed on instant vector, got {}",
                        other.type_name()
                    )));
                }
            };
            for (labels, value) in elements {
                let sample = Sample {
                    timestamp_ms: at,
                    value,
                };
                match index.get(&labels) {
                    Some(&i) => series[i].samples.push(sample),
                    None => {
                        index.insert(labels.clone(), series.len());
                        series.push(SeriesSamples {
                            labels,
                            samples: vec![sample],
                        });
                    }
                }
            }
            // A time at the end of the i64 range (an absurd `@`) ends the steps instead
            // of overflowing.
            match at.checked_add(step) {
                Some(next) => at = next,
                None => break,
            }
        }
        series.sort_by(|a, b| compare_labels(&a.labels, &b.labels));
        Ok(series)
    }

    /// Calls `visit` with each series of a range function's argument (a range selector
    /// or a subquery, through parentheses), its samples in the window and the window.
    /// `function` names the caller, for the message when the argument is neither.
    pub(super) fn visit_range_input(
        &self,
        input: &Expr,
        ts: i64,
        function: &str,
        visit: &mut dyn FnMut(&Labels, &[Sample], &Window),
    ) -> Result<(), EvalError> {
        match input {
            Expr::Paren(p) => self.visit_range_input(&p.expr, ts, function, visit),
            Expr::MatrixSelector(ms) => {
                let end = self.selector_time(&ms.vs, ts);
                let window = Window {
                    start_ms: end.saturating_sub(duration_ms(ms.range)),
                    end_ms: end,
                    range_seconds: ms.range.as_secs_f64(),
                    eval_ms: ts,
                    semantics: self.opts.semantics,
                };
                self.visit_range(ms, ts, |labels, samples| visit(labels, samples, &window));
                Ok(())
            }
            Expr::Subquery(sq) => {
                let end = self.modified_time(sq.at.as_ref(), sq.offset.as_ref(), ts);
                let window = Window {
                    start_ms: end.saturating_sub(duration_ms(sq.range)),
                    end_ms: end,
                    range_seconds: sq.range.as_secs_f64(),
                    eval_ms: ts,
                    semantics: self.opts.semantics,
                };
                for s in self.subquery(sq, ts)? {
                    visit(&s.labels, &s.samples, &window);
                }
                Ok(())
            }
            _ => Err(EvalError::Type(format!(
                "expected type range vector in call to function \"{function}\""
            ))),
        }
    }

    /// Each matching series' samples in `[t - range, t]` (`t` the selector's time; both
    /// ends inclusive in Prometheus 2.x, the start exclusive in 3.x), staleness markers removed, series left without
    /// samples dropped. Sorted by labels, as Prometheus's storage returns them.
    pub(super) fn range_vector(&self, ms: &MatrixSelector, ts: i64) -> Vec<SeriesSamples> {
        let mut series = Vec::new();
        self.visit_range(ms, ts, |labels, samples| {
            series.push(SeriesSamples {
                labels: labels.clone(),
                samples: samples.to_vec(),
            });
        });
        series
    }

    /// [`Self::range_vector`] one series at a time, without collecting: range functions
    /// read each series where its source holds it.
    pub(super) fn visit_range(
        &self,
        ms: &MatrixSelector,
        ts: i64,
        mut visit: impl FnMut(&Labels, &[Sample]),
    ) {
        let end = self.selector_time(&ms.vs, ts);
        // Samples after `from` are in.
        let from = self
            .opts
            .semantics
            .range_start_exclusive(end, duration_ms(ms.range));
        let selector = Selector::from_promql(&ms.vs);
        let outside = |x: &Sample| x.timestamp_ms <= from || x.timestamp_ms > end;
        // Staleness markers are rare and a source keeps to the range: copy only when
        // something has to be left out.
        let mut kept = Vec::new();
        // Checked in debug builds only: `debug_assert!` skips its condition in release.
        let mut previous: Option<Labels> = None;
        self.source
            .visit_range(&selector.groups, from, end, &mut |labels, samples| {
                debug_assert!(
                    previous
                        .replace(labels.clone())
                        .is_none_or(|p| compare_labels(&p, labels).is_le()),
                    "a source lent its series out of label order"
                );
                let samples = if samples
                    .iter()
                    .any(|x| outside(x) || is_stale_marker(x.value))
                {
                    kept.clear();
                    kept.extend(
                        samples
                            .iter()
                            .filter(|x| !outside(x) && !is_stale_marker(x.value)),
                    );
                    &kept[..]
                } else {
                    samples
                };
                if !samples.is_empty() {
                    match labels.without_empty_values() {
                        Some(clean) => visit(&clean, samples),
                        None => visit(labels, samples),
                    }
                }
            });
    }
}

/// A duration in whole milliseconds, saturating.
pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A point in time as milliseconds since the Unix epoch, negative before it.
fn system_time_ms(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => duration_ms(after),
        Err(before) => -duration_ms(before.duration()),
    }
}
