//! Cross-crate integration tests of topiq: only tests (`tests/tests/`) and the broker
//! benchmarks (`tests/benches/`); what they share is in `topiq-testkit`.
