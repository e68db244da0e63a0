//! `RequestActor`: one per request. It carries a validated request through admission
//! (the tenant's quota), into its deployment's queue, and relays the job's output
//! stream back to the client as `RequestEvent`s; at the end it settles the quota
//! (refunding unused output tokens) and records the request's metrics.
//!
//! The client holds the receiving end of the event channel. Dropping it cancels the
//! request wherever it is (queued, or running on a replica), and frees its quota slot;
//! with a resume grace ([`RequestSpec::resume_grace`]) the request keeps running that
//! long first, and is cancelled only if no client resumed its stream ([`resume`]).
//! Every admitted request's stream ends with exactly one `Finished` or `Failed`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use swell_cluster::{
    AdmissionLimits, FinishReason, GenerationRequest, Job, OutputEvent, Priority, Queue, QueueError,
    TokenLogprob, Usage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::metrics as m;
use crate::routing::{DeploymentRouter, RouteRequest};
use crate::quota::{Acquire, QuotaActor, QuotaGrant, QuotaRejection, RateLimitSnapshot, Settle};
use crate::supervisor::{DeploymentSupervisor, ObserveReadiness, Readiness, WorkArrived, WorkFinished, WorkStarted};

/// A validated request, ready to be admitted.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub job_id: String,
    pub deployment: String,
    pub tenant: String,
    pub request: GenerationRequest,
    /// Give up (with `deadline_exceeded`) if still queued after this long.
    pub deadline: Option<Duration>,
    pub max_queue_depth: u64,
    /// Service class in the deployment's queue (the tenant's `priority`, or `high` while
    /// the tenant is within a capacity reservation).
    pub priority: Priority,
    /// When the request reached the edge (for time-to-first-token).
    pub received_at: Instant,
    /// What routing needs of it (block names of its prompt, its session).
    pub route: RouteRequest,
    /// Stored with the job for a client that resumes its stream (`Job::stream_meta`).
    pub stream_meta: Option<String>,
    /// When the client goes away: `None` cancels the job at once; `Some(grace)` lets it
    /// run on, and cancels it only if no client resumed its stream within `grace`.
    pub resume_grace: Option<Duration>,
}

/// The services a request talks to.
#[derive(Clone)]
pub struct RequestDeps {
    pub queue: Arc<dyn Queue>,
    pub supervisor: Addr<DeploymentSupervisor>,
    /// `None`: the tenant has no limits.
    pub quota: Option<Addr<QuotaActor>>,
    /// `None`: jobs are not routed (any replica takes them).
    pub router: Option<Arc<DeploymentRouter>>,
}

/// What the client receives.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// Still waiting for a replica (sent about once a second while it waits). `eta`: the
    /// expected time until a replica takes it ([`crate::wait_estimate`]).
    Waiting { position: Option<u64>, starting: bool, ready_in: Option<Duration>, eta: Option<Duration> },
    /// A replica took the request.
    Started { replica: String },
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    Tokens { text: String, token_ids: Vec<u32>, logprobs: Option<Vec<TokenLogprob>> },
    Finished { reason: FinishReason, usage: Usage },
    Failed { code: String, message: String },
}

impl RequestEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self, RequestEvent::Finished { .. } | RequestEvent::Failed { .. })
    }
}

/// An admitted request.
pub struct Admitted {
    /// 1-based queue position at admission.
    pub position: u64,
    pub rate_limits: RateLimitSnapshot,
    pub events: mpsc::Receiver<RequestEvent>,
    pub handle: Addr<RequestActor>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    Quota(QuotaRejection),
    QueueFull { depth: u64, retry_after: Duration },
    /// The queue could not be reached (Redis down): retry later.
    QueueUnavailable(String),
    Unavailable(String),
}

/// How long a request keeps waiting for its output stream while the queue cannot be
/// reached (a Redis restart) before it ends with `stream_lost`.
pub const OUTAGE_TOLERANCE: Duration = Duration::from_secs(30);

/// `retry-after` of a full queue whose wait cannot be estimated (no replica running or
/// coming, nothing measured yet).
const QUEUE_FULL_RETRY_UNKNOWN: Duration = Duration::from_secs(1);

