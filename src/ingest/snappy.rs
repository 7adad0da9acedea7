//! Snappy block decompression with the decoded-size limit checked before allocation.

use super::IngestError;

/// The stream identifier chunk that opens every *framed* snappy stream. Remote-write uses
/// the block format; a framed body would otherwise fail with a confusing block error.
const FRAMED_STREAM_MAGIC: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// A decompression buffer reused across requests. It only ever grows, so that it is
/// zero-filled once per size rather than on every request; what one request decoded is
/// only reachable through the slice [`SnappyBuffer::decompress`] returns.
#[derive(Debug, Default)]
pub struct SnappyBuffer {
    bytes: Vec<u8>,
}

impl SnappyBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes held, for callers that cap what a buffer may keep between requests.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Decompresses a snappy block and returns the decoded bytes. The length the block's
    /// header declares is checked against `limit` before the buffer grows, so a small
    /// "bomb" cannot make Prophet allocate its declared size.
    pub fn decompress(&mut self, body: &[u8], limit: usize) -> Result<&[u8], IngestError> {
        if body.starts_with(FRAMED_STREAM_MAGIC) {
            return Err(IngestError::FramedSnappy);
        }
        // The header is read here rather than by `snap::raw::decompress_len`, so that any
        // declared size above the limit, even beyond snappy's own 4 GiB cap, is answered
        // the same way.
        let declared = declared_len(body)?;
        if declared > limit {
            return Err(IngestError::TooLarge { declared, limit });
        }
        // No snappy element expands more than 64/3 times (a 3-byte copy of 64 bytes): a
        // header promising more than that of the body is corrupt, and is refused before
        // the buffer grows for it.
        if declared > body.len().saturating_mul(22).saturating_add(32) {
            return Err(IngestError::Snappy(format!(
                "the header declares {declared} bytes, more than {} compressed bytes can hold",
                body.len()
            )));
        }
        if self.bytes.len() < declared {
            self.bytes.resize(declared, 0);
        }
        let written = snap::raw::Decoder::new()
            .decompress(body, &mut self.bytes[..declared])
            .map_err(|e| IngestError::Snappy(e.to_string()))?;
        Ok(&self.bytes[..written])
    }
}

/// The decoded length a snappy block declares: its leading varint.
fn declared_len(body: &[u8]) -> Result<usize, IngestError> {
    let mut declared: u64 = 0;
    for (i, &byte) in body.iter().take(10).enumerate() {
        declared |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(usize::try_from(declared).unwrap_or(usize::MAX));
        }
    }
    Err(IngestError::Snappy(
        "missing or overlong length header".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reuses_the_buffer() {
        let data = b"hello hello hello hello".repeat(10);
        let body = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut buffer = SnappyBuffer::new();
        assert_eq!(buffer.decompress(&body, 1 << 20).unwrap(), data);
        // A shorter body decodes into the same, larger buffer.
        let short = snap::raw::Encoder::new().compress_vec(b"abc").unwrap();
        assert_eq!(buffer.decompress(&short, 1 << 20).unwrap(), b"abc");
    }

    #[test]
    fn refuses_a_declared_size_above_the_limit_before_allocating() {
        // A header declaring 1 GiB followed by nothing.
        let mut body = Vec::new();
        let mut n: u64 = 1 << 30;
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        let mut buffer = SnappyBuffer::new();
        let err = buffer.decompress(&body, 32 << 20).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge { declared, .. } if declared == 1 << 30));
        assert_eq!(buffer.capacity(), 0);
    }

    #[test]
    fn tells_framed_snappy_and_truncated_blocks_apart() {
        let framed = snap::write::FrameEncoder::new(Vec::new());
        let framed = {
            use std::io::Write;
            let mut w = framed;
            w.write_all(b"some data").unwrap();
            w.into_inner().unwrap()
        };
        let mut buffer = SnappyBuffer::new();
        assert_eq!(
            buffer.decompress(&framed, 1 << 20),
            Err(IngestError::FramedSnappy)
        );
        let body = snap::raw::Encoder::new()
            .compress_vec(&b"abcdefgh".repeat(100))
            .unwrap();
        assert!(matches!(
            buffer.decompress(&body[..body.len() / 2], 1 << 20),
            Err(IngestError::Snappy(_))
        ));
    }
}
