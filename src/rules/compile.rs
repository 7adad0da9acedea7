//! Compiling a loaded rule into what the pipeline runs: the selectors the router indexes,
//! the window each input needs, the detector eval runs, and the scope and action plan
//! reconcile applies. A rule that cannot be compiled is reported with a reason naming the
//! offending field; it never affects the other rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};

use super::crd::{
    AnomalyAction, BurnRateTier, DetectionAlgorithm, MetricSource, PredictiveScale,
    RemediationType, SLOViolation, ScaleAction, ServiceLevelIndicator, SloActionType,
};
use super::duration::{format_duration, parse_duration};
use super::load::{Rule, RuleKey};
use super::quantity::Threshold;
use super::tenancy;
use crate::eval::promql::{self, ML_FORECAST, split_ml_forecast};
use crate::eval::{
    BandAlgorithm, BandSpec, BurnTier, SliCounter, SliShape, SloSpec, default_tiers,
};
use crate::route::Selector;

/// Prometheus's lookback: a series with no sample for this long has no current value.
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// How often an AnomalyAction expression is evaluated, in event time: Prometheus's
/// usual scrape interval, so that a rule over `rate(...)` reacts within one scrape.
pub const EXPRESSION_STEP_MS: i64 = 15_000;

/// How long a tripped `likelihood` rule's series must be unsurprising before it clears,
/// when the rule does not say (`detection.clearAfter`).
pub const LIKELIHOOD_CLEAR_AFTER_MS: i64 = 12 * HOUR_MS;

/// The `detection.sensitivity` of a rule that leaves it out: one that suits alerts, where
/// a false trip costs a look (NAB standard score 80.56 with the default detector, 8.5
/// false trips per 100 series-days on the real files' unlabelled rows).
pub const DEFAULT_SENSITIVITY: f64 = 3.0;

/// The `detection.sensitivity` of a `likelihood` rule that leaves it out and restarts or
/// scales without approval, with [`UNATTENDED_BAND_FOR_MS`]: nobody looks before a workload is
/// touched, so the default there is the bound on false trips, not the benchmark score.
/// Measured with the default detector (`cargo bench --bench detection`, rows
/// `default-unattended` and `likelihood-k5-for30m`): 0.57 false trips per 100
/// series-days on NAB's real files, 28 of 67 incidents found, standard score 38; 6 for
/// 15m beside 5 for 30m (0.96 per 100 days, 29 found, 39.1) is as good and acts sooner,
/// with room under the bound of one per 100 days.
pub const UNATTENDED_SENSITIVITY: f64 = 6.0;

/// How long the band of a rule that restarts or scales without approval must be broken
/// before it trips, when the rule leaves out both `for` and `detection.sensitivity` (see
/// [`UNATTENDED_SENSITIVITY`]).
pub const UNATTENDED_BAND_FOR_MS: i64 = 15 * 60_000;

/// The step of seasonal baselines and forecasts: one point per minute gives a daily
/// season of 1440 points, which the models fit in milliseconds.
pub const SEASONAL_STEP_MS: i64 = 60_000;

/// How much of a PredictiveScale's derived series is kept: three days, so that a daily
/// season is seen at least twice once the rule has run for two days.
pub const FORECAST_HISTORY_MS: i64 = 3 * 24 * HOUR_MS;

/// Options that widen what rules may do; the defaults are the safe ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileOptions {
    /// Let a rule act on pods outside its own namespace (`target.namespace`).
    pub allow_cross_namespace: bool,
    /// Confine the rule's selectors to series of its own namespace (see
    /// [`crate::rules::tenancy`]); decided per rule by [`crate::rules::tenancy::Tenancy`].
    pub confine_to_namespace: bool,
    /// Which Prometheus's PromQL the rule's texts mean (`--promql-semantics`).
    pub semantics: promql::Semantics,
}

/// Why a rule is not evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    /// The rule is wrong: the user must change it.
    #[error("{0}")]
    Invalid(String),
    /// The rule is fine but asks for something this version does not evaluate yet.
    #[error("{0}")]
    Unsupported(String),
}

/// One series source of a rule.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub selector: Selector,
    /// How much history each series' window keeps (0: the newest sample only).
    pub retention_ms: i64,
    /// How long a silent series keeps its window and detector state, at least (the
    /// retention and the 5m lookback otherwise decide): a `likelihood` band's state is
    /// days of learning that a missed scrape must not throw away.
    pub min_idle_ms: i64,
}

/// A per-series condition: a threshold on the current value and/or an anomaly band
/// (either trips), held for `for_ms` before it trips, and the band alone for
/// `band_for_ms` (longer for a rule that acts unattended).
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionSpec {
    pub threshold: Option<Threshold>,
    pub band: Option<BandSpec>,
    pub for_ms: i64,
    pub band_for_ms: i64,
    /// A tripped series clears once the condition has not held for this long (0: at the
    /// first sample it does not hold).
    pub clear_after_ms: i64,
}

/// A PromQL expression a rule evaluates at a fixed step of event time over its inputs'
/// windows (instead of judging each raw sample on its own).
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    pub expr: Arc<Expr>,
    /// The expression as the user wrote it.
    pub text: String,
    /// Event-time distance between evaluations.
    pub step_ms: i64,
    /// Which Prometheus's PromQL the expression is evaluated with.
    pub semantics: promql::Semantics,
}

/// Which way a forecast must move for a PredictiveScale to trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForecastDirection {
    /// Up by more than the threshold (`provision`).
    Rise,
    /// Down by more than the threshold (`consolidate`).
    Fall,
    /// Either way (`adjust`).
    Either,
}

/// A compiled PredictiveScale: forecast `query` `horizon_ms` ahead from the history of
/// its values at `query.step_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastSpec {
    pub query: QuerySpec,
    pub horizon_ms: i64,
    /// Relative change (percent of the current value) that trips.
    pub threshold_percent: f64,
    pub direction: ForecastDirection,
    /// How much of the derived series is kept to fit the model on.
    pub history_ms: i64,
}

/// The detector a rule runs.
#[derive(Debug, Clone, PartialEq)]
pub enum DetectorSpec {
    /// A condition on each raw series' newest sample, judged as samples arrive (a rule
    /// whose `metric` is a plain selector).
    Condition(ConditionSpec),
    /// A condition on each series an expression returns, judged every `query.step_ms`;
    /// `band_window_ms` is how much of each result series' history the band is built on.
    Expression {
        query: QuerySpec,
        condition: ConditionSpec,
        band_window_ms: i64,
    },
    Forecast(ForecastSpec),
    /// An SLO over counters; `counters[i]` says what the rule's input `i` counts.
    Slo {
        spec: SloSpec,
        counters: Vec<SliCounter>,
    },
}

/// Where a rule may act: pods in `namespace` whose labels fit `pod_selector`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    pub namespace: String,
    pub pod_selector: BTreeMap<String, String>,
}

/// What reconcile does when the rule trips.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionPlan {
    /// The action(s) as the rule names them: `restart`, `scale`, `alert`, or for an SLO
    /// its list joined with `+` (`scale:increase+alert`).
    pub action: String,
    /// Whether the action is done to the pods the verdict names (restart), so that a
    /// verdict without one cannot act.
    pub needs_pod: bool,
    /// The object acted on besides pods, e.g. `HorizontalPodAutoscaler default/backend-hpa`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub require_approval: bool,
    pub cooldown_ms: i64,
    pub replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

/// A rule ready to run.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub key: RuleKey,
    pub inputs: Vec<InputSpec>,
    pub detector: DetectorSpec,
    pub scope: Scope,
    pub plan: ActionPlan,
    /// The rule's expression and condition as the user wrote them, for display.
    pub summary: String,
}

/// Compiles one rule.
pub fn compile(rule: &Rule, options: CompileOptions) -> Result<CompiledRule, CompileError> {
    match rule {
        Rule::AnomalyAction(rule) => compile_anomaly_action(rule, options),
        Rule::PredictiveScale(rule) => compile_predictive_scale(rule, options),
        Rule::SloViolation(slo) => compile_slo(slo, options),
    }
}

