//! Aggregation operators: `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`,
//! `stdvar`, `count_values`, `quantile`, `topk` and `bottomk`, with `by` and `without`.
//! Groups and per-group arithmetic follow Prometheus 2.42's `aggregation` (its
//! incremental mean for `avg`, Welford's method for `stddev`/`stdvar`, NaN handling for
//! `min`/`max`, and Go's binary heap for `topk`/`bottomk`, pushed and popped as
//! Prometheus does and sorted with Go's `sort.Sort`, so that ties and NaNs keep the same
//! series in the same order).

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
    T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::engine::{Engine, Vector};
use super::gosort;
use super::source::SeriesSource;
use super::value::{
    Value, kahan_inc, keep_labels, quantile, remove_labels, set_label, valid_label_name,
};
use super::{EvalError, Semantics};
use crate::labels::{Labels, LabelsMap};

/// One group's running state.
struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: u64,
    /// Prometheus 3's `sum` and `avg`: the Kahan compensation of `value` (or of `mean`
    /// once the sum overflowed and `avg` switched to an incremental mean).
    compensation: f64,
    incremental: bool,
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
    if op == T_COUNT_VALUES {
        let label = match agg.param.as_deref().map(super::functions::unwrap_parens) {
            Some(Expr::StringLiteral(s)) => s.val.clone(),
            _ => {
                return Err(EvalError::Type(
                    "count_values needs a string literal as its label name".into(),
                ));
            }
        };
        let input = engine.eval_vector(&agg.expr, ts)?;
        return count_values(engine.semantics(), &label, agg.modifier.as_ref(), input)
            .map(Value::Vector);
    }
    let param = match (&agg.param, op) {
        (Some(p), T_TOPK | T_BOTTOMK | T_QUANTILE) => engine.eval_scalar(p, ts)?,
        _ => f64::NAN,
    };
    let input = engine.eval_vector(&agg.expr, ts)?;
    Ok(Value::Vector(aggregate(
        engine.semantics(),
        op,
        agg.modifier.as_ref(),
        param,
        input,
    )?))
}

