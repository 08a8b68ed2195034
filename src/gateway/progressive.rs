//! Progressive ingest of multipart NAR uploads: the parts of an upload to a NAR key are ingested
//! as they arrive, so that Complete has only what is left to do.
//!
//! The first part an upload to a NAR key stages in this gateway starts a *feed*: a task that
//! ingests a body it makes of the upload's parts in order (part 1, 2, 3 …), each as soon as it
//! is staged here, while the client is still sending the others (the aws cli sends ten at a
//! time, out of order). At Complete, the parts the feed has taken must be the first ones the
//! client names (same numbers, same MD5s): then the feed is given the rest from staging, its body
//! ends, and its outcome (the NAR landed and committed, or why not) is Complete's. Otherwise (a
//! part uploaded again with other bytes, parts numbered with gaps, or a Complete that reaches
//! another gateway) the feed is stopped and the upload is ingested from its start, as if there
//! had been no feed.
//!
//! A feed's body never ends but by Complete: a feed that is stopped, or dropped, fails its
//! ingest, so a prefix of parts that happens to be a whole NAR never lands. A feed that hears
//! nothing (no part, no Complete) for [`FEED_IDLE`] stops; so does one whose upload is aborted.
//!
//! **Tees.** A part that reaches this gateway when its feed wants it next is *teed*: its bytes go
//! to staging and to the feed at once, so it is not read back from staging. Before its body is
//! read, UploadPart offers the part to the feed ([`Gateway::offer_part`]); the feed answers
//! offers in the order they came, once it is done with the part before, so parts sent in order
//! (the aws cli sends ten at a time) wait, unread, for their turn, each at most [`TEE_WAIT`].
//! A part that is not the next one when its offer is answered (it overtook another, the one
//! before went to another gateway, …) is staged as before, and read back in its turn. The feed
//! takes a teed part only once it is staged (its marker written); a teed part that fails (the
//! client goes, a checksum does not match, staging fails) stops the feed, whose ingest had some
//! of its bytes: Complete then ingests the upload from its start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::{mpsc, oneshot};

use super::Gateway;
use super::error::internal;
use super::multipart::Failure;
use super::target::Target;
use crate::backend::{BackendError, ByteStream};
use crate::cache::uploads::{StagedPart, Uploads};

/// How long a feed waits for its upload's next part, or its Complete, before it stops.
pub const FEED_IDLE: Duration = Duration::from_secs(300);

/// How long a part waits, unread, to be teed before it is staged without its feed.
pub const TEE_WAIT: Duration = Duration::from_secs(10);

/// The outcome of a feed's ingest, which Complete awaits: the MD5 (hex) of the bytes ingested.
pub type Landed = Shared<BoxFuture<'static, Result<String, Failure>>>;

/// What a feed is told.
enum Event {
    /// A part of its upload was staged in this gateway.
    Staged(StagedPart),
    /// Complete names these parts; the answer is the feed's outcome if it took a prefix of them.
    Complete { parts: Vec<StagedPart>, answer: oneshot::Sender<Option<Landed>> },
    /// Part `number` is about to be received here: the answer, when the feed wants it, is the tee
    /// its bytes go to; dropped if it does not.
    Offer { number: u32, answer: oneshot::Sender<Tee> },
}

/// Where the bytes of a teed part go as they are received, and how its staging ends.
pub struct Tee {
    /// The part's bytes, to the feed.
    bytes: mpsc::Sender<Bytes>,
    /// The part, once staged; dropped if it was not.
    staged: oneshot::Sender<StagedPart>,
}

impl Tee {
    /// `body`, its bytes also sent to the feed as they pass (at the feed's pace).
    pub fn body(&self, body: ByteStream) -> ByteStream {
        let bytes = self.bytes.clone();
        body.then(move |piece| {
            let bytes = bytes.clone();
            async move {
                if let Ok(piece) = &piece {
                    // A feed that stopped takes nothing: the part is staged all the same.
                    let _ = bytes.send(piece.clone()).await;
                }
                piece
            }
        })
        .boxed()
    }

    /// The part was staged: the feed takes it.
    pub fn staged(self, part: StagedPart) {
        let _ = self.staged.send(part);
    }
}

/// What a feed sends its ingest.
enum Piece {
    Data(Bytes),
    /// The upload is complete: the body ends.
    End,
    /// A staged part could not be read.
    Fail(BackendError),
}

/// The feeds of this gateway, by bucket and upload id.
#[derive(Default)]
pub struct Feeds(Mutex<HashMap<(String, String), mpsc::UnboundedSender<Event>>>);

