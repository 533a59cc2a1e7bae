//! The service's own views: the JSON of the endpoints beyond the seed's
//! (checks, rules, events, history), in the seed's spelling (the entity
//! codes are the library's, `grantwheel::requests::wire`): PascalCase fields, `Entity` codes
//! (1 lead, 5 opportunity), `AccessType` codes (1 read, 2 edit).
//!
//! Bodies are read with unknown fields refused, so a misspelt field is an
//! error naming it, never silently ignored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use grantwheel::requests::automation::{
    AutomationEvent, Condition, Op, Rule, RuleState, ShareAction, ShareWith, Trigger,
};
use grantwheel::requests::wire::{entity_code, entity_id_text, entity_kind};
use grantwheel::requests::{
    EndedBy, HistoryRecord, RequestKind, RequestStatus, RuleId, Source, StatusKind,
};
use grantwheel::{Access, Context, EntityId, EntityRef, Grant, Level, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Read an entity from its wire code and id.
pub fn entity_from(code: i64, id: &Value) -> Result<EntityId, String> {
    let kind = entity_kind(code).ok_or_else(|| {
        format!("`Entity`: unknown code `{code}`: expected 1 (lead) or 5 (opportunity)")
    })?;
    let id = match id {
        Value::Number(n) => n
            .as_u64()
            .map(EntityRef::Number)
            .ok_or_else(|| format!("`EntityId`: `{n}` is not a record number"))?,
        Value::String(s) => s
            .parse::<EntityRef>()
            .map_err(|e| format!("`EntityId`: {}", e.reason()))?,
        _ => return Err("`EntityId`: must be a string or a number".into()),
    };
    Ok(EntityId::new(kind, id))
}

fn access_code(level: Level) -> u8 {
    match level {
        Level::Read => 1,
        Level::Edit => 2,
    }
}

fn level_from(code: u8) -> Result<Level, String> {
    match code {
        1 => Ok(Level::Read),
        2 => Ok(Level::Edit),
        other => Err(format!(
            "`AccessType`: unknown code `{other}`: expected 1 (read) or 2 (write)"
        )),
    }
}

/// One pair to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckItem {
    /// The user.
    #[serde(rename = "UserId")]
    pub user: UserId,
    /// 1 lead, 5 opportunity.
    #[serde(rename = "Entity")]
    pub entity: i64,
    /// The record's number or GUID.
    #[serde(rename = "EntityId")]
    pub entity_id: Value,
}

/// The answer of a check.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckAnswer {
    /// Whether the user may read the record now.
    #[serde(rename = "Read")]
    pub read: bool,
    /// Whether the user may edit the record now.
    #[serde(rename = "Edit")]
    pub edit: bool,
    /// Until when reading holds (absent when it does not).
    #[serde(rename = "ReadUntil", skip_serializing_if = "Option::is_none", default)]
    pub read_until: Option<DateTime<Utc>>,
    /// Until when editing holds (absent when it does not).
    #[serde(rename = "EditUntil", skip_serializing_if = "Option::is_none", default)]
    pub edit_until: Option<DateTime<Utc>>,
}

impl CheckAnswer {
    /// The answer for the pair's access now.
    pub fn of(access: Option<Access>) -> Self {
        match access {
            None => CheckAnswer {
                read: false,
                edit: false,
                read_until: None,
                edit_until: None,
            },
            Some(a) => CheckAnswer {
                read: true,
                edit: a.level == Level::Edit,
                read_until: Some(a.read_until),
                edit_until: (a.level == Level::Edit).then_some(a.until),
            },
        }
    }
}

/// A rule as the rules endpoints read and write it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// A name for people.
    #[serde(rename = "Name")]
    pub name: String,
    /// `EntityCreated`, `EntityUpdated`, `ActivityPosted`,
    /// `ActivityUpdated`, `TaskCreated`, `TaskCompleted`, `TaskReminder`.
    #[serde(rename = "Trigger")]
    pub trigger: Trigger,
    /// The kind of record: 1 lead, 5 opportunity.
    #[serde(rename = "Entity")]
    pub entity: i64,
    /// Conditions on the event's fields; all must hold.
    #[serde(rename = "Conditions", default)]
    pub conditions: Vec<ConditionBody>,
    /// `User` (with `UserId`), `ActivityOwner` or `TaskOwner`.
    #[serde(rename = "ShareWith")]
    pub share_with: ShareWithCode,
    /// The user, when `ShareWith` is `User`.
    #[serde(rename = "UserId", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// 1 read, 2 edit.
    #[serde(rename = "AccessType")]
    pub access: u8,
    /// Minutes; absent for the engine's default.
    #[serde(
        rename = "DurationInMinutes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub duration_minutes: Option<i64>,
}