/// The deployment's readiness and wait inputs; on a gateway that runs no replicas, with
/// the slots its replicas report.
async fn readiness(deps: &RequestDeps) -> Option<Readiness> {
    let readiness = deps.supervisor.send(ObserveReadiness).await.ok()?;
    match (&deps.router, readiness.reported) {
        (Some(router), true) => {
            let (free, busy) = router.reported_slots().await;
            Some(readiness.with_reported_slots(free, busy))
        }
        _ => Some(readiness),
    }
}

/// How long past its deadline a queued request waits for the queue's own verdict.
const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// Admit a request and start relaying it. Resolves once admission is decided.
pub async fn submit(spec: RequestSpec, deps: RequestDeps) -> Result<Admitted, Rejected> {
    start(spec, deps, Mode::Submit).await
}

/// Relay a job that is already in the queue, admitted by another gateway that died
/// before it finished relaying (the Redis ingress's takeover): no quota is taken (the
/// admission took it) and nothing is enqueued; the job's output stream is read from its
/// start, so the events are the whole request's. `position` in the answer is 0.
/// Dropping the events cancels the job, as for a submitted request.
pub async fn attach(spec: RequestSpec, deps: RequestDeps) -> Result<Admitted, Rejected> {
    start(spec, RequestDeps { quota: None, ..deps }, Mode::Attach).await
}

/// Relay a job's output stream to a client that resumed it (`GET /v1/streams/{id}`, a
/// WebSocket `resume`): like [`attach`] (no quota, nothing enqueued, events from the
/// start), as reader number `reader` (what `Queue::attach_reader` answered), which
/// decides, when this client goes away in turn, whether it may cancel the job.
/// Records no request metrics: the request is the original relay's.
pub async fn resume(spec: RequestSpec, deps: RequestDeps, reader: u64) -> Result<Admitted, Rejected> {
    start(spec, RequestDeps { quota: None, ..deps }, Mode::Resume { reader }).await
}

/// How a request actor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Admit and enqueue a new request ([`submit`]).
    Submit,
    /// Relay a job another gateway admitted ([`attach`]).
    Attach,
    /// Relay a job's stream to a client that resumed it ([`resume`]).
    Resume { reader: u64 },
}

async fn start(spec: RequestSpec, deps: RequestDeps, mode: Mode) -> Result<Admitted, Rejected> {
    let (events_tx, events) = mpsc::channel(256);
    let (admission_tx, admission) = oneshot::channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let actor = RequestActor {
        spec: Some(spec),
        deps,
        events: Some(events_tx),
        admission: Some(admission_tx),
        cancel_tx,
        cancel_rx,
        mode,
    };
    let handle = actor.start();
    match admission.await {
        Ok(Ok((position, rate_limits))) => Ok(Admitted { position, rate_limits, events, handle }),
        Ok(Err(rejected)) => Err(rejected),
        Err(_) => Err(Rejected::Unavailable("the request actor stopped before admission".into())),
    }
}

type AdmissionResult = Result<(u64, RateLimitSnapshot), Rejected>;

pub struct RequestActor {
    spec: Option<RequestSpec>,
    deps: RequestDeps,
    events: Option<mpsc::Sender<RequestEvent>>,
    admission: Option<oneshot::Sender<AdmissionResult>>,
    cancel_tx: watch::Sender<bool>,
    cancel_rx: watch::Receiver<bool>,
    mode: Mode,
}

impl Actor for RequestActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (Some(spec), Some(events), Some(admission)) =
            (self.spec.take(), self.events.take(), self.admission.take())
        else {
            ctx.stop();
            return;
        };
        let (deps, cancel) = (self.deps.clone(), self.cancel_rx.clone());
        match self.mode {
            Mode::Submit => {
                let run = run_request(spec, deps, events, admission, cancel);
                ctx.spawn(run.into_actor(self).map(|_, _, ctx| ctx.stop()));
            }
            Mode::Attach | Mode::Resume { .. } => {
                let run = run_attached(spec, deps, events, admission, cancel, self.mode);
                ctx.spawn(run.into_actor(self).map(|_, _, ctx| ctx.stop()));
            }
        }
    }
}

/// Cancel the request (a WebSocket client's `cancel`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelRequest;

impl Handler<CancelRequest> for RequestActor {
    type Result = ();

