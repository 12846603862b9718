//! The runs conformance suite on the three stores: memory, SQLite (a temporary file) and
//! PostgreSQL (a database of its own on the machine's server, dropped at the end).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sqlx::Connection;
use topiq_runs::{MemoryStore, SharedStore, SqlStore, conformance};

/// The machine's PostgreSQL (trust auth on loopback); `TOPIQ_TEST_POSTGRES` overrides it.
fn postgres_server() -> String {
    std::env::var("TOPIQ_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A database created for one test, dropped with the guard.
struct PostgresDatabase {
    name: String,
}

impl PostgresDatabase {
    async fn create() -> Self {
        let name = format!("topiq_runs_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server()))
            .await
            .expect("PostgreSQL answers on 127.0.0.1:5432 (deploy/local/ensure-brokers starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        Self { name }
    }

    fn url(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }

    async fn drop_now(self) {
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server()))
            .await
            .expect("connect");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .expect("drop the test database");
    }
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    conformance::run_all([Arc::clone(&store), store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_suite() {
    let dir = std::env::temp_dir().join(format!("topiq-runs-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/runs.db", dir.display());
    let first: SharedStore = Arc::new(SqlStore::open(&url).await.expect("open"));
    let second: SharedStore = Arc::new(SqlStore::open(&url).await.expect("open again"));
    conformance::run_all([first, second]).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_suite() {
    let database = PostgresDatabase::create().await;
    let first = SqlStore::open(&database.url()).await.expect("open");
    let second = SqlStore::open(&database.url()).await.expect("open again");
    conformance::run_all([Arc::new(first.clone()), Arc::new(second.clone())]).await;
    first.close().await;
    second.close().await;
    database.drop_now().await;
}

#[tokio::test]
async fn a_bad_store_address_is_named() {
    for address in ["mysql://x", "runs.db"] {
        let err = topiq_runs::open(address).await.err().expect("refused");
        assert!(err.to_string().contains("runs.store"), "{err}");
    }
    let err = topiq_runs::open("postgres://nobody:s3cret@127.0.0.1:1/none")
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}
