use swell_cluster::Priority;
use swell_workers::sim::SimConfig;

use super::*;

fn invalid(text: &str) -> String {
    let config = Config::from_toml_str(text).expect("parses");
    config.validate().expect_err("should be invalid").to_string()
}

#[test]
fn an_empty_config_has_defaults_and_the_default_deployment() {
    let config = Config::from_toml_str("").unwrap();
    config.validate().unwrap();
    assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.server.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(config.server.keep_alive_interval, Duration::from_secs(10));
    assert_eq!(config.queue.max_depth_per_deployment, 1000);
    let deployments = config.initial_deployments();
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].0, "default");
    assert_eq!(config.initial_tenants()[0].0, ANONYMOUS_TENANT);
}

#[test]
fn an_empty_deployments_table_means_none() {
    let config = Config::from_toml_str("[deployments]\n").unwrap();
    assert!(config.initial_deployments().is_empty());
}

#[test]
fn a_full_config_parses() {
    let config = Config::from_toml_str(
        r#"
        [server]
        listen = "127.0.0.1:0"
        admin_token = "secret"
        request_timeout = "2m"
        [queue]
        max_depth_per_deployment = 10
        lease_ttl = "10s"
        [deployments.chat]
        engine = "sim"
        max_tokens_default = 64
        max_queue_depth = 5
        [deployments.chat.sim]
        profile = "smollm2-135m-cpu"
        cold_start = "100ms"
        [deployments.chat.autoscaling]
        min_replicas = 0
        max_replicas = 2
        scale_to_zero_window = "5s"
        [tenants.acme]
        limits = { requests_per_minute = 2 }
        api_key_hashes = ["sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.server.request_timeout, Duration::from_secs(120));
    let chat = &config.deployments.as_ref().unwrap()["chat"];
    assert_eq!(chat.sim.as_ref().unwrap().cold_start, Some(Duration::from_millis(100)));
    assert_eq!(chat.autoscaling.scale_to_zero_window, Duration::from_secs(5));
    assert_eq!(config.tenants["acme"].limits.requests_per_minute, Some(2));
    assert!(config.has_api_keys());
}

#[test]
fn autoscaling_rules_schedules_burst_and_predictive_parse_and_validate_with_the_key() {
    let config = Config::from_toml_str(
        r#"
        [deployments.chat]
        engine = "sim"
        [deployments.chat.autoscaling]
        max_replicas = 8
        tolerance = 0.05
        panic_threshold = 3
        [deployments.chat.autoscaling.load_targets]
        queue_delay_seconds = 2
        kv_cache_utilization = 0.8
        [[deployments.chat.autoscaling.schedules]]
        name = "business-hours"
        time_zone = "Europe/Paris"
        days = ["mon", "tue", "wed", "thu", "fri"]
        start = "08:00"
        end = "19:00"
        min_replicas = 2
        [[deployments.chat.autoscaling.rules]]
        signal = "queue_delay_seconds"
        above = 2.0
        for = "30s"
        add = 2
        [deployments.chat.autoscaling.predictive]
        mode = "preview"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let autoscaling = &config.deployments.as_ref().unwrap()["chat"].autoscaling;
    assert_eq!(autoscaling.schedules[0].min_replicas, Some(2));
    assert_eq!(autoscaling.rules[0].hold_for, Duration::from_secs(30));
    assert_eq!(autoscaling.panic_threshold, Some(3.0));

    let error = invalid(
        "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.rules]]\nsignal = \"queue_depth\"\nabove = 5\n",
    );
    assert!(error.contains("deployments.chat.autoscaling.rules[0] must set exactly one action"), "{error}");
    let error = invalid(
        "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.schedules]]\ntime_zone = \"Mars/Base\"\nstart = \"08:00\"\nend = \"09:00\"\nmin_replicas = 1\n",
    );
    assert!(error.contains("deployments.chat.autoscaling.schedules[0].time_zone (\"Mars/Base\")"), "{error}");
    let error = Config::from_toml_str(
        "[deployments.chat]\nengine = \"sim\"\n[[deployments.chat.autoscaling.rules]]\nsignal = \"gpu_temperature\"\nabove = 5\nadd = 1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("gpu_temperature"), "{error}");
}

#[test]
fn unknown_keys_are_named() {
    let error = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n").unwrap_err().to_string();
    assert!(error.contains("listne"), "{error}");
    let error = Config::from_toml_str("[deployments.chat]\nengine = \"sim\"\nmax_replica = 3\n").unwrap_err().to_string();
    assert!(error.contains("max_replica"), "{error}");
    let error = Config::from_toml_str("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmax_replica = 3\n").unwrap_err().to_string();
    assert!(error.contains("max_replica"), "{error}");
    let error = Config::from_toml_str("[tenants.a]\nlimits = { rpm = 3 }\n").unwrap_err().to_string();
    assert!(error.contains("rpm"), "{error}");
    let error = Config::from_toml_str("[bogus]\n").unwrap_err().to_string();
    assert!(error.contains("bogus"), "{error}");
}

#[test]
fn bad_durations_are_named() {
    let error = Config::from_toml_str("[server]\nrequest_timeout = \"ten minutes\"\n").unwrap_err().to_string();
    assert!(error.contains("request_timeout"), "{error}");
    let error = Config::from_toml_str("[queue]\nlease_ttl = 30\n").unwrap_err().to_string();
    assert!(error.contains("lease_ttl"), "{error}");
}

#[test]
fn validation_errors_name_the_key() {
    let error = invalid("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmin_replicas = 3\nmax_replicas = 1\n");
    assert!(error.contains("deployments.chat.autoscaling.max_replicas"), "{error}");
    let error = invalid("[deployments.chat]\nengine = \"vllm\"\n");
    assert!(error.contains("deployments.chat.engine: unknown engine `vllm`; known engines: llm, sim"), "{error}");
    let error = invalid("[deployments.chat]\nengine = \"sim\"\n[deployments.chat.sim]\nprofile = \"nope\"\n");
    assert!(error.contains("deployments.chat.sim.profile"), "{error}");
    let error = invalid("[deployments.chat]\nengine = \"sim\"\nmax_tokens_default = 0\n");
    assert!(error.contains("deployments.chat.max_tokens_default"), "{error}");
    let error = invalid("[deployments.\"a/b\"]\nengine = \"sim\"\n");
    assert!(error.contains("deployments.a/b: invalid name"), "{error}");
    let error = invalid("[tenants.acme]\nlimits = { requests_per_minute = 0 }\n");
    assert!(error.contains("tenants.acme.limits.requests_per_minute"), "{error}");
    let error = invalid("[tenants.acme]\napi_key_hashes = [\"abc\"]\n");
    assert!(error.contains("tenants.acme.api_key_hashes[0]"), "{error}");
    let error = invalid("[queue]\nmax_depth_per_deployment = 0\n");
    assert!(error.contains("queue.max_depth_per_deployment"), "{error}");
    let error = invalid("[server]\nmax_body_bytes = 0\nkeep_alive_interval = \"0s\"\n");
    assert!(error.contains("server.max_body_bytes") && error.contains("server.keep_alive_interval"), "{error}");
}

#[test]
fn the_quota_failure_policy_parses_and_is_validated() {
    use swell_actors::quota::LimitKind;
    use swell_actors::quota_failure::FailurePolicy;
    let config = Config::from_toml_str("").unwrap();
    assert_eq!(config.quota.failure_policy.default, FailurePolicy::LocalShare);
    assert_eq!(config.quota.node_count, 1);
    assert_eq!(config.quota.redis_timeout, Duration::from_millis(75));
    let config = Config::from_toml_str(
        r#"
        [quota]
        node_count = 4
        redis_timeout = "50ms"
        lease_ttl = "20s"
        lease_renew_interval = "5s"
        [quota.failure_policy]
        default = "fail_open"
        concurrent_requests = "fail_closed"
        output_tokens = "local_share"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let policy = &config.quota.failure_policy;
    assert_eq!(policy.for_kind(LimitKind::Requests), FailurePolicy::FailOpen);
    assert_eq!(policy.for_kind(LimitKind::ConcurrentRequests), FailurePolicy::FailClosed);
    assert_eq!(policy.for_kind(LimitKind::OutputTokens), FailurePolicy::LocalShare);
    assert_eq!(config.quota.node_count, 4);

    let error = Config::from_toml_str("[quota.failure_policy]\ndefault = \"fail_sometimes\"\n").unwrap_err().to_string();
    assert!(error.contains("fail_sometimes"), "{error}");
    let error = Config::from_toml_str("[quota]\nnode_cont = 3\n").unwrap_err().to_string();
    assert!(error.contains("node_cont"), "{error}");
    let error = invalid("[quota]\nnode_count = 0\nredis_timeout = \"0s\"\nlease_ttl = \"10s\"\nlease_renew_interval = \"8s\"\n");
    assert!(error.contains("quota.node_count"), "{error}");
    assert!(error.contains("quota.redis_timeout"), "{error}");
    assert!(error.contains("quota.lease_renew_interval"), "{error}");
}

#[test]
fn the_cluster_section_parses_and_is_validated() {
    let config = Config::from_toml_str("").unwrap();
    assert!(!config.cluster.is_distributed());
    assert_eq!(config.cluster.role, NodeRole::All);
    assert!(config.cluster.redis_queue_config().is_none());
    let config = Config::from_toml_str(
        r#"
        [cluster]
        redis_url = "redis://10.0.0.5:6379/2"
        role = "gateway"
        node_id = "gw-1"
        key_prefix = "prod"
        max_deliveries = 5
        output_ttl = "2m"
        connect_timeout = "250ms"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.cluster.effective_node_id(), "gw-1");
    assert!(!config.cluster.role.runs_replicas() && config.cluster.role.serves_api());
    let queue = config.cluster.redis_queue_config().unwrap();
    assert_eq!(queue.url, "redis://10.0.0.5:6379/2");
    assert_eq!((queue.key_prefix.as_str(), queue.max_deliveries), ("prod", 5));
    assert_eq!(queue.output_ttl, Duration::from_secs(120));
    assert_eq!(queue.connect_timeout, Duration::from_millis(250));

    let error = Config::from_toml_str("[cluster]\nrole = \"boss\"\n").unwrap_err().to_string();
    assert!(error.contains("boss"), "{error}");
    let error = Config::from_toml_str("[cluster]\nredis = \"x\"\n").unwrap_err().to_string();
    assert!(error.contains("redis"), "{error}");
    let error = invalid("[cluster]\nrole = \"worker\"\n");
    assert!(error.contains("cluster.role: `worker` needs a shared redis"), "{error}");
    let error = invalid("[cluster]\nredis_url = \"localhost:6379\"\nkey_prefix = \"a{b}\"\nmax_deliveries = 0\nnode_id = \"a b\"\n");
    assert!(error.contains("cluster.redis_url: expected `redis://"), "{error}");
    assert!(error.contains("cluster.key_prefix"), "{error}");
    assert!(error.contains("cluster.node_id"), "{error}");
    let error = invalid("[cluster]\nredis_url = \"redis://h:1\"\nmax_deliveries = 0\n");
    assert!(error.contains("cluster.max_deliveries"), "{error}");
    // A deployment's queue in partitions (1 by default).
    assert_eq!(queue.queue_partitions, 1);
    let config = Config::from_toml_str("[cluster]\nredis_url = \"redis://h:1\"\nqueue_partitions = 8\n").unwrap();
    assert_eq!(config.cluster.redis_queue_config().unwrap().queue_partitions, 8);
    let error = invalid("[cluster]\nredis_url = \"redis://h:1\"\nqueue_partitions = 0\n");
    assert!(error.contains("cluster.queue_partitions: must be 1 to 256, got 0"), "{error}");

    // A Redis Cluster by its seed nodes; no seed, or a database number, is refused.
    let config = Config::from_toml_str("[cluster]\nredis_url = \"redis-cluster://10.0.0.5:7000,10.0.0.6:7000\"\n").unwrap();
    assert_eq!(config.cluster.redis_queue_config().unwrap().url, "redis-cluster://10.0.0.5:7000,10.0.0.6:7000");
    let error = invalid("[cluster]\nredis_url = \"redis-cluster://\"\n");
    assert!(error.contains("cluster.redis_url: redis-cluster://: name at least one seed node"), "{error}");
    let error = invalid("[cluster]\nredis_url = \"redis-cluster://a:7000/1\"\n");
    assert!(error.contains("database 0"), "{error}");
}

#[test]
fn a_key_hash_belongs_to_one_tenant() {
    let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let error = invalid(&format!("[tenants.a]\napi_key_hashes = [\"{hash}\"]\n[tenants.b]\napi_key_hashes = [\"{hash}\"]\n"));
    assert!(error.contains("tenants.b.api_key_hashes[0] is also a key of tenant `a`"), "{error}");
}

#[test]
fn reply_prefixes_are_checked_and_never_overlap() {
    let config = Config::from_toml_str("[tenants.a]\nreply_prefix = \"acme:replies:\"\n[tenants.b]\n").unwrap();
    assert!(config.validate().is_ok());
    assert_eq!(config.tenants["a"].reply_prefix.as_deref(), Some("acme:replies:"));
    assert_eq!(config.tenants["b"].reply_prefix, None);
    let error = invalid("[tenants.a]\nreply_prefix = \"acme:\"\n[tenants.b]\nreply_prefix = \"acme:b:\"\n");
    assert!(error.contains("tenants.b.reply_prefix `acme:b:` overlaps tenants.a.reply_prefix `acme:`"), "{error}");
    let error = invalid("[tenants.a]\nreply_prefix = \"swell:x:\"\n");
    assert!(error.contains("tenants.a.reply_prefix: `swell:x:` overlaps swell's own keys"), "{error}");
    let error = invalid("[cluster]\nkey_prefix = \"prod\"\n[tenants.a]\nreply_prefix = \"prod-replies:9:\"\n");
    assert!(error.contains("tenants.a.reply_prefix: `prod-replies:9:` overlaps the default reply prefixes"), "{error}");
    let error = invalid("[tenants.a]\nreply_prefix = \"\"\n");
    assert!(error.contains("tenants.a.reply_prefix: must be 1 to 256 bytes"), "{error}");
}

#[test]
fn non_loopback_listen_needs_keys_and_an_admin_token() {
    let error = invalid("[server]\nlisten = \"0.0.0.0:8080\"\n");
    assert!(error.contains("refusing to listen on non-loopback address 0.0.0.0:8080"), "{error}");
    assert!(error.contains("no tenant has an api key") && error.contains("no admin token"), "{error}");

    let hash = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let keys_only = format!("[server]\nlisten = \"0.0.0.0:8080\"\n[tenants.a]\napi_key_hashes = [\"{hash}\"]\n");
    let error = invalid(&keys_only);
    assert!(!error.contains("no tenant has an api key") && error.contains("no admin token"), "{error}");

    let secured = format!("[server]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"t\"\n[tenants.a]\napi_key_hashes = [\"{hash}\"]\n");
    Config::from_toml_str(&secured).unwrap().validate().unwrap();
    let insecure = "[server]\nlisten = \"0.0.0.0:8080\"\ninsecure = true\n";
    Config::from_toml_str(insecure).unwrap().validate().unwrap();
    Config::from_toml_str("[server]\nlisten = \"[::1]:8080\"\n").unwrap().validate().unwrap();
}

#[test]
fn engine_changes_are_detected() {
    let a = DeploymentConfig::sim(SimConfig::default());
    let mut b = a.clone();
    b.autoscaling.max_replicas = 9;
    b.max_tokens_default = 5;
    assert!(!a.engine_differs(&b));
    b.sim = Some(SimConfig { profile: "smollm2-135m-cpu".into(), ..SimConfig::default() });
    assert!(a.engine_differs(&b));
    // No sim block is the default sim block.
    let c = DeploymentConfig { sim: None, ..a.clone() };
    assert!(!a.engine_differs(&c));
}

#[test]
fn admin_bodies_validate_without_a_prefix() {
    let mut deployment = DeploymentConfig::sim(SimConfig::default());
    deployment.autoscaling.min_replicas = 5;
    deployment.autoscaling.max_replicas = 1;
    let errors = deployment.validate("");
    assert!(errors[0].starts_with("autoscaling.max_replicas"), "{errors:?}");
}

#[test]
fn tenant_priorities_and_reservations_parse_and_are_checked() {
    let deployments = "[deployments.chat]\nengine = \"sim\"\n[deployments.chat.autoscaling]\nmax_replicas = 2\n";
    let config = Config::from_toml_str(&format!(
        "{deployments}[tenants.a]\npriority = \"high\"\nreserved_replicas = {{ chat = 1 }}\n[tenants.b]\npriority = \"low\"\n"
    ))
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.tenants["a"].capacity().priority, Priority::High);
    assert_eq!(config.tenants["a"].reserved_replicas["chat"], 1);
    assert_eq!(config.tenants["b"].priority, Priority::Low);
    assert_eq!(Config::from_toml_str("[tenants.c]\n").unwrap().tenants["c"].priority, Priority::Normal);

    let error = Config::from_toml_str("[tenants.a]\npriority = \"urgent\"\n").unwrap_err().to_string();
    assert!(error.contains("urgent") && error.contains("high"), "{error}");
    let too_many = format!(
        "{deployments}[tenants.a]\nreserved_replicas = {{ chat = 2 }}\n[tenants.b]\nreserved_replicas = {{ chat = 1 }}\n"
    );
    let error = invalid(&too_many);
    assert!(
        error.contains("tenants.*.reserved_replicas.chat: 3 replica(s) reserved in all, more than deployments.chat.autoscaling.max_replicas (2)"),
        "{error}"
    );
    let error = invalid(&format!("{deployments}[tenants.a]\nreserved_replicas = {{ nope = 1 }}\n"));
    assert!(error.contains("tenants.a.reserved_replicas.nope: no deployment `nope` is configured"), "{error}");
    let error = invalid(&format!("{deployments}[tenants.a]\nreserved_replicas = {{ chat = 0 }}\n"));
    assert!(error.contains("tenants.a.reserved_replicas.chat must be at least 1"), "{error}");
}

#[test]
fn the_low_priority_queue_share_is_a_fraction() {
    let mut deployment = DeploymentConfig::sim(SimConfig::default());
    assert_eq!(deployment.low_priority_queue_share, 0.5);
    assert!(deployment.validate("").is_empty());
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        deployment.low_priority_queue_share = bad;
        let errors = deployment.validate("d");
        assert!(errors.iter().any(|e| e.starts_with("d.low_priority_queue_share must be above 0")), "{bad}: {errors:?}");
    }
}