impl Feeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), mpsc::UnboundedSender<Event>>> {
        // Every update is a single insert or remove: a panic while it was held left it whole.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether two staged parts are the same bytes (a part uploaded again gets a new token; the same
/// MD5 and size are the same part).
fn same(a: &StagedPart, b: &StagedPart) -> bool {
    (a.number, a.md5, a.size) == (b.number, b.md5, b.size)
}

impl Gateway {
    /// Part `part` of upload `id` of `key` was staged here: hands it to the upload's feed,
    /// starting one if `key` is a NAR's and there is none.
    pub(super) fn part_staged(&self, bucket: &str, key: &str, id: &str, part: StagedPart) {
        self.feed_event(bucket, key, id, Event::Staged(part));
    }

    /// Part `number` of upload `id` of `key` is about to be received here: the tee its bytes go
    /// to if its feed (started now if `key` is a NAR's and there is none) wants it within
    /// [`TEE_WAIT`]; `None` otherwise, and the part is staged without its feed.
    pub(super) async fn offer_part(&self, bucket: &str, key: &str, id: &str, number: u32) -> Option<Tee> {
        let (answer, answered) = oneshot::channel();
        self.feed_event(bucket, key, id, Event::Offer { number, answer })?;
        tokio::time::timeout(TEE_WAIT, answered).await.ok()?.ok()
    }

    /// Sends `event` to the feed of upload `id` of `key`, starting one if `key` is a NAR's and
    /// there is none (or only one that stopped); `None` if `key` has no feed.
    fn feed_event(&self, bucket: &str, key: &str, id: &str, event: Event) -> Option<()> {
        let target = Target::of(key);
        if !matches!(target, Target::Nar { .. } | Target::NarUpload) {
            return None;
        }
        let mut feeds = self.inner.feeds.lock();
        let slot = (bucket.to_owned(), id.to_owned());
        let event = match feeds.get(&slot) {
            Some(feed) => match feed.send(event) {
                Ok(()) => return Some(()),
                // A feed that stopped: a new one starts (at Complete it is given every part it
                // did not take, from the first).
                Err(mpsc::error::SendError(event)) => event,
            },
            None => event,
        };
        let (events, receiver) = mpsc::unbounded_channel();
        let _ = events.send(event);
        feeds.insert(slot, events);
        tokio::spawn(self.clone().feed(bucket.to_owned(), id.to_owned(), key.to_owned(), target, receiver));
        Some(())
    }

    /// Complete of upload `id` names `parts`: the outcome of its feed, if it has one that took a
    /// prefix of them (it is given the rest); `None` otherwise (a feed is stopped).
    pub(super) async fn complete_feed(&self, bucket: &str, id: &str, parts: &[StagedPart]) -> Option<Landed> {
        let feed = self.inner.feeds.lock().remove(&(bucket.to_owned(), id.to_owned()))?;
        let (answer, answered) = oneshot::channel();
        feed.send(Event::Complete { parts: parts.to_vec(), answer }).ok()?;
        answered.await.ok().flatten()
    }

    /// Upload `id` was aborted: its feed, if any, stops.
    pub(super) fn stop_feed(&self, bucket: &str, id: &str) {
        self.inner.feeds.lock().remove(&(bucket.to_owned(), id.to_owned()));
    }

