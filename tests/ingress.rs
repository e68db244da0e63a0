//! The Redis ingress end to end: a server on the Redis queue with the ingress consumer,
//! each test with a `redis-server` of its own. Jobs pushed by the example Python
//! producer (redis-py) and by the Rust producer (bincode) are served; bad entries are
//! answered with the HTTP API's error codes and do not stop the stream; quotas hold for
//! ingress as for HTTP; a repeated id is answered once. Replies go only under the
//! tenant's reply prefix, only to a stream, with a TTL only on a stream Swell created;
//! a refused `reply_to` gets nothing and its entry is dropped, not retried.

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use swell::config::Config;
use swell::ingress::{start_ingress, IngressConfig, IngressHandle};
use swell::server::{start_with_queue, ServerHandle};
use swell_actors::quota::TenantLimits;
use swell_cluster::ingress_wire::{Encoding, IngressRequest, Producer, Reply, ReplyKind, RequestKind};
use swell_cluster::redis_queue::testing::{RedisServer, RedisServerOptions};
use swell_cluster::{RedisQueue, RedisQueueConfig};

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    server: ServerHandle,
    ingress: Option<IngressHandle>,
    producer: Producer,
    redis: redis::aio::MultiplexedConnection,
    url: String,
    // Last: dropped (killed) after everything that talks to it.
    redis_server: RedisServer,
}

impl Fixture {
    /// A server with the ingress consumer (its `block` short, so tests stop quickly).
    async fn start() -> Self {
        let mut fixture = Self::start_without_ingress().await;
        fixture.start_ingress(IngressConfig { block: Duration::from_millis(200), ..IngressConfig::default() }).await;
        fixture
    }

    async fn start_ingress(&mut self, config: IngressConfig) {
        let ingress = start_ingress(self.server.state.clone(), &self.url, config).await.expect("ingress starts");
        self.ingress = Some(ingress);
    }

    fn ingress(&self) -> &IngressHandle {
        self.ingress.as_ref().expect("the ingress consumer runs")
    }

    async fn start_without_ingress() -> Self {
        Self::start_without_ingress_on(RedisServerOptions::default()).await
    }

    async fn start_without_ingress_on(options: RedisServerOptions) -> Self {
        let redis_server = RedisServer::start(options);
        let url = redis_server.url();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{}\"\nautoscaler_tick = \"100ms\"\nshutdown_timeout = \"2s\"\n{}",
            common::ADMIN_TOKEN,
            common::DEFAULT_DEPLOYMENT
        );
        let config = Config::from_toml_str(&text).expect("test config is valid");
        let queue = RedisQueue::connect(RedisQueueConfig { url: url.clone(), ..RedisQueueConfig::default() })
            .await
            .expect("the queue connects");
        let server = start_with_queue(config, Arc::new(queue)).await.expect("server starts");
        let producer = Producer::connect(&url, "swell").await.expect("the producer connects");
        let redis = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        Self { server, ingress: None, producer, redis, url, redis_server }
    }

    /// A tenant with `limits` and a key for it.
    fn tenant(&self, id: &str, limits: TenantLimits) -> String {
        self.server.state.upsert_tenant(id, limits, Default::default()).expect("the tenant is valid");
        self.server.state.tenants.create_key(id).unwrap().api_key
    }

    /// XADDs raw fields to the ingress stream.
    async fn push_raw(&mut self, fields: &[(&str, &str)]) {
        let mut command = redis::cmd("XADD");
        command.arg(self.producer.stream()).arg("*");
        for (name, value) in fields {
            command.arg(*name).arg(*value);
        }
        command.query_async::<String>(&mut self.redis).await.unwrap();
    }

    /// Submits `request` and has a gateway read it and die before deciding it: the entry
    /// stays pending with that gateway.
    async fn leave_pending(&mut self, request: &IngressRequest) {
        let stream = self.producer.stream().to_string();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("gateways")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        self.producer.submit(request, Encoding::Json).await.unwrap();
        let read: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("gateways")
            .arg("dead-gateway")
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        assert_ne!(read, redis::Value::Nil);
    }

    /// A consumer that takes pending entries over at once.
    async fn start_ingress_taking_over(&mut self) {
        self.start_ingress(IngressConfig {
            block: Duration::from_millis(100),
            claim_idle: Duration::from_millis(300),
            claim_interval: Duration::from_millis(100),
            ..IngressConfig::default()
        })
        .await;
    }

    /// Every reply of `reply_to` so far.
    async fn replies(&self, reply_to: &str) -> Vec<Reply> {
        self.producer.read_replies(reply_to, "0", None).await.unwrap().into_iter().map(|(_, reply)| reply).collect()
    }

    async fn stop(self) {
        if let Some(ingress) = self.ingress {
            ingress.stop(Duration::from_secs(2)).await;
        }
        self.server.stop(true).await;
    }
}

