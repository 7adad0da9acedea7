//! Prophet: a Prometheus remote-write receiver, a continuous rule evaluator and a
//! Kubernetes operator in one binary.
//!
//! # Layout
//! Data flows one way, one module per stage (see `DESIGN.md`):
//! - [`http`]: the axum router (remote-write endpoint, `/metrics`, health, debug JSON).
//! - [`ingest`]: content negotiation, snappy, zero-copy protobuf decode and validation.
//! - [`route`]: the compiled rule set's index; drops series no rule needs.
//! - [`window`]: per (rule input, series) windows of samples, in event time.
//! - [`eval`]: detectors over windows; emits verdict changes.
//! - [`rules`]: the CRD types, quantities and durations, compiling a CR into inputs.
//! - [`actuate`]: what is done about a decision (dry-run recorder in standalone mode).
//! - [`metrics`], [`telemetry`]: Prophet's own `/metrics` and logging.

// pub mod eval; (waits for rules::load)
pub mod ingest;
pub mod labels;
pub mod proto;
pub mod route;
pub mod window;
pub mod rules;
