//! The status API's answer: the seed's shape, and this service's codes
//! beside the published one.

use serde::{Deserialize, Serialize};

use crate::model::history::{HistoryRecord, RequestStatus};

/// The status API's answer, in the shape of the seed's service:
/// `{"Status":"Success","Message":{"ResponseText":"Request processed
/// successfully."},"ShareStatus":6,"ErrorMessage":null}`.
///
/// `ShareStatus` is [`SHARE_STATUS_COMPLETED`] (6, the published code)
/// once the request is carried out; this service also answers
/// [`SHARE_STATUS_PROCESSING`] (1) and [`SHARE_STATUS_FAILED`] (7), codes
/// of its own (the seed publishes none for them). `State` names the
/// status in words and `Stage` says where a waiting request stands:
/// both are extensions of the seed's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `Success` when the request is known, `Error` otherwise.
    #[serde(rename = "Status")]
    pub status: String,
    /// The request's status, for people.
    #[serde(rename = "Message")]
    pub message: StatusMessage,
    /// The request's status as a code (see the type's documentation);
    /// `null` when the request is not known.
    #[serde(rename = "ShareStatus")]
    pub share_status: Option<u8>,
    /// Why it failed (or why there is no status); `null` otherwise.
    #[serde(rename = "ErrorMessage")]
    pub error_message: Option<String>,
    /// `Processing`, `Completed` or `Failed` (`NotFound` for unknown ids,
    /// `Unavailable` when the store cannot be read): an extension.
    #[serde(rename = "State", default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Where a `Processing` request stands, when it waits for someone:
    /// `AwaitingApproval` (an extension; absent otherwise).
    #[serde(rename = "Stage", default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// `ShareStatus` of a request waiting to be carried out (queued, held for
/// an approver, or scheduled to be confirmed): this service's code.
pub const SHARE_STATUS_PROCESSING: u8 = 1;
/// `ShareStatus` of a request carried out: the seed's published code.
pub const SHARE_STATUS_COMPLETED: u8 = 6;
/// `ShareStatus` of a request that failed: this service's code.
pub const SHARE_STATUS_FAILED: u8 = 7;

impl StatusResponse {
    /// The answer for a request's record: its status, and the stage
    /// `AwaitingApproval` while it waits for an approver.
    pub fn of_record(record: HistoryRecord) -> Self {
        let awaiting = record.awaiting_approval();
        let mut answer = Self::found(record.status);
        if awaiting {
            answer.stage = Some("AwaitingApproval".into());
        }
        answer
    }

    /// The answer for a request found with this status.
    ///
    /// ```
    /// use grantwheel::requests::wire::StatusResponse;
    /// use grantwheel::requests::RequestStatus;
    /// let r = StatusResponse::found(RequestStatus::Completed);
    /// assert_eq!(
    ///     serde_json::to_value(&r).unwrap(),
    ///     serde_json::json!({
    ///         "Status": "Success",
    ///         "Message": {"ResponseText": "Request processed successfully."},
    ///         "ShareStatus": 6,
    ///         "ErrorMessage": null,
    ///         "State": "Completed"
    ///     })
    /// );
    /// ```
    pub fn found(status: RequestStatus) -> Self {
        let (code, text) = match status {
            RequestStatus::Processing => (SHARE_STATUS_PROCESSING, "Request is being processed."),
            RequestStatus::Completed => (SHARE_STATUS_COMPLETED, "Request processed successfully."),
            RequestStatus::Failed { .. } => {
                (SHARE_STATUS_FAILED, "Request could not be processed.")
            }
        };
        StatusResponse {
            status: "Success".into(),
            message: StatusMessage {
                response_text: text.into(),
            },
            share_status: Some(code),
            state: Some(status.name().into()),
            error_message: match status {
                RequestStatus::Failed { reason, .. } => Some(reason),
                _ => None,
            },
            stage: None,
        }
    }

    /// An answer without a status: `Error`, with `state` and `why`.
    fn error(state: &str, text: &str, why: String) -> Self {
        StatusResponse {
            status: "Error".into(),
            message: StatusMessage {
                response_text: text.into(),
            },
            share_status: None,
            error_message: Some(why),
            state: Some(state.into()),
            stage: None,
        }
    }

    /// The answer when the status cannot be read now (the store failed):
    /// a service answers it with a server error, not "not found".
    pub(crate) fn unavailable(why: String) -> Self {
        Self::error("Unavailable", "The status cannot be read now.", why)
    }

    /// The answer for a request that cannot be found.
    pub(crate) fn not_found(why: String) -> Self {
        Self::error("NotFound", "Request not found.", why)
    }
}

/// The `Message` of the status API's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// The status in a sentence: `Request processed successfully.` once
    /// carried out.
    #[serde(rename = "ResponseText")]
    pub response_text: String,
}
