//! The share API's entry points: JSON batches in, one answer per item
//! out, and the status API.

use serde::{Deserialize, Serialize};

use crate::engine::OverMax;
use crate::ids::Context;
use crate::model::history::{FailureKind, HistoryRecord, RequestId, RequestStatus};

use super::request::{Command, Outcome, Submission};
use super::{wire, Sharing};

impl Sharing {
    /// Carry out a share batch in the API's JSON, item by item: one response
    /// per item, in order. A bad item gets an error response and changes
    /// nothing; the others are still carried out.
    ///
    /// Which refusals leave a request behind:
    ///
    /// - **No request** (`ExceptionType` `InvalidInput`, no `RequestId`): an
    ///   item that does not decode, or that the engine's settings refuse
    ///   whatever its state: a `DurationInMinutes` over the engine's
    ///   maximum (unless the engine clamps). Such an item was never a
    ///   request the seed's status API could report on.
    /// - **A `Failed` request** (`ExceptionType` `Failed`, with a
    ///   `RequestId` whose status and history record say why): an item
    ///   refused for the state it meets when carried out: a repeat share
    ///   the engine refuses, a context the resolver refuses, a delegation
    ///   limit, a full engine or a store failure.
    ///
    /// Every error message starts with the item's index; one that concerns
    /// a field names it as the wire spells it.
    ///
    /// ```
    /// use grantwheel::requests::{wire::ItemResponse, Sharing};
    /// use grantwheel::Engine;
    /// let sharing = Sharing::new(Engine::new());
    /// let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":1,"EntityType":3,
    ///   "EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
    ///   "AccessType":2,"DurationInMinutes":30}]"#;
    /// let responses = sharing.api_share(body).unwrap();
    /// assert!(matches!(responses[0], ItemResponse::Success { .. }));
    /// ```
    pub fn api_share(&self, body: &[u8]) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        self.share_batch(body, "the request was not carried out", |subs| {
            self.run_shares(subs)
        })
    }

    /// Decode a share batch, hand its valid items to `carry` as API
    /// submissions, and answer every item in order: invalid ones with their
    /// error, valid ones with the outcome `carry` gave them.
    pub(super) fn share_batch(
        &self,
        body: &[u8],
        missing: &str,
        carry: impl FnOnce(Vec<Submission>) -> Vec<Outcome>,
    ) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        let items = wire::decode_shares_within(body, &self.limits())?;
        let subs: Vec<Submission> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|item| Submission::api(Command::Share((*item).into())))
            .collect();
        let mut answers = carry(subs).into_iter();
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => answers.next().map_or_else(
                    || wire::ItemResponse::error("Failed", format!("item {index}: {missing}")),
                    |outcome| respond(outcome, index, &item.context),
                ),
            })
            .collect())
    }

    /// The engine's limits, as the wire decoder checks them.
    pub(super) fn limits(&self) -> wire::Limits {
        let engine = &self.inner.engine;
        wire::Limits {
            max_duration: match engine.over_max() {
                OverMax::Reject => Some(engine.max_duration()),
                OverMax::Clamp => None,
            },
        }
    }

    /// Carry out a revoke batch in the API's JSON, item by item.
    pub fn api_revoke(&self, body: &[u8]) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        Ok(wire::decode_revokes(body)?
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => respond(
                    self.run(Submission::api(Command::Revoke(item.into()))),
                    index,
                    &item.context,
                ),
            })
            .collect())
    }

    /// Queue a share batch in the API's JSON: valid items get a request id
    /// at once (status `Processing`), invalid ones an error response.
    pub fn api_submit_shares(
        &self,
        body: &[u8],
    ) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        self.share_batch(body, "the request was not queued", |subs| {
            self.submit(subs)
                .into_iter()
                .map(|request| Outcome {
                    request,
                    status: RequestStatus::Processing,
                    grant: None,
                })
                .collect()
        })
    }
}

impl Sharing {
    /// The status of a request in the shape of the status API.
    ///
    /// ```
    /// use grantwheel::requests::{RequestId, Sharing};
    /// use grantwheel::Engine;
    /// let sharing = Sharing::new(Engine::new());
    /// let unknown = sharing.status_response(&RequestId::random());
    /// assert_eq!(unknown.status, "Error");
    /// ```
    pub fn status_response(&self, id: &RequestId) -> StatusResponse {
        match self.request(id) {
            Ok(Some(record)) => StatusResponse::of_record(record),
            Ok(None) => StatusResponse::not_found(format!("no request `{id}`")),
            Err(e) => StatusResponse::unavailable(e.to_string()),
        }
    }