/// `count_values("label", v)`: per group, the number of elements of each value, the
/// value written (as Go's `strconv.FormatFloat(v, 'f', -1, 64)`) into `label`, which
/// joins the `by` labels.
fn count_values(
    semantics: Semantics,
    label: &str,
    modifier: Option<&LabelModifier>,
    input: Vector,
) -> Result<Vector, EvalError> {
    if !valid_label_name(label, semantics) {
        return Err(EvalError::Function(format!("invalid label name {label:?}")));
    }
    let modifier = match modifier {
        Some(LabelModifier::Include(names)) => {
            let mut names = names.clone();
            if !names.labels.iter().any(|n| n == label) {
                names.labels.push(label.to_owned());
            }
            LabelModifier::Include(names)
        }
        Some(without @ LabelModifier::Exclude(_)) => without.clone(),
        None => LabelModifier::Include(promql_parser::label::Labels::new(vec![label])),
    };
    let input = input
        .into_iter()
        .map(|(labels, v)| (set_label(&labels, label, Some(&go_format_float(v))), v))
        .collect();
    aggregate(semantics, T_COUNT, Some(&modifier), f64::NAN, input)
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`: the shortest decimal that reads back as
/// `v`, never in exponent form, which is also what Rust's `Display` writes, but for the
/// infinities.
fn go_format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    v.to_string()
}

/// Aggregates `input` (in Prometheus's series order) with operator `op`. Under
/// Prometheus 3's semantics `sum` and `avg` add with Kahan compensation (`avg` switching
/// to an incremental mean only if the sum overflows), and `stddev`/`stdvar` of a group
/// whose first value is NaN or infinite is NaN.
pub(super) fn aggregate(
    semantics: Semantics,
    op: u16,
    modifier: Option<&LabelModifier>,
    param: f64,
    input: Vector,
) -> Result<Vector, EvalError> {
    let mut k = 0usize;
    if op == T_TOPK || op == T_BOTTOMK {
        // Prometheus 3 returns nothing for a k under 1 before any range check (2.x
        // refuses -Inf), and names a NaN k for what it is.
        if semantics == Semantics::V3 {
            if param.is_nan() {
                return Err(EvalError::Function("Parameter value is NaN".into()));
            }
            if param < 1.0 {
                return Ok(Vector::new());
            }
        }
        if !(param <= i64::MAX as f64 && param >= i64::MIN as f64) {
            return Err(EvalError::Overflow(param));
        }
        let k_signed = param as i64;
        if k_signed < 1 {
            return Ok(Vector::new());
        }
        k = usize::try_from(k_signed).unwrap_or(usize::MAX);
    }
    // Prometheus's heaps (`vectorByValueHeap`, `vectorByReverseValueHeap`): topk keeps
    // the smallest kept value on top, bottomk the largest; a NaN is "less" than anything,
    // so it is the first pushed out.
    let less = |a: f64, b: f64| -> bool {
        if a.is_nan() {
            return true;
        }
        if op == T_BOTTOMK { a > b } else { a < b }
    };

    let v3 = semantics == Semantics::V3;
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
                // stddev and stdvar keep the sum of squared deviations here.
                value: if matches!(op, T_STDDEV | T_STDVAR) {
                    if v3 && !v.is_finite() { f64::NAN } else { 0.0 }
                } else if op == T_GROUP {
                    1.0
                } else {
                    v
                },
                mean: v,
                count: 1,
                compensation: 0.0,
                incremental: false,
                heap,
            });
            continue;
        };
        let group = &mut groups[i];
        match op {
            T_SUM if v3 => {
                (group.value, group.compensation) = kahan_inc(v, group.value, group.compensation);
            }
            T_SUM => group.value += v,
            T_AVG if v3 => {
                group.count += 1;
                let n = group.count as f64;
                if !group.incremental {
                    let (sum, c) = kahan_inc(v, group.value, group.compensation);
                    if !sum.is_infinite() {
                        (group.value, group.compensation) = (sum, c);
                        continue;
                    }
                    group.incremental = true;
                    group.mean = group.value / (n - 1.0);
                    group.compensation /= n - 1.0;
                }
                let q = (n - 1.0) / n;
                (group.mean, group.compensation) =
                    kahan_inc(v / n, q * group.mean, q * group.compensation);
            }
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
            T_GROUP => {}
            T_COUNT => group.count += 1,
            T_STDDEV | T_STDVAR => {
                group.count += 1;
                let delta = v - group.mean;
                group.mean += delta / group.count as f64;
                group.value += delta * (v - group.mean);
            }
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
                let top = heap.first().map_or(f64::NAN, |e| e.1);
                let wanted = if op == T_TOPK { top < v } else { top > v };
                // As Prometheus: a NaN on top is replaced by anything, even a NaN.
                if heap.len() < k || wanted || top.is_nan() {
                    if heap.len() == k {
                        if k == 1 {
                            heap[0] = (labels, v);
                            continue;
                        }
                        heap_pop(heap, &less);
                    }
                    heap.push((labels, v));
                    let last = heap.len() - 1;
                    heap_up(heap, last, &less);
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
            T_SUM if v3 => out.push((group.labels, group.value + group.compensation)),
            T_AVG if v3 => {
                let n = group.count as f64;
                let mean = if group.incremental {
                    group.mean + group.compensation
                } else {
                    group.value / n + group.compensation / n
                };
                out.push((group.labels, mean));
            }
            T_SUM | T_MIN | T_MAX | T_GROUP => out.push((group.labels, group.value)),
            T_AVG => out.push((group.labels, group.mean)),
            T_COUNT => out.push((group.labels, group.count as f64)),
            T_STDVAR => out.push((group.labels, group.value / group.count as f64)),
            T_STDDEV => out.push((group.labels, (group.value / group.count as f64).sqrt())),
            T_QUANTILE => {
                let mut values: Vec<f64> = group.heap.iter().map(|e| e.1).collect();
                out.push((group.labels, quantile(param, &mut values)));
            }
            // The elements keep all their labels, metric name included, in the order
            // of `sort.Sort(sort.Reverse(heap))`.
            T_TOPK | T_BOTTOMK => {
                let mut heap = group.heap;
                gosort::sort(&mut heap, |a, b| less(b.1, a.1));
                out.extend(heap);
            }
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

/// Go's `container/heap` `down` over the first `n` elements.
fn heap_down(heap: &mut [(Labels, f64)], i0: usize, n: usize, less: &impl Fn(f64, f64) -> bool) {
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
}

/// Go's `heap.Pop`: moves the top to the end, restores the heap before it, drops it.
fn heap_pop(heap: &mut Vec<(Labels, f64)>, less: &impl Fn(f64, f64) -> bool) {
    let n = heap.len() - 1;
    heap.swap(0, n);
    heap_down(heap, 0, n, less);
    heap.pop();
}
