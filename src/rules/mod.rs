//! Rules: the three custom resource kinds of `aiops.prophet.io/v1alpha1`, the parsing of
//! the quantities, thresholds and durations they contain, loading them from YAML files,
//! and compiling a rule into the inputs the router needs and the detector eval runs.
//! This module is the single source of truth for `deploy/crds/`.

pub mod compile;
pub mod crd;
pub mod duration;
pub mod load;
pub mod quantity;
pub mod tenancy;