fn chat_request(id: &str, api_key: &str, reply_to: &str, body: Value) -> IngressRequest {
    IngressRequest {
        id: id.into(),
        api_key: Some(api_key.into()),
        deployment: "default".into(),
        kind: RequestKind::Chat,
        request: body.to_string(),
        reply_to: reply_to.into(),
        deadline_ms: None,
    }
}

/// The default reply prefix of `tenant` (docs/ingress.md): `swell-replies:<n>:<tenant>:`.
fn reply_prefix(tenant: &str) -> String {
    format!("swell-replies:{}:{tenant}:", tenant.len())
}

/// A reply stream under `tenant`'s default reply prefix.
fn reply_to(tenant: &str, tag: &str) -> String {
    format!("{}{{{tag}}}", reply_prefix(tenant))
}

fn hello(max_tokens: u32) -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "ignore_eos": true})
}

fn python() -> String {
    let python = std::env::var("SWELL_TEST_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let have_redis = std::process::Command::new(&python)
        .args(["-c", "import redis"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have_redis,
        "this test needs Python with the `redis` package (redis-py) at {python}: run `scripts/test-tools` \
         (or `scripts/test`, which runs it), or point SWELL_TEST_PYTHON at such a Python"
    );
    python
}

#[actix_rt::test]
async fn the_python_producer_pushes_jobs_and_reads_completions() {
    let python = python();
    let fixture = Fixture::start().await;
    let key = fixture.tenant("py", TenantLimits::default());
    let url = fixture.url.clone();
    let run = |extra: &'static [&'static str]| {
        let (python, url, key) = (python.clone(), url.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/ingress_producer.py"))
                .args(["--redis", &url, "--api-key", &key, "--tenant", "py", "--deployment", "default", "--max-tokens", "5", "--timeout", "60"])
                .args(extra)
                .output()
                .expect("python runs")
        })
    };
    for extra in [&["-n", "3", "Hello there"][..], &["-n", "2", "--stream", "--kind", "completion", "Once upon"][..]] {
        let output = run(extra).await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the producer failed:\n{stdout}\n{stderr}");
        let n = extra[1];
        assert!(stdout.contains(&format!("completed {n}/{n}")), "{stdout}");
    }
    let seen = fixture.ingress().observe();
    assert_eq!((seen.admitted, seen.completed, seen.rejected), (5, 5, 0), "{seen:?}");
    fixture.stop().await;
}