fn compile_anomaly_action(
    rule: &AnomalyAction,
    options: CompileOptions,
) -> Result<CompiledRule, CompileError> {
    let spec = &rule.spec;
    let key = Rule::AnomalyAction(rule.clone()).key();
    match spec.source {
        MetricSource::Prometheus => {}
        MetricSource::GrafanaMl | MetricSource::Otel => {
            let name = serde_json::to_value(spec.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Err(CompileError::Invalid(format!(
                "spec.source {name:?} is not available: only \"prometheus\" (the remote-write stream) is built"
            )));
        }
    }
    let metric = spec.metric.trim();
    let mut expr = parse_promql("spec.metric", metric, options.semantics)?;
    if options.confine_to_namespace {
        tenancy::confine(&mut expr, &key.namespace);
    }
    let threshold = spec
        .threshold
        .as_deref()
        .map(|text| {
            Threshold::parse(text)
                .map_err(|e| CompileError::Invalid(format!("spec.threshold: {e}")))
        })
        .transpose()?;
    // Nobody looks before a restart or a scale without approval: the default detector
    // left at its defaults is then one for acting, not for alerting. Not the simple
    // bands: a z-score's 1h window takes an incident in before 15 minutes are up (it
    // would never trip), and a MAD band so held still trips 7.9 times per 100 days on
    // NAB (`cargo bench --bench detection`, rows `zscore-k6-for15m`, `mad-k6-for15m`).
    let unattended = matches!(
        spec.remediation.type_,
        RemediationType::Restart | RemediationType::Scale
    ) && !spec.remediation.require_approval
        && spec
            .detection
            .as_ref()
            .is_some_and(|d| d.algorithm == DetectionAlgorithm::Likelihood);
    let (band, band_window_ms, clear_after_ms) = match &spec.detection {
        None => (None, 0, 0),
        Some(detection) => {
            let sensitivity = detection.sensitivity.unwrap_or(if unattended {
                UNATTENDED_SENSITIVITY
            } else {
                DEFAULT_SENSITIVITY
            });
            let algorithm = match detection.algorithm {
                DetectionAlgorithm::Zscore => BandAlgorithm::Zscore,
                DetectionAlgorithm::Mad => BandAlgorithm::Mad,
                DetectionAlgorithm::Seasonal => BandAlgorithm::Seasonal,
                DetectionAlgorithm::Likelihood => BandAlgorithm::Likelihood,
            };
            if !(sensitivity.is_finite() && sensitivity > 0.0) {
                return Err(CompileError::Invalid(format!(
                    "spec.detection.sensitivity {sensitivity} must be a positive number"
                )));
            }
            let window_ms = duration_in(
                "spec.detection.window",
                &detection.window,
                (1, WEEK_MS),
                "between 1ms and 7d",
            )?;
            let band = BandSpec {
                algorithm,
                sensitivity,
                min_samples: detection.min_samples as usize,
            };
            let clear_after_ms = match &detection.clear_after {
                // Measured on NAB: 74.3 (standard) clearing after 12h of calm, 73.8
                // after 1h, with more false positives (127 against 103; `cargo bench
                // --bench detection`); for the single-surprise detector before it,
                // 61.3 / 63.6 / 66.5 / 55.7 after 1h / 6h / 12h / 24h in a replica
                // (re-trips within an incident against missed next incidents).
                None if algorithm == BandAlgorithm::Likelihood => LIKELIHOOD_CLEAR_AFTER_MS,
                None => window_ms,
                Some(text) => duration_in(
                    "spec.detection.clearAfter",
                    text,
                    (0, WEEK_MS),
                    "between 0s and 7d",
                )?,
            };
            (Some(band), window_ms, clear_after_ms)
        }
    };
    if threshold.is_none() && band.is_none() {
        return Err(CompileError::Invalid(
            "set spec.threshold, spec.detection, or both: the rule has no condition".into(),
        ));
    }
    let for_ms = match &spec.for_ {
        None => 0,
        Some(text) => {
            let duration = parse_duration(text)
                .map_err(|e| CompileError::Invalid(format!("spec.for: {e}")))?;
            i64::try_from(duration.as_millis())
                .map_err(|_| CompileError::Invalid(format!("spec.for: {text:?} is too long")))?
        }
    };
    // The hold is part of the acting default only with its sensitivity: a rule that sets
    // either was tuned by its author (and an object stored when the schema wrote
    // `sensitivity: 3` into it keeps the behaviour it had).
    let acting_default = unattended
        && spec.for_.is_none()
        && spec
            .detection
            .as_ref()
            .is_some_and(|d| d.sensitivity.is_none());
    let band_for_ms = if acting_default {
        UNATTENDED_BAND_FOR_MS
    } else {
        for_ms
    };
    let held = |ms: i64| format_duration(Duration::from_millis(ms.unsigned_abs()));
    let condition_text = [
        spec.threshold.as_deref().map(str::trim).map(str::to_owned),
        spec.detection.as_ref().map(|d| {
            let band_held = if band_for_ms > for_ms {
                format!(", held {}", held(band_for_ms))
            } else {
                String::new()
            };
            format!(
                "outside {} band (k={}, {}{band_held})",
                serde_json::to_value(d.algorithm)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                band.map_or(DEFAULT_SENSITIVITY, |b| b.sensitivity),
                d.window
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" or ");
    let condition_text = if for_ms > 0 {
        format!("{condition_text}, held {}", held(for_ms))
    } else {
        condition_text
    };
    let condition = ConditionSpec {
        threshold,
        band,
        for_ms,
        band_for_ms,
        clear_after_ms,
    };
    let plain = match &expr {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => {
            Some(Selector::from_promql(vs))
        }
        _ => None,
    };
    let seasonal = band.is_some_and(|b| b.algorithm == BandAlgorithm::Seasonal);
    let (inputs, detector) = match plain {
        // A plain selector is judged sample by sample, as the samples arrive; a seasonal
        // baseline needs its history at a fixed step, so it goes the expression's way.
        Some(selector) if !seasonal => (
            vec![InputSpec {
                selector,
                retention_ms: band_window_ms,
                min_idle_ms: if band.is_some_and(|b| b.algorithm == BandAlgorithm::Likelihood) {
                    crate::eval::SURPRISE_KEEP_MS
                } else {
                    0
                },
            }],
            DetectorSpec::Condition(condition),
        ),
        _ => {
            let step_ms = if seasonal {
                SEASONAL_STEP_MS
            } else {
                EXPRESSION_STEP_MS
            };
            let query = compile_query(
                "spec.metric",
                metric,
                expr,
                step_ms,
                false,
                options.semantics,
            )?;
            (
                query_inputs(&query.expr, step_ms),
                DetectorSpec::Expression {
                    query,
                    condition,
                    band_window_ms,
                },
            )
        }
    };
    let namespace = key.namespace.clone();
    let target_namespace = spec
        .target
        .as_ref()
        .and_then(|t| t.namespace.clone())
        .unwrap_or_else(|| namespace.clone());
    if target_namespace != namespace && !options.allow_cross_namespace {
        return Err(CompileError::Invalid(format!(
            "spec.target.namespace {target_namespace:?} is outside the rule's namespace {namespace:?}; rules act only in their own namespace unless Prophet runs with --allow-cross-namespace"
        )));
    }
    let remediation = &spec.remediation;
    let cooldown_ms =
        i64::try_from(remediation.cooldown_seconds.saturating_mul(1000)).map_err(|_| {
            CompileError::Invalid("spec.remediation.cooldownSeconds is too large".into())
        })?;
    Ok(CompiledRule {
        summary: format!("{metric} {condition_text}"),
        key,
        inputs,
        detector,
        scope: Scope {
            namespace: target_namespace,
            pod_selector: remediation.pod_selector.clone(),
        },
        plan: ActionPlan {
            action: match remediation.type_ {
                RemediationType::Restart => "restart",
                RemediationType::Scale => "scale",
                RemediationType::Alert => "alert",
            }
            .to_owned(),
            needs_pod: remediation.type_ == RemediationType::Restart,
            object: None,
            require_approval: remediation.require_approval,
            cooldown_ms,
            replicas: remediation.replicas,
            webhook_url: spec.webhook_url.clone().filter(|u| !u.is_empty()),
        },
    })
}

fn compile_slo(rule: &SLOViolation, options: CompileOptions) -> Result<CompiledRule, CompileError> {
    let spec = &rule.spec;
    let key = Rule::SloViolation(rule.clone()).key();
    let confine = options
        .confine_to_namespace
        .then_some(key.namespace.as_str());
    let indicator = spec
        .indicator()
        .map_err(|e| CompileError::Invalid(e.to_string()))?;
    let target = spec
        .target_ratio()
        .map_err(|e| CompileError::Invalid(format!("spec.sloTarget: {e}")))?;
    let period_ms = duration_in(
        "spec.period",
        &spec.period,
        (HOUR_MS, 10 * 366 * 24 * HOUR_MS),
        "between 1h and 10y",
    )?;
    if !(0.0..=1.0).contains(&spec.error_budget_threshold) {
        return Err(CompileError::Invalid(format!(
            "spec.errorBudgetThreshold {} must be a fraction between 0 and 1",
            spec.error_budget_threshold
        )));
    }
    let (shape, inputs) = match indicator {
        ServiceLevelIndicator::Ratio(ratio) => (
            SliShape::Ratio,
            vec![
                (
                    parse_counter(
                        "spec.sli.ratio.errors",
                        &ratio.errors,
                        confine,
                        options.semantics,
                    )?,
                    SliCounter::Bad,
                ),
                (
                    parse_counter(
                        "spec.sli.ratio.total",
                        &ratio.total,
                        confine,
                        options.semantics,
                    )?,
                    SliCounter::Total,
                ),
            ],
        ),
        ServiceLevelIndicator::Latency(latency) => {
            let bucket = parse_counter(
                "spec.sli.latency.bucket",
                &latency.bucket,
                confine,
                options.semantics,
            )?;
            // Good events are the bucket at the threshold, all events the +Inf bucket.
            let with_le = |le: Matcher| {
                let mut selector = bucket.clone();
                for group in &mut selector.groups {
                    group.retain(|m| m.name != "le");
                    group.push(le.clone());
                }
                selector
            };
            let metric = bucket.groups.first().and_then(|group| {
                group
                    .iter()
                    .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
                    .map(|m| m.value.clone())
            });
            let threshold = le_matcher(latency.le.trim(), metric.as_deref())?;
            (
                SliShape::Latency,
                vec![
                    (with_le(threshold), SliCounter::Good),
                    (
                        with_le(Matcher::new(MatchOp::Equal, "le", "+Inf")),
                        SliCounter::Total,
                    ),
                ],
            )
        }
    };
    if spec.actions.iter().any(|a| a.type_ == SloActionType::Chaos) {
        return Err(CompileError::Invalid(
            "spec.actions: `chaos` is not an action: Prophet never starts chaos. Set enableChaos: true and chaosRef to the Chaos Mesh experiment Prophet should pause while the SLO is violated".into(),
        ));
    }
    if spec.enable_chaos && spec.chaos_ref.is_none() {
        return Err(CompileError::Invalid(
            "spec.chaosRef: enableChaos needs chaosRef (kind Schedule or PodChaos, and name) naming the experiment to pause while the SLO is violated".into(),
        ));
    }
    if let Some(hpa) = &spec.hpa_ref
        && let Some(hpa_namespace) = &hpa.namespace
        && *hpa_namespace != key.namespace
        && !options.allow_cross_namespace
    {
        return Err(CompileError::Invalid(format!(
            "spec.hpaRef.namespace {hpa_namespace:?} is outside the rule's namespace {:?}; rules act only in their own namespace unless Prophet runs with --allow-cross-namespace",
            key.namespace
        )));
    }
    let actions: Vec<String> = spec
        .actions
        .iter()
        .map(|a| {
            let name = match a.type_ {
                SloActionType::Scale => "scale",
                SloActionType::Alert => "alert",
                SloActionType::Rollback => "rollback",
                SloActionType::Chaos => "chaos",
            };
            match &a.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_owned(),
            }
        })
        .collect();
    let object = spec.hpa_ref.as_ref().map(|hpa| {
        format!(
            "HorizontalPodAutoscaler {}/{}",
            hpa.namespace.as_deref().unwrap_or(&key.namespace),
            hpa.name
        )
    });
    let tiers = tiers(spec.burn_rate_tiers.as_deref(), period_ms)?;
    // A counter's last value is the baseline of its next increase: a series silent for a
    // while (a scrape outage, a slow pod) must keep it as long as a burn-rate window can
    // still see the increase across the gap, or that increase is never counted.
    let keep_baseline_ms = tiers.iter().map(|t| t.long_ms).max().unwrap_or(0);
    Ok(CompiledRule {
        summary: format!(
            "SLO {} {} over {} (budget threshold {})",
            spec.slo_name, spec.slo_target, spec.period, spec.error_budget_threshold
        ),
        inputs: inputs
            .iter()
            .map(|(selector, _)| InputSpec {
                selector: selector.clone(),
                retention_ms: 0,
                min_idle_ms: keep_baseline_ms,
            })
            .collect(),
        detector: DetectorSpec::Slo {
            spec: SloSpec {
                target,
                period_ms,
                tiers,
                budget_threshold: spec.error_budget_threshold,
                shape,
            },
            counters: inputs.iter().map(|(_, counter)| *counter).collect(),
        },
        scope: Scope {
            namespace: key.namespace.clone(),
            pod_selector: BTreeMap::new(),
        },
        plan: ActionPlan {
            action: if actions.is_empty() {
                "alert".to_owned()
            } else {
                actions.join("+")
            },
            needs_pod: false,
            object,
            require_approval: false,
            // An SLO trips once per violation: nothing to space out.
            cooldown_ms: 0,
            replicas: None,
            webhook_url: None,
        },
        key,
    })
}

const HOUR_MS: i64 = 60 * 60 * 1000;
const WEEK_MS: i64 = 7 * 24 * HOUR_MS;

fn compile_predictive_scale(
    rule: &PredictiveScale,
    options: CompileOptions,
) -> Result<CompiledRule, CompileError> {
    let spec = &rule.spec;
    let key = Rule::PredictiveScale(rule.clone()).key();
    let horizon_ms = duration_in(
        "spec.horizon",
        &spec.horizon,
        (1, WEEK_MS),
        "between 1ms and 7d",
    )?;
    // `ml_forecast(<expr>, <horizon>)` (the Grafana ML style of the seed examples) means
    // "forecast <expr>"; its horizon must then agree with spec.horizon.
    let query_text = spec.forecast_query.trim();
    let inner = match split_ml_forecast(query_text) {
        None => query_text,
        Some((inner, horizon)) => {
            let field = "spec.forecastQuery";
            let inner_ms = duration_in(field, horizon, (1, WEEK_MS), "between 1ms and 7d")?;
            if inner_ms != horizon_ms {
                return Err(CompileError::Invalid(format!(
                    "{field}: {ML_FORECAST}(..., {horizon}) disagrees with spec.horizon {:?}",
                    spec.horizon
                )));
            }
            inner
        }
    };
    if horizon_ms < SEASONAL_STEP_MS {
        return Err(CompileError::Invalid(format!(
            "spec.horizon {:?} is shorter than the forecast step of 1m",
            spec.horizon
        )));
    }
    if !(spec.threshold_percent.is_finite() && spec.threshold_percent > 0.0) {
        return Err(CompileError::Invalid(format!(
            "spec.thresholdPercent {} must be a positive number",
            spec.threshold_percent
        )));
    }
    let mut expr = parse_promql("spec.forecastQuery", inner, options.semantics)?;
    if options.confine_to_namespace {
        tenancy::confine(&mut expr, &key.namespace);
    }
    let query = compile_query(
        "spec.forecastQuery",
        inner,
        expr,
        SEASONAL_STEP_MS,
        false,
        options.semantics,
    )?;
    let (action, direction) = match spec.action {
        ScaleAction::Provision => ("provision", ForecastDirection::Rise),
        ScaleAction::Consolidate => ("consolidate", ForecastDirection::Fall),
        ScaleAction::Adjust => ("adjust", ForecastDirection::Either),
    };
    Ok(CompiledRule {
        summary: format!(
            "forecast {inner} {} ahead; {action} NodePool {} beyond {}%",
            spec.horizon.trim(),
            spec.node_pool_ref.name,
            spec.threshold_percent
        ),
        inputs: query_inputs(&query.expr, query.step_ms),
        detector: DetectorSpec::Forecast(ForecastSpec {
            query,
            horizon_ms,
            threshold_percent: spec.threshold_percent,
            direction,
            history_ms: FORECAST_HISTORY_MS,
        }),
        scope: Scope {
            namespace: key.namespace.clone(),
            pod_selector: BTreeMap::new(),
        },
        plan: ActionPlan {
            action: action.to_owned(),
            needs_pod: false,
            object: Some(format!("NodePool {}", spec.node_pool_ref.name)),
            require_approval: false,
            // A forecast trips once per excursion: nothing to space out.
            cooldown_ms: 0,
            replicas: None,
            webhook_url: None,
        },
        key,
    })
}

/// A duration field, in milliseconds, that must lie in `[min_ms, max_ms]` (`range` says
/// so in words, for the message).
fn duration_in(
    field: &str,
    text: &str,
    (min_ms, max_ms): (i64, i64),
    range: &str,
) -> Result<i64, CompileError> {
    let duration =
        parse_duration(text).map_err(|e| CompileError::Invalid(format!("{field}: {e}")))?;
    i64::try_from(duration.as_millis())
        .ok()
        .filter(|ms| (min_ms..=max_ms).contains(ms))
        .ok_or_else(|| CompileError::Invalid(format!("{field} {text:?} must be {range}")))
}

/// Checks that `expr` (the parsed `text` of `field`) is something a live rule can
/// evaluate: every part supported by the engine, no `@` pinning it to a fixed time, and
/// an instant vector or scalar as its result. `ml_forecast` is allowed only where the
/// caller has already unwrapped it.
fn compile_query(
    field: &str,
    text: &str,
    expr: Expr,
    step_ms: i64,
    allow_forecast: bool,
    semantics: promql::Semantics,
) -> Result<QuerySpec, CompileError> {
    promql::check_with(&expr, semantics)
        .map_err(|e| CompileError::Invalid(format!("{field} {text:?}: {e}")))?;
    let mut walker = LiveCheck::default();
    let _ = walk_expr(&mut walker, &expr);
    if let Some(why) = walker.problem {
        return Err(CompileError::Invalid(format!("{field} {text:?}: {why}")));
    }
    if walker.forecast && !allow_forecast {
        return Err(CompileError::Invalid(format!(
            "{field} {text:?}: {ML_FORECAST}() is only understood as the whole of a PredictiveScale's spec.forecastQuery"
        )));
    }
    match expr.value_type() {
        ValueType::Vector | ValueType::Scalar => {}
        other => {
            return Err(CompileError::Invalid(format!(
                "{field} {text:?} evaluates to a {other}; a rule needs an instant vector or a scalar (wrap a range selector in a function such as rate())"
            )));
        }
    }
    // Windows keep raw samples for each selector's range (and offset): `rate(x[10y])`
    // would keep every sample it is ever sent.
    if let Some(input) = query_inputs(&expr, step_ms)
        .into_iter()
        .find(|input| input.retention_ms > MAX_RANGE_MS)
    {
        return Err(CompileError::Invalid(format!(
            "{field} {text:?}: a selector reads {} of samples back (its range, offset and enclosing subqueries), over the limit of {} that windows keep raw; for longer periods use an SLOViolation (per-minute rollups) or a shorter range",
            promql_duration(std::time::Duration::from_millis(
                u64::try_from(input.retention_ms).unwrap_or(u64::MAX)
            )),
            promql_duration(std::time::Duration::from_millis(MAX_RANGE_MS as u64)),
        )));
    }
    Ok(QuerySpec {
        expr: Arc::new(expr),
        text: text.to_owned(),
        step_ms,
        semantics,
    })
}

/// Finds what a live rule cannot evaluate beyond what [`promql::check`] refuses: an `@`
/// pinned to a fixed time, a negative `offset`, and subqueries that would evaluate their
/// expression more than [`MAX_SUBQUERY_STEPS`] times at each step.
#[derive(Default)]
struct LiveCheck {
    problem: Option<String>,
    forecast: bool,
    /// How many times the enclosing subqueries evaluate what is being visited.
    steps: Vec<i64>,
}

/// The most evaluations of an expression's innermost part that its subqueries may ask
/// for at each step of the rule: a week at the default step of one minute. A subquery's
/// every step is a full evaluation over the windows; this keeps one rule from stalling
/// the evaluator.
pub const MAX_SUBQUERY_STEPS: i64 = 7 * 24 * 60 + 1;

/// The longest history an expression's selector may read back (range, offset and
/// enclosing subqueries, plus the lookback and the catch-up minute): windows keep raw
/// samples for it, so it bounds a rule's memory per series. A week and a day.
pub const MAX_RANGE_MS: i64 = 8 * 24 * HOUR_MS;

impl LiveCheck {
    fn modifiers(&mut self, at: Option<&parser::AtModifier>, offset: Option<&parser::Offset>) {
        if self.problem.is_some() {
            return;
        }
        if let Some(parser::AtModifier::At(_)) = at {
            self.problem = Some(
                "the @ modifier with a fixed time pins a selector to that time, which a rule evaluated on the live stream cannot keep; only @ start() and @ end(), the evaluation's own time in a rule, are accepted".into(),
            );
        } else if let Some(parser::Offset::Neg(d)) = offset {
            self.problem = Some(format!(
                "a negative offset (offset -{}) reads samples after the evaluation time, which have not arrived when a rule on the live stream is evaluated",
                promql_duration(*d)
            ));
        }
    }
}

impl ExprVisitor for LiveCheck {
    type Error = ();

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => self.modifiers(vs.at.as_ref(), vs.offset.as_ref()),
            Expr::MatrixSelector(ms) => self.modifiers(ms.vs.at.as_ref(), ms.vs.offset.as_ref()),
            Expr::Subquery(sq) => {
                self.modifiers(sq.at.as_ref(), sq.offset.as_ref());
                let step_ms = sq
                    .step
                    .map(millis)
                    .filter(|&s| s > 0)
                    .unwrap_or(promql::EvalOptions::default().subquery_step_ms);
                let own = millis(sq.range) / step_ms + 1;
                let total = self.steps.last().copied().unwrap_or(1).saturating_mul(own);
                if total > MAX_SUBQUERY_STEPS && self.problem.is_none() {
                    self.problem = Some(format!(
                        "the subquery [{}:{}] evaluates its expression {total} times at each step; a rule may ask for at most {MAX_SUBQUERY_STEPS} (a week at the default step of 1m): use a longer step",
                        promql_duration(sq.range),
                        promql_duration(std::time::Duration::from_millis(step_ms.unsigned_abs())),
                    ));
                }
                self.steps.push(total);
            }
            Expr::Call(call) => self.forecast |= call.func.name == ML_FORECAST,
            // The walk does not descend into an aggregation's parameter.
            Expr::Aggregate(agg) => {
                if let Some(param) = &agg.param {
                    let _ = walk_expr(self, param);
                }
            }
            _ => {}
        }
        Ok(true)
    }

    fn post_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        if let Expr::Subquery(_) = expr {
            self.steps.pop();
        }
        Ok(true)
    }
}

