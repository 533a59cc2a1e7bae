//! The store conformance suite (`support/conformance.rs`) over every store
//! the crate ships: the memory store, and SQLite files reopened for
//! restarts.

#[path = "support/common.rs"]
mod common;
#[path = "support/conformance.rs"]
mod conformance;

use conformance::{run_all, Harness};
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