#[actix_rt::test]
async fn bad_entries_get_error_replies_and_the_stream_keeps_flowing() {
    let mut fixture = Fixture::start().await;
    let key = fixture.tenant("acme", TenantLimits::default());
    let reply_to: &'static str = Box::leak(reply_to("acme", "bad").into_boxed_str());
    let body: &'static str = Box::leak(hello(3).to_string().into_boxed_str());
    let good = |id: &'static str| {
        vec![("v", "1"), ("id", id), ("deployment", "default"), ("request", body), ("reply_to", reply_to)]
    };
    let with = |id: &'static str, name: &'static str, value: &'static str| {
        let mut fields = good(id);
        fields.retain(|(field, _)| *field != name);
        fields.push((name, value));
        fields
    };
    let without = |id: &'static str, name: &'static str| {
        let mut fields = good(id);
        fields.retain(|(field, _)| *field != name);
        fields
    };
    let key_field = |mut fields: Vec<(&'static str, &'static str)>, key: &'static str| {
        fields.push(("api_key", key));
        fields
    };
    let key: &'static str = Box::leak(key.into_boxed_str());
    let entries = [
        key_field(good("bad-key"), "sk-swell-wrong"),
        good("no-key"),
        key_field(with("bad-json", "request", "{\"messages\": [oops"), key),
        key_field(with("unknown-deployment", "deployment", "nope"), key),
        key_field(without("missing-deployment", "deployment"), key),
        key_field(with("wrong-version", "v", "2"), key),
        key_field(with("bad-kind", "kind", "embedding"), key),
        key_field(with("past-deadline", "deadline_ms", "1000"), key),
        key_field(with("too-long", "request", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000}"#), key),
        key_field(with("swell-key", "reply_to", "swell:{dep:default}:jobs"), key),
        key_field(without("no-reply-to", "reply_to"), key),
        key_field(good("good"), key),
    ];
    for fields in &entries {
        fixture.push_raw(fields).await;
    }
    let good_replies = fixture.producer.wait_for(reply_to, "good", WAIT).await.unwrap();
    assert_eq!(good_replies.last().unwrap().kind, ReplyKind::Completion, "{good_replies:?}");
    assert_eq!(good_replies.last().unwrap().data["usage"]["completion_tokens"], 3);

    let expected = [
        ("bad-key", "invalid_api_key", 401),
        ("no-key", "missing_api_key", 401),
        ("bad-json", "invalid_json", 400),
        ("unknown-deployment", "model_not_found", 404),
        ("missing-deployment", "missing_required_parameter", 400),
        ("wrong-version", "unsupported_version", 400),
        ("bad-kind", "invalid_value", 400),
        ("past-deadline", "deadline_exceeded", 503),
        ("too-long", "max_tokens_exceeds_limit", 400),
    ];
    let replies = common::wait_for("every error reply", WAIT, || {
        let fixture = &fixture;
        async move {
            let replies = fixture.replies(reply_to).await;
            (replies.iter().filter(|reply| reply.kind == ReplyKind::Error).count() >= expected.len()).then_some(replies)
        }
    })
    .await;
    for (id, code, status) in expected {
        let mine: Vec<&Reply> = replies.iter().filter(|reply| reply.id.as_deref() == Some(id)).collect();
        assert_eq!(mine.len(), 1, "{id}: {mine:?}");
        assert_eq!(mine[0].error_code(), Some(code), "{id}: {:?}", mine[0]);
        assert_eq!(mine[0].data["status"], status, "{id}: {:?}", mine[0]);
        assert_eq!(mine[0].seq, 0);
    }
    let missing = replies.iter().find(|reply| reply.id.as_deref() == Some("missing-deployment")).unwrap();
    assert_eq!(missing.data["error"]["param"], "deployment");
    // Nothing was written into Swell's own keys; the unanswerable entries are counted.
    assert!(replies.iter().all(|reply| reply.id.as_deref() != Some("swell-key")));
    let seen = common::wait_for("every entry handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 12 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    assert_eq!((seen.rejected, seen.unanswerable, seen.admitted, seen.completed), (9, 2, 1, 1), "{seen:?}");
    assert_eq!(seen.reply_to_refused, 1, "swell's own key: {seen:?}");
    // Every entry was acknowledged and deleted.
    let length: u64 = redis::cmd("XLEN").arg(fixture.producer.stream()).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(length, 0);
    fixture.stop().await;
}

#[actix_rt::test]
async fn an_ingress_producer_cannot_bypass_the_tenant_quota() {
    let fixture = Fixture::start().await;
    let key = fixture.tenant("limited", TenantLimits { requests_per_minute: Some(2), ..TenantLimits::default() });
    let reply_to = &reply_to("limited", "quota");
    for n in 0..2 {
        let id = format!("q-{n}");
        fixture.producer.submit(&chat_request(&id, &key, reply_to, hello(2)), Encoding::Json).await.unwrap();
        let replies = fixture.producer.wait_for(reply_to, &id, WAIT).await.unwrap();
        assert_eq!(replies.last().unwrap().kind, ReplyKind::Completion, "{replies:?}");
    }
    fixture.producer.submit(&chat_request("q-2", &key, reply_to, hello(2)), Encoding::Json).await.unwrap();
    let replies = fixture.producer.wait_for(reply_to, "q-2", WAIT).await.unwrap();
    let refused = replies.last().unwrap();
    assert_eq!(refused.kind, ReplyKind::Error);
    assert_eq!(refused.data["status"], 429, "{refused:?}");
    assert_eq!(refused.error_code(), Some("rate_limit_exceeded"));
    assert_eq!(refused.data["error"]["type"], "rate_limit_error");
    assert!(refused.data["retry_after_seconds"].as_u64().is_some_and(|s| (1..=30).contains(&s)), "{refused:?}");

    // The same tenant over HTTP is refused the same way: ingress and HTTP share the quota.
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (status, _, text) = common::post(&fixture.server, "/v1/chat/completions", Some(&key), &body).await;
    assert_eq!(status, 429, "{text}");
    let http: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(http["error"]["code"], refused.data["error"]["code"]);
    assert_eq!(http["error"]["type"], refused.data["error"]["type"]);
    // A refused id may be tried again (its marker was removed): refused again, not ignored.
    fixture.producer.submit(&chat_request("q-2", &key, reply_to, hello(2)), Encoding::Json).await.unwrap();
    common::wait_for("a second refusal of q-2", WAIT, || {
        let fixture = &fixture;
        async move {
            let replies = fixture.replies(reply_to).await;
            let refusals = replies.iter().filter(|reply| reply.id.as_deref() == Some("q-2") && reply.error_code() == Some("rate_limit_exceeded"));
            (refusals.count() == 2).then_some(())
        }
    })
    .await;
    fixture.stop().await;
}

#[actix_rt::test]
async fn a_bincode_entry_from_the_rust_producer_is_served_streaming() {
    let fixture = Fixture::start().await;
    let key = fixture.tenant("rust", TenantLimits::default());
    let reply_to = &reply_to("rust", "rust");
    let mut body = hello(6);
    body["stream"] = json!(true);
    let request = chat_request("bin-1", &key, reply_to, body);
    fixture.producer.submit(&request, Encoding::Bincode).await.unwrap();
    let replies = fixture.producer.wait_for(reply_to, "bin-1", WAIT).await.unwrap();
    let seqs: Vec<u64> = replies.iter().map(|reply| reply.seq).collect();
    assert_eq!(seqs, (0..replies.len() as u64).collect::<Vec<_>>());
    let done = replies.last().unwrap();
    assert_eq!(done.kind, ReplyKind::Done, "{replies:?}");
    assert_eq!(done.data["usage"]["completion_tokens"], 6);
    assert_eq!(done.data["finish_reason"], "length");
    let chunks: Vec<&Reply> = replies.iter().filter(|reply| reply.kind == ReplyKind::Chunk).collect();
    assert!(!chunks.is_empty());
    assert!(chunks.iter().all(|chunk| chunk.data["object"] == "chat.completion.chunk"), "{chunks:?}");
    let text: String =
        chunks.iter().filter_map(|chunk| chunk.data["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.is_empty(), "{replies:?}");
    fixture.stop().await;
}

#[actix_rt::test]
async fn a_repeated_id_is_answered_once() {
    let fixture = Fixture::start().await;
    let key = fixture.tenant("dup", TenantLimits::default());
    let reply_to = &reply_to("dup", "dup");
    let request = chat_request("same", &key, reply_to, hello(4));
    fixture.producer.submit(&request, Encoding::Json).await.unwrap();
    fixture.producer.submit(&request, Encoding::Bincode).await.unwrap();
    fixture.producer.wait_for(reply_to, "same", WAIT).await.unwrap();
    fixture.producer.submit(&request, Encoding::Json).await.unwrap();
    fixture.producer.submit(&chat_request("after", &key, reply_to, hello(2)), Encoding::Json).await.unwrap();
    fixture.producer.wait_for(reply_to, "after", WAIT).await.unwrap();
    let seen = common::wait_for("both repeats acknowledged", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.duplicates == 2 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    assert_eq!((seen.received, seen.admitted, seen.completed), (4, 2, 2), "{seen:?}");
    let replies = fixture.replies(reply_to).await;
    let terminal: Vec<&Reply> =
        replies.iter().filter(|reply| reply.id.as_deref() == Some("same") && reply.kind.is_terminal()).collect();
    assert_eq!(terminal.len(), 1, "{replies:?}");
    assert_eq!(terminal[0].kind, ReplyKind::Completion);
    fixture.stop().await;
}

#[actix_rt::test]
async fn an_entry_left_pending_by_a_gateway_that_died_is_taken_over() {
    let mut fixture = Fixture::start_without_ingress().await;
    let key = fixture.tenant("late", TenantLimits::default());
    let reply_to = &reply_to("late", "late");
    let stream = fixture.producer.stream().to_string();
    fixture.leave_pending(&chat_request("orphan", &key, reply_to, hello(3))).await;
    fixture.start_ingress_taking_over().await;
    let replies = fixture.producer.wait_for(reply_to, "orphan", WAIT).await.unwrap();
    assert_eq!(replies.last().unwrap().kind, ReplyKind::Completion, "{replies:?}");
    // Acknowledged and deleted once its terminal reply is written.
    let redis = fixture.redis.clone();
    common::wait_for("the entry deleted", WAIT, || {
        let (mut redis, stream) = (redis.clone(), stream.clone());
        async move {
            let length: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut redis).await.ok()?;
            (length == 0).then_some(())
        }
    })
    .await;
    fixture.stop().await;
}

/// A tenant cannot have Swell write into another tenant's reply
/// stream. Nothing is written there, and the entry is acknowledged.
#[actix_rt::test]
async fn a_reply_to_under_another_tenants_prefix_is_refused_and_nothing_is_written_there() {
    let mut fixture = Fixture::start().await;
    let alpha = fixture.tenant("alpha", TenantLimits::default());
    let beta = fixture.tenant("beta", TenantLimits::default());
    let betas = reply_to("beta", "b");
    // Beta's stream exists (its own request was answered there).
    fixture.producer.submit(&chat_request("beta-1", &beta, &betas, hello(2)), Encoding::Json).await.unwrap();
    fixture.producer.wait_for(&betas, "beta-1", WAIT).await.unwrap();
    // Alpha names it, and a stream of a tenant whose id starts like alpha's.
    fixture.producer.submit(&chat_request("alpha-1", &alpha, &betas, hello(2)), Encoding::Json).await.unwrap();
    let lookalike = format!("{}{{a}}", reply_prefix("alpha:x"));
    fixture.producer.submit(&chat_request("alpha-2", &alpha, &lookalike, hello(2)), Encoding::Json).await.unwrap();
    // Alpha's own stream works.
    let alphas = reply_to("alpha", "a");
    fixture.producer.submit(&chat_request("alpha-3", &alpha, &alphas, hello(2)), Encoding::Json).await.unwrap();
    let replies = fixture.producer.wait_for(&alphas, "alpha-3", WAIT).await.unwrap();
    assert_eq!(replies.last().unwrap().kind, ReplyKind::Completion, "{replies:?}");
    let seen = common::wait_for("every entry handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 4 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    let on_betas = fixture.replies(&betas).await;
    assert!(on_betas.iter().all(|reply| reply.id.as_deref() == Some("beta-1")), "{on_betas:?}");
    let exists: u64 = redis::cmd("EXISTS").arg(&lookalike).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(exists, 0, "nothing was written under the prefix of tenant `alpha:x`");
    let length: u64 = redis::cmd("XLEN").arg(fixture.producer.stream()).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(length, 0, "the refused entries were acknowledged and deleted");
    assert_eq!((seen.reply_to_refused, seen.unanswerable, seen.admitted), (2, 2, 2), "nothing was generated for them: {seen:?}");
    fixture.stop().await;
}

async fn pttl(redis: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(redis).await.unwrap()
}

/// Another application's stream gets no reply and no TTL, whether
/// the entry names a tenant or not; under the tenant's prefix a stream the producer made
/// itself gets the replies but keeps its lifetime, and one Swell creates gets the TTL.
#[actix_rt::test]
async fn a_stream_swell_did_not_create_never_gets_a_ttl() {
    let mut fixture = Fixture::start().await;
    let key = fixture.tenant("acme", TenantLimits::default());
    let foreign = "orders:events";
    let _: String = redis::cmd("XADD").arg(foreign).arg("*").arg("order").arg("1").query_async(&mut fixture.redis).await.unwrap();
    fixture.producer.submit(&chat_request("to-foreign", &key, foreign, hello(2)), Encoding::Json).await.unwrap();
    let mut wrong_key = chat_request("wrong-key", "sk-swell-wrong", foreign, hello(2));
    fixture.producer.submit(&wrong_key, Encoding::Json).await.unwrap();
    wrong_key.api_key = None;
    fixture.producer.submit(&wrong_key, Encoding::Json).await.unwrap();

    // The producer's own stream (made for its consumer group), under its prefix.
    let own = reply_to("acme", "own");
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&own).arg("mine").arg("$").arg("MKSTREAM").query_async(&mut fixture.redis).await.unwrap();
    fixture.producer.submit(&chat_request("to-own", &key, &own, hello(2)), Encoding::Json).await.unwrap();
    let created = reply_to("acme", "new");
    fixture.producer.submit(&chat_request("to-new", &key, &created, hello(2)), Encoding::Json).await.unwrap();
    for (stream, id) in [(&own, "to-own"), (&created, "to-new")] {
        let replies = fixture.producer.wait_for(stream, id, WAIT).await.unwrap();
        assert_eq!(replies.last().unwrap().kind, ReplyKind::Completion, "{replies:?}");
    }
    let seen = common::wait_for("every entry handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 5 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    assert_eq!(pttl(&mut fixture.redis, foreign).await, -1, "another application's stream got a TTL");
    let length: u64 = redis::cmd("XLEN").arg(foreign).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(length, 1, "nothing was appended to another application's stream");
    assert_eq!(pttl(&mut fixture.redis, &own).await, -1, "the producer's own stream keeps its lifetime");
    let ttl = pttl(&mut fixture.redis, &created).await;
    assert!(ttl > 0 && ttl <= 3_600_000, "a stream swell created expires: {ttl}");
    assert_eq!((seen.reply_to_refused, seen.unanswerable, seen.admitted, seen.completed), (3, 3, 2, 2), "{seen:?}");
    fixture.stop().await;
}

/// A `reply_to` that is a string or a list gets no TTL (it would
/// be deleted), nothing is generated for it, and its entry is acknowledged, not taken
/// over again and again.
#[actix_rt::test]
async fn a_reply_to_that_is_not_a_stream_is_left_alone_and_its_entry_is_not_retried() {
    let mut fixture = Fixture::start_without_ingress().await;
    let claim_idle = Duration::from_millis(300);
    fixture
        .start_ingress(IngressConfig {
            block: Duration::from_millis(100),
            claim_idle,
            claim_interval: Duration::from_millis(100),
            ..IngressConfig::default()
        })
        .await;
    let key = fixture.tenant("acme", TenantLimits::default());
    let (text, list) = (reply_to("acme", "text"), reply_to("acme", "list"));
    let _: () = redis::cmd("SET").arg(&text).arg("keep me").query_async(&mut fixture.redis).await.unwrap();
    let _: () = redis::cmd("RPUSH").arg(&list).arg("keep me").query_async(&mut fixture.redis).await.unwrap();
    fixture.producer.submit(&chat_request("to-text", &key, &text, hello(2)), Encoding::Json).await.unwrap();
    fixture.producer.submit(&chat_request("to-list", &key, &list, hello(2)), Encoding::Bincode).await.unwrap();
    common::wait_for("both entries handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 2 && snapshot.in_flight == 0).then_some(()) }
    })
    .await;
    // Long enough for a pending entry to be taken over several times.
    tokio::time::sleep(claim_idle * 4).await;
    for key in [&text, &list] {
        assert_eq!(pttl(&mut fixture.redis, key).await, -1, "{key} got a TTL");
    }
    let value: String = redis::cmd("GET").arg(&text).query_async(&mut fixture.redis).await.unwrap();
    let items: Vec<String> = redis::cmd("LRANGE").arg(&list).arg(0).arg(-1).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!((value.as_str(), items), ("keep me", vec!["keep me".to_string()]));
    let stream = fixture.producer.stream().to_string();
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(&stream).arg("gateways").query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(pending.0, 0, "the entries were acknowledged");
    let length: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut fixture.redis).await.unwrap();
    assert_eq!(length, 0);
    // Read once each, never taken over again; nothing generated.
    let seen = fixture.ingress().observe();
    assert_eq!((seen.received, seen.reply_to_refused, seen.unanswerable, seen.admitted, seen.resumed), (2, 2, 2, 0, 0), "{seen:?}");
    fixture.stop().await;
}

/// Tenant `col` with id `x:1` and tenant `col:x` with id `1` are
/// two requests, and both are answered.
#[actix_rt::test]
async fn ids_of_tenants_whose_names_run_together_do_not_collide() {
    let fixture = Fixture::start().await;
    let col = fixture.tenant("col", TenantLimits::default());
    let col_x = fixture.tenant("col:x", TenantLimits::default());
    let (reply_col, reply_col_x) = (reply_to("col", "r"), reply_to("col:x", "r"));
    fixture.producer.submit(&chat_request("x:1", &col, &reply_col, hello(2)), Encoding::Json).await.unwrap();
    fixture.producer.wait_for(&reply_col, "x:1", WAIT).await.unwrap();
    fixture.producer.submit(&chat_request("1", &col_x, &reply_col_x, hello(2)), Encoding::Json).await.unwrap();
    let seen = common::wait_for("both entries handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 2 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    for (stream, id) in [(&reply_col, "x:1"), (&reply_col_x, "1")] {
        let replies = fixture.replies(stream).await;
        let terminal: Vec<&Reply> = replies.iter().filter(|reply| reply.id.as_deref() == Some(id) && reply.kind.is_terminal()).collect();
        assert_eq!(terminal.len(), 1, "{id} was not answered: {replies:?}");
        assert_eq!(terminal[0].kind, ReplyKind::Completion);
    }
    assert_eq!((seen.duplicates, seen.admitted, seen.completed), (0, 2, 2), "{seen:?}");
    fixture.stop().await;
}

/// A reply prefix set through the admin API replaces the tenant's default one; one that
/// overlaps another tenant's or Swell's keys is refused.
#[actix_rt::test]
async fn a_configured_reply_prefix_replaces_the_default() {
    let fixture = Fixture::start().await;
    assert_eq!(reply_prefix("acme"), swell_cluster::ingress_wire::default_reply_prefix("swell", "acme"), "the spec's format");
    let key = fixture.tenant("acme", TenantLimits::default());
    fixture.tenant("beta", TenantLimits::default());
    let (status, view) = common::admin(&fixture.server, "PUT", "/tenants/acme", Some(json!({"reply_prefix": "acme:out:"}))).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!((view["reply_prefix"].as_str(), view["effective_reply_prefix"].as_str()), (Some("acme:out:"), Some("acme:out:")));
    for (prefix, tenant) in [("acme:", "beta"), ("swell:x:", "beta"), ("swell-replies:", "beta")] {
        let (status, error) = common::admin(&fixture.server, "PUT", &format!("/tenants/{tenant}"), Some(json!({"reply_prefix": prefix}))).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some("reply_prefix")), "{prefix}: {error}");
    }
    let (_, view) = common::admin(&fixture.server, "GET", "/tenants/beta", None).await;
    assert_eq!((view["reply_prefix"].as_str(), view["effective_reply_prefix"].as_str()), (None, Some(reply_prefix("beta").as_str())));

    let configured = "acme:out:{1}";
    fixture.producer.submit(&chat_request("configured", &key, configured, hello(2)), Encoding::Json).await.unwrap();
    let replies = fixture.producer.wait_for(configured, "configured", WAIT).await.unwrap();
    assert_eq!(replies.last().unwrap().kind, ReplyKind::Completion, "{replies:?}");
    let default = reply_to("acme", "1");
    fixture.producer.submit(&chat_request("default", &key, &default, hello(2)), Encoding::Json).await.unwrap();
    let seen = common::wait_for("both entries handled", WAIT, || {
        let snapshot = fixture.ingress().observe();
        async move { (snapshot.received == 2 && snapshot.in_flight == 0).then_some(snapshot) }
    })
    .await;
    assert_eq!((seen.admitted, seen.reply_to_refused), (1, 1), "the default prefix is no longer acme's: {seen:?}");
    assert!(fixture.replies(&default).await.is_empty());
    fixture.stop().await;
}

