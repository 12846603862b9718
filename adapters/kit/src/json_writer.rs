//! A `serde_json::Value` written as JSON text, byte for byte what `serde_json::to_vec` writes,
//! with its arrays and objects counted as it goes.
//!
//! Written here rather than through `serde_json`'s serializer because a message's data is
//! mostly short strings, and `serde_json` checks each of their bytes against a table and
//! reaches each value through serde's layers (the map's entries, the depth count's wrapper).
//! This writer checks eight bytes at a time (a string without anything to escape is copied
//! whole) and walks the value itself: 4,118 → 3,450 instructions for the benchmarks'
//! 200-byte message written alone, and fewer still against the counted serializer it
//! replaces. A string shorter than eight bytes (most keys) is checked as one word too:
//! 1,604 → 1,415 instructions a message for its fifteen strings. Numbers are still written
//! by `serde_json`, so they read exactly as it writes them.

use serde_json::Value;

/// Why a value was not written.
#[derive(Debug)]
pub(crate) enum Unwritten {
    /// Its arrays and objects nest deeper than the writer was allowed to go.
    TooDeep,
    /// `serde_json` did not write one of its numbers (it writes every finite one).
    Number(serde_json::Error),
}

/// Appends `value` to `out` as JSON; arrays and objects nested deeper than `levels` are
/// refused (what was written of them stays in `out`).
pub(crate) fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    levels: usize,
) -> Result<(), Unwritten> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            serde_json::to_writer(&mut *out, number).map_err(Unwritten::Number)?
        }
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            let inner = levels.checked_sub(1).ok_or(Unwritten::TooDeep)?;
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value(out, item, inner)?;
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            let inner = levels.checked_sub(1).ok_or(Unwritten::TooDeep)?;
            out.push(b'{');
            for (index, (key, item)) in fields.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item, inner)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A string, quoted and escaped as `serde_json` escapes it: `"` and `\`, and every control
/// character (the usual five by their letter, the others as `\u00XX`).
fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if any_to_escape(bytes) {
        write_escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// Whether any byte of `bytes` must be escaped, eight at a time.
fn any_to_escape(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return word_to_escape(short_word(bytes));
    }
    let mut chunks = bytes.chunks_exact(8);
    if chunks.by_ref().any(|chunk| word_to_escape(word_of(chunk))) {
        return true;
    }
    // The last few bytes: the string's last eight, overlapping the chunks before them (a
    // copy of the few into a padded word would be a call to `memcpy`).
    !chunks.remainder().is_empty() && word_to_escape(word_of(&bytes[bytes.len() - 8..]))
}

/// Every byte of `bytes` (fewer than eight) in one word, some more than once, the rest of
/// the word filled with a byte that needs no escaping: one check for a short string (most
/// keys are), where a loop took some nine instructions a byte.
fn short_word(bytes: &[u8]) -> u64 {
    const FILL: u64 = u64::from_le_bytes([b'a'; 8]);
    let len = bytes.len();
    match len {
        // Its first four and its last four, overlapping.
        4.. => u64::from(half_word_of(bytes)) | u64::from(half_word_of(&bytes[len - 4..])) << 32,
        // Its first, middle and last (the same byte more than once when shorter than three).
        1.. => {
            let [first, middle, last] = [bytes[0], bytes[len / 2], bytes[len - 1]].map(u64::from);
            first | middle << 8 | last << 16 | FILL << 24
        }
        0 => FILL,
    }
}

/// The first four bytes of `bytes` as a half word.
fn half_word_of(bytes: &[u8]) -> u32 {
    let mut half = [0; 4];
    half.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(half)
}

/// Eight bytes as a word.
fn word_of(chunk: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Whether any of the eight bytes of `word` is below 0x20, `"` or `\` (bytes of 0x80 and
/// above, the rest of a UTF-8 character, never match).
fn word_to_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte is below `n` (n ≤ 0x80; bytes of 0x80 and above never count).
    let below = |word: u64, n: u64| word.wrapping_sub(n * ONES) & !word & HIGHS;
    let control = below(word, 0x20);
    let quote = below(word ^ (u64::from(b'"') * ONES), 1);
    let backslash = below(word ^ (u64::from(b'\\') * ONES), 1);
    control | quote | backslash != 0
}

/// `bytes`, with each byte that must be escaped written escaped.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut copied = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied..at]);
        if short.is_empty() {
            let hex = |nibble: u8| HEX[usize::from(nibble)];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(byte >> 4), hex(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        copied = at + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn written(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, value, 128).unwrap();
        out
    }

    #[test]
    fn every_byte_that_needs_escaping_is_escaped_as_serde_json_escapes_it_at_any_position() {
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '\u{7f}', 'ü', '€', '😀', '/'])
            .collect();
        for special in &specials {
            // Each at positions 0 to 17, followed by 0 to 9 bytes: every position of every string
            // of up to ten characters (those under eight bytes are checked as one word).
            for before in 0..18 {
                for after in 0..10 {
                    let text = format!("{}{special}{}", "a".repeat(before), "b".repeat(after));
                    let value = Value::String(text.clone());
                    assert_eq!(
                        written(&value),
                        serde_json::to_vec(&value).unwrap(),
                        "{text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn strings_with_several_bytes_to_escape_are_written_as_serde_json_writes_them() {
        for repeat in 1..6 {
            let text = "a\"b\\c\u{1}ü\n\u{1f}".repeat(repeat);
            for cut in 0..text.len() {
                let Some(prefix) = text.get(..cut) else {
                    continue;
                };
                let value = Value::String(prefix.to_owned());
                assert_eq!(
                    written(&value),
                    serde_json::to_vec(&value).unwrap(),
                    "{prefix:?}"
                );
            }
        }
    }

    #[test]
    fn values_of_every_kind_are_written_as_serde_json_writes_them() {
        let value = json!({
            "": [null, true, false, 0, -1, u64::MAX, i64::MIN, 1.5, -2.25e-300, 1e300, 0.1],
            "nested": {"a\"b": {"c": [[], {}, [{}]]}, "ü\n": "\"q\"\t\u{1}"},
            "long": "x".repeat(100),
        });
        assert_eq!(written(&value), serde_json::to_vec(&value).unwrap());
    }

    #[test]
    fn arrays_and_objects_deeper_than_the_levels_are_refused() {
        let nested = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!([inner]));
        let mut out = Vec::new();
        assert!(write_value(&mut out, &nested(3), 3).is_ok());
        assert!(write_value(&mut out, &nested(4), 3).is_err());
        assert!(write_value(&mut out, &json!({"a": {"b": {"c": {}}}}), 3).is_err());
        assert!(write_value(&mut out, &json!("plain"), 0).is_ok());
    }
}
