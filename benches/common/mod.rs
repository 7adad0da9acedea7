//! Helpers the benches share.

// Each bench is a crate of its own and uses some of these.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use prophet::rules::compile::{CompileOptions, CompiledRule, compile};
use prophet::rules::load::parse_documents;

/// Loads and compiles rule YAML the way `prophet run` does; every rule must be valid.
pub fn compile_all(yaml: &str) -> Vec<CompiledRule> {
    let (loaded, invalid) = parse_documents(yaml, std::path::Path::new("bench"));
    assert!(invalid.is_empty(), "{invalid:?}");
    loaded
        .iter()
        .map(|r| compile(r, CompileOptions::default()).unwrap())
        .collect()
}

/// A count from the environment (`PODS`, `TRIALS`, ...), or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The wall clock in ms, as remote-write timestamps are.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
