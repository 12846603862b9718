//! A PostgreSQL database of the test's own on the machine's server (127.0.0.1:5432, trust
//! auth from loopback, as `deploy/local/ensure-brokers` sets it up), dropped on drop.

use std::process::Command;

/// The machine's PostgreSQL server; `TOPIQ_TEST_POSTGRES` overrides it.
pub fn postgres_server() -> String {
    std::env::var("TOPIQ_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh database, dropped (with its connections) when the guard drops.
pub struct PostgresDatabase {
    name: String,
}

impl PostgresDatabase {
    /// Creates `topiq_<random>`; panics, naming the fix, when the server does not answer.
    pub fn create() -> Self {
        let suffix: String = std::iter::repeat_with(fastrand::lowercase)
            .take(16)
            .collect();
        let name = format!("topiq_{suffix}");
        psql(&format!("CREATE DATABASE {name}"));
        Self { name }
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `sql` on the server's `postgres` database with `psql`.
fn psql(sql: &str) {
    let output = Command::new("psql")
        .arg(format!("{}/postgres", postgres_server()))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("psql runs (deploy/local/ensure-brokers installs PostgreSQL)");
    assert!(
        output.status.success(),
        "psql {sql:?} failed (is PostgreSQL running on 127.0.0.1:5432? deploy/local/ensure-brokers starts it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