/// With whom a rule shares.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ShareWithCode {
    /// The user named in `UserId`.
    User,
    /// The owner of the event's activity.
    ActivityOwner,
    /// The owner of the event's task.
    TaskOwner,
}

/// One condition of a rule.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionBody {
    /// The event field.
    #[serde(rename = "Field")]
    pub field: String,
    /// `Equals`, `NotEquals`, `In`, `Contains`, `GreaterThan`, `LessThan`,
    /// `Exists`.
    #[serde(rename = "Op")]
    pub op: Op,
    /// The value compared with.
    #[serde(rename = "Value", default)]
    pub value: Value,
}

impl RuleBody {
    /// The library's rule (a draft), or why not.
    pub fn to_rule(&self) -> Result<Rule, String> {
        let entity_kind = entity_from(self.entity, &Value::from(1u64))?.kind;
        let with = match (self.share_with, self.user) {
            (ShareWithCode::User, Some(u)) => ShareWith::User(u),
            (ShareWithCode::User, None) => {
                return Err("`UserId`: is required when `ShareWith` is `User`".into())
            }
            (_, Some(_)) => return Err("`UserId`: is only taken when `ShareWith` is `User`".into()),
            (ShareWithCode::ActivityOwner, None) => ShareWith::ActivityOwner,
            (ShareWithCode::TaskOwner, None) => ShareWith::TaskOwner,
        };
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err("`Name`: must be 1 to 200 characters".into());
        }
        let mut rule = Rule::new(
            self.name.trim(),
            self.trigger,
            entity_kind,
            ShareAction {
                with,
                duration_minutes: self.duration_minutes,
                level: level_from(self.access)?,
            },
        );
        rule.conditions = self
            .conditions
            .iter()
            .map(|c| Condition {
                field: c.field.clone(),
                op: c.op,
                value: c.value.clone(),
            })
            .collect();
        Ok(rule)
    }
}

/// A rule as listed: its id and state with its body.
#[derive(Debug, Serialize)]
pub struct RuleView {
    /// The rule's id.
    #[serde(rename = "Id")]
    pub id: u64,
    /// `Draft` or `Published`.
    #[serde(rename = "State")]
    pub state: RuleState,
    /// The rule.
    #[serde(flatten)]
    pub body: RuleBody,
}

impl RuleView {
    /// The view of a stored rule.
    pub fn of(id: RuleId, rule: &Rule) -> Self {
        let (share_with, user) = match rule.action.with {
            ShareWith::User(u) => (ShareWithCode::User, Some(u)),
            ShareWith::ActivityOwner => (ShareWithCode::ActivityOwner, None),
            ShareWith::TaskOwner => (ShareWithCode::TaskOwner, None),
        };
        RuleView {
            id: id.0,
            state: rule.state,
            body: RuleBody {
                name: rule.name.clone(),
                trigger: rule.trigger,
                entity: entity_code(rule.entity_kind),
                conditions: rule
                    .conditions
                    .iter()
                    .map(|c| ConditionBody {
                        field: c.field.clone(),
                        op: c.op,
                        value: c.value.clone(),
                    })
                    .collect(),
                share_with,
                user,
                access: access_code(rule.action.level),
                duration_minutes: rule.action.duration_minutes,
            },
        }
    }
}

/// An activity or a task named by an event, with its owner.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owned {
    /// Its id.
    #[serde(rename = "Id")]
    pub id: Uuid,
    /// Its owner.
    #[serde(rename = "Owner")]
    pub owner: UserId,
}

