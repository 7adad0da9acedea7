//! Ingest: everything between the bytes of a remote-write request and borrowed, validated
//! series. Content negotiation (remote-write 1.0 and 2.0), the decoded-size limit, snappy
//! block decompression, a zero-copy protobuf walk and validation.
//!
//! Everything here is a pure function of its inputs (the wall clock is passed in as
//! `now_ms`), allocates nothing per series, and never touches rule state: deciding which
//! series to keep is the router's job, which the decoder calls back for each series.
//! A request is either valid as a whole or refused as a whole; the caller commits what
//! the callback gathered only after [`decode`] returned `Ok`.

mod decode;
mod error;
mod negotiate;
mod snappy;
mod wire;

pub use decode::{DecodeStats, Label, Sample, SeriesView, decode};
pub use error::IngestError;
pub use negotiate::{Protocol, negotiate};
pub use snappy::SnappyBuffer;

/// The bit pattern Prometheus writes for a staleness marker: a NaN that is told apart
/// from every other NaN. It ends a series' current value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `value` is Prometheus's staleness marker (not just any NaN).
#[inline]
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest decoded (uncompressed) body accepted, checked against the snappy header
    /// before anything of that size is allocated.
    pub max_decoded_bytes: usize,
    /// How far past the receiver's clock a sample's timestamp may lie.
    pub max_future_ms: i64,
    /// Most labels one series may carry.
    pub max_labels_per_series: usize,
    /// Longest label (name and value together), in bytes.
    pub max_label_bytes: usize,
    /// Most label bytes a request may bring into rule windows. Bounds what a 2.0 request
    /// can make Prophet copy by referencing one large symbol from many series.
    pub max_kept_label_bytes: usize,
    /// Most compressed request bytes held at once across all requests being read (each
    /// request reserves its `Content-Length`, or the largest body it may send, before its
    /// body is read): past it a request is answered 503 with `Retry-After`.
    pub max_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_decoded_bytes: 32 << 20,
            max_future_ms: 10 * 60 * 1000,
            max_labels_per_series: 512,
            max_label_bytes: 64 << 10,
            max_kept_label_bytes: 32 << 20,
            max_bytes_in_flight: 256 << 20,
        }
    }
}
