//! Content negotiation: which remote-write protocol a request speaks, from its
//! `Content-Type` and `Content-Encoding` headers, following the 1.0 and 2.0 specs.

use super::IngestError;

/// The remote-write protocol of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

impl Protocol {
    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1.0",
            Self::V2 => "2.0",
        }
    }
}

/// Decides the protocol. A missing `Content-Type` is taken as 1.0, as the 1.0 spec's
/// senders predate the header; a missing `Content-Encoding` as snappy, which is the only
/// encoding either spec allows.
pub fn negotiate(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<Protocol, IngestError> {
    if let Some(encoding) = content_encoding
        && !encoding.trim().eq_ignore_ascii_case("snappy")
    {
        return Err(IngestError::UnsupportedEncoding(encoding.to_owned()));
    }
    let Some(content_type) = content_type else {
        return Ok(Protocol::V1);
    };
    let mut parts = content_type.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(IngestError::UnsupportedMediaType(content_type.to_owned()));
    }
    let mut protocol = Protocol::V1;
    for param in parts {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        protocol = match value.trim().trim_matches('"') {
            "prometheus.WriteRequest" => Protocol::V1,
            "io.prometheus.write.v2.Request" => Protocol::V2,
            other => return Err(IngestError::UnsupportedProto(other.to_owned())),
        };
    }
    Ok(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_protocol_from_the_proto_parameter() {
        assert_eq!(negotiate(None, None), Ok(Protocol::V1));
        assert_eq!(
            negotiate(Some("application/x-protobuf"), Some("snappy")),
            Ok(Protocol::V1)
        );
        assert_eq!(
            negotiate(
                Some("application/x-protobuf;proto=prometheus.WriteRequest"),
                Some("snappy")
            ),
            Ok(Protocol::V1)
        );
        assert_eq!(
            negotiate(
                Some("application/x-protobuf; proto=io.prometheus.write.v2.Request"),
                None
            ),
            Ok(Protocol::V2)
        );
    }

    #[test]
    fn refuses_other_media_types_protos_and_encodings() {
        assert!(matches!(
            negotiate(Some("application/json"), None),
            Err(IngestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            negotiate(Some("application/x-protobuf;proto=foo.Bar"), None),
            Err(IngestError::UnsupportedProto(_))
        ));
        assert!(matches!(
            negotiate(Some("application/x-protobuf"), Some("gzip")),
            Err(IngestError::UnsupportedEncoding(_))
        ));
    }
}
