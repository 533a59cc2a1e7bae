//! The state's invariants, checked: the model tests call
//! [`State::check_invariants`] after every step. The invariants are
//! listed, numbered, in `state.rs`, where the fields they bind are.

use crate::index::Locator;

use super::state::State;

#[cfg(any(test, feature = "testing"))]
impl State {
    /// Check INV-1 and INV-3 to INV-11 (INV-2 holds if these do: every
    /// handle reached is checked to name a record in use).
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        let mut due = 0usize;
        let mut reached = 0usize;
        let mut named: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut serials = std::collections::HashSet::new();
        for (loc, user, entity) in self.index.pairs() {
            let head = self.head(loc);
            let mut contexts = std::collections::HashSet::new();
            let mut count = 0usize;
            for g in self.grants.pair(head) {
                let rec = &self.grants[g];
                let at = || format!("pair ({user}, {entity}), grant {}", rec.serial());
                if !rec.used() {
                    return Err(format!("INV-2: {} is a free record", at()));
                }
                if Locator::from(rec.loc) != loc {
                    return Err(format!("INV-7: {} has a stale location", at()));
                }
                if !contexts.insert(rec.ctx()) {
                    return Err(format!("INV-6: {} repeats a context", at()));
                }
                if !serials.insert(rec.serial()) || rec.serial() >= self.next_serial {
                    return Err(format!("INV-8: {} repeats a serial or is too new", at()));
                }
                if self.group.is_none() && rec.pending() {
                    return Err(format!("INV-5: {} is pending outside a batch", at()));
                }
                if rec.bucket() == 0 {
                    return Err(format!("INV-3: {} has no timer", at()));
                }
                if rec.hidden() && self.start_of(rec).is_none() {
                    return Err(format!("INV-9: {} waits for no start", at()));
                }
                if rec.due() != (self.due.get(&rec.serial()) == Some(&g)) {
                    return Err(format!(
                        "INV-10: {} is due but not listed, or listed but not due",
                        at()
                    ));
                }
                if rec.due() {
                    due += 1;
                }
                if rec.ctx() != super::record::DIRECT {
                    *named.entry(rec.ctx()).or_default() += 1;
                }
                count += 1;
                if count > self.grants.held() {
                    return Err(format!("INV-1: the list of ({user}, {entity}) loops"));
                }
            }
            if count == 0 {
                return Err(format!("INV-1: ({user}, {entity}) has no grants"));
            }
            let stored = self.index.summary_at(loc);
            if stored != self.summary_of(head) {
                return Err(format!(
                    "INV-4: ({user}, {entity}) shows {stored:?}, its grants {:?}",
                    self.summary_of(head)
                ));
            }
            reached += count;
        }
        if reached != self.grants.held() {
            return Err(format!(
                "INV-1: {} records in use, {reached} in pair lists",
                self.grants.held()
            ));
        }
        if self.wheel.len() != self.grants.held() {
            return Err(format!(
                "INV-3: {} timers for {} records",
                self.wheel.len(),
                self.grants.held()
            ));
        }
        if named.len() != self.contexts.len()
            || named
                .iter()
                .any(|(n, refs)| self.contexts.refs(*n) != *refs)
        {
            return Err(format!(
                "INV-11: {} contexts named by records, {} interned, or counts differ",
                named.len(),
                self.contexts.len()
            ));
        }
        if due != self.due.len() {
            return Err(format!(
                "INV-10: {} listed as due, {due} due",
                self.due.len()
            ));
        }
        Ok(())
    }
}