    /// The status API's answer for a request id as the API carries it (the
    /// `id` query parameter: 32 hex digits). A malformed id gets the same
    /// not-found answer as an unknown one, saying why.
    ///
    /// ```
    /// use grantwheel::requests::{ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let sharing = Sharing::new(Engine::new());
    /// let done = sharing.share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read));
    /// let answer = sharing.api_status(&done.request.to_string());
    /// assert_eq!(answer.message.response_text, "Completed");
    /// let bad = sharing.api_status("98fe");
    /// assert_eq!((bad.status.as_str(), bad.message.response_text.as_str()), ("Error", "NotFound"));
    /// ```
    pub fn api_status(&self, id: &str) -> StatusResponse {
        match id.trim().parse::<RequestId>() {
            Ok(id) => self.status_response(&id),
            Err(e) => StatusResponse::not_found(e.to_string()),
        }
    }
}

/// The answer to item `index` of a batch, whose request went through
/// `context`. A failed request's message starts with the index like every
/// item error; a refused repeat share also names the wire field it
/// collides on (the context's id when there is one, else the record's).
fn respond(outcome: Outcome, index: usize, context: &Context) -> wire::ItemResponse {
    match outcome.status {
        RequestStatus::Failed { kind, reason } => {
            let message = match (kind, context) {
                (FailureKind::AlreadyShared, Context::Activity(_)) => {
                    format!("item {index}: `ContextEntityId`: {reason}")
                }
                (FailureKind::AlreadyShared, _) => format!("item {index}: `EntityId`: {reason}"),
                _ => format!("item {index}: {reason}"),
            };
            wire::ItemResponse::failed(outcome.request, kind, message)
        }
        _ => wire::ItemResponse::success(outcome.request),
    }
}

/// The status API's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `Success` when the request is known, `Error` otherwise.
    #[serde(rename = "Status")]
    pub status: String,
    /// The request's status.
    #[serde(rename = "Message")]
    pub message: StatusMessage,
}

impl StatusResponse {
    /// The answer for a request's record: its status, and the stage
    /// `AwaitingApproval` while it waits for an approver.
    pub fn of_record(record: HistoryRecord) -> Self {
        let awaiting = record.awaiting_approval();
        let mut answer = Self::found(record.status);
        if awaiting {
            answer.message.stage = Some("AwaitingApproval".into());
        }
        answer
    }

    /// The answer for a request found with this status.
    ///
    /// ```
    /// use grantwheel::requests::{RequestStatus, StatusResponse};
    /// let r = StatusResponse::found(RequestStatus::Completed);
    /// assert_eq!((r.status.as_str(), r.message.share_status), ("Success", 1));
    /// ```
    pub fn found(status: RequestStatus) -> Self {
        StatusResponse {
            status: "Success".into(),
            message: StatusMessage {
                response_text: status.name().into(),
                share_status: status.code(),
                error_message: match status {
                    RequestStatus::Failed { reason, .. } => Some(reason),
                    _ => None,
                },
                stage: None,
            },
        }
    }

    /// The answer when the status cannot be read now (the store failed):
    /// a service answers it with a server error, not "not found".
    pub(super) fn unavailable(why: String) -> Self {
        StatusResponse {
            status: "Error".into(),
            message: StatusMessage {
                response_text: "Unavailable".into(),
                share_status: 2,
                error_message: Some(why),
                stage: None,
            },
        }
    }

    /// The answer for a request that cannot be found.
    pub(super) fn not_found(why: String) -> Self {
        StatusResponse {
            status: "Error".into(),
            message: StatusMessage {
                response_text: "NotFound".into(),
                share_status: 2,
                error_message: Some(why),
                stage: None,
            },
        }
    }
}

/// The `Message` of the status API's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// `Processing`, `Completed` or `Failed` (`NotFound` for unknown ids,
    /// `Unavailable` when the store cannot be read).
    #[serde(rename = "ResponseText")]
    pub response_text: String,
    /// 0 processing, 1 completed, 2 failed.
    #[serde(rename = "ShareStatus")]
    pub share_status: u8,
    /// Why it failed.
    #[serde(rename = "ErrorMessage")]
    pub error_message: Option<String>,
    /// Where a `Processing` request stands, when it waits for someone:
    /// `AwaitingApproval` (an extension of the seed's answer; absent
    /// otherwise).
    #[serde(rename = "Stage", default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}
