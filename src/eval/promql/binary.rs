//! Binary operators: arithmetic (`+ - * / % ^ atan2`) and comparisons (`== != > < >= <=`,
//! filtering or with `bool`) between scalars and vectors, vector matching with
//! `on`/`ignoring` one-to-one or many-to-one (`group_left`/`group_right`), and the set
//! operators `and`, `or`, `unless`. Follows Prometheus
//! 2.42's `VectorBinop`, `VectorscalarBinop` and `scalarBinop`, including which results
//! keep the metric name (comparisons without `bool` and set operators) and its errors
//! for ambiguous matches.

use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::engine::{Engine, Vector};
use super::source::SeriesSource;
use super::value::{Value, drop_metric_name, ensure_unique, keep_labels, remove_labels};
use super::{EvalError, Semantics};
use crate::labels::{Labels, LabelsMap, LabelsSet};

/// Evaluates a binary expression at `ts`.
pub(super) fn eval<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    expr: &BinaryExpr,
    ts: i64,
) -> Result<Value, EvalError> {
    let op = expr.op.id();
    let return_bool = expr.modifier.as_ref().is_some_and(|m| m.return_bool);
    let semantics = engine.semantics();
    let lhs = engine.eval(&expr.lhs, ts)?;
    let rhs = engine.eval(&expr.rhs, ts)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(scalar_binop(op, l, r)?)),
        (Value::Vector(l), Value::Scalar(r)) => {
            vector_scalar(semantics, op, l, r, false, return_bool).map(Value::Vector)
        }
        (Value::Scalar(l), Value::Vector(r)) => {
            vector_scalar(semantics, op, r, l, true, return_bool).map(Value::Vector)
        }
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = Matching::of(expr);
            let out = match op {
                T_LAND => vector_and(l, r, &matching),
                T_LOR => vector_or(l, r, &matching),
                T_LUNLESS => vector_unless(l, r, &matching),
                _ => vector_binop(semantics, op, l, r, &matching, return_bool)?,
            };
            Ok(Value::Vector(out))
        }
        (l, r) => Err(EvalError::Type(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name; comparisons and set operators keep it, and so does
/// `atan2` under Prometheus 2, whose `shouldDropMetricName` does not list it (3's does).
fn drops_metric_name(op: u16, semantics: Semantics) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW)
        || (op == T_ATAN2 && semantics == Semantics::V3)
}

/// Prometheus's `vectorElemBinop`: the value, and for comparisons whether it is kept.
fn elem_binop(op: u16, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        // Rust's `%` on floats is C's fmod, as is Go's math.Mod.
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        other => return Err(unsupported(other)),
    })
}

fn unsupported(op: u16) -> EvalError {
    EvalError::Unsupported(format!(
        "operator \"{}\"",
        promql_parser::parser::token::TokenType::new(op)
    ))
}

/// Between two scalars a comparison gives 1 or 0 (the parser requires `bool` there).
fn scalar_binop(op: u16, l: f64, r: f64) -> Result<f64, EvalError> {
    let (value, keep) = elem_binop(op, l, r)?;
    Ok(if is_comparison(op) {
        if keep { 1.0 } else { 0.0 }
    } else {
        value
    })
}

/// A vector against a scalar; `swapped` when the scalar was on the left. A filtering
/// comparison keeps the vector element's own value whichever side it was on.
fn vector_scalar(
    semantics: Semantics,
    op: u16,
    vector: Vector,
    scalar: f64,
    swapped: bool,
    return_bool: bool,
) -> Result<Vector, EvalError> {
    let mut out = Vector::with_capacity(vector.len());
    for (labels, v) in vector {
        let (l, r) = if swapped { (scalar, v) } else { (v, scalar) };
        let (mut value, mut keep) = elem_binop(op, l, r)?;
        if is_comparison(op) && swapped {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let labels = if drops_metric_name(op, semantics) || return_bool {
                drop_metric_name(&labels)
            } else {
                labels
            };
            out.push((labels, value));
        }
    }
    ensure_unique(&out)?;
    Ok(out)
}

/// Which side of a matching is the "one" side: each of its elements may pair with
/// several of the other side's (`group_left`: the right side is the one side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cardinality {
    OneToOne,
    /// `group_left`: many left elements to one right element.
    ManyToOne,
    /// `group_right`: one left element to many right elements.
    OneToMany,
}

/// How two vectors' elements are paired: by the `on` labels only, or by all labels but
/// the `ignoring` ones and the metric name; with `group_left`/`group_right`, which side
/// is the "one" side and which of its labels the results copy (`include`).
struct Matching {
    on: bool,
    names: Vec<String>,
    card: Cardinality,
    include: Vec<String>,
}

impl Matching {
    fn of(expr: &BinaryExpr) -> Self {
        let (on, names) = match expr.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let (card, include) = match expr.modifier.as_ref().map(|m| &m.card) {
            Some(VectorMatchCardinality::ManyToOne(l)) => {
                (Cardinality::ManyToOne, l.labels.clone())
            }
            Some(VectorMatchCardinality::OneToMany(l)) => {
                (Cardinality::OneToMany, l.labels.clone())
            }
            _ => (Cardinality::OneToOne, Vec::new()),
        };
        Self {
            on,
            names,
            card,
            include,
        }
    }

    /// The labels two elements must share to match.
    fn signature(&self, labels: &Labels) -> Labels {
        if self.on {
            keep_labels(labels, &self.names)
        } else {
            remove_labels(labels, &self.names, true)
        }
    }
}

