//! The conformance suite on `BuiltinQueueAdapter`.

use topiq_memory::BuiltinQueueAdapter;

topiq_adapter::conformance_tests!(async { BuiltinQueueAdapter::new() });