/// Redis restarted (from its AOF) while a streaming request's replies are being written:
/// the gateway waits the outage out and goes on; the request is neither cancelled nor
/// told twice (one reply per `seq`, one terminal reply, every token).
#[actix_rt::test]
async fn a_redis_restart_mid_stream_neither_cancels_nor_repeats_ingress_replies() {
    let options = RedisServerOptions { append_only: true, append_fsync: "always" };
    let mut fixture = Fixture::start_without_ingress_on(options).await;
    fixture.start_ingress(IngressConfig { block: Duration::from_millis(200), ..IngressConfig::default() }).await;
    let key = fixture.tenant("outage", TenantLimits::default());
    let reply_to = &reply_to("outage", "outage");
    let mut body = hello(1000);
    body["stream"] = json!(true);
    fixture.producer.submit(&chat_request("through", &key, reply_to, body), Encoding::Json).await.unwrap();
    common::wait_for("the first chunk replies", WAIT, || async {
        let chunks = fixture.replies(reply_to).await.iter().filter(|r| r.kind == ReplyKind::Chunk).count();
        (chunks >= 10).then_some(())
    })
    .await;
    fixture.redis_server.restart();

    let producer = Producer::connect(&fixture.url, "swell").await.expect("the producer reconnects");
    let replies = producer.wait_for(reply_to, "through", WAIT).await.unwrap();
    let seqs: Vec<u64> = replies.iter().map(|reply| reply.seq).collect();
    assert_eq!(seqs, (0..replies.len() as u64).collect::<Vec<_>>(), "one reply per seq");
    let done = replies.last().unwrap();
    assert_eq!(done.kind, ReplyKind::Done, "not cancelled: {done:?}");
    assert_eq!(done.data["usage"]["completion_tokens"], 1000);
    assert_eq!(replies.iter().filter(|reply| reply.kind.is_terminal()).count(), 1);
    let chunks = replies.iter().filter(|reply| reply.kind == ReplyKind::Chunk).count();
    assert!(chunks >= 1000, "every token told: {chunks} chunks");
    fixture.stop().await;
}

