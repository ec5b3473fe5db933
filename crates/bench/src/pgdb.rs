//! A PostgreSQL database of its own for one scenario (the machine's server on 127.0.0.1:5432,
//! user `postgres`), created fresh and dropped at the end; shared by `replicas` and `pgbench`.

use sqlx::Connection;

use crate::Res;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one scenario, dropped at the end.
pub(crate) struct PgDb {
    name: String,
}

impl PgDb {
    pub(crate) async fn create(tag: &str) -> Res<Self> {
        let name = format!("adgate_bench_{tag}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(ADMIN_URL)
            .await
            .map_err(|e| format!("PostgreSQL on 127.0.0.1:5432 is needed: {e}"))?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        Ok(Self { name })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub(crate) async fn drop_db(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(ADMIN_URL).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}
