//! Framing: `[len: u32 LE][crc32c: u32 LE][payload; len]`, the CRC covering the length bytes
//! and the payload, so a torn or flipped length is caught as surely as a flipped payload byte.

use crate::domain::limits::RECORD_MAX_BYTES;

pub const FRAME_HEADER_BYTES: usize = 8;

/// Appends one framed record to `out`.
pub fn encode_record(record: &super::Record, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    super::record::encode_payload(record, out)?;
    let len = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        len <= RECORD_MAX_BYTES,
        "record of {len} bytes: request limits must keep records under {RECORD_MAX_BYTES}"
    );
    let len_bytes = (len as u32).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len_bytes);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len_bytes),
        &out[start + FRAME_HEADER_BYTES..],
    );
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What lies at an offset of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete frame whose checksum matches.
    Valid { payload: &'a [u8], next: usize },
    /// Nothing left.
    End,
    /// Only zero bytes remain (preallocated or never written).
    ZeroTail,
    /// The frame claims more bytes than remain: a write cut short.
    Incomplete,
    /// A complete frame whose checksum or length is wrong.
    Bad { reason: String, next: Option<usize> },
}

pub fn read_frame(bytes: &[u8], offset: usize) -> Frame<'_> {
    let rest = &bytes[offset..];
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_HEADER_BYTES {
        return if rest.iter().all(|b| *b == 0) {
            Frame::ZeroTail
        } else {
            Frame::Incomplete
        };
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let stored_crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 {
        return if rest.iter().all(|b| *b == 0) {
            Frame::ZeroTail
        } else {
            Frame::Bad {
                reason: "zero-length frame followed by data".into(),
                next: None,
            }
        };
    }
    if len > RECORD_MAX_BYTES {
        return Frame::Bad {
            reason: format!("frame length {len} exceeds the record limit {RECORD_MAX_BYTES}"),
            next: None,
        };
    }
    if rest.len() < FRAME_HEADER_BYTES + len {
        return Frame::Incomplete;
    }
    let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rest[0..4]), payload);
    let next = offset + FRAME_HEADER_BYTES + len;
    if crc != stored_crc {
        return Frame::Bad {
            reason: format!("checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"),
            next: Some(next),
        };
    }
    Frame::Valid { payload, next }
}
