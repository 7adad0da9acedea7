//! The integration tests, one module per capability, linked into one test binary. Each
//! test binary links the whole crate and its dependencies (about 180 MB each in a debug
//! build), so one binary instead of fifteen keeps `cargo test` within a CI machine's disk
//! and saves fourteen links. `tests/memory.rs` and `tests/bomb.rs` stay binaries of their
//! own: each installs a counting global allocator, which would count every other test's
//! allocations here.

#[path = "../common/mod.rs"]
mod common;

mod actions_alert;
mod actions_cluster;
mod actions_nodepool;
mod actions_slo;
mod actions_workload;
mod anomaly;
mod auth;
mod catch_up;
mod cluster;
mod crds;
mod deploy_manifests;
mod e2e_prometheus;
mod expression_edges;
mod expressions;
mod fuzz;
mod ha_pair;
mod hardening;
mod http_write;
mod ingest_captures;
mod live_rules;
mod predictive;
mod promql_oracle;
mod promqltest;
mod restart;
mod rules_examples;
mod settle;
mod sharded_oracle;
mod shared_windows;
mod slo;
mod window_reads;
