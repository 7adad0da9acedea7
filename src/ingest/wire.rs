//! Protobuf wire-format primitives over a borrowed buffer: varints, tags, length-delimited
//! fields and skipping. Just enough to walk remote-write messages without building them.

use super::IngestError;

pub const WIRE_VARINT: u8 = 0;
pub const WIRE_FIXED64: u8 = 1;
pub const WIRE_LEN: u8 = 2;
pub const WIRE_FIXED32: u8 = 5;

/// A cursor over one protobuf message's bytes.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn truncated(what: &str) -> IngestError {
    IngestError::Protobuf(format!("truncated {what}"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, IngestError> {
        // Single-byte varints (tags, short lengths) are nearly all of them: keep that path
        // inlined and the general loop out of line.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_multi_byte()
    }

    #[cold]
    #[inline(never)]
    fn varint_multi_byte(&mut self) -> Result<u64, IngestError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(truncated("varint"));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(IngestError::Protobuf("varint overflows 64 bits".into()));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(IngestError::Protobuf("varint longer than 10 bytes".into()))
    }

    /// Reads a field key, returning (field number, wire type).
    #[inline(always)]
    pub fn tag(&mut self) -> Result<(u32, u8), IngestError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(IngestError::Protobuf(format!(
                "invalid field number {field}"
            )));
        }
        Ok((field as u32, (key & 7) as u8))
    }

    #[inline(always)]
    pub fn bytes(&mut self) -> Result<&'a [u8], IngestError> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| truncated("length-delimited field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, IngestError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| truncated("fixed64 field"))?;
        self.pos += 8;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    /// Skips a field of the given wire type; groups (deprecated) are refused.
    pub fn skip(&mut self, wire: u8) -> Result<(), IngestError> {
        match wire {
            WIRE_VARINT => {
                self.varint()?;
            }
            WIRE_FIXED64 => {
                self.fixed64()?;
            }
            WIRE_LEN => {
                self.bytes()?;
            }
            WIRE_FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(truncated("fixed32 field"));
                }
                self.pos += 4;
            }
            other => {
                return Err(IngestError::Protobuf(format!(
                    "unsupported wire type {other}"
                )));
            }
        }
        Ok(())
    }
}

/// Fails with a clear message when a known field arrives with the wrong wire type.
#[inline]
pub fn expect_wire(field: &str, got: u8, want: u8) -> Result<(), IngestError> {
    if got == want {
        Ok(())
    } else {
        Err(IngestError::Protobuf(format!(
            "field {field} has wire type {got}, expected {want}"
        )))
    }
}