/// Prometheus's `Labels.String()`: `{a="b", c="d"}`, metric name included as a label.
fn prometheus_string(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Matching of two vectors for arithmetic and comparisons, as Prometheus's
/// `VectorBinop`: each element of the "many" side pairs with the element of the "one"
/// side that has the same signature (for one-to-one, the right side is the one side).
/// Two one-side elements with one signature are an error; so are two results for one
/// signature (one-to-one) or two results with the same labels (`group_left`/
/// `group_right`).
fn vector_binop(
    semantics: Semantics,
    op: u16,
    lhs: Vector,
    rhs: Vector,
    matching: &Matching,
    return_bool: bool,
) -> Result<Vector, EvalError> {
    // Nothing can match, and Prometheus looks no further (not even for duplicates).
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vector::new());
    }
    // group_right is group_left with the sides swapped; values are swapped back below.
    let swapped = matching.card == Cardinality::OneToMany;
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_side: LabelsMap<(Labels, f64)> =
        LabelsMap::with_capacity_and_hasher(one.len(), Default::default());
    for (labels, v) in one {
        let sig = matching.signature(&labels);
        if let Some((dup, _)) = one_side.get(&sig) {
            let (mut first, mut second) = (prometheus_string(&labels), prometheus_string(dup));
            // Prometheus 3 names the two series in sorted order, 2 as it met them.
            if semantics == Semantics::V3 && first > second {
                std::mem::swap(&mut first, &mut second);
            }
            return Err(EvalError::ManyToMany {
                group: prometheus_string(&sig),
                side: if swapped { "left" } else { "right" },
                first,
                second,
            });
        }
        one_side.insert(sig, (labels, v));
    }
    // One-to-one: the signatures already matched. Many-to-one: per signature, the
    // result label sets already produced.
    let mut matched = LabelsSet::default();
    let mut produced: LabelsMap<LabelsSet> = LabelsMap::default();
    let mut out = Vector::new();
    for (labels, many_value) in many {
        let sig = matching.signature(&labels);
        let Some((one_labels, one_value)) = one_side.get(&sig) else {
            continue;
        };
        let (l, r) = if swapped {
            (*one_value, many_value)
        } else {
            (many_value, *one_value)
        };
        let (mut value, keep) = elem_binop(op, l, r)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep && semantics == Semantics::V2 {
            // Prometheus 2 drops a filtered-out pair before looking for duplicate
            // matches; 3 finds them among filtered-out pairs too.
            continue;
        }
        let mut metric = result_metric(&labels, one_labels, op, matching, semantics);
        if return_bool {
            metric = drop_metric_name(&metric);
        }
        if matching.card == Cardinality::OneToOne {
            if !matched.insert(sig) {
                return Err(EvalError::MultipleMatches);
            }
        } else if !produced.entry(sig).or_default().insert(metric.clone()) {
            return Err(EvalError::GroupingNotUnique);
        }
        if keep || return_bool {
            out.push((metric, value));
        }
    }
    ensure_unique(&out)?;
    Ok(out)
}

/// Prometheus's `resultMetric`: the many side's labels, without the metric name for
/// arithmetic; for one-to-one only the `on` labels (or without the `ignoring` ones); and
/// with `group_x(...)` the listed labels copied from the one side (removed where the one
/// side lacks them, as an empty value is no label).
fn result_metric(
    many: &Labels,
    one: &Labels,
    op: u16,
    matching: &Matching,
    semantics: Semantics,
) -> Labels {
    let mut metric = if drops_metric_name(op, semantics) {
        drop_metric_name(many)
    } else {
        many.clone()
    };
    if matching.card == Cardinality::OneToOne {
        metric = if matching.on {
            keep_labels(&metric, &matching.names)
        } else {
            remove_labels(&metric, &matching.names, false)
        };
    }
    if !matching.include.is_empty() {
        let mut pairs: Vec<(String, String)> = metric
            .iter()
            .filter(|(n, _)| !matching.include.iter().any(|i| i == n))
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        for name in &matching.include {
            match one.get(name) {
                Some(v) if !v.is_empty() => pairs.push((name.clone(), v.to_owned())),
                _ => {}
            }
        }
        metric = Labels::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    }
    metric
}

/// `and`: the left elements that have a match on the right.
fn vector_and(lhs: Vector, rhs: Vector, matching: &Matching) -> Vector {
    if lhs.is_empty() || rhs.is_empty() {
        return Vector::new();
    }
    let right: LabelsSet = rhs.iter().map(|(l, _)| matching.signature(l)).collect();
    lhs.into_iter()
        .filter(|(l, _)| right.contains(&matching.signature(l)))
        .collect()
}

/// `or`: every left element, then the right elements without a match on the left.
fn vector_or(lhs: Vector, rhs: Vector, matching: &Matching) -> Vector {
    let left: LabelsSet = lhs.iter().map(|(l, _)| matching.signature(l)).collect();
    let mut out = lhs;
    out.extend(
        rhs.into_iter()
            .filter(|(l, _)| !left.contains(&matching.signature(l))),
    );
    out
}

/// `unless`: the left elements without a match on the right.
fn vector_unless(lhs: Vector, rhs: Vector, matching: &Matching) -> Vector {
    let right: LabelsSet = rhs.iter().map(|(l, _)| matching.signature(l)).collect();
    lhs.into_iter()
        .filter(|(l, _)| !right.contains(&matching.signature(l)))
        .collect()
}
