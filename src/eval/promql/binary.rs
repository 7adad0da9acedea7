//! Binary operators: arithmetic (`+ - * / % ^`) and comparisons (`== != > < >= <=`,
//! filtering or with `bool`) between scalars and vectors, one-to-one vector matching
//! with `on`/`ignoring`, and the set operators `and`, `or`, `unless`. Follows Prometheus
//! 2.42's `VectorBinop`, `VectorscalarBinop` and `scalarBinop`, including which results
//! keep the metric name (comparisons without `bool` and set operators) and its errors
//! for ambiguous matches.

use promql_parser::parser::token::{
    T_ADD, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD, T_MUL,
    T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::EvalError;
use super::engine::{Engine, Vector};
use super::source::SeriesSource;
use super::value::{Value, drop_metric_name, ensure_unique, keep_labels, remove_labels};
use crate::labels::{Labels, LabelsMap, LabelsSet};

/// Evaluates a binary expression at `ts`.
pub(super) fn eval<S: SeriesSource + ?Sized>(
    engine: &Engine<'_, S>,
    expr: &BinaryExpr,
    ts: i64,
) -> Result<Value, EvalError> {
    let op = expr.op.id();
    let return_bool = expr.modifier.as_ref().is_some_and(|m| m.return_bool);
    if let Some(m) = &expr.modifier {
        match m.card {
            VectorMatchCardinality::ManyToOne(_) => {
                return Err(EvalError::Unsupported("group_left".into()));
            }
            VectorMatchCardinality::OneToMany(_) => {
                return Err(EvalError::Unsupported("group_right".into()));
            }
            _ => {}
        }
    }
    let lhs = engine.eval(&expr.lhs, ts)?;
    let rhs = engine.eval(&expr.rhs, ts)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(scalar_binop(op, l, r)?)),
        (Value::Vector(l), Value::Scalar(r)) => {
            vector_scalar(op, l, r, false, return_bool).map(Value::Vector)
        }
        (Value::Scalar(l), Value::Vector(r)) => {
            vector_scalar(op, r, l, true, return_bool).map(Value::Vector)
        }
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = Matching::of(expr);
            let out = match op {
                T_LAND => vector_and(l, r, &matching),
                T_LOR => vector_or(l, r, &matching),
                T_LUNLESS => vector_unless(l, r, &matching),
                _ => vector_binop(op, l, r, &matching, return_bool)?,
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

/// Arithmetic drops the metric name; comparisons and set operators keep it.
fn drops_metric_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW)
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
            let labels = if drops_metric_name(op) || return_bool {
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

/// How two vectors' elements are paired: by the `on` labels only, or by all labels but
/// the `ignoring` ones and the metric name.
struct Matching {
    on: bool,
    names: Vec<String>,
}

impl Matching {
    fn of(expr: &BinaryExpr) -> Self {
        match expr.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => Self {
                on: true,
                names: l.labels.clone(),
            },
            Some(LabelModifier::Exclude(l)) => Self {
                on: false,
                names: l.labels.clone(),
            },
            None => Self {
                on: false,
                names: Vec::new(),
            },
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

/// One-to-one matching: each left element pairs with the right element of the same
/// signature. Two right elements with one signature, or two results for one signature,
/// are errors, as in Prometheus.
fn vector_binop(
    op: u16,
    lhs: Vector,
    rhs: Vector,
    matching: &Matching,
    return_bool: bool,
) -> Result<Vector, EvalError> {
    let mut right: LabelsMap<(Labels, f64)> =
        LabelsMap::with_capacity_and_hasher(rhs.len(), Default::default());
    for (labels, v) in rhs {
        let sig = matching.signature(&labels);
        if let Some((dup, _)) = right.get(&sig) {
            return Err(EvalError::ManyToMany {
                group: prometheus_string(&sig),
                side: "right",
                first: prometheus_string(&labels),
                second: prometheus_string(dup),
            });
        }
        right.insert(sig, (labels, v));
    }
    let mut matched = LabelsSet::default();
    let mut out = Vector::new();
    for (labels, l) in lhs {
        let sig = matching.signature(&labels);
        let Some(&(_, r)) = right.get(&sig) else {
            continue;
        };
        let (mut value, keep) = elem_binop(op, l, r)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut metric = if drops_metric_name(op) {
            drop_metric_name(&labels)
        } else {
            labels
        };
        metric = if matching.on {
            keep_labels(&metric, &matching.names)
        } else {
            remove_labels(&metric, &matching.names, false)
        };
        if return_bool {
            metric = drop_metric_name(&metric);
        }
        if !matched.insert(sig) {
            return Err(EvalError::MultipleMatches);
        }
        out.push((metric, value));
    }
    ensure_unique(&out)?;
    Ok(out)
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
