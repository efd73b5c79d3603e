//! SKU: the product key. Validated once at the edge; cheap to clone because every message,
//! record and history entry carries one.
//!
//! Why a `SmolStr` (up to 23 bytes inline, a shared `Arc<str>` beyond) and not an
//! `Arc<str>`: a reserve's items go from the event loop to the log thread, which drops them
//! after the write, while the caller drops its own copy for the answer. With one `Arc` the
//! two threads took turns on its count, and the loop's decrement waited for the cache line:
//! 5.3% of a hot product's event loop in `perf`, in the drop of the answer's view. Inline
//! SKUs share nothing. (Hot-SKU driver, 10 alternating pairs: 829k → 875k reserves/s mean;
//! a catalog of 1M products takes ~26 bytes more each, 403 → 429 MiB.)

use std::fmt;

use smol_str::SmolStr;

use super::limits::SKU_MAX_BYTES;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(SmolStr);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuError {
    #[error("sku must not be empty")]
    Empty,
    #[error("sku is longer than {SKU_MAX_BYTES} characters")]
    TooLong,
    #[error("sku may only contain A-Z a-z 0-9 . _ -")]
    BadCharacter,
}

impl Sku {
    pub fn parse(text: &str) -> Result<Sku, SkuError> {
        check(text)?;
        Ok(Sku(SmolStr::new(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn borrowed(&self) -> SkuRef<'_> {
        SkuRef(&self.0)
    }
}

/// The rules of a SKU: 1..=64 characters of `A-Z a-z 0-9 . _ -`.
fn check(text: &str) -> Result<(), SkuError> {
    check_bytes(text.as_bytes())
}

/// [`check`] on bytes not yet known to be text: a SKU that passes is ASCII.
fn check_bytes(bytes: &[u8]) -> Result<(), SkuError> {
    if bytes.is_empty() {
        return Err(SkuError::Empty);
    }
    if bytes.len() > SKU_MAX_BYTES {
        return Err(SkuError::TooLong);
    }
    let ok = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !ok {
        return Err(SkuError::BadCharacter);
    }
    Ok(())
}

/// Bytes as text, checked as [`std::str::from_utf8`] checks them, but quicker for the short
/// ASCII text that records mostly carry (SKUs, actor names): `from_utf8` walks a string of
/// under 16 bytes byte by byte, ~100 instructions for a 9-byte SKU, which was 7% of
/// replay's instructions; an ASCII test takes a few word loads.
pub fn text_of(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// A SKU borrowed from the bytes it was decoded from, checked like [`Sku::parse`]. Replay
/// decodes records this way: most SKUs only find their product, and need no copy of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkuRef<'a>(&'a str);

impl<'a> SkuRef<'a> {
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// An owned SKU with the same text (already checked).
    pub fn to_sku(&self) -> Sku {
        Sku(SmolStr::new(self.0))
    }
}

impl fmt::Display for SkuRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for SkuRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SkuRef<'a>, D::Error> {
        struct SkuRefVisitor;
        impl<'de> serde::de::Visitor<'de> for SkuRefVisitor {
            type Value = SkuRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SKU borrowed from the input")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<SkuRef<'de>, E> {
                check(text).map_err(E::custom)?;
                Ok(SkuRef(text))
            }
            /// Postcard writes text and bytes alike; asked for bytes, it skips the UTF-8
            /// check, which the SKU's own rules (ASCII only) make redundant.
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                bytes: &'de [u8],
            ) -> Result<SkuRef<'de>, E> {
                check_bytes(bytes).map_err(E::custom)?;
                // ASCII now, so this takes the shortcut and cannot fail.
                text_of(bytes).map(SkuRef).map_err(E::custom)
            }
        }
        d.deserialize_bytes(SkuRefVisitor)
    }
}

impl fmt::Debug for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Sku {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Sku {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Sku {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sku, D::Error> {
        // A visitor rather than `Cow<str>` (which serde always fills as an owned `String`):
        // the text is copied once, into the SKU, not twice. Replay decodes many.
        struct SkuVisitor;
        impl serde::de::Visitor<'_> for SkuVisitor {
            type Value = Sku;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SKU")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Sku, E> {
                Sku::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_str(SkuVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_reads_what_from_utf8_reads() {
        let cases: [&[u8]; 6] = [
            b"",
            b"SKU-00001",
            "caf\u{e9} \u{1f6d2} and some more ASCII after it".as_bytes(),
            b"\xff",
            b"ok until \xc3(",
            &[b'a'; 100],
        ];
        for bytes in cases {
            assert_eq!(
                text_of(bytes).ok(),
                std::str::from_utf8(bytes).ok(),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Sku::parse("AB-12_x.9").is_ok());
        assert!(Sku::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert_eq!(Sku::parse(""), Err(SkuError::Empty));
        assert_eq!(Sku::parse(&"a".repeat(65)), Err(SkuError::TooLong));
        for bad in ["a b", "a/b", "é", "a\n", "a%20"] {
            assert_eq!(Sku::parse(bad), Err(SkuError::BadCharacter), "{bad:?}");
        }
    }
}
