//! Queued requests and the worker thread that carries them out.

use std::fmt;
use std::sync::Arc;

use crate::model::history::{FailureKind, HistoryRecord, RequestId};

use super::execute::Begun;
use super::request::{Failure, Submission};
use super::{Sharing, SharingInner};

/// The thread started by [`Sharing::start_worker`]. Dropping it stops the
/// thread (after the request it is carrying out), so keep it for as long
/// as queued requests should be carried out.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let sharing = grantwheel::requests::Sharing::new(grantwheel::Engine::new());
/// sharing.start_worker().unwrap();
/// ```
#[must_use = "the worker stops when this handle is dropped; keep it (`let _worker = ...`) while requests are queued"]
pub struct Worker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    inner: Arc<SharingInner>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Stop the thread (after the request in hand) and wait for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    pub(super) fn shutdown(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        {
            let _queue = self.inner.queue.lock();
            self.inner.queued.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Sharing {
    /// Queue requests and return their ids at once, with status
    /// `Processing`; [`process`](Self::process) or a [`Worker`] carries them
    /// out in order. Requests whose idempotency key was seen before are not
    /// queued again: their earlier id is returned.
    pub fn submit(&self, subs: Vec<Submission>) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(subs.len());
        let mut queued = Vec::new();
        for sub in subs {
            match self.begin(&sub) {
                Begun::New(record) => {
                    ids.push(record.request);
                    queued.push((record, sub));
                }
                Begun::Seen(request) => ids.push(request),
                Begun::Unchecked(record, failure) => {
                    ids.push(record.request);
                    self.conclude(record, Err(failure), false);
                }
            }
        }
        self.enqueue(queued);
        ids
    }

    /// Queue accepted requests. With a durable engine their `Processing`
    /// records are written first, so an id handed out is known after a
    /// restart; if that write fails the requests fail at once (status
    /// `Failed`, nothing queued).
    pub(super) fn enqueue(&self, queued: Vec<(HistoryRecord, Submission)>) {
        if queued.is_empty() {
            // Failures recorded meanwhile are written with the next batch.
            return;
        }
        self.inner
            .write_records(queued.iter().map(|(r, _)| r.clone()).collect());
        if let Err(e) = self.inner.engine.flush() {
            for (record, _) in queued {
                let failure = Failure::new(FailureKind::Store, format!("not accepted: {e}"));
                self.conclude(record, Err(failure), false);
            }
            return;
        }
        self.inner
            .queue
            .lock()
            .extend(queued.into_iter().map(|(r, sub)| (r.request, sub)));
        self.inner.queued.notify_all();
    }

    /// Carry out up to `max` queued requests, oldest first. Returns how many
    /// were carried out.
    pub fn process(&self, max: usize) -> usize {
        let mut done = 0;
        while done < max {
            let Some((request, sub)) = self.inner.queue.lock().pop_front() else {
                break;
            };
            let record = self.inner.memory.lock().in_flight.get(&request).cloned();
            if let Some(record) = record {
                self.execute(record, &sub);
            }
            done += 1;
        }
        done
    }

    /// Requests queued and not yet carried out.
    pub fn pending(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Start a thread that carries out queued requests as they arrive. It
    /// stops when the returned [`Worker`] is stopped or dropped (after the
    /// request in hand).
    ///
    /// # Errors
    ///
    /// The operating system's error when the thread cannot be started.
    pub fn start_worker(&self) -> std::io::Result<Worker> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sharing, flag) = (self.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("grantwheel-requests".into())
            .spawn(move || {
                // Over a shared store: requests another instance left
                // `Processing` when it stopped are failed by whichever
                // instance looks next (its own restart, or this sweep).
                const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
                // Shares nobody approved in time fail within a second.
                const APPROVALS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
                let mut swept = std::time::Instant::now();
                let mut approvals = std::time::Instant::now();
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    if sharing.inner.engine.is_shared() && swept.elapsed() >= SWEEP_EVERY {
                        sharing.inner.fail_interrupted();
                        swept = std::time::Instant::now();
                    }
                    if approvals.elapsed() >= APPROVALS_EVERY {
                        // A store that cannot be read now is tried again
                        // at the next round.
                        let _ = sharing.expire_approvals();
                        approvals = std::time::Instant::now();
                    }
                    if sharing.inner.engine.confirms_starts() {
                        // Starts that came are checked within a round; a
                        // store that cannot be read now is tried again at
                        // the next.
                        let _ = sharing.check_starts();
                    }
                    if sharing.process(64) == 0 {
                        let mut queue = sharing.inner.queue.lock();
                        if queue.is_empty() && !flag.load(std::sync::atomic::Ordering::Acquire) {
                            sharing
                                .inner
                                .queued
                                .wait_for(&mut queue, std::time::Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Worker {
            stop,
            inner: self.inner.clone(),
            handle: Some(handle),
        })
    }
}
