//! Cross-crate integration tests of topiq; the tests live in `tests/tests/`.
//!
//! Each adapter runs the one conformance suite of `topiq_adapter::conformance`
//! (`memory_conformance.rs` for the in-memory adapter; the JetStream and RabbitMQ adapters add
//! theirs beside it).
