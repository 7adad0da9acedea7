//! Helpers the benches share.

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