/// A duration as PromQL writes it (`1h30m`, `90s`, `250ms`), for messages.
fn promql_duration(d: Duration) -> String {
    let mut ms = millis(d);
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 24 * HOUR_MS),
        ("h", HOUR_MS),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// The inputs an expression reads: one per distinct selector, each keeping the history
/// its selectors need at an evaluation up to [`crate::eval::catch_up_ms`] behind the
/// newest sample (a batch may carry several steps' worth of samples).
///
/// An instant selector needs each series' newest sample within the lookback; a range
/// selector its range. Prometheus 2.x ranges include their start, and the window trims
/// relative to each series' newest sample, which may be ahead of the evaluation time;
/// `offset` moves the whole range back. Inside a subquery, the expression is evaluated
/// as far back as the subquery's range (and offset) reaches, so its selectors keep that
/// much more.
pub fn query_inputs(expr: &Expr, step_ms: i64) -> Vec<InputSpec> {
    struct Selectors {
        inputs: Vec<InputSpec>,
        step_ms: i64,
    }
    impl Selectors {
        fn add(&mut self, vs: &parser::VectorSelector, range_ms: i64) {
            let offset_ms = match &vs.offset {
                Some(parser::Offset::Pos(d)) => millis(*d),
                _ => 0,
            };
            // The oldest step evaluated lies up to the catch-up margin behind the clock.
            let retention_ms = range_ms
                .saturating_add(offset_ms)
                .saturating_add(crate::eval::catch_up_ms(self.step_ms));
            let selector = Selector::from_promql(vs);
            match self.inputs.iter_mut().find(|i| i.selector == selector) {
                Some(input) => input.retention_ms = input.retention_ms.max(retention_ms),
                None => self.inputs.push(InputSpec {
                    selector,
                    retention_ms,
                    min_idle_ms: 0,
                }),
            }
        }

        /// Visits `expr`, evaluated as far as `back_ms` before the rule's evaluation
        /// time (by the subqueries around it).
        fn walk(&mut self, expr: &Expr, back_ms: i64) {
            match expr {
                Expr::VectorSelector(vs) => self.add(vs, LOOKBACK_MS.saturating_add(back_ms)),
                Expr::MatrixSelector(ms) => {
                    self.add(&ms.vs, millis(ms.range).saturating_add(back_ms))
                }
                Expr::Subquery(sq) => {
                    let offset_ms = match &sq.offset {
                        Some(parser::Offset::Pos(d)) => millis(*d),
                        _ => 0,
                    };
                    let back_ms = back_ms
                        .saturating_add(millis(sq.range))
                        .saturating_add(offset_ms);
                    self.walk(&sq.expr, back_ms);
                }
                Expr::Aggregate(agg) => {
                    if let Some(param) = &agg.param {
                        self.walk(param, back_ms);
                    }
                    self.walk(&agg.expr, back_ms);
                }
                Expr::Unary(u) => self.walk(&u.expr, back_ms),
                Expr::Paren(p) => self.walk(&p.expr, back_ms),
                Expr::Binary(b) => {
                    self.walk(&b.lhs, back_ms);
                    self.walk(&b.rhs, back_ms);
                }
                Expr::Call(call) => {
                    for arg in &call.args.args {
                        self.walk(arg, back_ms);
                    }
                }
                Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
            }
        }
    }
    let mut selectors = Selectors {
        inputs: Vec::new(),
        step_ms,
    };
    selectors.walk(expr, 0);
    selectors.inputs
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The burn-rate table: the spec's, checked, or the default one scaled to the period.
fn tiers(spec: Option<&[BurnRateTier]>, period_ms: i64) -> Result<Vec<BurnTier>, CompileError> {
    let Some(spec) = spec else {
        return Ok(default_tiers(period_ms));
    };
    if spec.is_empty() {
        return Err(CompileError::Invalid(
            "spec.burnRateTiers is empty: omit it for the default table".into(),
        ));
    }
    spec.iter()
        .enumerate()
        .map(|(i, tier)| {
            let window = |field: &str, text: &str| -> Result<i64, CompileError> {
                let invalid = |why: String| {
                    CompileError::Invalid(format!("spec.burnRateTiers[{i}].{field}: {why}"))
                };
                let duration = parse_duration(text).map_err(|e| invalid(e.to_string()))?;
                i64::try_from(duration.as_millis())
                    .ok()
                    .filter(|&ms| (60_000..=period_ms).contains(&ms))
                    .ok_or_else(|| invalid(format!("{text:?} must be between 1m and the period")))
            };
            let long_ms = window("longWindow", &tier.long_window)?;
            let short_ms = window("shortWindow", &tier.short_window)?;
            if short_ms > long_ms {
                return Err(CompileError::Invalid(format!(
                    "spec.burnRateTiers[{i}]: the short window is longer than the long one"
                )));
            }
            if !(tier.factor.is_finite() && tier.factor > 0.0) {
                return Err(CompileError::Invalid(format!(
                    "spec.burnRateTiers[{i}].factor {} must be a positive number",
                    tier.factor
                )));
            }
            Ok(BurnTier {
                long_ms,
                short_ms,
                factor: tier.factor,
            })
        })
        .collect()
}

/// An SLI selector: a plain selector over a counter, as the SLO takes increases itself.
/// The matcher for a latency SLI's threshold bucket. `le` is compared as a number, as
/// Prometheus 3 normalises it: `0.1`, `0.10` and `0.100` are one bucket. A duration
/// (`100ms`, `1.5s`) is converted to the histogram's unit, taken from the metric's name
/// (`_milliseconds_bucket`, `_microseconds_bucket`; seconds otherwise, Prometheus's base
/// unit).
fn le_matcher(text: &str, metric: Option<&str>) -> Result<Matcher, CompileError> {
    let value = match text.parse::<f64>() {
        Ok(value) => value,
        Err(_) => {
            let duration = parse_duration(text).map_err(|e| {
                CompileError::Invalid(format!(
                    "spec.sli.latency.le {text:?} is neither a number nor a duration: {e}"
                ))
            })?;
            let scale = match metric {
                Some(name) if name.ends_with("_milliseconds_bucket") => 1e3,
                Some(name) if name.ends_with("_microseconds_bucket") => 1e6,
                _ => 1.0,
            };
            duration.as_secs_f64() * scale
        }
    };
    if !value.is_finite() || value < 0.0 {
        return Err(CompileError::Invalid(format!(
            "spec.sli.latency.le {text:?} must be a finite bucket bound of zero or more"
        )));
    }
    // Every way a client library writes the number: shortest form, trailing zeros after
    // a decimal point, or an integer's ".0".
    let shortest = format!("{value}");
    let escaped = regex::escape(&shortest);
    let pattern = if shortest.contains('.') {
        format!("{escaped}0*")
    } else {
        format!("{escaped}(\\.0*)?")
    };
    Ok(Matcher::new(
        MatchOp::Re(
            regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| CompileError::Invalid(format!("spec.sli.latency.le {text:?}: {e}")))?,
        ),
        "le",
        &pattern,
    ))
}

