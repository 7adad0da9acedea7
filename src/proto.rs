//! The prost types generated from `proto/` by `build.rs`. The ingest hot path walks the wire
//! bytes itself (see `ingest::decode`); these owned types are what tests, benchmarks and
//! load generators use to *build* requests, and the reference the zero-copy decoder is
//! checked against.

/// Remote-write 1.0: `prometheus.WriteRequest`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Remote-write 2.0: `io.prometheus.write.v2.Request`.
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
}
