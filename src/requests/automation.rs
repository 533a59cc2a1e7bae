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

use crate::error::Error;
use crate::ids::UserId;

pub use crate::model::rule::{
    AutomationEvent, Condition, Op, Rule, RuleState, ShareAction, ShareWith, Trigger,
};

use super::RuleId;

/// The host's user directory, to refuse rules naming unknown users.
pub trait UserDirectory: Send + Sync + 'static {
    /// Whether `user` exists and may receive shares.
    fn exists(&self, user: &UserId) -> bool;
}

/// The rules of a [`Sharing`](super::Sharing), by id.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    pub(crate) next: u64,
    pub(crate) rules: BTreeMap<RuleId, Rule>,
}

/// Check the rule before publishing: conditions well formed, the
/// duration positive and within `max_minutes`, the owner kind matching
/// the trigger.
pub(crate) fn check_rule(rule: &Rule, max_minutes: i64) -> Result<(), Error> {
    for (i, c) in rule.conditions.iter().enumerate() {
        check_condition(c, i)?;
    }
    if let Some(m) = rule.action.duration_minutes {
        if m <= 0 {
            return Err(Error::invalid(
                "action.duration_minutes",
                format!("`{m}` is not a positive number of minutes"),
            ));
        }
        if m > max_minutes {
            return Err(Error::invalid(
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
        ShareWith::ActivityOwner if !activity => Err(Error::invalid(
            "action.with",
            format!(
                "the activity owner is only known for activity triggers, not `{:?}`",
                rule.trigger
            ),
        )),
        ShareWith::TaskOwner if !task => Err(Error::invalid(
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
fn check_condition(c: &Condition, index: usize) -> Result<(), Error> {
    let reason = |r: &str| {
        Error::invalid(
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