    fn handle(&mut self, _: CancelRequest, _: &mut Context<Self>) {
        let _ = self.cancel_tx.send(true);
    }
}

/// How the request ended, for metrics and settlement.
struct Outcome {
    status: &'static str,
    generated: u64,
}

/// The request's whole life inside its span. The span is attached to the future
/// (`Instrument`), entered only while it is polled: a guard from `span.enter()` held
/// across `.await`s would stay entered while other tasks run on the thread, so their
/// spans would nest under it, one request under the next, in a parent chain that grows
/// without end (and whose recursive close overflowed the stack under load).
async fn run_request(
    spec: RequestSpec,
    deps: RequestDeps,
    events: mpsc::Sender<RequestEvent>,
    admission: oneshot::Sender<AdmissionResult>,
    cancel: watch::Receiver<bool>,
) {
    use tracing::Instrument as _;
    let span = tracing::info_span!("request", id = %spec.job_id, deployment = %spec.deployment, tenant = %spec.tenant);
    run_request_in_span(spec, deps, events, admission, cancel).instrument(span).await
}

async fn run_request_in_span(
    spec: RequestSpec,
    deps: RequestDeps,
    events: mpsc::Sender<RequestEvent>,
    admission: oneshot::Sender<AdmissionResult>,
    cancel: watch::Receiver<bool>,
) {
    let prompt_tokens = spec.request.prompt_tokens.len() as u64;
    let max_output = spec.request.params.max_tokens as u64;

    // Admission: quota first, then the queue.
    let mut grant: Option<(Addr<QuotaActor>, QuotaGrant)> = None;
    let mut rate_limits = RateLimitSnapshot::default();
    if let Some(quota) = &deps.quota {
        match quota.send(Acquire { prompt_tokens, max_output_tokens: max_output }).await {
            Ok(Ok((granted, snapshot))) => {
                grant = Some((quota.clone(), granted));
                rate_limits = snapshot;
            }
            Ok(Err(rejection)) => {
                m::request_finished(&spec.deployment, &spec.tenant, "rate_limited");
                let _ = admission.send(Err(Rejected::Quota(rejection)));
                return;
            }
            Err(error) => {
                let _ = admission.send(Err(Rejected::Unavailable(format!("quota service unavailable: {error}"))));
                return;
            }
        }
    }
    let settle = |generated: u64| {
        if let Some((quota, granted)) = &grant {
            quota.do_send(Settle { grant_id: granted.grant_id, generated_tokens: generated });
        }
    };
    let route = match &deps.router {
        Some(router) => router.route(&spec.job_id, &spec.route).await,
        None => None,
    };
    let now_ms = swell_cluster::unix_millis();
    let job = Job {
        id: spec.job_id.clone(),
        deployment: spec.deployment.clone(),
        tenant: spec.tenant.clone(),
        request: spec.request.clone(),
        enqueued_at_ms: now_ms,
        deadline_ms: spec.deadline.map(|d| now_ms + d.as_millis() as u64),
        priority: spec.priority,
        route,
        stream_meta: spec.stream_meta.clone(),
    };
    let limits = AdmissionLimits { max_queue_depth: spec.max_queue_depth };
    let position = match deps.queue.enqueue(job, limits).await {
        Ok(enqueued) => enqueued.position,
        Err(error) => {
            settle(0);
            if let Some(router) = &deps.router {
                router.ended(&spec.job_id);
            }
            let rejected = match error {
                QueueError::Full { depth, .. } => {
                    m::request_finished(&spec.deployment, &spec.tenant, "queue_full");
                    // A place frees when the jobs beyond the limit and one more have left
                    // the queue: the wait of that position.
                    let readiness = readiness(&deps).await;
                    let places = depth.saturating_sub(spec.max_queue_depth) + 1;
                    let retry_after = readiness.and_then(|r| r.eta(places)).unwrap_or(QUEUE_FULL_RETRY_UNKNOWN);
                    Rejected::QueueFull { depth, retry_after }
                }
                QueueError::Unavailable(reason) => {
                    m::request_finished(&spec.deployment, &spec.tenant, "queue_unavailable");
                    Rejected::QueueUnavailable(reason)
                }
                other => Rejected::Unavailable(other.to_string()),
            };
            let _ = admission.send(Err(rejected));
            return;
        }
    };
    deps.supervisor.do_send(WorkArrived { prompt_tokens, max_tokens: max_output });
    if admission.send(Ok((position, rate_limits))).is_err() {
        // The caller went away before admission was answered: the job is cancelled,
        // and the request counts as such like any other that ends.
        let _ = deps.queue.cancel(&spec.job_id).await;
        if let Some(router) = &deps.router {
            router.ended(&spec.job_id);
        }
        settle(0);
        m::request_finished(&spec.deployment, &spec.tenant, "cancelled");
        return;
    }

    let outcome = relay(&spec, &deps, &events, cancel, Some(position), 0).await;
    if let Some(router) = &deps.router {
        // A promise the job never used (it ended waiting) stops counting now.
        router.ended(&spec.job_id);
    }
    settle(outcome.generated);
    m::request_finished(&spec.deployment, &spec.tenant, outcome.status);
    m::request_duration(&spec.deployment, spec.received_at.elapsed());
    m::tokens(&spec.deployment, &spec.tenant, prompt_tokens, outcome.generated);
}

