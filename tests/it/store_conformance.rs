//! The store conformance suite (`support/conformance.rs`) over every store
//! the crate ships: the memory store, SQLite files reopened for restarts,
//! and PostgreSQL databases reconnected for restarts (feature `postgres`,
//! with a server named by `GRANTWHEEL_PG_URL`).

use crate::conformance::{run_all, Harness};
use grantwheel::store::MemoryStore;

struct Memory;

impl Harness for Memory {
    type S = MemoryStore;
    fn fresh(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        // A clone shares the state, as a restart over the same data would.
        let again = store.clone();
        drop(store);
        again
    }
}

#[test]
fn the_memory_store_conforms() {
    run_all(&mut Memory);
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use grantwheel::store::SqliteStore;

    struct Sqlite {
        dir: tempfile::TempDir,
        files: usize,
    }

    impl Harness for Sqlite {
        type S = SqliteStore;
        fn fresh(&mut self) -> SqliteStore {
            self.files += 1;
            SqliteStore::open(self.dir.path().join(format!("{}.db", self.files))).unwrap()
        }
        fn reopen(&mut self, store: SqliteStore) -> SqliteStore {
            let path = store.path().to_path_buf();
            drop(store);
            SqliteStore::open(path).unwrap()
        }
    }

    #[test]
    fn the_sqlite_store_conforms() {
        run_all(&mut Sqlite {
            dir: tempfile::tempdir().unwrap(),
            files: 0,
        });
    }
}

#[cfg(feature = "postgres")]
mod postgres_store {
    use super::*;
    use crate::pg;
    use grantwheel::store::PostgresStore;

    struct Postgres {
        server: String,
    }

    impl Harness for Postgres {
        type S = PostgresStore;
        fn fresh(&mut self) -> PostgresStore {
            let url = pg::fresh_database(&self.server);
            PostgresStore::connect(&url).unwrap()
        }
        fn reopen(&mut self, store: PostgresStore) -> PostgresStore {
            let url = store.url().to_string();
            drop(store);
            PostgresStore::connect(&url).unwrap()
        }
    }

    #[test]
    fn the_postgres_store_conforms() {
        let Some(server) = pg::url("the_postgres_store_conforms") else {
            return;
        };
        run_all(&mut Postgres { server });
    }
}