/// With `confine`, the selector reads only series of that namespace.
fn parse_counter(
    field: &str,
    text: &str,
    confine: Option<&str>,
    semantics: promql::Semantics,
) -> Result<Selector, CompileError> {
    parse_selector(field, text, confine, semantics).map_err(|e| match e {
        CompileError::Unsupported(_) => CompileError::Invalid(format!(
            "{field} {text:?} must be a selector over a counter, such as `http_requests_total{{code=~\"5..\"}}`: the SLO takes the increases itself"
        )),
        invalid @ CompileError::Invalid(_) => invalid,
    })
}

/// Parses the PromQL `text` of `field`; this version evaluates plain instant selectors
/// there. With `confine`, the selector reads only series of that namespace.
fn parse_selector(
    field: &str,
    text: &str,
    confine: Option<&str>,
    semantics: promql::Semantics,
) -> Result<Selector, CompileError> {
    match parse_promql(field, text, semantics)? {
        Expr::VectorSelector(mut selector)
            if selector.offset.is_none() && selector.at.is_none() =>
        {
            if let Some(namespace) = confine {
                tenancy::confine_selector(&mut selector, namespace);
            }
            Ok(Selector::from_promql(&selector))
        }
        Expr::VectorSelector(_) => Err(CompileError::Unsupported(format!(
            "{field} {text:?}: offset and @ modifiers are not evaluated on a live stream"
        ))),
        other => Err(CompileError::Unsupported(format!(
            "{field} {text:?}: only instant selectors such as `metric{{label=\"value\"}}` are evaluated by this version; {} expressions are not yet",
            expr_kind(&other)
        ))),
    }
}