/// [`attach`] and [`resume`]: relay a job another relay admitted (in its span,
/// attached to the future as in [`run_request`]).
async fn run_attached(
    spec: RequestSpec,
    deps: RequestDeps,
    events: mpsc::Sender<RequestEvent>,
    admission: oneshot::Sender<AdmissionResult>,
    cancel: watch::Receiver<bool>,
    mode: Mode,
) {
    use tracing::Instrument as _;
    let reader = match mode {
        Mode::Resume { reader } => reader,
        Mode::Submit | Mode::Attach => 0,
    };
    let span = tracing::info_span!("request", id = %spec.job_id, deployment = %spec.deployment, tenant = %spec.tenant, attached = true, reader);
    async move {
        if admission.send(Ok((0, RateLimitSnapshot::default()))).is_err() {
            return;
        }
        let position = deps.queue.position(&spec.deployment, &spec.job_id).await.ok().flatten();
        let outcome = relay(&spec, &deps, &events, cancel, position, reader).await;
        if mode == Mode::Attach {
            m::request_finished(&spec.deployment, &spec.tenant, outcome.status);
        }
    }
    .instrument(span)
    .await
}

/// Relay the job's output stream to the client until it ends. `reader`: which reader
/// of the stream this is (0 the first, then what `Queue::attach_reader` answered).
async fn relay(
    spec: &RequestSpec,
    deps: &RequestDeps,
    events: &mpsc::Sender<RequestEvent>,
    mut cancel: watch::Receiver<bool>,
    position: Option<u64>,
    reader: u64,
) -> Outcome {
    let job_id = spec.job_id.as_str();
    let mut after_seq = 0;
    let mut started = false;
    let mut started_at: Option<Instant> = None;
    let mut generated = 0u64;
    let mut last_token_at: Option<Instant> = None;
    let enqueued_at = Instant::now();
    let mut position = position;
    let mut read_failures = 0u32;
    let mut failing_since: Option<Instant> = None;
    // Empty reads in a row after which the queue had no record of the job.
    let mut unknown_to_queue = 0u32;
    // A resumed stream's reader (`reader > 0`) replays what the first reader measured.
    let measures = reader == 0;

    loop {
        if !started {
            let readiness = readiness(deps).await;
            let waiting = RequestEvent::Waiting {
                position,
                starting: readiness.as_ref().is_some_and(|r| r.ready == 0),
                ready_in: readiness.as_ref().and_then(|r| r.ready_in),
                eta: readiness.as_ref().zip(position).and_then(|(r, position)| r.eta(position)),
            };
            if events.send(waiting).await.is_err() {
                return client_left(spec, deps, &mut cancel, after_seq, generated, reader).await;
            }
        }
        let block = if started { Duration::from_secs(10) } else { Duration::from_secs(1) };
        let read = tokio::select! {
            read = deps.queue.read_output(job_id, after_seq, block) => Some(read),
            _ = events.closed() => None,
            _ = cancel.wait_for(|c| *c) => {
                let _ = deps.queue.cancel(job_id).await;
                let _ = events.send(RequestEvent::Failed { code: "cancelled".into(), message: "the request was cancelled".into() }).await;
                return Outcome { status: "cancelled", generated };
            }
        };
        let Some(read) = read else {
            return client_left(spec, deps, &mut cancel, after_seq, generated, reader).await;
        };
        let batch = match read {
            Ok(batch) => {
                if read_failures > 0 {
                    tracing::info!(read_failures, "the output stream is readable again");
                }
                read_failures = 0;
                failing_since = None;
                batch
            }
            Err(error) => {
                // An unreachable queue (Redis restarting) is waited out for up to
                // `OUTAGE_TOLERANCE`; the replica keeps generating and its output waits
                // in the stream, read from `after_seq` when the queue is back.
                read_failures += 1;
                let since = *failing_since.get_or_insert_with(Instant::now);
                let lost = match &error {
                    QueueError::Unavailable(_) => since.elapsed() >= OUTAGE_TOLERANCE,
                    QueueError::UnknownJob(_) => true,
                    _ => read_failures >= 5,
                };
                if read_failures == 1 {
                    tracing::warn!(%error, "reading the output stream failed; retrying");
                }
                if lost && !started && matches!(error, QueueError::UnknownJob(_)) {
                    // Nothing of it was streamed: the queue lost the whole request (its
                    // state and entry are in one slot), and sending it again is safe.
                    tracing::error!(%error, "the queue holds no record of the request");
                    let message = "the queue lost this request (a Redis failover or a restart without its data); send it again";
                    let _ = events.send(RequestEvent::Failed { code: "job_lost".into(), message: message.into() }).await;
                    return Outcome { status: "job_lost", generated };
                }
                if lost {
                    tracing::error!(%error, "the request's output stream is unreadable");
                    let _ = events
                        .send(RequestEvent::Failed { code: "stream_lost".into(), message: format!("the request's output was lost: {error}") })
                        .await;
                    return Outcome { status: "stream_lost", generated };
                }
                tokio::time::sleep(Duration::from_millis(100 * read_failures.min(10) as u64)).await;
                continue;
            }
        };
        if batch.is_empty() {
            // The queue enforces the deadline when it hands the job out; this is the
            // backstop for a job the queue lost (Redis restarted without its data).
            if !started && spec.deadline.is_some_and(|deadline| enqueued_at.elapsed() > deadline + DEADLINE_GRACE) {
                let _ = deps.queue.cancel(job_id).await;
                let _ = events
                    .send(RequestEvent::Failed {
                        code: "deadline_exceeded".into(),
                        message: "the request's deadline passed while it was queued".into(),
                    })
                    .await;
                return Outcome { status: "deadline_exceeded", generated };
            }
            match deps.queue.position(&spec.deployment, job_id).await {
                Ok(now) => {
                    position = now;
                    unknown_to_queue = 0;
                }
                // No record on the deployment's side and no (further) output: lost (a
                // Redis failover or a restart without its data; a started job whose
                // terminal event was lost after its ack), unless it finished just now,
                // which the next read (its output kept for `output_ttl`) shows.
                Err(QueueError::UnknownJob(_)) => {
                    unknown_to_queue += 1;
                    if unknown_to_queue >= 2 {
                        tracing::error!("the queue holds no record of the request and no output for it");
                        let message = "the queue lost this request (a Redis failover or a restart without its data); send it again";
                        let _ = events.send(RequestEvent::Failed { code: "job_lost".into(), message: message.into() }).await;
                        return Outcome { status: "job_lost", generated };
                    }
                }
                Err(_) => {}
            }
            continue;
        }
        for sequenced in batch {
            after_seq = sequenced.seq;
            let event = match sequenced.event {
                OutputEvent::Started { replica } => {
                    if !started && measures {
                        started_at = Some(Instant::now());
                        if let Some(router) = &deps.router {
                            router.started(job_id, &replica, &spec.route);
                        }
                        m::queue_wait(&spec.deployment, enqueued_at.elapsed());
                        deps.supervisor.do_send(WorkStarted { waited: enqueued_at.elapsed() });
                    }
                    started = true;
                    RequestEvent::Started { replica }
                }
                OutputEvent::PromptLogprobs { logprobs } => RequestEvent::PromptLogprobs(logprobs),
                OutputEvent::Tokens { text, token_ids, logprobs } => {
                    let now = Instant::now();
                    match last_token_at {
                        _ if !measures => {}
                        None => m::time_to_first_token(&spec.deployment, now.duration_since(spec.received_at)),
                        Some(last) => m::inter_token_latency(&spec.deployment, now.duration_since(last)),
                    }
                    last_token_at = Some(now);
                    generated += token_ids.len() as u64;
                    RequestEvent::Tokens { text, token_ids, logprobs }
                }
                OutputEvent::Finished { reason, usage } => {
                    generated = usage.completion_tokens as u64;
                    if let Some(at) = started_at {
                        deps.supervisor.do_send(WorkFinished { held: at.elapsed() });
                    }
                    let _ = events.send(RequestEvent::Finished { reason, usage }).await;
                    return Outcome { status: "ok", generated };
                }
                OutputEvent::Failed { code, message } => {
                    let status = if code == "cancelled" { "cancelled" } else { "failed" };
                    let _ = events.send(RequestEvent::Failed { code, message }).await;
                    return Outcome { status, generated };
                }
            };
            if events.send(event).await.is_err() {
                return client_left(spec, deps, &mut cancel, after_seq, generated, reader).await;
            }
        }
    }
}

