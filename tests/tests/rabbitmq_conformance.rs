//! The conformance suite on `RabbitMqAdapter`, against the machine's RabbitMQ, each test in a
//! vhost of its own.

topiq_adapter::conformance_tests!(topiq_testkit::rabbitmq_adapter());