/// Parses the PromQL `text` of a rule's `field`. Every PromQL text of a rule is parsed
/// here, so none reaches the parser before its size is checked: a tree too deep for the
/// evaluator's stack is refused unbuilt, with the limit named and without quoting the
/// (possibly huge) text.
fn parse_promql(
    field: &str,
    text: &str,
    semantics: promql::Semantics,
) -> Result<Expr, CompileError> {
    if let Err(too_large) = promql::check_size(text) {
        return Err(CompileError::Invalid(format!(
            "{field} is too large to evaluate safely: it is {too_large}"
        )));
    }
    promql::parse_with(text, semantics)
        .map_err(|e| CompileError::Invalid(format!("{field} {text:?} is not valid PromQL: {e}")))
}

fn expr_kind(expr: &Expr) -> &'static str {
    match expr {
        Expr::Aggregate(_) => "aggregation",
        Expr::Unary(_) => "unary",
        Expr::Binary(_) => "binary operator",
        Expr::Paren(_) => "parenthesised",
        Expr::Subquery(_) => "subquery",
        Expr::NumberLiteral(_) => "number literal",
        Expr::StringLiteral(_) => "string literal",
        Expr::VectorSelector(_) => "vector selector",
        Expr::MatrixSelector(_) => "range selector",
        Expr::Call(_) => "function call",
        Expr::Extension(_) => "extension",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_threshold_matches_its_bucket_as_a_number_in_the_metrics_unit() {
        let matches = |le_text: &str, metric: &str, bucket_le: &str| {
            le_matcher(le_text, Some(metric))
                .unwrap()
                .is_match(bucket_le)
        };
        let seconds = "http_request_duration_seconds_bucket";
        for written in ["0.1", "0.10", "0.100"] {
            assert!(matches("0.1", seconds, written), "{written}");
            assert!(matches("0.10", seconds, written), "{written}");
            assert!(matches("100ms", seconds, written), "{written}");
        }
        assert!(!matches("0.1", seconds, "0.15"));
        assert!(!matches("0.1", seconds, "10.1"));
        assert!(!matches("100ms", seconds, "100"));
        let millis = "rpc_latency_milliseconds_bucket";
        assert!(matches("100ms", millis, "100"));
        assert!(matches("100ms", millis, "100.0"));
        assert!(!matches("100ms", millis, "0.1"));
        assert!(matches("1", seconds, "1.0") && matches("1s", seconds, "1"));
        for bad in ["fast", "-1", "NaN"] {
            assert!(le_matcher(bad, Some(seconds)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_range_longer_than_windows_keep_is_refused_with_the_limit() {
        let refused = |text: &str| {
            let expr = promql::parse(text).unwrap();
            compile_query(
                "spec.metric",
                text,
                expr,
                EXPRESSION_STEP_MS,
                false,
                Default::default(),
            )
            .unwrap_err()
            .to_string()
        };
        let message = refused("rate(x[10y])");
        assert!(message.contains("over the limit of 8d"), "{message}");
        assert!(refused("max_over_time(x[7d] offset 2d)").contains("over the limit"));
        assert!(refused("max_over_time(rate(x[5m])[9d:1h])").contains("over the limit"));
        let fine = "max_over_time(x[7d])";
        let expr = promql::parse(fine).unwrap();
        assert!(
            compile_query(
                "spec.metric",
                fine,
                expr,
                EXPRESSION_STEP_MS,
                false,
                Default::default()
            )
            .is_ok()
        );
    }
    use crate::rules::load::parse_documents;

    /// The four shapes that used to overflow a stack, as a user would write them.
    fn deep_shapes() -> Vec<(&'static str, String, usize)> {
        vec![
            ("a 3000-term sum", vec!["m"; 3000].join(" + "), 3000),
            (
                "3000 nested abs",
                format!("{}m{}", "abs(".repeat(3000), ")".repeat(3000)),
                3001,
            ),
            (
                "5000 nested sum",
                format!("{}m{}", "sum(".repeat(5000), ")".repeat(5000)),
                5001,
            ),
            (
                "20000 minus signs",
                format!("{}m", "-".repeat(20_000)),
                20_001,
            ),
        ]
    }

    fn compiled(yaml: &str) -> Result<CompiledRule, CompileError> {
        let (rules, invalid) = parse_documents(yaml, std::path::Path::new("inline.yaml"));
        assert!(invalid.is_empty(), "{invalid:#?}");
        compile(&rules[0], CompileOptions::default())
    }

    /// The semantics a rule is compiled under reach its query: `holt_winters` is refused
    /// by default (Prometheus 3) with its new name given, and accepted under 2; a
    /// regex's `.` matches a newline in the selector the router uses under 3 only.
    #[test]
    fn the_promql_semantics_reach_the_compiled_rule() {
        let rule = |metric: &str| {
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: '{metric}'\n  threshold: '> 0'\n  remediation: {{type: alert}}\n"
            )
        };
        let (rules, _) = parse_documents(
            &rule("holt_winters(x[10m], 0.5, 0.5)"),
            std::path::Path::new("inline.yaml"),
        );
        let Err(CompileError::Invalid(reason)) = compile(&rules[0], CompileOptions::default())
        else {
            panic!("holt_winters must be refused under Prometheus 3's semantics");
        };
        assert!(reason.contains("double_exponential_smoothing"), "{reason}");
        let v2 = CompileOptions {
            semantics: promql::Semantics::V2,
            ..CompileOptions::default()
        };
        let compiled = compile(&rules[0], v2).unwrap();
        let DetectorSpec::Expression { query, .. } = &compiled.detector else {
            panic!("an expression rule");
        };
        assert_eq!(query.semantics, promql::Semantics::V2);

        let (rules, _) = parse_documents(
            &rule(r#"sum(x{msg=~"a.b"})"#),
            std::path::Path::new("inline.yaml"),
        );
        for (options, matches) in [(CompileOptions::default(), true), (v2, false)] {
            let compiled = compile(&rules[0], options).unwrap();
            let selector = &compiled.inputs[0].selector;
            let labels = crate::labels::Labels::from_pairs([("__name__", "x"), ("msg", "a\nb")]);
            let matched = selector.groups[0]
                .iter()
                .all(|m| m.is_match(labels.get(&m.name).unwrap_or_default()));
            assert_eq!(matched, matches, "{:?}", options.semantics);
        }
    }

    fn assert_too_deep(result: Result<CompiledRule, CompileError>, field: &str, depth: usize) {
        let Err(CompileError::Invalid(reason)) = result else {
            panic!("expected an invalid rule, got {result:?}");
        };
        assert_eq!(
            reason,
            format!(
                "{field} is too large to evaluate safely: it is nested {depth} levels deep (counting brackets and chained operators), over the limit of 128"
            )
        );
    }

    #[test]
    fn deeply_nested_anomaly_metrics_are_invalid_with_the_limit_named() {
        for (shape, text, depth) in deep_shapes() {
            let yaml = format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: deep}}\nspec:\n  metric: '{text}'\n  threshold: '> 1'\n  remediation: {{type: alert}}\n"
            );
            let result = compiled(&yaml);
            assert!(result.is_err(), "{shape}");
            assert_too_deep(result, "spec.metric", depth);
        }
    }

    #[test]
    fn deeply_nested_forecast_queries_are_invalid_with_the_limit_named() {
        for (_shape, text, depth) in deep_shapes() {
            for query in [text.clone(), format!("ml_forecast({text}, 1h)")] {
                let yaml = format!(
                    "apiVersion: aiops.prophet.io/v1alpha1\nkind: PredictiveScale\nmetadata: {{name: deep}}\nspec:\n  forecastQuery: '{query}'\n  nodePoolRef: {{name: pool}}\n  horizon: 1h\n  thresholdPercent: 20\n  action: provision\n"
                );
                assert_too_deep(compiled(&yaml), "spec.forecastQuery", depth);
            }
        }
    }

    #[test]
    fn deeply_nested_slo_selectors_are_invalid_with_the_limit_named() {
        for (_shape, text, depth) in deep_shapes() {
            let ratio = format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: SLOViolation\nmetadata: {{name: deep}}\nspec:\n  sloName: api\n  sloTarget: 99.9%\n  errorBudgetThreshold: 0.1\n  sli:\n    ratio: {{errors: '{text}', total: 'requests_total'}}\n"
            );
            assert_too_deep(compiled(&ratio), "spec.sli.ratio.errors", depth);
            let latency = format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: SLOViolation\nmetadata: {{name: deep}}\nspec:\n  sloName: api\n  sloTarget: 99.9%\n  errorBudgetThreshold: 0.1\n  sli:\n    latency: {{bucket: '{text}', le: '0.3'}}\n"
            );
            assert_too_deep(compiled(&latency), "spec.sli.latency.bucket", depth);
        }
    }

    #[test]
    fn an_slo_never_starts_chaos_and_acts_only_in_its_namespace() {
        let slo = |extra: &str| {
            format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: SLOViolation\nmetadata: {{name: api, namespace: shop}}\nspec:\n  sloName: api\n  sloTarget: 99.9%\n  errorBudgetThreshold: 0.1\n  sli:\n    ratio: {{errors: 'errors_total', total: 'requests_total'}}\n{extra}"
            )
        };
        let reason = |yaml: String| match compiled(&yaml) {
            Err(CompileError::Invalid(reason)) => reason,
            other => panic!("expected an invalid rule, got {other:?}"),
        };
        let chaos = reason(slo("  actions: [{type: chaos}]\n  enableChaos: false\n"));
        assert!(chaos.contains("chaosRef"), "{chaos}");
        let unnamed = reason(slo("  enableChaos: true\n"));
        assert!(unnamed.starts_with("spec.chaosRef"), "{unnamed}");
        assert!(
            compiled(&slo(
                "  enableChaos: true\n  chaosRef: {kind: Schedule, name: kill-pods}\n"
            ))
            .is_ok()
        );
        let elsewhere = reason(slo(
            "  actions: [{type: scale}]\n  hpaRef: {name: api, namespace: payments}\n",
        ));
        assert!(elsewhere.contains("--allow-cross-namespace"), "{elsewhere}");
        assert!(
            compiled(&slo(
                "  actions: [{type: scale}]\n  hpaRef: {name: api, namespace: shop}\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn real_expressions_still_compile() {
        let yaml = "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {name: ratio}\nspec:\n  metric: 'sum by (pod) (rate(errors_total{code=~\"5..\"}[5m])) / sum by (pod) (rate(requests_total[5m])) > 0.05'\n  threshold: '> 0'\n  remediation: {type: alert}\n";
        assert!(compiled(yaml).is_ok());
    }

    fn query(text: &str) -> Result<QuerySpec, CompileError> {
        let expr = promql::parse(text).unwrap();
        compile_query(
            "spec.metric",
            text,
            expr,
            EXPRESSION_STEP_MS,
            false,
            Default::default(),
        )
    }

    fn message(text: &str) -> String {
        query(text).unwrap_err().to_string()
    }

    #[test]
    fn a_live_rule_refuses_what_reads_outside_its_windows_and_says_why() {
        assert!(message("x offset -5m").contains("a negative offset (offset -5m)"));
        assert!(message("rate(x[5m] offset -1m)").contains("negative offset"));
        assert!(message("max_over_time(x[10m:1m] offset -1h)").contains("negative offset"));
        assert!(message("x @ 1700000000").contains("@ modifier with a fixed time"));
        assert!(message("max_over_time(x[10m:] @ 1700000000)").contains("fixed time"));
        let huge = message("max_over_time(max_over_time(x[1d:1m])[1h:1m])");
        assert!(
            huge.contains("evaluates its expression 87901 times"),
            "nested subqueries multiply (61 × 1441): {huge}"
        );
        assert!(message("x[5m]").contains("evaluates to a matrix"));
        // What the evaluation's own time stands for, and positive offsets, are fine.
        for fine in [
            "x @ end() - x @ start() offset 5m",
            "max_over_time(rate(x[5m])[7d:1m])",
            "topk(scalar(y @ end()), x)",
            "predict_linear(x[6h], 4 * 3600) < 0",
            "x * on(pod) group_left(owner) y",
        ] {
            assert!(query(fine).is_ok(), "{fine}: {:?}", query(fine));
        }
    }

    #[test]
    fn selectors_inside_subqueries_keep_the_subquery_range_and_offset_too() {
        let catch_up = crate::eval::catch_up_ms(EXPRESSION_STEP_MS);
        let retention = |text: &str| -> Vec<(String, i64)> {
            let expr = promql::parse(text).unwrap();
            query_inputs(&expr, EXPRESSION_STEP_MS)
                .into_iter()
                .map(|i| {
                    (
                        format!("{:?}", i.selector.groups[0][0].value),
                        i.retention_ms,
                    )
                })
                .collect()
        };
        let minute = 60_000;
        assert_eq!(
            retention("max_over_time(rate(x[5m])[1h:] offset 10m)"),
            [("\"x\"".to_owned(), (5 + 60 + 10) * minute + catch_up)]
        );
        // Nested: both subqueries' ranges; an instant selector inside keeps the lookback.
        assert_eq!(
            retention("max_over_time(avg_over_time(y[10m:1m])[30m:5m])"),
            [("\"y\"".to_owned(), (5 + 10 + 30) * minute + catch_up)]
        );
        // The longest need of a selector read twice wins.
        assert_eq!(
            retention("z + max_over_time(z[1h:])"),
            [("\"z\"".to_owned(), (5 + 60) * minute + catch_up)]
        );
    }

    /// Alert expressions as the kube-prometheus, node-exporter and Prometheus mixins
    /// write them (selectors shortened where they only repeat `job` matchers): each must
    /// compile into a live rule.
    #[test]
    fn widely_used_alerts_compile() {
        let alerts = [
            // kube-prometheus
            r#"max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff", job="kube-state-metrics"}[5m]) >= 1"#,
            r#"sum by (namespace, pod, cluster) (max by(namespace, pod, cluster) (kube_pod_status_phase{job="kube-state-metrics", phase=~"Pending|Unknown|Failed"}) * on(namespace, pod, cluster) group_left(owner_kind) topk by(namespace, pod, cluster) (1, max by(namespace, pod, owner_kind, cluster) (kube_pod_owner{owner_kind!="Job"}))) > 0"#,
            r#"(kube_deployment_spec_replicas{job="kube-state-metrics"} > kube_deployment_status_replicas_available{job="kube-state-metrics"}) and (changes(kube_deployment_status_replicas_updated{job="kube-state-metrics"}[10m]) == 0)"#,
            r#"(max by(namespace, statefulset, job, cluster) (kube_statefulset_status_current_revision{job="kube-state-metrics"} unless kube_statefulset_status_update_revision{job="kube-state-metrics"}) * (kube_statefulset_replicas{job="kube-state-metrics"} != kube_statefulset_status_replicas_updated{job="kube-state-metrics"})) and (changes(kube_statefulset_status_replicas_updated{job="kube-state-metrics"}[5m]) == 0)"#,
            r#"sum by (namespace, pod, container, cluster) (kube_pod_container_status_waiting_reason{job="kube-state-metrics"}) > 0"#,
            r#"time() - max by(namespace, job_name, cluster) (kube_job_status_start_time{job="kube-state-metrics"} and kube_job_status_active{job="kube-state-metrics"} > 0) > 43200"#,
            r#"kube_job_failed{job="kube-state-metrics"} > 0"#,
            r#"(kube_horizontalpodautoscaler_status_desired_replicas{job="kube-state-metrics"} != kube_horizontalpodautoscaler_status_current_replicas{job="kube-state-metrics"}) and (kube_horizontalpodautoscaler_status_current_replicas{job="kube-state-metrics"} > kube_horizontalpodautoscaler_spec_min_replicas{job="kube-state-metrics"}) and changes(kube_horizontalpodautoscaler_status_current_replicas{job="kube-state-metrics"}[15m]) == 0"#,
            r#"sum(namespace_cpu:kube_pod_container_resource_requests:sum{}) by (cluster) - (sum(kube_node_status_allocatable{resource="cpu"}) by (cluster) - max(kube_node_status_allocatable{resource="cpu"}) by (cluster)) > 0 and (sum(kube_node_status_allocatable{resource="cpu"}) by (cluster) - max(kube_node_status_allocatable{resource="cpu"}) by (cluster)) > 0"#,
            r#"kube_resourcequota{job="kube-state-metrics", type="used"} / ignoring(instance, job, type) (kube_resourcequota{job="kube-state-metrics", type="hard"} > 0) > 1.10"#,
            r#"sum(increase(container_cpu_cfs_throttled_periods_total{container!=""}[5m])) by (container, pod, namespace) / sum(increase(container_cpu_cfs_periods_total{}[5m])) by (container, pod, namespace) > (25 / 100)"#,
            r#"(kubelet_volume_stats_available_bytes{job="kubelet"} / kubelet_volume_stats_capacity_bytes{job="kubelet"}) < 0.15 and kubelet_volume_stats_used_bytes{job="kubelet"} > 0 and predict_linear(kubelet_volume_stats_available_bytes{job="kubelet"}[6h], 4 * 24 * 3600) < 0 unless on(namespace, persistentvolumeclaim) kube_persistentvolumeclaim_access_mode{access_mode="ReadOnlyMany"} == 1 unless on(namespace, persistentvolumeclaim) kube_persistentvolumeclaim_labels{label_excluded_from_alerts="true"} == 1"#,
            r#"kube_persistentvolume_status_phase{phase=~"Failed|Pending",job="kube-state-metrics"} > 0"#,
            r#"count by (cluster) (count by (git_version, cluster) (label_replace(kubernetes_build_info{job!~"kube-dns|coredns"},"git_version","$1","git_version","(v[0-9]*.[0-9]*).*"))) > 1"#,
            r#"(sum(rate(rest_client_requests_total{job="apiserver",code=~"5.."}[5m])) by (cluster, instance, job, namespace) / sum(rate(rest_client_requests_total{job="apiserver"}[5m])) by (cluster, instance, job, namespace)) > 0.01"#,
            r#"apiserver_client_certificate_expiration_seconds_count{job="apiserver"} > 0 and on(job) histogram_quantile(0.01, sum by (job, le) (rate(apiserver_client_certificate_expiration_seconds_bucket{job="apiserver"}[5m]))) < 604800"#,
            r#"sum by(name, namespace, cluster)(increase(aggregator_unavailable_apiservice_total{job="apiserver"}[10m])) > 4"#,
            r#"(1 - max by(name, namespace, cluster)(avg_over_time(aggregator_unavailable_apiservice{job="apiserver"}[10m]))) * 100 < 85"#,
            r#"absent(up{job="apiserver"} == 1)"#,
            r#"kube_node_status_condition{job="kube-state-metrics",condition="Ready",status="true"} == 0 and on (cluster, node) kube_node_spec_unschedulable{job="kube-state-metrics"} == 0"#,
            r#"sum(changes(kube_node_status_condition{job="kube-state-metrics",status="true",condition="Ready"}[15m])) by (cluster, node) > 2 and on (cluster, node) kube_node_spec_unschedulable{job="kube-state-metrics"} == 0"#,
            r#"count by(cluster, node) ((kube_pod_status_phase{job="kube-state-metrics",phase="Running"} == 1) * on(instance,pod,namespace,cluster) group_left(node) topk by(instance,pod,namespace,cluster) (1, kube_pod_info{job="kube-state-metrics"})) / max by(cluster, node) (kube_node_status_capacity{job="kube-state-metrics",resource="pods"} != 1) > 0.95"#,
            r#"histogram_quantile(0.99, sum(rate(kubelet_pod_worker_duration_seconds_bucket{job="kubelet", metrics_path="/metrics"}[5m])) by (cluster, instance, le)) * on(cluster, instance) group_left(node) kubelet_node_name{job="kubelet", metrics_path="/metrics"} > 60"#,
            r#"kubelet_certificate_manager_client_ttl_seconds < 604800"#,
            r#"absent(up{job="kubelet", metrics_path="/metrics"} == 1)"#,
            r#"(sum by (cluster) (rate(kube_state_metrics_list_total{job="kube-state-metrics",result="error"}[5m])) / sum by (cluster) (rate(kube_state_metrics_list_total{job="kube-state-metrics"}[5m]))) > 0.01"#,
            r#"stdvar (kube_state_metrics_total_shards{job="kube-state-metrics"}) by (cluster) != 0"#,
            r#"2^max(kube_state_metrics_total_shards{job="kube-state-metrics"}) by (cluster) - 1 - sum(2 ^ max by (cluster, shard_ordinal) (kube_state_metrics_shard_ordinal{job="kube-state-metrics"})) by (cluster) != 0"#,
            r#"100 * (count(up == 0) BY (cluster, job, namespace, service) / count(up) BY (cluster, job, namespace, service)) > 10"#,
            "vector(1)",
            // node-exporter
            r#"(node_filesystem_avail_bytes{job="node-exporter",fstype!="",mountpoint!=""} / node_filesystem_size_bytes{job="node-exporter",fstype!="",mountpoint!=""} * 100 < 15 and predict_linear(node_filesystem_avail_bytes{job="node-exporter",fstype!="",mountpoint!=""}[6h], 4*60*60) < 0 and node_filesystem_readonly{job="node-exporter",fstype!="",mountpoint!=""} == 0)"#,
            r#"(node_filesystem_files_free{job="node-exporter",fstype!=""} / node_filesystem_files{job="node-exporter",fstype!=""} * 100 < 20 and predict_linear(node_filesystem_files_free{job="node-exporter",fstype!=""}[6h], 24*60*60) < 0 and node_filesystem_readonly{job="node-exporter",fstype!=""} == 0)"#,
            r#"rate(node_network_receive_errs_total{job="node-exporter"}[2m]) / rate(node_network_receive_packets_total{job="node-exporter"}[2m]) > 0.01"#,
            r#"(node_nf_conntrack_entries{job="node-exporter"} / node_nf_conntrack_entries_limit) > 0.75"#,
            r#"node_textfile_scrape_error{job="node-exporter"} == 1"#,
            r#"((node_timex_offset_seconds{job="node-exporter"} > 0.05 and deriv(node_timex_offset_seconds{job="node-exporter"}[5m]) >= 0) or (node_timex_offset_seconds{job="node-exporter"} < -0.05 and deriv(node_timex_offset_seconds{job="node-exporter"}[5m]) <= 0))"#,
            r#"(min_over_time(node_timex_sync_status{job="node-exporter"}[5m]) == 0 and node_timex_maxerror_seconds{job="node-exporter"} >= 16)"#,
            r#"node_md_disks_required{job="node-exporter",device=~"(/dev/)?(mmcblk.p.+|nvme.+|rbd.+|sd.+|vd.+|xvd.+|dm-.+|md.+|dasd.+)"} - ignoring (state) (node_md_disks{state="active",job="node-exporter",device=~"(/dev/)?(mmcblk.p.+|nvme.+|rbd.+|sd.+|vd.+|xvd.+|dm-.+|md.+|dasd.+)"}) > 0"#,
            r#"(node_filefd_allocated{job="node-exporter"} * 100 / node_filefd_maximum{job="node-exporter"} > 90)"#,
            r#"sum without(mode) (avg without (cpu) (rate(node_cpu_seconds_total{job="node-exporter", mode!~"idle|iowait"}[2m]))) * 100 > 90"#,
            r#"node_load1{job="node-exporter"} / count without (cpu, mode) (node_cpu_seconds_total{job="node-exporter", mode="idle"}) > 2"#,
            r#"rate(node_vmstat_pgmajfault{job="node-exporter"}[5m]) > 500"#,
            r#"100 - (node_memory_MemAvailable_bytes{job="node-exporter"} / node_memory_MemTotal_bytes{job="node-exporter"} * 100) > 90"#,
            r#"rate(node_disk_io_time_weighted_seconds_total{job="node-exporter", device=~"(/dev/)?(mmcblk.p.+|nvme.+|sd.+)"}[5m]) > 10"#,
            r#"node_systemd_unit_state{job="node-exporter", state="failed"} == 1"#,
            r#"(node_bonding_slaves - node_bonding_active) != 0"#,
            r#"changes(node_network_up{job="node-exporter",device!~"veth.+"}[2m]) > 2"#,
            // Prometheus
            r#"max_over_time(prometheus_config_last_reload_successful{job="prometheus"}[5m]) == 0"#,
            r#"(predict_linear(prometheus_notifications_queue_length{job="prometheus"}[5m], 60 * 30) > min_over_time(prometheus_notifications_queue_capacity{job="prometheus"}[5m]))"#,
            r#"min without (alertmanager) (rate(prometheus_notifications_errors_total{job="prometheus",alertmanager!~``}[5m]) / ignoring (reason) group_left rate(prometheus_notifications_sent_total{job="prometheus",alertmanager!~``}[5m])) * 100 > 3"#,
            r#"max_over_time(prometheus_notifications_alertmanagers_discovered{job="prometheus"}[5m]) < 1"#,
            r#"increase(prometheus_tsdb_reloads_failures_total{job="prometheus"}[3h]) > 0"#,
            r#"(max_over_time(prometheus_remote_storage_highest_timestamp_in_seconds{job="prometheus"}[5m]) - ignoring(remote_name, url) group_right max_over_time(prometheus_remote_storage_queue_highest_sent_timestamp_seconds{job="prometheus"}[5m])) > 120"#,
            r#"(max_over_time(prometheus_remote_storage_shards_desired{job="prometheus"}[5m]) > max_over_time(prometheus_remote_storage_shards_max{job="prometheus"}[5m]))"#,
            r#"sum by (rule_group) (prometheus_rule_group_iterations_missed_total{job="prometheus"}) > 0"#,
            r#"avg_over_time(prometheus_engine_queries{job="prometheus"}[5m]) / max_over_time(prometheus_engine_queries_concurrent_max{job="prometheus"}[5m]) > 0.8"#,
            r#"min by (job) (up{job=~"prometheus|alertmanager"}) == 0 or absent_over_time(up{job="prometheus"}[10m])"#,
            r#"count by (namespace,service,cluster) (avg_over_time(up{job="alertmanager"}[5m]) < 0.5) / count by (namespace,service,cluster) (up{job="alertmanager"}) >= 0.5"#,
        ];
        let refused: Vec<String> = alerts
            .iter()
            .filter_map(|text| query(text).err().map(|e| format!("{text}: {e}")))
            .collect();
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }
}

/// The detectors' compile-time settings.
#[cfg(test)]
mod detection_tests {
    use super::*;
    use crate::rules::load::parse_documents;

    fn compile_yaml(yaml: &str) -> CompiledRule {
        let (loaded, invalid) = parse_documents(yaml, std::path::Path::new("test"));
        assert!(invalid.is_empty(), "{invalid:?}");
        compile(&loaded[0], CompileOptions::default()).unwrap()
    }

    fn anomaly(detection: &str) -> String {
        format!(
            "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: m\n  detection: {detection}\n  remediation: {{type: alert}}\n"
        )
    }

    /// `detection: {}` turns on the default detector, tuned for no rule in particular:
    /// a likelihood band at sensitivity 3 over a 1h mean, clearing after 12 quiet hours,
    /// whose series keep their state through two days of silence.
    #[test]
    fn an_empty_detection_gets_the_default_detector() {
        let rule = compile_yaml(&anomaly("{}"));
        let DetectorSpec::Condition(condition) = &rule.detector else {
            panic!("{:?}", rule.detector);
        };
        let band = condition.band.unwrap();
        assert_eq!(band.algorithm, BandAlgorithm::Likelihood);
        assert_eq!((band.sensitivity, band.min_samples), (3.0, 10));
        assert_eq!((condition.for_ms, condition.band_for_ms), (0, 0));
        assert_eq!(condition.clear_after_ms, 12 * HOUR_MS);
        assert_eq!(rule.inputs[0].retention_ms, HOUR_MS);
        assert_eq!(rule.inputs[0].min_idle_ms, 2 * 24 * HOUR_MS);
        assert!(rule.summary.contains("likelihood band"), "{}", rule.summary);
    }

    /// A rule that restarts or scales without approval gets a band for acting: wider,
    /// and broken for 15 minutes before it trips; its threshold still trips at once.
    /// What the user sets is kept, and a human's approval or a mere alert keeps the
    /// alerting default.
    #[test]
    fn a_rule_that_acts_unattended_defaults_to_a_band_held_for_acting() {
        let compiled = |spec: &str| {
            compile_yaml(&format!(
                "apiVersion: aiops.prophet.io/v1alpha1\nkind: AnomalyAction\nmetadata: {{name: r, namespace: shop}}\nspec:\n  metric: m\n{spec}"
            ))
        };
        let condition = |spec: &str| {
            let condition = match compiled(spec).detector {
                DetectorSpec::Condition(condition) => condition,
                // Seasonal bands are judged at a fixed step.
                DetectorSpec::Expression { condition, .. } => condition,
                other => panic!("{other:?}"),
            };
            (
                condition.band.map(|b| b.sensitivity),
                condition.for_ms,
                condition.band_for_ms,
            )
        };
        let acting = (Some(UNATTENDED_SENSITIVITY), 0, UNATTENDED_BAND_FOR_MS);
        let alerting = (Some(DEFAULT_SENSITIVITY), 0, 0);
        for action in ["restart", "scale"] {
            assert_eq!(
                condition(&format!(
                    "  detection: {{}}\n  remediation: {{type: {action}}}\n"
                )),
                acting,
                "{action}"
            );
        }
        assert_eq!(
            condition("  detection: {}\n  threshold: '> 1Gi'\n  remediation: {type: restart}\n"),
            acting
        );
        assert_eq!(
            condition("  detection: {}\n  remediation: {type: restart, requireApproval: true}\n"),
            alerting
        );
        assert_eq!(
            condition("  detection: {}\n  remediation: {type: alert}\n"),
            alerting
        );
        // The simple bands keep theirs: an author who picks one tunes it.
        for algorithm in ["zscore", "mad", "seasonal"] {
            assert_eq!(
                condition(&format!(
                    "  detection: {{algorithm: {algorithm}}}\n  remediation: {{type: restart}}\n"
                )),
                alerting,
                "{algorithm}"
            );
        }
        // A sensitivity set by the author (or written by the schema of an older
        // version) is a tuned band: no hold is added to it.
        assert_eq!(
            condition("  detection: {sensitivity: 4}\n  remediation: {type: restart}\n"),
            (Some(4.0), 0, 0)
        );
        assert_eq!(
            condition("  detection: {}\n  for: 2m\n  remediation: {type: restart}\n"),
            (Some(UNATTENDED_SENSITIVITY), 120_000, 120_000)
        );
        assert_eq!(
            condition("  threshold: '> 1Gi'\n  remediation: {type: restart}\n"),
            (None, 0, 0)
        );
        // The summary says what is evaluated, defaults filled in, and what each hold
        // applies to.
        let summary = |spec: &str| compiled(spec).summary;
        assert_eq!(
            summary("  threshold: '> 1Gi'\n  detection: {}\n  remediation: {type: restart}\n"),
            "m > 1Gi or outside likelihood band (k=6, 1h, held 15m)"
        );
        assert_eq!(
            summary("  detection: {}\n  for: 2m\n  remediation: {type: restart}\n"),
            "m outside likelihood band (k=6, 1h), held 2m"
        );
        assert_eq!(
            summary("  detection: {}\n  remediation: {type: alert}\n"),
            "m outside likelihood band (k=3, 1h)"
        );
    }

    #[test]
    fn clear_after_defaults_to_the_window_and_can_be_set() {
        let rule = compile_yaml(&anomaly("{algorithm: mad, window: 30m}"));
        let DetectorSpec::Condition(condition) = &rule.detector else {
            panic!("{:?}", rule.detector);
        };
        assert_eq!(condition.clear_after_ms, 30 * 60_000);
        assert_eq!(rule.inputs[0].min_idle_ms, 0);
        let rule = compile_yaml(&anomaly("{algorithm: zscore, clearAfter: 0s}"));
        let DetectorSpec::Condition(condition) = &rule.detector else {
            panic!("{:?}", rule.detector);
        };
        assert_eq!(condition.clear_after_ms, 0);
        let (loaded, _) = parse_documents(
            &anomaly("{algorithm: zscore, clearAfter: soon}"),
            std::path::Path::new("test"),
        );
        let error = compile(&loaded[0], CompileOptions::default()).unwrap_err();
        assert!(
            error.to_string().contains("spec.detection.clearAfter"),
            "{error}"
        );
    }
}
