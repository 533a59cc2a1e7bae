//! Automation rules as data: triggers, conditions, share actions, and the
//! events they act on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ids::{EntityId, EntityKind, Level, UserId};

/// What starts a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Trigger {
    /// A new record (new opportunity, new lead).
    EntityCreated,
    /// A record was updated.
    EntityUpdated,
    /// An activity was posted on a record.
    ActivityPosted,
    /// An activity on a record was updated.
    ActivityUpdated,
    /// A task was created on a record.
    TaskCreated,
    /// A task on a record was completed.
    TaskCompleted,
    /// A task's reminder fired.
    TaskReminder,
}

/// How a condition compares an event field with its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The field equals the value.
    Equals,
    /// The field is present and differs from the value.
    NotEquals,
    /// The field equals one of the values (the value is an array).
    In,
    /// The field is a string containing the value (a string).
    Contains,
    /// The field is a number greater than the value (a number).
    GreaterThan,
    /// The field is a number less than the value (a number).
    LessThan,
    /// The field is present (the value is ignored).
    Exists,
}

/// A condition on one field of the event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The event field's name.
    pub field: String,
    /// The comparison.
    pub op: Op,
    /// The value compared with.
    #[serde(default)]
    pub value: Value,
}

impl Condition {
    /// Whether the condition holds for an event with these fields.
    pub(crate) fn holds(&self, fields: &BTreeMap<String, Value>) -> bool {
        let Some(v) = fields.get(&self.field) else {
            return false;
        };
        match self.op {
            Op::Equals => *v == self.value,
            Op::NotEquals => *v != self.value,
            Op::In => self.value.as_array().is_some_and(|a| a.contains(v)),
            Op::Contains => match (v.as_str(), self.value.as_str()) {
                (Some(s), Some(part)) => s.contains(part),
                _ => false,
            },
            Op::GreaterThan => match (v.as_f64(), self.value.as_f64()) {
                (Some(a), Some(b)) => a > b,
                _ => false,
            },
            Op::LessThan => match (v.as_f64(), self.value.as_f64()) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            },
            Op::Exists => true,
        }
    }
}

/// With whom a rule shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareWith {
    /// Always this user.
    User(UserId),
    /// The owner of the event's activity.
    ActivityOwner,
    /// The owner of the event's task.
    TaskOwner,
}

/// The share a rule makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareAction {
    /// With whom.
    pub with: ShareWith,
    /// For how long, in minutes (`None`: the engine's default).
    pub duration_minutes: Option<i64>,
    /// Read (view only) or edit (view and modify).
    pub level: Level,
}

/// Whether a rule acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleState {
    /// Saved, not acting.
    Draft,
    /// Acting on events.
    Published,
}

/// An automation rule.
///
/// ```
/// use grantwheel::requests::automation::{Rule, ShareAction, ShareWith, Trigger};
/// use grantwheel::{EntityKind, Level};
/// let rule = Rule::new("share new deals with the loans team", Trigger::EntityCreated, EntityKind::OPPORTUNITY,
///     ShareAction { with: ShareWith::TaskOwner, duration_minutes: Some(60 * 24), level: Level::Read });
/// let json = serde_json::to_string(&rule).unwrap();
/// assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// A name for people.
    pub name: String,
    /// What starts it.
    pub trigger: Trigger,
    /// The kind of record it applies to.
    pub entity_kind: EntityKind,
    /// Conditions on the event's fields; all must hold.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The share it makes.
    pub action: ShareAction,
    /// Draft or published.
    pub state: RuleState,
}

impl Rule {
    /// A draft rule without conditions.
    pub fn new(
        name: impl Into<String>,
        trigger: Trigger,
        entity_kind: EntityKind,
        action: ShareAction,
    ) -> Self {
        Rule {
            name: name.into(),
            trigger,
            entity_kind,
            conditions: Vec::new(),
            action,
            state: RuleState::Draft,
        }
    }

    /// With one more condition.
    pub fn when(mut self, field: impl Into<String>, op: Op, value: Value) -> Self {
        self.conditions.push(Condition {
            field: field.into(),
            op,
            value,
        });
        self
    }

    /// Whether the rule acts on `event`.
    pub fn matches(&self, event: &AutomationEvent) -> bool {
        self.state == RuleState::Published
            && self.trigger == event.trigger
            && self.entity_kind == event.entity.kind
            && self.conditions.iter().all(|c| c.holds(&event.fields))
    }
}

/// Something that happened to a record, fed by the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutomationEvent {
    /// The host's id for this event: the same event delivered twice has the
    /// same id and creates one grant per rule.
    pub id: String,
    /// What happened.
    pub trigger: Trigger,
    /// To which record.
    pub entity: EntityId,
    /// The activity concerned (its id and owner), for activity triggers.
    pub activity: Option<(Uuid, UserId)>,
    /// The task concerned (its id and owner), for task triggers.
    pub task: Option<(Uuid, UserId)>,
    /// The event's fields, for conditions.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}