/// A gateway admitted a request, wrote some of its replies and died; the gateway that
/// takes the entry over refuses it (here its deployment was removed meanwhile): its
/// error reply continues the numbering (`seq` 3 after 0, 1, 2), one terminal reply, no
/// `seq` told twice.
#[actix_rt::test]
async fn a_taken_over_request_refused_on_takeover_continues_its_reply_numbering() {
    let mut fixture = Fixture::start_without_ingress().await;
    let key = fixture.tenant("gone", TenantLimits::default());
    let reply_to = &reply_to("gone", "gone");
    let request = IngressRequest { deployment: "retired".into(), ..chat_request("half", &key, reply_to, hello(3)) };
    fixture.leave_pending(&request).await;
    // What the dead gateway did: admitted it (its marker names a job) and wrote 3 replies.
    let marker = swell_cluster::ingress_wire::seen_key("swell", "gone", "half");
    let _: () = redis::cmd("SET").arg(&marker).arg("req-0000000000000000000000000000dead").query_async(&mut fixture.redis).await.unwrap();
    for seq in 0..3 {
        let reply = Reply { id: Some("half".into()), seq, kind: ReplyKind::Status, data: json!({"status": "running", "replica": "r"}) };
        let mut command = redis::cmd("XADD");
        command.arg(reply_to).arg("*");
        for (name, value) in reply.to_fields() {
            command.arg(name).arg(value);
        }
        let _: String = command.query_async(&mut fixture.redis).await.unwrap();
    }
    fixture.start_ingress_taking_over().await;
    let replies = fixture.producer.wait_for(reply_to, "half", WAIT).await.unwrap();
    let seqs: Vec<u64> = replies.iter().map(|reply| reply.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3], "{replies:?}");
    assert_eq!((replies[3].kind, replies[3].data["error"]["code"].as_str()), (ReplyKind::Error, Some("model_not_found")), "{replies:?}");
    fixture.stop().await;
}
