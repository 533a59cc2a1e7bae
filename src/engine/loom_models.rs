//! The group commit's pending bit under loom: no check on another thread
//! says yes to a share before its batch is written, or ever to a share
//! whose batch failed. Run with the index's models (`loom_models` as the
//! filter; see `index::loom_models`). Run against a broken variant (the
//! pending bit cleared before the batch is written), both failed.

use std::sync::Arc;

use loom::sync::atomic::AtomicBool;
use loom::thread;

use crate::ids::{Context, EntityId, Level, UserId};
use crate::model::grant::Expiry;
use crate::sync::Ordering;

fn pair(i: u128) -> (UserId, EntityId) {
    (UserId::from_u128(i + 1), EntityId::lead(7))
}

/// A store that says when a batch with a share is written, or refuses it.
struct Watched {
    inner: crate::store::MemoryStore,
    written: Arc<AtomicBool>,
    refuse: bool,
}

impl crate::store::Store for Watched {
    fn meta(&mut self) -> Result<crate::store::Meta, crate::store::StoreError> {
        self.inner.meta()
    }

    fn grants(
        &mut self,
        each: &mut dyn FnMut(crate::model::grant::Grant),
    ) -> Result<(), crate::store::StoreError> {
        self.inner.grants(each)
    }

    fn rules(
        &mut self,
    ) -> Result<
        Vec<(crate::model::history::RuleId, crate::model::rule::Rule)>,
        crate::store::StoreError,
    > {
        self.inner.rules()
    }

    fn apply(&mut self, batch: &crate::store::Batch<'_>) -> Result<(), crate::store::StoreError> {
        let shares = batch
            .changes
            .iter()
            .any(|c| matches!(c, crate::store::Change::Put(_)));
        if shares && self.refuse {
            return Err(crate::store::StoreError::Io("refused".into()));
        }
        self.inner.apply(batch)?;
        if shares {
            self.written.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn reader(
        &self,
    ) -> Result<std::sync::Arc<dyn crate::store::StoreReader>, crate::store::StoreError> {
        self.inner.reader()
    }
}

/// A share on one thread, a check on another, over a store that writes
/// (`refuse`: fails) the share's batch.
fn share_beside_a_check(refuse: bool) {
    loom::model(move || {
        let written = Arc::new(AtomicBool::new(false));
        let store = Watched {
            inner: crate::store::MemoryStore::new(),
            written: written.clone(),
            refuse,
        };
        let Ok(engine) = super::Engine::builder().store(store).build() else {
            panic!("the engine builds");
        };
        let (u, e) = pair(0);
        let (checker, seen_written) = (engine.clone(), written.clone());
        let check = thread::spawn(move || {
            let yes = checker.can_read(&u, &e);
            // A yes is only ever given for a share whose batch is written.
            assert!(
                !yes || seen_written.load(Ordering::Acquire),
                "seen before written"
            );
            assert!(!(yes && refuse), "seen although its batch failed");
        });
        let shared = engine.share(u, e, Context::Direct, Level::Read, Expiry::Default);
        assert_eq!(shared.is_ok(), !refuse);
        check.join().unwrap();
        assert_eq!(engine.can_read(&u, &e), !refuse);
    });
}

#[test]
fn no_check_sees_a_share_before_its_batch_is_written() {
    share_beside_a_check(false);
}

#[test]
fn no_check_sees_a_share_whose_batch_failed() {
    share_beside_a_check(true);
}
