//! Every request runs in its own `request` span, and that span is a root: concurrent
//! requests on one thread do not nest under each other. (A span entered with
//! `span.enter()` and held across `.await`s stays entered while other tasks run on the
//! thread, so each new request span became a child of the previous one: an endless
//! parent chain whose recursive close overflowed the stack under load.)
//!
//! One test in its own binary: it installs the process's global tracing subscriber.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Counts `request` spans, and those with a `request` span among their ancestors.
#[derive(Clone, Default)]
struct RequestSpans {
    created: Arc<AtomicUsize>,
    nested: Arc<AtomicUsize>,
}

impl<S> tracing_subscriber::Layer<S> for RequestSpans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        let Some(span) = ctx.span(id) else { return };
        if span.scope().skip(1).any(|ancestor| ancestor.name() == "request") {
            self.nested.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[actix_rt::test]
async fn concurrent_requests_do_not_nest_their_spans() {
    let spans = RequestSpans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
        .expect("the only subscriber of this test binary");
    let server = common::start(
        r#"
[deployments.spans]
engine = "sim"
[deployments.spans.sim]
profile = "zero"
decode_step_base = "5ms"
[deployments.spans.autoscaling]
min_replicas = 1
"#,
    )
    .await;
    let body = json!({"model": "spans", "prompt": "hello there", "max_tokens": 8, "stream": true});
    let requests = (0..40).map(|_| common::post(&server, "/v1/completions", None, &body));
    for (status, _, text) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{text}");
    }
    let created = spans.created.load(Ordering::Relaxed);
    assert!(created >= 40, "{created} request spans");
    assert_eq!(spans.nested.load(Ordering::Relaxed), 0, "request spans nested under other requests");
    server.stop(true).await;
}