/// The client went away at `after_seq`. Without a resume grace the job is cancelled at
/// once. With one, the job runs on while this relay follows its output with nobody to
/// tell (so a quota slot stays held as long as the job runs, and its tokens are
/// counted); when the grace ends, the job is cancelled unless another reader took the
/// stream over meanwhile (`Queue::attach_reader`), which then decides in its turn. A
/// `CancelRequest` (a WebSocket `cancel`) cancels it at once.
async fn client_left(
    spec: &RequestSpec,
    deps: &RequestDeps,
    cancel: &mut watch::Receiver<bool>,
    mut after_seq: u64,
    mut generated: u64,
    reader: u64,
) -> Outcome {
    let job_id = spec.job_id.as_str();
    let Some(grace) = spec.resume_grace.filter(|_| !*cancel.borrow()) else {
        let _ = deps.queue.cancel(job_id).await;
        return Outcome { status: "cancelled", generated };
    };
    tracing::info!(grace_ms = grace.as_millis() as u64, "the client left; the request waits for a resume");
    let decide_at = Instant::now() + grace;
    let mut decided = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if !decided && now >= decide_at {
            decided = true;
            match deps.queue.output_owner(job_id).await {
                Ok(Some(owner)) if owner.readers != reader => {
                    tracing::info!(readers = owner.readers, "the stream was resumed; the request runs on");
                }
                Ok(None) => return Outcome { status: "stream_lost", generated },
                Ok(Some(_)) | Err(_) => {
                    tracing::info!("nobody resumed the stream; cancelling the request");
                    let _ = deps.queue.cancel(job_id).await;
                }
            }
        }
        let block = if decided { Duration::from_secs(10) } else { decide_at.saturating_duration_since(now).max(Duration::from_millis(1)) };
        let read = tokio::select! {
            read = deps.queue.read_output(job_id, after_seq, block) => read,
            _ = cancel.wait_for(|c| *c), if !decided => {
                decided = true;
                let _ = deps.queue.cancel(job_id).await;
                continue;
            }
        };
        match read {
            Ok(batch) => {
                failing_since = None;
                for sequenced in batch {
                    after_seq = sequenced.seq;
                    match sequenced.event {
                        OutputEvent::Tokens { token_ids, .. } => generated += token_ids.len() as u64,
                        OutputEvent::Finished { usage, .. } => {
                            return Outcome { status: "ok", generated: usage.completion_tokens as u64 };
                        }
                        OutputEvent::Failed { code, .. } => {
                            let status = if code == "cancelled" { "cancelled" } else { "failed" };
                            return Outcome { status, generated };
                        }
                        OutputEvent::Started { .. } | OutputEvent::PromptLogprobs { .. } => {}
                    }
                }
            }
            Err(QueueError::UnknownJob(_)) => return Outcome { status: "stream_lost", generated },
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= OUTAGE_TOLERANCE {
                    tracing::error!(%error, "the output stream of a request whose client left is unreadable");
                    return Outcome { status: "stream_lost", generated };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
