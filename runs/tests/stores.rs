//! The runs conformance suite on the three stores: memory, SQLite (a temporary file) and
//! PostgreSQL (a database of its own on the machine's server, dropped at the end).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use topiq_runs::{MemoryStore, SharedStore, SqlStore, conformance};
use topiq_testkit::PostgresDatabase;

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
    let database = PostgresDatabase::create();
    let first = SqlStore::open(&database.url()).await.expect("open");
    let second = SqlStore::open(&database.url()).await.expect("open again");
    conformance::run_all([Arc::new(first.clone()), Arc::new(second.clone())]).await;
    first.close().await;
    second.close().await;
    drop(database);
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