/// Something that happened in the CRM, as the events endpoint takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The CRM's id for this event: delivered twice, it acts once.
    #[serde(rename = "Id")]
    pub id: String,
    /// What happened (the rule triggers).
    #[serde(rename = "Trigger")]
    pub trigger: Trigger,
    /// 1 lead, 5 opportunity.
    #[serde(rename = "Entity")]
    pub entity: i64,
    /// The record's number or GUID.
    #[serde(rename = "EntityId")]
    pub entity_id: Value,
    /// The record's owner, if the CRM says (kept: an opportunity is never
    /// shared with its owner).
    #[serde(rename = "Owner", default)]
    pub owner: Option<UserId>,
    /// The activity, for activity triggers.
    #[serde(rename = "Activity", default)]
    pub activity: Option<Owned>,
    /// The task, for task triggers.
    #[serde(rename = "Task", default)]
    pub task: Option<Owned>,
    /// Fields for rule conditions.
    #[serde(rename = "Fields", default)]
    pub fields: BTreeMap<String, Value>,
}

impl EventBody {
    /// The library's event, or why not.
    pub fn to_event(&self) -> Result<AutomationEvent, String> {
        if self.id.trim().is_empty() || self.id.len() > 200 {
            return Err("`Id`: must be 1 to 200 bytes".into());
        }
        Ok(AutomationEvent {
            id: self.id.clone(),
            trigger: self.trigger,
            entity: entity_from(self.entity, &self.entity_id)?,
            activity: self.activity.map(|a| (a.id, a.owner)),
            task: self.task.map(|t| (t.id, t.owner)),
            fields: self.fields.clone(),
        })
    }
}

/// A history record as the history endpoint answers it.
#[derive(Debug, Serialize)]
pub struct RecordView {
    /// The request id.
    #[serde(rename = "RequestId")]
    pub request: String,
    /// `Share` or `Revoke`.
    #[serde(rename = "Kind")]
    pub kind: RequestKind,
    /// The user.
    #[serde(rename = "UserId")]
    pub user: UserId,
    /// 1 read, 2 edit.
    #[serde(rename = "AccessType")]
    pub access: u8,
    /// Minutes asked for (absent: the default, or a revoke).
    #[serde(rename = "DurationInMinutes", skip_serializing_if = "Option::is_none")]
    pub duration_minutes: Option<i64>,
    /// `Api`, `Automation` or `Direct`.
    #[serde(rename = "Source")]
    pub source: &'static str,
    /// The rule, for automation.
    #[serde(rename = "RuleId", skip_serializing_if = "Option::is_none")]
    pub rule: Option<u64>,
    /// `Processing`, `Completed` or `Failed`.
    #[serde(rename = "Status")]
    pub status: &'static str,
    /// Why it failed.
    #[serde(rename = "Reason", skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The activity or task it went through.
    #[serde(rename = "ContextEntityId", skip_serializing_if = "Option::is_none")]
    pub context: Option<Uuid>,
    /// When it was made.
    #[serde(rename = "SharedAt")]
    pub created_at: DateTime<Utc>,
    /// When the access begins, for a share made to start later.
    #[serde(rename = "Starts", skip_serializing_if = "Option::is_none")]
    pub starts: Option<DateTime<Utc>>,
    /// When the access ends or ended (shares that completed).
    #[serde(rename = "Ends", skip_serializing_if = "Option::is_none")]
    pub ends: Option<DateTime<Utc>>,
    /// Whether that end has passed.
    #[serde(rename = "Ended")]
    pub ended: bool,
    /// How it ended, if it did: `Expired`, `Revoked` or `Replaced`.
    #[serde(rename = "EndedBy", skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<&'static str>,
    /// The record's kind: 1 lead, 5 opportunity.
    #[serde(rename = "Entity")]
    pub entity: i64,
    /// The record's number or GUID.
    #[serde(rename = "EntityId")]
    pub entity_id: String,
    /// The user on whose authority the share was asked, if one was named.
    #[serde(rename = "GrantedBy", skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<UserId>,
    /// `AwaitingApproval` while the share waits for an approver.
    #[serde(rename = "Stage", skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    /// The approval the share needed, if the policy asked for one.
    #[serde(rename = "Approval", skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalView>,
    /// Why the grant ended early, when the service ended it (a start
    /// refused when checked again).
    #[serde(rename = "EndReason", skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// A share's approval: why it was needed, until when, and the decision.
#[derive(Debug, Serialize)]
pub struct ApprovalView {
    /// Why the policy asked for an approver.
    #[serde(rename = "Why")]
    pub why: String,
    /// After this nobody may act on it: the request fails.
    #[serde(rename = "Deadline")]
    pub deadline: DateTime<Utc>,
    /// The approver, once decided.
    #[serde(rename = "ApproverId", skip_serializing_if = "Option::is_none")]
    pub approver: Option<UserId>,
    /// `Approved` or `Denied`, once decided.
    #[serde(rename = "Decision", skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    /// When it was decided.
    #[serde(rename = "DecidedAt", skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// The approver's words.
    #[serde(rename = "Reason", skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An approver's decision, as the approve and deny endpoints take it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// The approver.
    #[serde(rename = "ApproverId")]
    pub approver: UserId,
    /// Why (optional; at most 2,000 bytes).
    #[serde(rename = "Reason", default)]
    pub reason: Option<String>,
}

/// The name of a status kind, as the seed spells it.
pub fn status_name(kind: StatusKind) -> &'static str {
    match kind {
        StatusKind::Processing => "Processing",
        StatusKind::Completed => "Completed",
        StatusKind::Failed => "Failed",
    }
}

