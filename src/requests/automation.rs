//! Automation rules: share a record when something happens to it.
//!
//! A rule names a trigger (the record created or updated, an activity
//! posted or updated on it, a task created, completed or reminded), the kind
//! of record, optional conditions on the event's fields, and a share action:
//! with whom (a fixed user, the activity's owner or the task's owner), for
//! how long, at which level. Rules are drafts until published; only
//! published rules act. Rules read and write JSON through serde.
//!
//! The host feeds [`AutomationEvent`]s to [`Sharing::on_event`]; each
//! matching published rule submits a share request with source
//! `Automation { rule }`, keyed by the rule and the event's id, so the same
//! event delivered twice creates one grant.
//!
//! [`Sharing::on_event`]: super::Sharing::on_event

use std::collections::BTreeMap;

use crate::engine::RuleUpdate;
use crate::error::{InvalidArgument, QueryError, RuleError};
use crate::ids::{Context, UserId};
use crate::model::history::{FailureKind, RequestId};
use crate::store::Change;

use super::execute::Begun;
use super::request::{Command, Failure, Outcome, RevokeRequest, ShareRequest, Submission};
use super::Sharing;

pub use crate::model::rule::{
    AutomationEvent, Condition, Op, Rule, RuleState, ShareAction, ShareWith, Trigger,
};

use super::RuleId;

/// The host's user directory, to refuse rules naming unknown users.
pub trait UserDirectory: Send + Sync + 'static {
    /// Whether `user` exists and may receive shares.
    fn exists(&self, user: &UserId) -> bool;
}

/// The rules of a [`Sharing`](super::Sharing), by id. With a durable
/// engine they change only as the engine reports rule changes written (by
/// this instance or, over a shared store, any other), in the store's
/// order, so every instance on one store acts on the same rules.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) rules: BTreeMap<RuleId, Rule>,
}

impl Rules {
    pub(crate) fn apply(&mut self, updates: Vec<RuleUpdate>) {
        for update in updates {
            match update {
                RuleUpdate::Put(id, rule) => {
                    self.rules.insert(id, rule);
                }
                RuleUpdate::Remove(id) => {
                    self.rules.remove(&id);
                }
                RuleUpdate::All(all) => self.rules = all.into_iter().collect(),
            }
        }
    }
}

/// Check the rule before publishing: conditions well formed, the
/// duration positive and within `max_minutes`, the owner kind matching
/// the trigger.
pub(crate) fn check_rule(rule: &Rule, max_minutes: i64) -> Result<(), InvalidArgument> {
    for (i, c) in rule.conditions.iter().enumerate() {
        check_condition(c, i)?;
    }
    if let Some(m) = rule.action.duration_minutes {
        if m <= 0 {
            return Err(InvalidArgument::new(
                "action.duration_minutes",
                format!("`{m}` is not a positive number of minutes"),
            ));
        }
        if m > max_minutes {
            return Err(InvalidArgument::new(
                "action.duration_minutes",
                format!("`{m}` minutes is longer than the maximum of {max_minutes}"),
            ));
        }
    }
    let activity = matches!(
        rule.trigger,
        Trigger::ActivityPosted | Trigger::ActivityUpdated
    );
    let task = matches!(
        rule.trigger,
        Trigger::TaskCreated | Trigger::TaskCompleted | Trigger::TaskReminder
    );
    match rule.action.with {
        ShareWith::ActivityOwner if !activity => Err(InvalidArgument::new(
            "action.with",
            format!(
                "the activity owner is only known for activity triggers, not `{:?}`",
                rule.trigger
            ),
        )),
        ShareWith::TaskOwner if !task => Err(InvalidArgument::new(
            "action.with",
            format!(
                "the task owner is only known for task triggers, not `{:?}`",
                rule.trigger
            ),
        )),
        _ => Ok(()),
    }
}

/// Check one condition of a rule before publishing.
fn check_condition(c: &Condition, index: usize) -> Result<(), InvalidArgument> {
    let reason = |r: &str| {
        InvalidArgument::new(
            "conditions",
            format!("condition {index} on `{}`: {r}", c.field),
        )
    };
    if c.field.trim().is_empty() {
        return Err(reason("the field name is empty"));
    }
    match c.op {
        Op::In if !c.value.is_array() => Err(reason("`In` needs an array of values")),
        Op::Contains if !c.value.is_string() => Err(reason("`Contains` needs a string")),
        Op::GreaterThan | Op::LessThan if !c.value.is_number() => {
            Err(reason("a comparison needs a number"))
        }
        _ => Ok(()),
    }
}

