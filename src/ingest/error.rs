//! Why a request was refused. Each variant maps to one HTTP status in `http`; the message
//! is the one-line reason the sender sees in the response body and Prophet logs.

/// A remote-write request that Prophet refuses, as a whole.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error(
        "unsupported media type {0:?}: expected application/x-protobuf (remote-write 1.0 or 2.0)"
    )]
    UnsupportedMediaType(String),
    #[error(
        "unsupported proto {0:?}: expected prometheus.WriteRequest or io.prometheus.write.v2.Request"
    )]
    UnsupportedProto(String),
    #[error("unsupported Content-Encoding {0:?}: remote-write bodies are snappy block-compressed")]
    UnsupportedEncoding(String),
    #[error(
        "decoded body would be {declared} bytes, above the limit of {limit} bytes (--max-decoded-bytes)"
    )]
    TooLarge { declared: usize, limit: usize },
    #[error("request body larger than {limit} bytes, which could not decode within the limit")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error(
        "framed snappy is not accepted: remote-write bodies use the snappy block format, without stream framing"
    )]
    FramedSnappy,
    #[error("corrupt snappy block: {0}")]
    Snappy(String),
    #[error("corrupt protobuf: {0}")]
    Protobuf(String),
    #[error("series {series} has no __name__ label")]
    MissingMetricName { series: usize },
    #[error("series {series} has a label with an empty name")]
    EmptyLabelName { series: usize },
    #[error("series {series} has the label {name:?} more than once")]
    DuplicateLabelName { series: usize, name: String },
    #[error("series {series} has {labels} labels, more than the {limit} allowed")]
    TooManyLabels {
        series: usize,
        labels: usize,
        limit: usize,
    },
    #[error("series {series} has a label {name:?} longer than {limit} bytes (name and value)")]
    LabelTooLong {
        series: usize,
        name: String,
        limit: usize,
    },
    #[error(
        "the series this request would add to rule windows carry more than {limit} bytes of labels"
    )]
    KeptLabelsTooLarge { limit: usize },
    #[error("series {series} has a label that is not valid UTF-8")]
    InvalidUtf8 { series: usize },
    #[error("series {series} has an odd number of labels_refs ({len})")]
    OddLabelRefs { series: usize, len: usize },
    #[error("series {series} refers to symbol {index}, but the request has only {symbols} symbols")]
    SymbolOutOfRange {
        series: usize,
        index: u64,
        symbols: usize,
    },
    #[error(
        "series {series} has a sample at {timestamp_ms} ms, {ahead_ms} ms ahead of this receiver's clock (at most {limit_ms} ms allowed)"
    )]
    FutureSample {
        series: usize,
        timestamp_ms: i64,
        ahead_ms: i64,
        limit_ms: i64,
    },
}

impl IngestError {
    /// The metric label for `prophet_remote_write_requests_total`-style breakdowns and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType(_) | Self::UnsupportedProto(_) => "media_type",
            Self::UnsupportedEncoding(_) => "encoding",
            Self::TooLarge { .. } | Self::KeptLabelsTooLarge { .. } | Self::BodyTooLarge { .. } => {
                "too_large"
            }
            Self::Body(_) => "body",
            Self::FramedSnappy | Self::Snappy(_) => "snappy",
            Self::Protobuf(_) => "protobuf",
            Self::MissingMetricName { .. }
            | Self::EmptyLabelName { .. }
            | Self::DuplicateLabelName { .. }
            | Self::OddLabelRefs { .. }
            | Self::InvalidUtf8 { .. }
            | Self::TooManyLabels { .. }
            | Self::LabelTooLong { .. }
            | Self::SymbolOutOfRange { .. } => "labels",
            Self::FutureSample { .. } => "future_sample",
        }
    }
}
