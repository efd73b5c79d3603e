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
    let crc = checksum(len_bytes, &out[start + FRAME_HEADER_BYTES..]);
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
    let crc = checksum([rest[0], rest[1], rest[2], rest[3]], payload);
    let next = offset + FRAME_HEADER_BYTES + len;
    if crc != stored_crc {
        return Frame::Bad {
            reason: format!("checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"),
            next: Some(next),
        };
    }
    Frame::Valid { payload, next }
}

/// Payloads up to this many bytes are checksummed by [`checksum`]'s own loop; longer ones by
/// the `crc32c` crate, whose three-way interleaving pays once a buffer is a few hundred
/// bytes long.
const SHORT_PAYLOAD_BYTES: usize = 256;

/// The frame's CRC-32C: of the length bytes, then of the payload, as one checksum of both.
///
/// Why not just the `crc32c` crate: most records are under 100 bytes, and for those its
/// per-call work (aligning the buffer byte by byte, setting up its interleaved passes) was
/// most of the cost, twice a frame (the length and the payload): ~230 instructions a record
/// in replay, 12% of all. Here a short frame is eight bytes a step from the start, the
/// length folded in as one 4-byte step. Same polynomial, same value (a unit test checks it
/// against the crate); CPUs without SSE 4.2 and long payloads go to the crate.
pub fn checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if payload.len() <= SHORT_PAYLOAD_BYTES && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { checksum_short_sse42(len_bytes, payload) };
    }
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn checksum_short_sse42(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    // CRC-32C starts from all ones and ends inverted; the instruction takes a word's bytes
    // in little-endian order, as if fed one by one.
    let mut crc = u64::from(_mm_crc32_u32(!0, u32::from_le_bytes(len_bytes)));
    let mut words = payload.chunks_exact(8);
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks_exact gives 8 bytes");
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(word));
    }
    let mut crc = crc as u32;
    for &byte in words.remainder() {
        crc = _mm_crc32_u8(crc, byte);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_the_crate(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
    }

    /// Every length around the word size and the short limit, then payloads of any bytes:
    /// the frame checksum is the crate's CRC-32C of the length bytes and the payload.
    #[test]
    fn checksum_is_the_crc32c_of_length_then_payload() {
        let bytes: Vec<u8> = (0..=SHORT_PAYLOAD_BYTES as u32 + 40)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..bytes.len() {
            let len_bytes = (len as u32).to_le_bytes();
            assert_eq!(
                checksum(len_bytes, &bytes[..len]),
                by_the_crate(len_bytes, &bytes[..len]),
                "payload of {len} bytes"
            );
            // Misaligned starts too.
            assert_eq!(
                checksum(len_bytes, &bytes[len % 8..len]),
                by_the_crate(len_bytes, &bytes[len % 8..len])
            );
        }
        // The standard check value of CRC-32C ("123456789" → e3069283), its first four bytes
        // taken as the length.
        let check = b"123456789";
        assert_eq!(checksum(*b"1234", &check[4..]), 0xe306_9283);
    }

    proptest! {
        #[test]
        fn checksum_agrees_with_the_crate(len_bytes: [u8; 4], payload in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(checksum(len_bytes, &payload), by_the_crate(len_bytes, &payload));
        }
    }
}