impl Sharing {
    /// Write a rule change and apply it: with a durable engine it is
    /// written first and reaches the rule set as the engine reports it (no
    /// lock of the rule set is held meanwhile: the report takes it).
    fn change_rule(&self, change: Change) -> Result<(), RuleError> {
        let engine = &self.inner.engine;
        if engine.is_durable() {
            engine.write_now(vec![change]).map_err(RuleError::Store)?;
            engine.deliver_rules();
        } else {
            let update = match change {
                Change::Rule { id, rule } => RuleUpdate::Put(id, *rule),
                Change::RemoveRule(id) => RuleUpdate::Remove(id),
                _ => return Ok(()),
            };
            self.inner.rules.lock().apply(vec![update]);
        }
        Ok(())
    }

    /// Save a rule as a draft; returns its id. Drafts do not act. With a
    /// durable engine the rule is written before this returns; if the store
    /// fails, [`RuleError::Store`] and no rule. Ids are unique among every
    /// instance on one store (taken under its write lock).
    pub fn add_rule(&self, mut rule: Rule) -> Result<RuleId, RuleError> {
        rule.state = RuleState::Draft;
        let engine = &self.inner.engine;
        let kept = rule.clone();
        let (id, written) = engine.transact(move |d| {
            let id = RuleId(d.next_rule_id());
            d.write(vec![Change::Rule {
                id,
                rule: Box::new(rule),
            }]);
            id
        });
        written.map_err(RuleError::Store)?;
        let id = id.ok_or_else(|| {
            RuleError::Store(crate::store::StoreError::Io(
                "the rule was not written: its batch did not run".into(),
            ))
        })?;
        if engine.is_durable() {
            engine.deliver_rules();
        } else {
            self.inner
                .rules
                .lock()
                .apply(vec![RuleUpdate::Put(id, kept)]);
        }
        Ok(id)
    }

    /// Replace a rule; it becomes a draft again. Returns whether it existed.
    pub fn update_rule(&self, id: RuleId, mut rule: Rule) -> Result<bool, RuleError> {
        rule.state = RuleState::Draft;
        if !self.inner.rules.lock().rules.contains_key(&id) {
            return Ok(false);
        }
        self.change_rule(Change::Rule {
            id,
            rule: Box::new(rule),
        })?;
        Ok(true)
    }

    /// Publish a rule after checking it: conditions well formed, a positive
    /// duration within the engine's maximum, an owner the trigger knows, and
    /// a fixed user the user directory knows.
    ///
    /// ```
    /// use grantwheel::requests::automation::{Rule, ShareAction, ShareWith, Trigger};
    /// use grantwheel::requests::Sharing;
    /// use grantwheel::{Engine, EntityKind, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let action = ShareAction { with: ShareWith::User(UserId::from_u128(1)), duration_minutes: Some(0), level: Level::Read };
    /// let id = sharing.add_rule(Rule::new("bad", Trigger::EntityCreated, EntityKind::OPPORTUNITY, action)).unwrap();
    /// assert_eq!(sharing.publish_rule(id).unwrap_err().field(), Some("action.duration_minutes"));
    /// ```
    pub fn publish_rule(&self, id: RuleId) -> Result<(), RuleError> {
        let max_minutes = self.inner.engine.max_duration().num_minutes();
        let rule = self.rule(id).ok_or(RuleError::NotFound(id))?;
        check_rule(&rule, max_minutes)?;
        if let (ShareWith::User(u), Some(users)) = (rule.action.with, &self.inner.users) {
            if !users.exists(&u) {
                return Err(
                    InvalidArgument::new("action.with", format!("unknown user `{u}`")).into(),
                );
            }
        }
        let mut published = rule;
        published.state = RuleState::Published;
        self.change_rule(Change::Rule {
            id,
            rule: Box::new(published),
        })
    }

    /// Stop a rule acting (it stays as a draft). Returns whether it existed.
    pub fn unpublish_rule(&self, id: RuleId) -> Result<bool, RuleError> {
        let Some(mut draft) = self.rule(id) else {
            return Ok(false);
        };
        draft.state = RuleState::Draft;
        self.change_rule(Change::Rule {
            id,
            rule: Box::new(draft),
        })?;
        Ok(true)
    }