/// The context's id, if it has one.
pub fn context_id(context: &Context) -> Option<Uuid> {
    match context {
        Context::Direct => None,
        Context::Activity(u) | Context::Task(u) => Some(*u),
        Context::Other { id, .. } => Some(*id),
    }
}

impl RecordView {
    /// The view of a record at `now`.
    pub fn of(r: &HistoryRecord, now: DateTime<Utc>) -> Self {
        let (source, rule) = match r.source {
            Source::Api => ("Api", None),
            Source::Automation { rule } => ("Automation", Some(rule.0)),
            Source::Direct => ("Direct", None),
        };
        let ends = match (r.revoked, r.expires_at) {
            (Some((t, _)), Some(e)) => Some(t.min(e)),
            (Some((t, _)), None) => Some(t),
            (None, e) => e,
        };
        let ended_by = match r.revoked {
            Some((_, EndedBy::Replaced)) => Some("Replaced"),
            Some(_) if r.end_reason.is_some() => Some("Refused"),
            Some((_, _)) => Some("Revoked"),
            None if ends.is_some_and(|e| e <= now) => Some("Expired"),
            None => None,
        };
        RecordView {
            request: r.request.to_string(),
            kind: r.kind,
            user: r.user,
            access: access_code(r.level),
            duration_minutes: r.duration.map(|d| d.num_minutes()),
            source,
            rule,
            status: status_name(r.status.kind()),
            reason: match &r.status {
                RequestStatus::Failed { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            context: context_id(&r.context),
            created_at: r.created_at,
            starts: r.starts_at,
            ends,
            ended: ends.is_some_and(|e| e <= now),
            ended_by,
            entity: entity_code(r.entity.kind),
            entity_id: entity_id_text(&r.entity),
            granted_by: r.granted_by,
            end_reason: r.end_reason.clone(),
            stage: r.awaiting_approval().then_some("AwaitingApproval"),
            approval: r.approval.as_ref().map(|a| {
                let d = a.decision.as_ref();
                ApprovalView {
                    why: a.why.clone(),
                    deadline: a.deadline,
                    approver: d.map(|d| d.approver),
                    decision: d.map(|d| if d.approved { "Approved" } else { "Denied" }),
                    decided_at: d.map(|d| d.at),
                    reason: d.and_then(|d| d.reason.clone()),
                }
            }),
        }
    }
}

/// A live grant, as "who has access now" lists it.
#[derive(Debug, Serialize)]
pub struct GrantView {
    /// The user.
    #[serde(rename = "UserId")]
    pub user: UserId,
    /// 1 read, 2 edit.
    #[serde(rename = "AccessType")]
    pub access: u8,
    /// The activity or task it went through.
    #[serde(rename = "ContextEntityId", skip_serializing_if = "Option::is_none")]
    pub context: Option<Uuid>,
    /// When it begins, for a grant made to start later.
    #[serde(rename = "Starts", skip_serializing_if = "Option::is_none")]
    pub starts: Option<DateTime<Utc>>,
    /// When it ends.
    #[serde(rename = "Ends")]
    pub ends: DateTime<Utc>,
}

impl GrantView {
    /// The view of a grant.
    pub fn of(g: &Grant) -> Self {
        GrantView {
            user: g.id.user,
            access: access_code(g.level),
            context: context_id(&g.id.context),
            starts: g.starts_at,
            ends: g.expires_at,
        }
    }
}
