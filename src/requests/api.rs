//! The share API's entry points: JSON batches in, one answer per item
//! out, and the status API (its answer's shape is [`wire::StatusResponse`]).

use crate::engine::OverMax;
use crate::ids::Context;
use crate::model::history::{FailureKind, RequestId, RequestStatus};

use super::request::{Command, Outcome, Submission};
use super::wire::StatusResponse;
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
        Ok(self.api_share_batch(&self.parse_batch(body)?, None))
    }

    /// Parse a share or revoke body, holding at most
    /// [`max_batch_items`](Self::max_batch_items) items: a host that limits
    /// calls by their size counts the items first, then hands the batch to
    /// [`api_share_batch`](Self::api_share_batch) or
    /// [`api_revoke_batch`](Self::api_revoke_batch).
    ///
    /// # Errors
    ///
    /// [`wire::BatchError`]: not JSON, a key given twice, not an array, or
    /// too many items.
    pub fn parse_batch(&self, body: &[u8]) -> Result<wire::Batch, wire::BatchError> {
        wire::Batch::parse(body, self.max_batch_items())
    }

    /// The most items a share or revoke batch may hold
    /// ([`SharingBuilder::max_batch_items`](super::SharingBuilder::max_batch_items)).
    pub fn max_batch_items(&self) -> usize {
        self.inner.config.max_batch_items
    }

    /// [`api_share`](Self::api_share) of a batch already parsed, under the
    /// call's idempotency key `call_key` if it has one (see
    /// [`wire::Batch::key`]): a retry of a call whose answer was lost is
    /// answered with its items' first requests.
    pub fn api_share_batch(
        &self,
        batch: &wire::Batch,
        call_key: Option<&str>,
    ) -> Vec<wire::ItemResponse> {
        self.share_batch(batch, call_key, "the request was not carried out", |subs| {
            self.run_shares(subs)
        })
    }

    /// Decode a share batch, hand its valid items to `carry` as API
    /// submissions, and answer every item in order: invalid ones with their
    /// error, valid ones with the outcome `carry` gave them.
    pub(super) fn share_batch(
        &self,
        batch: &wire::Batch,
        call_key: Option<&str>,
        missing: &str,
        carry: impl FnOnce(Vec<Submission>) -> Vec<Outcome>,
    ) -> Vec<wire::ItemResponse> {
        let items = batch.shares(&self.limits());
        let subs: Vec<Submission> = items
            .iter()
            .enumerate()
            .filter_map(|(index, i)| Some((index, i.as_ref().ok()?)))
            .map(|(index, item)| {
                keyed(
                    Submission::api(Command::Share((*item).into())),
                    batch.key(index, "share", call_key),
                )
            })
            .collect();
        let mut answers = carry(subs).into_iter();
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => answers.next().map_or_else(
                    || wire::ItemResponse::error("Failed", format!("item {index}: {missing}")),
                    |outcome| respond(outcome, index, &item.context),
                ),
            })
            .collect()
    }

    /// The engine's limits, as the wire decoder checks them.
    pub(super) fn limits(&self) -> wire::Limits {
        let engine = &self.inner.engine;
        wire::Limits {
            max_duration: match engine.over_max() {
                OverMax::Reject => Some(engine.max_duration()),
                OverMax::Clamp => None,
            },
            max_items: self.max_batch_items(),
        }
    }

    /// Carry out a revoke batch in the API's JSON, item by item.
    pub fn api_revoke(&self, body: &[u8]) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        Ok(self.api_revoke_batch(&self.parse_batch(body)?, None))
    }

    /// [`api_revoke`](Self::api_revoke) of a batch already parsed, under
    /// the call's idempotency key `call_key` if it has one.
    pub fn api_revoke_batch(
        &self,
        batch: &wire::Batch,
        call_key: Option<&str>,
    ) -> Vec<wire::ItemResponse> {
        batch
            .revokes()
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Err(e) => wire::ItemResponse::error("InvalidInput", e),
                Ok(item) => respond(
                    self.run(keyed(
                        Submission::api(Command::Revoke(item.into())),
                        batch.key(index, "revoke", call_key),
                    )),
                    index,
                    &item.context,
                ),
            })
            .collect()
    }

    /// Queue a share batch in the API's JSON: valid items get a request id
    /// at once (status `Processing`), invalid ones an error response.
    pub fn api_submit_shares(
        &self,
        body: &[u8],
    ) -> Result<Vec<wire::ItemResponse>, wire::BatchError> {
        let batch = self.parse_batch(body)?;
        Ok(
            self.share_batch(&batch, None, "the request was not queued", |subs| {
                self.submit(subs)
                    .into_iter()
                    .map(|request| Outcome {
                        request,
                        status: RequestStatus::Processing,
                        grant: None,
                    })
                    .collect()
            }),
        )
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
    /// assert_eq!(answer.share_status, Some(6));
    /// let bad = sharing.api_status("98fe");
    /// assert_eq!((bad.status.as_str(), bad.state.as_deref()), ("Error", Some("NotFound")));
    /// ```
    pub fn api_status(&self, id: &str) -> StatusResponse {
        match id.trim().parse::<RequestId>() {
            Ok(id) => self.status_response(&id),
            Err(e) => StatusResponse::not_found(e.to_string()),
        }
    }
}

/// `sub` with `key`, if there is one.
fn keyed(sub: Submission, key: Option<String>) -> Submission {
    match key {
        Some(key) => sub.key(key),
        None => sub,
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
