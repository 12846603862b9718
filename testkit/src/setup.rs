//! What a module test runs on: a `Broker` (a nats-server of its own, a RabbitMQ vhost of its
//! own, or the in-memory adapter) and a runs `Store` (a SQLite file in a directory of its own
//! or a PostgreSQL database of its own), each cleaned up on drop.

use crate::{NatsServer, PostgresDatabase, RabbitVhost};

/// The broker of a test, kept alive with it.
pub enum Broker {
    /// A nats-server with JetStream on a free port.
    JetStream(NatsServer),
    /// A vhost of its own on the machine's RabbitMQ.
    RabbitMq(RabbitVhost),
    /// The in-memory adapter (the process's own).
    Memory,
}

impl Broker {
    /// A nats-server of the test's own.
    pub fn jetstream() -> Self {
        Broker::JetStream(NatsServer::start())
    }

    /// A RabbitMQ vhost of the test's own.
    pub fn rabbitmq() -> Self {
        Broker::RabbitMq(RabbitVhost::create())
    }

    /// The `adapter:` section's body (class and config) for a config indented by 8.
    pub fn adapter_yaml(&self) -> String {
        match self {
            Broker::JetStream(server) => format!(
                "class: modules::queue::JetStreamAdapter\n        config: {{ url: \"{}\" }}",
                server.url()
            ),
            Broker::RabbitMq(vhost) => format!(
                "class: modules::queue::RabbitMQAdapter\n        config: {{ url: \"{}\" }}",
                vhost.url()
            ),
            Broker::Memory => "class: modules::queue::BuiltinQueueAdapter".to_owned(),
        }
    }
}

/// The runs store of a test, kept alive with it.
pub enum Store {
    /// A SQLite file in this directory (removed on drop).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database of the test's own.
    Postgres(PostgresDatabase),
}

impl Store {
    /// A SQLite file in a new temporary directory.
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("topiq-runs-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Store::Sqlite(dir)
    }

    /// A new PostgreSQL database.
    pub fn postgres() -> Self {
        Store::Postgres(PostgresDatabase::create())
    }

    /// The `runs.store` address.
    pub fn url(&self) -> String {
        match self {
            Store::Sqlite(dir) => format!("sqlite://{}/runs.db", dir.display()),
            Store::Postgres(database) => database.url(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Store::Sqlite(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
