//! Aggregation operators: `sum`, `avg`, `min`, `max`, `count`, `quantile`, `topk` and
//! `bottomk`, with `by` and `without`. Groups and per-group arithmetic follow Prometheus
//! 2.42's `aggregation` (its incremental mean for `avg`, NaN handling for `min`/`max`,
//! and a binary heap for `topk`/`bottomk` so that ties keep the same series).

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_MAX, T_MIN, T_QUANTILE, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::EvalError;
use super::engine::{Engine, Vector};
use super::source::SeriesSource;
use super::value::{Value, keep_labels, quantile, remove_labels};
use crate::labels::{Labels, LabelsMap};

/// One group's running state.
struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: u64,
    /// `topk`/`bottomk`: the kept elements as a heap; `quantile`: every value.
    heap: Vec<(Labels, f64)>,
}

/// Evaluates an aggregation at `ts`.
pub(super) fn eval<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    agg: &AggregateExpr,
    ts: i64,
) -> Result<Value, EvalError> {
    let op = agg.op.id();
    let param = match (&agg.param, op) {
        (Some(p), T_TOPK | T_BOTTOMK | T_QUANTILE) => engine.eval_scalar(p, ts)?,
        _ => f64::NAN,
    };
    let input = engine.eval_vector(&agg.expr, ts)?;
    Ok(Value::Vector(aggregate(
        op,
        agg.modifier.as_ref(),
        param,
        input,
    )?))
}

/// Aggregates `input` (in Prometheus's series order) with operator `op`.
pub(super) fn aggregate(
    op: u16,
    modifier: Option<&LabelModifier>,
    param: f64,
    input: Vector,
) -> Result<Vector, EvalError> {
    let mut k = 0usize;
    if op == T_TOPK || op == T_BOTTOMK {
        if !(param <= i64::MAX as f64 && param >= i64::MIN as f64) {
            return Err(EvalError::Overflow(param));
        }
        let k_signed = param as i64;
        if k_signed < 1 {
            return Ok(Vector::new());
        }
        k = usize::try_from(k_signed).unwrap_or(usize::MAX);
    }
    // Prometheus's heaps: topk keeps the smallest kept value on top, bottomk the largest;
    // NaN counts as the least wanted either way.
    let less = |a: f64, b: f64| -> bool {
        if a.is_nan() {
            return true;
        }
        if op == T_BOTTOMK { a > b } else { a < b }
    };

    let mut index: LabelsMap<usize> = LabelsMap::default();
    let mut groups: Vec<Group> = Vec::new();
    let no_labels = Labels::from_pairs([]);
    for (labels, v) in input {
        let key = match modifier {
            Some(LabelModifier::Include(names)) => keep_labels(&labels, &names.labels),
            Some(LabelModifier::Exclude(names)) => remove_labels(&labels, &names.labels, true),
            None => no_labels.clone(),
        };
        let Some(&i) = index.get(&key) else {
            index.insert(key.clone(), groups.len());
            let heap = if matches!(op, T_TOPK | T_BOTTOMK | T_QUANTILE) {
                vec![(labels, v)]
            } else {
                Vec::new()
            };
            groups.push(Group {
                labels: key,
                value: v,
                mean: v,
                count: 1,
                heap,
            });
            continue;
        };
        let group = &mut groups[i];
        match op {
            T_SUM => group.value += v,
            T_AVG => {
                group.count += 1;
                if group.mean.is_infinite() {
                    if v.is_infinite() && (group.mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                let n = group.count as f64;
                group.mean += v / n - group.mean / n;
            }
            T_COUNT => group.count += 1,
            T_MAX => {
                if group.value < v || group.value.is_nan() {
                    group.value = v;
                }
            }
            T_MIN => {
                if group.value > v || group.value.is_nan() {
                    group.value = v;
                }
            }
            T_QUANTILE => group.heap.push((labels, v)),
            T_TOPK | T_BOTTOMK => {
                let heap = &mut group.heap;
                if heap.len() < k {
                    heap.push((labels, v));
                    let last = heap.len() - 1;
                    heap_up(heap, last, &less);
                } else if let Some(top) = heap.first().map(|e| e.1) {
                    let wanted = if op == T_TOPK { top < v } else { top > v };
                    if wanted || (top.is_nan() && !v.is_nan()) {
                        heap[0] = (labels, v);
                        if k > 1 {
                            heap_fix(heap, 0, &less);
                        }
                    }
                }
            }
            other => {
                return Err(EvalError::Unsupported(format!(
                    "aggregation {}",
                    promql_parser::parser::token::TokenType::new(other)
                )));
            }
        }
    }

    let mut out = Vector::with_capacity(groups.len());
    for group in groups {
        match op {
            T_SUM | T_MIN | T_MAX => out.push((group.labels, group.value)),
            T_AVG => out.push((group.labels, group.mean)),
            T_COUNT => out.push((group.labels, group.count as f64)),
            T_QUANTILE => {
                let mut values: Vec<f64> = group.heap.iter().map(|e| e.1).collect();
                out.push((group.labels, quantile(param, &mut values)));
            }
            // The elements keep all their labels, metric name included.
            T_TOPK | T_BOTTOMK => out.extend(group.heap),
            _ => {}
        }
    }
    Ok(out)
}

/// Go's `container/heap` `up`: restores the heap after appending at `j`.
fn heap_up(heap: &mut [(Labels, f64)], mut j: usize, less: &impl Fn(f64, f64) -> bool) {
    while j > 0 {
        let parent = (j - 1) / 2;
        if !less(heap[j].1, heap[parent].1) {
            break;
        }
        heap.swap(parent, j);
        j = parent;
    }
}

/// Go's `container/heap` `down`; true if the element moved.
fn heap_down(heap: &mut [(Labels, f64)], i0: usize, less: &impl Fn(f64, f64) -> bool) -> bool {
    let n = heap.len();
    let mut i = i0;
    loop {
        let j1 = 2 * i + 1;
        if j1 >= n {
            break;
        }
        let mut j = j1;
        let j2 = j1 + 1;
        if j2 < n && less(heap[j2].1, heap[j1].1) {
            j = j2;
        }
        if !less(heap[j].1, heap[i].1) {
            break;
        }
        heap.swap(i, j);
        i = j;
    }
    i > i0
}

/// Go's `heap.Fix`.
fn heap_fix(heap: &mut [(Labels, f64)], i: usize, less: &impl Fn(f64, f64) -> bool) {
    if !heap_down(heap, i, less) {
        heap_up(heap, i, less);
    }
}
