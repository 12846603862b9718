//! The W3C `traceparent` header (Trace Context level 1), read and written directly: every
//! message carries one, and OpenTelemetry's propagators go through carrier maps of owned
//! strings (a hash map, lower-cased names and formatted ids: about 5,000 instructions a
//! message each way, see docs/benchmarks.md).

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Its length in version `00`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
const LENGTH: usize = 55;

/// The highest version a reader accepts (`ff` is invalid).
const MAX_VERSION: u8 = 0xfe;

/// The remote span context `header` names, or `None` when it names none: ids in lower-case
/// hex of their full length, neither all zeros; version `00` exactly as long as it defines,
/// a later version possibly followed by `-` and more. Of the flags only `sampled` is kept.
pub(crate) fn parse(header: &str) -> Option<SpanContext> {
    let bytes = header.trim().as_bytes();
    if bytes.len() < LENGTH || [bytes[2], bytes[35], bytes[52]] != [b'-'; 3] {
        return None;
    }
    let version = hex(&bytes[0..2])? as u8;
    let fits = match version {
        0 => bytes.len() == LENGTH,
        _ => bytes.len() == LENGTH || bytes[LENGTH] == b'-',
    };
    if version > MAX_VERSION || !fits {
        return None;
    }
    let trace_id = (u128::from(hex16(&bytes[3..19])?) << 64) | u128::from(hex16(&bytes[19..35])?);
    let span_id = hex16(&bytes[36..52])?;
    let flags = hex(&bytes[53..55])? as u8;
    let context = SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` of `context` (version `00`, the `sampled` flag only).
pub(crate) fn format(context: &SpanContext) -> String {
    let mut header = [b'-'; LENGTH];
    header[..2].copy_from_slice(b"00");
    write_hex(&mut header[3..35], &context.trace_id().to_bytes());
    write_hex(&mut header[36..52], &context.span_id().to_bytes());
    write_hex(
        &mut header[53..55],
        &[(context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Only ASCII was written: the check always passes.
    std::str::from_utf8(&header)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// What a byte is worth as a lower-case hex digit; [`NOT_HEX`] for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        values[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};

/// A byte that is no lower-case hex digit, in [`HEX_VALUES`].
const NOT_HEX: u8 = 0xff;

/// The number lower-case hex `digits` spell (at most 16 of them), `None` for anything else.
fn hex(digits: &[u8]) -> Option<u64> {
    let mut number = 0u64;
    for &digit in digits {
        let value = HEX_VALUES[usize::from(digit)];
        if value == NOT_HEX {
            return None;
        }
        number = (number << 4) | u64::from(value);
    }
    Some(number)
}

/// The number sixteen lower-case hex `digits` spell, `None` for anything else: eight digits
/// at a time, as one word (an id's 16 or 32 digits cost a few instructions a digit less than
/// [`hex`]'s table, on every traced message's delivery).
fn hex16(digits: &[u8]) -> Option<u64> {
    let ([high, low], []) = digits.as_chunks::<8>() else {
        return None;
    };
    Some((u64::from(hex8(high)?) << 32) | u64::from(hex8(low)?))
}

/// Eight lower-case hex digits' number, `None` for anything else.
fn hex8(digits: &[u8; 8]) -> Option<u32> {
    const fn each(byte: u8) -> u64 {
        u64::from_ne_bytes([byte; 8])
    }
    let word = u64::from_be_bytes(*digits);
    // Every byte below 0x80, so adding to a byte never carries into the next.
    if word & each(0x80) != 0 {
        return None;
    }
    // A byte's high bit: set when the byte is at least `low`; set when above `high`.
    let at_least = |low: u8| (word + each(0x80 - low)) & each(0x80);
    let above = |high: u8| (word + each(0x7f - high)) & each(0x80);
    let digit = at_least(b'0') & !above(b'9');
    let letter = at_least(b'a') & !above(b'f');
    if digit | letter != each(0x80) {
        return None;
    }
    // Each byte's value: its low four bits, plus nine for a letter (`a` is 0x61).
    let nibbles = (word & each(0x0f)) + (letter >> 7) * 9;
    // Pairs of nibbles into bytes, pairs of bytes into halves, then the two halves.
    let bytes = (nibbles | (nibbles >> 4)) & 0x00ff_00ff_00ff_00ff;
    let halves = (bytes | (bytes >> 8)) & 0x0000_ffff_0000_ffff;
    u32::try_from((halves | (halves >> 16)) & 0xffff_ffff).ok()
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

/// `bytes` in lower-case hex into `into`, two digits a byte.
fn write_hex(into: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in into.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    /// What OpenTelemetry's own propagator reads from `header`.
    fn by_propagator(header: &str) -> Option<SpanContext> {
        let carrier = HashMap::from([("traceparent".to_owned(), header.to_owned())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        let context = cx.span().span_context().clone();
        context.is_valid().then_some(context)
    }

    #[test]
    fn reads_what_the_propagator_reads_from_valid_headers() {
        for header in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-00000000000000000000000000000001-0000000000000001-01",
            "00-10000000000000000000000000000000-1000000000000000-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-later",
        ] {
            let ours = parse(header);
            assert!(ours.is_some(), "{header}");
            assert_eq!(ours, by_propagator(header), "{header}");
        }
    }

    #[test]
    fn refuses_what_w3c_refuses() {
        for header in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Shorter ids than the standard's (OpenTelemetry's propagator reads these).
            "00-4bf92f35-00f067aa-01",
            // Version 00 with anything after the flags.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        ] {
            assert_eq!(parse(header), None, "{header:?}");
        }
    }

    #[test]
    fn reads_sixteen_digits_as_one_at_a_time_does_with_any_byte_in_any_place() {
        // (OpenTelemetry's propagator is no oracle here: it reads `+` as a sign.)
        let valid = *b"4bf92f3577b34da6";
        for place in 0..valid.len() {
            for byte in 0..=u8::MAX {
                let mut digits = valid;
                digits[place] = byte;
                assert_eq!(hex16(&digits), hex(&digits), "{byte:#x} at {place}");
            }
        }
        assert_eq!(hex16(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex16(b"0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(hex16(b"0123456789abcde"), None);
    }

    #[test]
    fn reads_every_hex_digit_in_every_place_of_the_ids() {
        for digit in "0123456789abcdef".chars() {
            for place in 0..32 {
                let mut trace_id = vec!['1'; 32];
                trace_id[place] = digit;
                let trace_id: String = trace_id.into_iter().collect();
                let span_id: String = trace_id[..16].to_owned();
                let header = format!("00-{trace_id}-{span_id}-01");
                let context = parse(&header).unwrap();
                assert_eq!(context.trace_id().to_string(), trace_id);
                assert_eq!(context.span_id().to_string(), span_id);
            }
        }
    }

    #[test]
    fn keeps_only_the_sampled_flag() {
        let sampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert_eq!(sampled.trace_flags(), TraceFlags::SAMPLED);
        let not = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08").unwrap();
        assert_eq!(not.trace_flags(), TraceFlags::default());
        assert!(not.is_remote());
    }

    #[test]
    fn writes_what_the_propagator_writes() {
        for header in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-0000000000000000000000000000000a-000000000000000b-00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
        ] {
            let context = parse(header).unwrap();
            let cx = opentelemetry::Context::new().with_remote_span_context(context.clone());
            let mut carrier: HashMap<String, String> = HashMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut carrier);
            assert_eq!(Some(&format(&context)), carrier.get("traceparent"));
        }
    }
}
