//! The load-time check: walks an expression once and names the first part the engine
//! does not evaluate, so that a rule using it is reported invalid when loaded. It must
//! accept exactly what `engine` evaluates (plus `ml_forecast`, which callers evaluate).

use promql_parser::parser::Expr;
use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_DIV, T_EQLC, T_GROUP, T_GTE,
    T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MAX, T_MIN, T_MOD, T_MUL, T_NEQ, T_POW,
    T_QUANTILE, T_STDDEV, T_STDVAR, T_SUB, T_SUM, T_TOPK,
};

use super::{EvalError, ML_FORECAST, Semantics};

/// Functions the engine evaluates, by name: every function of Prometheus 2.42 but the
/// three that read native histograms, which Prophet does not keep.
pub(super) const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Whether the engine evaluates the aggregation operator `op`.
pub(super) fn aggregation_supported(op: u16) -> bool {
    matches!(
        op,
        T_SUM
            | T_AVG
            | T_MIN
            | T_MAX
            | T_COUNT
            | T_GROUP
            | T_STDDEV
            | T_STDVAR
            | T_COUNT_VALUES
            | T_QUANTILE
            | T_TOPK
            | T_BOTTOMK
    )
}

/// Whether the engine evaluates the binary operator `op`.
pub(super) fn binary_supported(op: u16) -> bool {
    matches!(
        op,
        T_ADD
            | T_SUB
            | T_MUL
            | T_DIV
            | T_MOD
            | T_POW
            | T_ATAN2
            | T_EQLC
            | T_NEQ
            | T_GTR
            | T_LSS
            | T_GTE
            | T_LTE
            | T_LAND
            | T_LOR
            | T_LUNLESS
    )
}

/// `Ok` if the engine can evaluate `expr` under some semantics (treating
/// `ml_forecast(<expr>, <horizon>)` as supported when `<expr>` and `<horizon>` are),
/// otherwise the first unsupported part. Prometheus 2's semantics accept the most.
pub fn check(expr: &Expr) -> Result<(), EvalError> {
    check_with(expr, Semantics::V2)
}

/// [`check`] under `semantics`: Prometheus 3 knows `holt_winters` only by its new name.
pub fn check_with(expr: &Expr, semantics: Semantics) -> Result<(), EvalError> {
    let check = |e: &Expr| check_with(e, semantics);
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(_) => Ok(()),
        Expr::MatrixSelector(_) => Ok(()),
        Expr::Paren(p) => check(&p.expr),
        Expr::Unary(u) => check(&u.expr),
        Expr::Subquery(sq) => check(&sq.expr),
        Expr::Extension(e) => Err(EvalError::Unsupported(format!(
            "the extension expression {:?}",
            e.expr.name()
        ))),
        Expr::Aggregate(a) => {
            if !aggregation_supported(a.op.id()) {
                return Err(EvalError::Unsupported(format!("aggregation \"{}\"", a.op)));
            }
            if let Some(param) = &a.param {
                check(param)?;
            }
            check(&a.expr)
        }
        Expr::Binary(b) => {
            if !binary_supported(b.op.id()) {
                return Err(EvalError::Unsupported(format!("operator \"{}\"", b.op)));
            }
            // Prometheus 3's experimental fill modifiers are not 2.42's PromQL.
            if let Some(modifier) = &b.modifier
                && (modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some())
            {
                return Err(EvalError::Unsupported("fill".into()));
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Call(call) => {
            let name = call.func.name;
            if name != ML_FORECAST && !FUNCTIONS.contains(&name) {
                return Err(EvalError::Unsupported(format!("function \"{name}\"")));
            }
            if name == "holt_winters" && semantics == Semantics::V3 {
                return Err(EvalError::Function(
                    "function \"holt_winters\" is Prometheus 2's name: Prometheus 3 renamed it \
                     double_exponential_smoothing (use that name, or --promql-semantics=2)"
                        .into(),
                ));
            }
            for arg in &call.args.args {
                check(arg)?;
            }
            Ok(())
        }
    }
}