    /// Delete a rule. Returns it.
    pub fn remove_rule(&self, id: RuleId) -> Result<Option<Rule>, RuleError> {
        let Some(rule) = self.rule(id) else {
            return Ok(None);
        };
        self.change_rule(Change::RemoveRule(id))?;
        Ok(Some(rule))
    }

    /// A rule by id.
    pub fn rule(&self, id: RuleId) -> Option<Rule> {
        self.inner.rules.lock().rules.get(&id).cloned()
    }

    /// All rules, by id.
    pub fn rules(&self) -> Vec<(RuleId, Rule)> {
        let rules = self.inner.rules.lock();
        rules.rules.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// Feed an event: every matching published rule submits a share request
    /// (source `Automation`), queued for [`process`](Self::process) or a
    /// [`Worker`](super::Worker). The same event (same id) delivered twice creates one
    /// request per rule. A rule whose grantee the event does not name (no
    /// activity or task owner) gets a `Failed` request saying so. Returns the
    /// requests' ids.
    pub fn on_event(&self, event: &AutomationEvent) -> Vec<RequestId> {
        use ShareWith;
        let matching: Vec<(RuleId, Rule)> = {
            let rules = self.inner.rules.lock();
            rules
                .rules
                .iter()
                .filter(|(_, r)| r.matches(event))
                .map(|(id, r)| (*id, r.clone()))
                .collect()
        };
        let mut ids = Vec::with_capacity(matching.len());
        let mut queued = Vec::new();
        for (id, rule) in matching {
            let (grantee, context) = match rule.action.with {
                ShareWith::User(u) => (Some(u), event_context(event)),
                ShareWith::ActivityOwner => {
                    (event.activity.map(|(_, owner)| owner), event_context(event))
                }
                ShareWith::TaskOwner => (event.task.map(|(_, owner)| owner), event_context(event)),
            };
            let key = format!("rule:{}:event:{}", id.0, event.id);
            // Recorded against the owner if known, else against no one.
            let user = grantee.unwrap_or(UserId::from_u128(0));
            let mut req = ShareRequest::new(user, event.entity, rule.action.level).context(context);
            req.duration = rule.action.duration_minutes.map(chrono::Duration::minutes);
            let sub = Submission::automation(Command::Share(req), id).key(key);
            let record = match self.begin(&sub) {
                Begun::New(record) => record,
                Begun::Seen(request) => {
                    ids.push(request);
                    continue;
                }
                Begun::Unchecked(record, failure) => {
                    ids.push(record.request);
                    self.conclude(record, Err(failure), false);
                    continue;
                }
            };
            ids.push(record.request);
            if grantee.is_none() {
                let reason = format!("rule `{}`: the event names no owner to share with", id.0);
                self.conclude(
                    record,
                    Err(Failure::new(FailureKind::NotFound, reason)),
                    false,
                );
                continue;
            }
            queued.push((record, sub));
        }
        self.enqueue(queued);
        ids
    }

    /// Revoke every live grant that a rule's requests created. Each revoke
    /// is a request (source `Automation`) with its own record.
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read to find them.
    pub fn revoke_rule_grants(&self, rule: RuleId) -> Result<Vec<Outcome>, QueryError> {
        let now = self.inner.engine.now();
        let records = self
            .inner
            .backend
            .reader()
            .open_shares_of_rule(rule, now)
            .map_err(QueryError::Store)?;
        Ok(records
            .into_iter()
            .filter_map(|r| r.grant.map(|g| (g, r.level)))
            .filter(|(g, _)| {
                self.inner
                    .engine
                    .pair_grants(&g.user, &g.entity)
                    .iter()
                    .any(|live| live.id == *g && live.expires_at > now)
            })
            .map(|(g, level)| {
                let req = RevokeRequest {
                    user: g.user,
                    entity: g.entity,
                    context: g.context,
                    level,
                };
                self.run(Submission::automation(Command::Revoke(req), rule))
            })
            .collect())
    }
}

/// The context a rule's share goes through: the event's activity, else its
/// task, else none.
pub(super) fn event_context(event: &AutomationEvent) -> Context {
    match (event.activity, event.task) {
        (Some((a, _)), _) => Context::Activity(a),
        (None, Some((t, _))) => Context::Task(t),
        (None, None) => Context::Direct,
    }
}