    /// The feed of upload `id` of `key` (see the [module documentation](self)).
    async fn feed(
        self,
        bucket: String,
        id: String,
        key: String,
        target: Target,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let staging = self.uploads(&bucket);
        let (pieces, received) = mpsc::channel(2);
        let landed = self.start_ingest(&bucket, &key, target, body_of(&key, received));
        // Parts staged but not taken yet, by number; the next part, offered to be teed; the parts
        // taken, in order.
        let mut waiting: BTreeMap<u32, StagedPart> = BTreeMap::new();
        let mut offer: Option<oneshot::Sender<Tee>> = None;
        let mut taken: Vec<StagedPart> = vec![];
        loop {
            let event = match tokio::time::timeout(FEED_IDLE, events.recv()).await {
                Ok(Some(event)) => event,
                // Idle, aborted, or replaced: the ingest fails (the pieces' sender goes).
                _ => break,
            };
            match event {
                Event::Staged(part) => {
                    if part.number as usize > taken.len() {
                        waiting.insert(part.number, part);
                    }
                }
                Event::Offer { number, answer } => {
                    // Only the part the feed wants next is teed; any other is staged without
                    // it (its answer is dropped), to be read back in its turn.
                    if number == taken.len() as u32 + 1 {
                        offer = Some(answer);
                    }
                }
                Event::Complete { parts, answer } => {
                    let prefix =
                        parts.len() >= taken.len() && taken.iter().zip(&parts).all(|(a, b)| same(a, b));
                    if !prefix {
                        let _ = answer.send(None);
                        break;
                    }
                    let _ = answer.send(Some(landed));
                    for part in &parts[taken.len()..] {
                        if !feed_part(&staging, &id, part, &pieces).await {
                            return;
                        }
                    }
                    let _ = pieces.send(Piece::End).await;
                    return;
                }
            }
            loop {
                let next = taken.len() as u32 + 1;
                let part = if let Some(part) = waiting.remove(&next) {
                    if !feed_part(&staging, &id, &part, &pieces).await {
                        // The ingest ended early (the NAR is malformed, …): Complete will find
                        // this feed gone and ingest the upload from its start, to answer why.
                        return;
                    }
                    part
                } else if let Some(offer) = offer.take() {
                    match take_tee(offer, next, &pieces).await {
                        Teed::Taken(part) => {
                            tracing::debug!(%bucket, %id, part = next, "part teed to the progressive ingest");
                            part
                        }
                        // Its client went, or it was staged without the feed meanwhile.
                        Teed::Declined => continue,
                        // Some of its bytes went to the ingest: the body is spoilt.
                        Teed::Failed => return,
                    }
                } else {
                    break;
                };
                taken.push(part);
            }
        }
        tracing::debug!(%bucket, %id, parts = taken.len(), "progressive ingest stopped before Complete");
    }

    /// Starts ingesting `body` as a PUT of the NAR key `key` would (in a task of its own).
    fn start_ingest(&self, bucket: &str, key: &str, target: Target, body: ByteStream) -> Landed {
        let (gateway, cache, key) = (self.clone(), self.cache(bucket), key.to_owned());
        let logged = key.clone();
        let task =
            tokio::spawn(async move { gateway.put_nar(&cache, &key, target, body, (None, None)).await });
        async move {
            match task.await {
                Ok(result) => result.map_err(Failure::from),
                Err(e) => Err(Failure::from(internal(&logged, &e))),
            }
        }
        .boxed()
        .shared()
    }
}

/// How a tee of a part ended.
enum Teed {
    /// Its bytes went to the ingest and it was staged.
    Taken(StagedPart),
    /// Its UploadPart no longer waited for it: nothing went to the ingest.
    Declined,
    /// Some of its bytes went to the ingest but it was not staged (or the ingest ended).
    Failed,
}

/// Tees part `number` of an offer: passes its bytes into `pieces` as they are received, then
/// takes the part once it is staged.
async fn take_tee(offer: oneshot::Sender<Tee>, number: u32, pieces: &mpsc::Sender<Piece>) -> Teed {
    let (bytes, mut received) = mpsc::channel(2);
    let (staged, staging) = oneshot::channel();
    if offer.send(Tee { bytes, staged }).is_err() {
        return Teed::Declined;
    }
    while let Some(piece) = received.recv().await {
        if pieces.send(Piece::Data(piece)).await.is_err() {
            return Teed::Failed;
        }
    }
    match staging.await {
        Ok(part) if part.number == number => Teed::Taken(part),
        _ => Teed::Failed,
    }
}

/// Streams staged part `part` of upload `id` into `pieces`; whether the ingest took all of it.
async fn feed_part(staging: &Uploads, id: &str, part: &StagedPart, pieces: &mpsc::Sender<Piece>) -> bool {
    let mut body = staging.body(id, std::slice::from_ref(part));
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(bytes) => Piece::Data(bytes),
            Err(e) => {
                let _ = pieces.send(Piece::Fail(e)).await;
                return false;
            }
        };
        if pieces.send(piece).await.is_err() {
            return false;
        }
    }
    true
}

/// The body a feed ingests: its pieces, ending only at [`Piece::End`]; a feed that goes without
/// sending it fails the body.
fn body_of(key: &str, received: mpsc::Receiver<Piece>) -> ByteStream {
    let key = key.to_owned();
    futures::stream::unfold(Some(received), move |state| {
        let key = key.clone();
        async move {
            let mut received = state?;
            match received.recv().await {
                Some(Piece::Data(bytes)) => Some((Ok(bytes), Some(received))),
                Some(Piece::End) => None,
                Some(Piece::Fail(e)) => Some((Err(e), None)),
                None => {
                    let message = "the multipart upload was not completed".to_owned();
                    Some((Err(BackendError::Body { key, message }), None))
                }
            }
        }
    })
    .boxed()
}
