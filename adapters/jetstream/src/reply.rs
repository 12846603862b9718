//! What the server says of a delivery in its `$JS.ACK` reply subject, read without
//! allocating: only the three fields topiq uses, on every delivery (async-nats's
//! `Message::info` reads all of them, its timestamp as an `i128`, and converts it to a date).

use topiq_adapter::Timestamp;

/// A delivery's count, stream sequence and stored time, from its reply subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckReply {
    /// How many times the server delivered the message (1 on the first delivery).
    pub(crate) delivered: u64,
    /// The message's sequence in its stream.
    pub(crate) stream_sequence: u64,
    /// When the stream stored it.
    pub(crate) stored_at: Timestamp,
}

/// The reply subjects' prefix.
const PREFIX: &str = "$JS.ACK.";

impl AckReply {
    /// Reads `reply`, in either form ADR-15 defines: `<stream>.<consumer>.<delivered>.
    /// <stream seq>.<consumer seq>.<nanos>.<pending>` after the prefix, or the same fields after
    /// `<domain>.<account hash>.` (with any tokens after them); `None` for anything else.
    pub(crate) fn parse(reply: &str) -> Option<Self> {
        let fields = reply.strip_prefix(PREFIX)?.as_bytes();
        // Where each of the first ten tokens starts (a token ends a byte before the next one
        // starts), and how many there are: one byte loop, no searcher per token.
        let mut starts = [0; 10];
        let mut count = 1;
        for (at, byte) in fields.iter().enumerate() {
            if *byte == b'.' {
                if count < starts.len() {
                    starts[count] = at + 1;
                }
                count += 1;
            }
        }
        // The stream's name comes first in the short form, after the domain and the account
        // hash in the long one; the fields read are never the last token.
        let first = match count {
            7 => 0,
            9.. => 2,
            _ => return None,
        };
        let number = |index: usize| {
            let (start, next) = (starts[first + index], starts[first + index + 1]);
            parse_decimal(&fields[start..next - 1])
        };
        let nanos = number(5)?;
        Some(Self {
            delivered: number(2)?,
            stream_sequence: number(3)?,
            stored_at: Timestamp::from_nanosecond(i128::from(nanos)).ok()?,
        })
    }
}

/// A token of ASCII digits as a `u64`; `None` when empty, not all digits, or too large.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: u64 = 1_764_990_000_123_456_789;

    fn stored() -> Timestamp {
        Timestamp::from_nanosecond(i128::from(STORED)).unwrap()
    }

    #[test]
    fn reads_the_short_form() {
        let reply = format!("$JS.ACK.tq_orders.t_send.3.1042.77.{STORED}.12");
        assert_eq!(
            AckReply::parse(&reply),
            Some(AckReply {
                delivered: 3,
                stream_sequence: 1042,
                stored_at: stored(),
            })
        );
    }

    #[test]
    fn reads_the_long_form_with_domain_hash_and_a_trailing_token() {
        for reply in [
            format!("$JS.ACK.hub.ACCHASH.tq_orders.t_send.1.9.9.{STORED}.0"),
            format!("$JS.ACK._.ACCHASH.tq_orders.t_send.1.9.9.{STORED}.0.rand0m"),
        ] {
            assert_eq!(
                AckReply::parse(&reply),
                Some(AckReply {
                    delivered: 1,
                    stream_sequence: 9,
                    stored_at: stored(),
                }),
                "{reply}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_an_ack_reply() {
        for reply in [
            "_INBOX.abc.def",
            "$JS.ACK.tq_orders.t_send.3.1042.77",
            "$JS.ACK.tq_orders.t_send.3.1042.77.1.2.3",
            "$JS.ACK.tq_orders.t_send.three.1042.77.1.12",
            "$JS.ACK.tq_orders.t_send.3.-1.77.1.12",
            "$JS.ACK.tq_orders.t_send..1042.77.1.12",
            "$JS.ACK.tq_orders.t_send.3.1042.77.99999999999999999999.12",
        ] {
            assert_eq!(AckReply::parse(reply), None, "{reply}");
        }
    }
}
