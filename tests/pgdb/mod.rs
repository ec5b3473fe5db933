//! A throwaway PostgreSQL database on the machine's server (127.0.0.1:5432, trust auth, user
//! `postgres`), for end-to-end tests that run the gateway on PostgreSQL. Fails loudly when the
//! server does not answer: these tests never skip.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct PgDb {
    name: String,
}

impl PgDb {
    pub async fn create() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let name = format!(
            "adgate_e2e_{:016x}",
            nanos ^ (u64::from(std::process::id()) << 40)
        );
        let mut admin = sqlx::PgConnection::connect(ADMIN)
            .await
            .expect("PostgreSQL must answer on 127.0.0.1:5432 (user postgres, trust auth)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub async fn drop_db(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(ADMIN).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// Where a test's jobs are stored: a fresh SQLite file, or a throwaway PostgreSQL database.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(PgDb),
}

impl Backend {
    pub async fn new(postgres: bool) -> Self {
        if postgres {
            Self::Postgres(PgDb::create().await)
        } else {
            Self::Sqlite(tempfile::tempdir().unwrap())
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("adgate.db").display()),
            Self::Postgres(db) => db.url(),
        }
    }

    pub async fn finish(self) {
        if let Self::Postgres(db) = self {
            db.drop_db().await;
        }
    }
}
