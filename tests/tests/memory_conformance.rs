//! The conformance suite on `BuiltinQueueAdapter`.

use topiq_memory::BuiltinQueueAdapter;

topiq_adapter::conformance_tests!(async { BuiltinQueueAdapter::new() });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_their_way_to_a_dropped_consumer_go_to_the_next_at_once() {
    topiq_adapter::conformance::messages_on_their_way_to_a_dropped_consumer_go_to_the_next_at_once(
        BuiltinQueueAdapter::new(),
    )
    .await;
}
